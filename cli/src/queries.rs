//! Every statement the command line and the dashboard run, in one place:
//! both read the monitoring views of docs/sql-reference.md and call the
//! operator functions, so a command and a page always show the same thing.
//!
//! Filters are put into the SQL text only when given (never
//! `$1 IS NULL OR queue = $1`), so each statement is planned for the
//! filters it has and uses the views' indexes on 1,000,000 jobs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

/// Job states, as `commitq.job_state` names them.
pub const STATES: [&str; 7] = [
    "available",
    "scheduled",
    "running",
    "blocked",
    "completed",
    "discarded",
    "cancelled",
];
/// States of finished jobs (commitq.finished_jobs).
pub const FINISHED: [&str; 3] = ["completed", "discarded", "cancelled"];
/// States a job may be retried from (commitq.retry).
pub const RETRYABLE: [&str; 4] = ["scheduled", "discarded", "cancelled", "completed"];
/// States a job may be cancelled in (commitq.cancel).
pub const CANCELLABLE: [&str; 4] = ["scheduled", "available", "blocked", "running"];

#[derive(Debug, Clone, Serialize)]
pub struct QueueStat {
    pub queue: String,
    pub paused: bool,
    pub available: i64,
    pub scheduled: i64,
    pub running: i64,
    pub blocked: i64,
    pub latency_seconds: f64,
    pub completed_last_minute: i64,
    pub completed_last_hour: i64,
    pub failed_last_hour: i64,
    pub discarded_last_hour: i64,
    pub cancelled_last_hour: i64,
    /// False when `available` is the planner's estimate (a backlog of
    /// more than 10,000 jobs: see docs/operations.md, Monitoring).
    pub available_exact: bool,
}

pub async fn queue_stats(db: &impl GenericClient) -> Result<Vec<QueueStat>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT queue, paused, available, scheduled, running, blocked, latency_seconds,
                    completed_last_minute, completed_last_hour, failed_last_hour,
                    discarded_last_hour, cancelled_last_hour, available_exact
               FROM commitq.queue_stats ORDER BY queue",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QueueStat {
            queue: r.get(0),
            paused: r.get(1),
            available: r.get(2),
            scheduled: r.get(3),
            running: r.get(4),
            blocked: r.get(5),
            latency_seconds: r.get(6),
            completed_last_minute: r.get(7),
            completed_last_hour: r.get(8),
            failed_last_hour: r.get(9),
            discarded_last_hour: r.get(10),
            cancelled_last_hour: r.get(11),
            available_exact: r.get(12),
        })
        .collect())
}

/// One minute of commitq.throughput, summed over the queues shown.
#[derive(Debug, Clone, Serialize)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
    pub discarded: i64,
}

pub async fn throughput(
    db: &impl GenericClient,
    queue: Option<&str>,
) -> Result<Vec<Minute>, tokio_postgres::Error> {
    let mut sql = String::from(
        "SELECT minute, sum(completed)::bigint, sum(failed)::bigint, sum(discarded)::bigint
           FROM commitq.throughput",
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(q) = &queue {
        sql.push_str(" WHERE queue = $1");
        params.push(q);
    }
    sql.push_str(" GROUP BY minute ORDER BY minute");
    let rows = db.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| Minute {
            minute: r.get(0),
            completed: r.get(1),
            failed: r.get(2),
            discarded: r.get(3),
        })
        .collect())
}

/// Which jobs a list or a bulk action is about. `before` pages by id: the
/// next page of a list ordered by id descending starts below its last id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<String>,
    pub kind: Option<String>,
    pub before: Option<i64>,
}

impl JobFilter {
    /// True when nothing narrows the set down (paging aside).
    pub fn is_empty(&self) -> bool {
        self.queue.is_none() && self.state.is_none() && self.kind.is_none()
    }

    /// The WHERE clause and its parameters, numbered from 1. `states` limits
    /// the set further to those states (a bulk action's applicable ones).
    fn where_clause<'a>(&'a self, states: &[&str]) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
        let mut conds = Vec::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(q) = &self.queue {
            params.push(q);
            conds.push(format!("queue = ${}", params.len()));
        }
        // States go into the text as constants of the enum (each checked
        // against STATES first), not as parameters: the planner must see
        // the value to drop the arm of commitq.job_list that cannot hold
        // it, with `finished` (a constant of each arm) said outright
        // (measured on 1,000,000 jobs: the first page of available jobs
        // 438 ms -> 0.15 ms, of discarded ones ~800 ms -> 0.11 ms, the
        // other arm's index no longer scanned through).
        let wanted: Vec<&str> = match &self.state {
            Some(s) => vec![s.as_str()],
            None => states.to_vec(),
        };
        let known: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|s| STATES.contains(s))
            .collect();
        if known.len() < wanted.len() {
            // A state that does not exist: nothing can match.
            conds.push("false".to_string());
        } else if !known.is_empty() {
            let list: Vec<String> = known
                .iter()
                .map(|s| format!("'{s}'::commitq.job_state"))
                .collect();
            conds.push(format!("state IN ({})", list.join(", ")));
            if known.iter().all(|s| FINISHED.contains(s)) {
                conds.push("finished".to_string());
            } else if !known.iter().any(|s| FINISHED.contains(s)) {
                conds.push("NOT finished".to_string());
            }
        }
        if let Some(k) = &self.kind {
            params.push(k);
            conds.push(format!("kind = ${}", params.len()));
        }
        if let Some(b) = &self.before {
            params.push(b);
            conds.push(format!("id < ${}", params.len()));
        }
        let clause = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        (clause, params)
    }
}

/// A line of a job list.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub async fn job_list(
    db: &impl GenericClient,
    filter: &JobFilter,
    limit: i64,
) -> Result<Vec<JobRow>, tokio_postgres::Error> {
    let (clause, mut params) = filter.where_clause(&[]);
    params.push(&limit);
    let sql = format!(
        "SELECT id, queue, kind, state::text, priority, attempt, max_attempts, run_at,
                enqueued_at, finished_at, errors -> -1 ->> 'error'
           FROM commitq.job_list{clause} ORDER BY id DESC LIMIT ${}",
        params.len()
    );
    let rows = db.query(&sql, &params).await?;
    Ok(rows.iter().map(job_row).collect())
}

fn job_row(r: &Row) -> JobRow {
    JobRow {
        id: r.get(0),
        queue: r.get(1),
        kind: r.get(2),
        state: r.get(3),
        priority: r.get(4),
        attempt: r.get(5),
        max_attempts: r.get(6),
        run_at: r.get(7),
        enqueued_at: r.get(8),
        finished_at: r.get(9),
        last_error: r.get(10),
    }
}

/// One entry of a job's error history.
#[derive(Debug, Clone, Serialize)]
pub struct JobError {
    pub attempt: Option<i64>,
    pub at: Option<String>,
    pub worker: Option<String>,
    pub error: String,
}

/// Everything about one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub args: Value,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub worker: Option<String>,
    pub concurrency_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub errors: Vec<JobError>,
    pub enqueued_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn job_detail(
    db: &impl GenericClient,
    id: i64,
) -> Result<Option<JobDetail>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT id, queue, kind, state::text, args, priority, attempt, max_attempts, run_at,
                    worker, concurrency_key, idempotency_key, errors, enqueued_at, claimed_at,
                    lease_expires_at, finished_at
               FROM commitq.job_list WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| {
        let errors: Value = r.get(12);
        JobDetail {
            id: r.get(0),
            queue: r.get(1),
            kind: r.get(2),
            state: r.get(3),
            args: r.get(4),
            priority: r.get(5),
            attempt: r.get(6),
            max_attempts: r.get(7),
            run_at: r.get(8),
            worker: r.get(9),
            concurrency_key: r.get(10),
            idempotency_key: r.get(11),
            errors: errors
                .as_array()
                .map(|a| a.iter().map(job_error).collect())
                .unwrap_or_default(),
            enqueued_at: r.get(13),
            claimed_at: r.get(14),
            lease_expires_at: r.get(15),
            finished_at: r.get(16),
        }
    }))
}

fn job_error(e: &Value) -> JobError {
    JobError {
        attempt: e.get("attempt").and_then(Value::as_i64),
        at: e.get("at").and_then(Value::as_str).map(str::to_string),
        worker: e.get("worker").and_then(Value::as_str).map(str::to_string),
        error: match e.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => e.to_string(),
        },
    }
}

/// The ids of the jobs a bulk action applies to: those matching `filter`
/// in one of `states`, newest first.
pub async fn matching_ids(
    db: &impl GenericClient,
    filter: &JobFilter,
    states: &[&str],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let (clause, params) = filter.where_clause(states);
    let sql = format!("SELECT id FROM commitq.job_list{clause} ORDER BY id DESC");
    let rows = db.query(&sql, &params).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// An operator action on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobAction {
    Retry,
    Cancel,
}

impl JobAction {
    pub fn sql(self) -> &'static str {
        match self {
            JobAction::Retry => "SELECT commitq.retry($1)::text",
            JobAction::Cancel => "SELECT commitq.cancel($1)::text",
        }
    }
    /// The states a bulk action takes when given none: retry re-runs
    /// discarded jobs (never completed ones unless asked), cancel stops
    /// every waiting or running one.
    pub fn default_states(self) -> &'static [&'static str] {
        match self {
            JobAction::Retry => &["discarded"],
            JobAction::Cancel => &CANCELLABLE,
        }
    }
    /// The states the action applies to, for bulk actions.
    pub fn states(self) -> &'static [&'static str] {
        match self {
            JobAction::Retry => &RETRYABLE,
            JobAction::Cancel => &CANCELLABLE,
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            JobAction::Retry => "retry",
            JobAction::Cancel => "cancel",
        }
    }
}

/// Run `action` on one job; returns the job's state after it.
pub async fn act(
    db: &impl GenericClient,
    action: JobAction,
    id: i64,
) -> Result<String, tokio_postgres::Error> {
    Ok(db.query_one(action.sql(), &[&id]).await?.get(0))
}

/// What a bulk action did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BulkResult {
    pub matched: usize,
    pub done: usize,
    /// Jobs whose state changed between the count and the action (CQ104,
    /// CQ101): left as they are.
    pub skipped: usize,
}

/// Run `action` on each of `ids`, each in its own transaction (a job that
/// moved on since it was counted is skipped, not an error for the rest).
/// The calls of a chunk are pipelined on the one connection.
pub async fn act_on_all(
    db: &tokio_postgres::Client,
    action: JobAction,
    ids: &[i64],
) -> Result<BulkResult, tokio_postgres::Error> {
    let statement = db.prepare(action.sql()).await?;
    let mut result = BulkResult {
        matched: ids.len(),
        ..Default::default()
    };
    for chunk in ids.chunks(500) {
        let params: Vec<[&(dyn ToSql + Sync); 1]> = chunk.iter().map(|id| [id as _]).collect();
        let calls = params.iter().map(|p| db.query_one(&statement, p));
        for outcome in futures_util::future::join_all(calls).await {
            match outcome {
                Ok(_) => result.done += 1,
                Err(e) if is_skippable(&e) => result.skipped += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(result)
}

fn is_skippable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("CQ104") | Some("CQ101"))
}

/// Pause (`true`) or resume a queue; true when that changed something.
pub async fn set_paused(
    db: &impl GenericClient,
    queue: &str,
    paused: bool,
) -> Result<bool, tokio_postgres::Error> {
    let sql = if paused {
        "SELECT commitq.pause($1)"
    } else {
        "SELECT commitq.resume($1)"
    };
    Ok(db.query_one(sql, &[&queue]).await?.get(0))
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub queue: String,
    pub kind: String,
    pub paused: bool,
    pub next_tick: Option<DateTime<Utc>>,
    pub last_tick: Option<DateTime<Utc>>,
    pub last_job_id: Option<i64>,
    pub last_outcome: Option<String>,
}

pub async fn schedules(db: &impl GenericClient) -> Result<Vec<ScheduleRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT name, cron, timezone, queue, kind, paused, next_tick, last_tick, last_job_id,
                    last_outcome
               FROM commitq.schedules ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ScheduleRow {
            name: r.get(0),
            cron: r.get(1),
            timezone: r.get(2),
            queue: r.get(3),
            kind: r.get(4),
            paused: r.get(5),
            next_tick: r.get(6),
            last_tick: r.get(7),
            last_job_id: r.get(8),
            last_outcome: r.get(9),
        })
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub key: String,
    pub running: i64,
    pub blocked: i64,
    pub max_running: i64,
    pub at_limit: bool,
}

/// Concurrency keys in use, those at their limit first.
pub async fn concurrency_keys(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<KeyRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT key, running::bigint, blocked::bigint, max_running::bigint, at_limit
               FROM commitq.concurrency_key_stats
              ORDER BY at_limit DESC, blocked DESC, key LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyRow {
            key: r.get(0),
            running: r.get(1),
            blocked: r.get(2),
            max_running: r.get(3),
            at_limit: r.get(4),
        })
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaseRow {
    pub name: String,
    pub owner: String,
    pub token: i64,
    pub expires_at: DateTime<Utc>,
    /// Still in force (an expired lease keeps its row until taken again).
    pub held: bool,
}

pub async fn named_leases(db: &impl GenericClient) -> Result<Vec<LeaseRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT name, owner, token, expires_at, held
               FROM commitq.named_lease_holders ORDER BY name LIMIT 1000",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LeaseRow {
            name: r.get(0),
            owner: r.get(1),
            token: r.get(2),
            expires_at: r.get(3),
            held: r.get(4),
        })
        .collect())
}

/// What the connected role may do, from the catalog: pages show only the
/// buttons of these, and the server refuses the others before asking.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Privileges {
    pub retry: bool,
    pub cancel: bool,
    pub pause: bool,
    pub resume: bool,
}

pub async fn privileges(db: &impl GenericClient) -> Result<Privileges, tokio_postgres::Error> {
    // to_regprocedure gives NULL for a function this version lacks, and
    // has_function_privilege of NULL is NULL: no error, no button.
    let r = db
        .query_one(
            "SELECT coalesce(has_function_privilege(to_regprocedure('commitq.retry(bigint)'), 'EXECUTE'), false),
                    coalesce(has_function_privilege(to_regprocedure('commitq.cancel(bigint)'), 'EXECUTE'), false),
                    coalesce(has_function_privilege(to_regprocedure('commitq.pause(text)'), 'EXECUTE'), false),
                    coalesce(has_function_privilege(to_regprocedure('commitq.resume(text)'), 'EXECUTE'), false)",
            &[],
        )
        .await?;
    Ok(Privileges {
        retry: r.get(0),
        cancel: r.get(1),
        pause: r.get(2),
        resume: r.get(3),
    })
}
