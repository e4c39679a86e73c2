//! Every statement the client sends, one typed function per commitq SQL
//! function.
//!
//! Kept in one module so that each change of a job's or a lease's state is
//! written once, and a reader can audit in one file everything the client
//! asks of the database: which columns it reads, which casts it relies on
//! (`make_interval(secs => $n)` for durations sent as seconds), which
//! statements run inside a caller's transaction. The rest of the crate
//! decides when to call these; it writes no SQL of its own.

use std::time::Duration;

use serde_json::Value;
// The pool's own calls (claims, completions, heartbeats) run on its pooled
// connections and use their statement caches: a statement sent as text is
// parsed and described in a round trip of its own before every call.
use deadpool_postgres::ClientWrapper;
use tokio_postgres::GenericClient;

use crate::{EnqueueOptions, Enqueued, Error};

/// A job as a claim (or a completion that takes a key's next job) hands it
/// over, under the caller's lease.
pub(crate) struct ClaimedRow {
    pub job_id: i64,
    pub queue: String,
    pub kind: String,
    pub args: Value,
    pub attempt: i32,
    pub lease_token: i64,
    /// Has a concurrency key: its completion passes the key's slot on.
    pub keyed: bool,
    /// `{"<job id>": result}` of the jobs it was enqueued to wait for.
    pub dependency_results: Option<Value>,
}

/// One job of a `complete_and_take` batch, in input order.
pub(crate) struct CompletedRow {
    /// False when the lease was lost before completing.
    pub completed: bool,
    /// The next job of the key this completion freed, now leased to us.
    pub next: Option<ClaimedRow>,
}

/// What `effect_begin` found for a named side effect.
pub(crate) struct EffectRow {
    /// An earlier attempt recorded this effect.
    pub done: bool,
    /// The same for every attempt of the job.
    pub idempotency_key: String,
    /// The recorded result, when `done`.
    pub result: Option<Value>,
}

/// The installed `pg_commitq` version, `None` when it is not installed.
/// Without the extension (`make sql-only`, for managed PostgreSQL) the
/// version is in the comment of the schema commitq: "commitq 0.2.0 (sql-only)".
pub(crate) async fn extension_version(
    client: &impl GenericClient,
) -> Result<Option<String>, Error> {
    let row = client
        .query_one(
            "SELECT coalesce(
                 (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_commitq'),
                 pg_catalog.substring(
                     pg_catalog.obj_description(pg_catalog.to_regnamespace('commitq'), 'pg_namespace'),
                     '^commitq ([^ ]+) [(]sql-only[)]$'))",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// `commitq.enqueue`: one job. Unset options take the SQL function's
/// defaults; a delay is counted by the database's clock.
pub(crate) async fn enqueue(
    client: &impl GenericClient,
    queue: &str,
    kind: &str,
    args: &Value,
    options: &EnqueueOptions,
) -> Result<Enqueued, Error> {
    let delay = options.delay.map(|d| d.as_secs_f64());
    let row = client
        .query_one(
            "SELECT job_id, inserted FROM commitq.enqueue(
    $1, $2, $3, coalesce($4::int4, 0),
    coalesce($5::timestamptz, now() + make_interval(secs => coalesce($6::float8, 0))),
    coalesce($7::int4, 25), $8, $9, $10::int8::text::xid8, $11::int8[], $12)",
            &[
                &queue,
                &kind,
                args,
                &options.priority,
                &options.run_at,
                &delay,
                &options.max_attempts,
                &options.idempotency_key,
                &options.concurrency_key,
                &options.after_xact,
                &options.depends_on,
                &options.on_duplicate.map(|m| m.as_sql()),
            ],
        )
        .await?;
    Ok(Enqueued {
        job_id: row.get(0),
        inserted: row.get(1),
    })
}

/// One job of an [`enqueue_many`] batch, in the JSON form its statement
/// reads: `run_at` travels as epoch seconds and `delay_secs`, turned into a
/// timestamp by the statement.
pub(crate) fn enqueue_many_item(
    queue: &str,
    kind: &str,
    args: Value,
    options: &EnqueueOptions,
) -> Value {
    let delay = options.delay.map(|d| d.as_secs_f64());
    let run_at = options.run_at.map(|t| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    });
    serde_json::json!({
        "queue": queue,
        "kind": kind,
        "args": args,
        "priority": options.priority,
        "max_attempts": options.max_attempts,
        "idempotency_key": options.idempotency_key,
        "concurrency_key": options.concurrency_key,
        "depends_on": options.depends_on,
        "on_duplicate": options.on_duplicate.map(|m| m.as_sql()),
        "run_at_epoch": run_at,
        "delay_secs": delay,
    })
}

/// `commitq.enqueue_many`: jobs made by [`enqueue_many_item`], in one
/// statement; results in input order.
pub(crate) async fn enqueue_many(
    client: &impl GenericClient,
    batch: Vec<Value>,
) -> Result<Vec<Enqueued>, Error> {
    // The JSON form takes run_at as a timestamp: computed here from the
    // epoch seconds or the delay, by the database's clock.
    let rows = client
        .query(
            "SELECT job_id, inserted FROM commitq.enqueue_many((
                 SELECT coalesce(jsonb_agg(
                            (j - 'run_at_epoch' - 'delay_secs')
                            || jsonb_build_object('run_at', coalesce(
                                   to_timestamp((j->>'run_at_epoch')::float8),
                                   now() + make_interval(secs => coalesce((j->>'delay_secs')::float8, 0))))
                            ORDER BY i), '[]')
                   FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(j, i)))",
            &[&Value::Array(batch)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Enqueued {
            job_id: r.get(0),
            inserted: r.get(1),
        })
        .collect())
}

/// The options [`enqueue_many_arrays`] takes once for a whole batch.
pub(crate) struct SharedOptions<'a> {
    pub queue: &'a str,
    pub kind: &'a str,
    pub priority: Option<i32>,
    pub run_at: Option<std::time::SystemTime>,
    pub delay: Option<Duration>,
    pub max_attempts: Option<i32>,
}

/// `commitq.enqueue_many`'s arrays form: jobs of one queue and kind that
/// share priority, run_at and max_attempts, each with its own args and
/// keys, in one INSERT without a PL/pgSQL call per job (unless it has an
/// idempotency key). Results in input order. Unset options take the
/// JSON form's defaults, so both forms store the same jobs.
pub(crate) async fn enqueue_many_arrays(
    client: &impl GenericClient,
    shared: &SharedOptions<'_>,
    args: &[Value],
    idempotency_keys: Option<Vec<Option<String>>>,
    concurrency_keys: Option<Vec<Option<String>>>,
) -> Result<Vec<Enqueued>, Error> {
    let delay = shared.delay.map(|d| d.as_secs_f64());
    let rows = client
        .query(
            "SELECT job_id, inserted FROM commitq.enqueue_many(
    $1, $2, $3::jsonb[], coalesce($4::int4, 0),
    coalesce($5::timestamptz, now() + make_interval(secs => coalesce($6::float8, 0))),
    coalesce($7::int4, 25), $8::text[], $9::text[])",
            &[
                &shared.queue,
                &shared.kind,
                &args,
                &shared.priority,
                &shared.run_at,
                &delay,
                &shared.max_attempts,
                &idempotency_keys,
                &concurrency_keys,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Enqueued {
            job_id: r.get(0),
            inserted: r.get(1),
        })
        .collect())
}

/// `commitq.claim`: up to `limit` jobs of `queue`, leased to `worker` for
/// `lease`.
pub(crate) async fn claim(
    client: &ClientWrapper,
    queue: &str,
    worker: &str,
    limit: usize,
    lease: Duration,
) -> Result<Vec<ClaimedRow>, Error> {
    let statement = client
        .prepare_cached(
            "SELECT job_id, queue, kind, args, attempt, lease_token,
                    concurrency_key IS NOT NULL, dependency_results
               FROM commitq.claim($1, $2, $3, make_interval(secs => $4))",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[&queue, &worker, &(limit as i32), &lease.as_secs_f64()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ClaimedRow {
            job_id: r.get(0),
            queue: r.get(1),
            kind: r.get(2),
            args: r.get(3),
            attempt: r.get(4),
            lease_token: r.get(5),
            keyed: r.get(6),
            dependency_results: r.get(7),
        })
        .collect())
}

/// `commitq.complete`: one job, in the caller's transaction.
pub(crate) async fn complete(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
) -> Result<(), Error> {
    client
        .execute("SELECT commitq.complete($1, $2)", &[&job_id, &lease_token])
        .await?;
    Ok(())
}

/// `commitq.complete` with a result that the job's dependents read.
pub(crate) async fn complete_with_result(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
    result: &Value,
) -> Result<(), Error> {
    client
        .execute(
            "SELECT commitq.complete($1, $2, $3)",
            &[&job_id, &lease_token, result],
        )
        .await?;
    Ok(())
}

/// `commitq.complete_many`: whether each job was completed, in order.
pub(crate) async fn complete_many(
    client: &ClientWrapper,
    ids: &[i64],
    tokens: &[i64],
) -> Result<Vec<bool>, Error> {
    let statement = client
        .prepare_cached("SELECT completed FROM commitq.complete_many($1, $2)")
        .await?;
    let rows = client.query(&statement, &[&ids, &tokens]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `commitq.complete_and_take`: complete a batch and take the next jobs of
/// the keys it frees, leased to `worker` for `lease`; one row per job, in
/// order.
pub(crate) async fn complete_and_take(
    client: &ClientWrapper,
    ids: &[i64],
    tokens: &[i64],
    worker: &str,
    lease: Duration,
) -> Result<Vec<CompletedRow>, Error> {
    let statement = client
        .prepare_cached(
            "SELECT t.completed, (t.next).job_id, (t.next).queue, (t.next).kind,
                    (t.next).args, (t.next).attempt, (t.next).lease_token,
                    (t.next).dependency_results
               FROM commitq.complete_and_take($1, $2, $3, make_interval(secs => $4)) t",
        )
        .await?;
    let rows = client
        .query(&statement, &[&ids, &tokens, &worker, &lease.as_secs_f64()])
        .await?;
    Ok(rows
        .iter()
        .map(|r| CompletedRow {
            completed: r.get(0),
            // A job taken here is the next of a concurrency key.
            next: r.get::<_, Option<i64>>(1).map(|job_id| ClaimedRow {
                job_id,
                queue: r.get(2),
                kind: r.get(3),
                args: r.get(4),
                attempt: r.get(5),
                lease_token: r.get(6),
                keyed: true,
                dependency_results: r.get(7),
            }),
        })
        .collect())
}

/// `commitq.fail`: record a failed attempt (`discard`: no retry); the job's
/// state afterwards.
pub(crate) async fn fail(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
    error: &str,
    discard: bool,
) -> Result<String, Error> {
    let row = client
        .query_one(
            "SELECT state::text FROM commitq.fail($1, $2, $3, NULL, $4)",
            &[&job_id, &lease_token, &error, &discard],
        )
        .await?;
    Ok(row.get(0))
}

/// `commitq.heartbeat`: renew the job's lease; whether its cancellation was
/// requested.
pub(crate) async fn heartbeat(
    client: &ClientWrapper,
    job_id: i64,
    lease_token: i64,
) -> Result<bool, Error> {
    let statement = client
        .prepare_cached("SELECT cancel_requested FROM commitq.heartbeat($1, $2)")
        .await?;
    let row = client
        .query_one(&statement, &[&job_id, &lease_token])
        .await?;
    Ok(row.get(0))
}

/// `commitq.snooze`: put the job back for `delay` without spending an
/// attempt.
pub(crate) async fn snooze(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
    delay: Duration,
) -> Result<(), Error> {
    client
        .execute(
            "SELECT commitq.snooze($1, $2, make_interval(secs => $3))",
            &[&job_id, &lease_token, &delay.as_secs_f64()],
        )
        .await?;
    Ok(())
}

/// `commitq.stop_waiting`: enqueues to `queue` need no longer wake `worker`.
pub(crate) async fn stop_waiting(
    client: &impl GenericClient,
    queue: &str,
    worker: &str,
) -> Result<(), Error> {
    client
        .execute("SELECT commitq.stop_waiting($1, $2)", &[&queue, &worker])
        .await?;
    Ok(())
}

/// `commitq.maintain`: rescue, promote, prune.
pub(crate) async fn maintain(client: &impl GenericClient) -> Result<(), Error> {
    client.execute("SELECT commitq.maintain()", &[]).await?;
    Ok(())
}

/// `commitq.assert_lease`: raise unless the job's lease is current, and
/// hold it until the caller's transaction ends.
pub(crate) async fn assert_lease(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
) -> Result<(), Error> {
    client
        .execute(
            "SELECT commitq.assert_lease($1, $2)",
            &[&job_id, &lease_token],
        )
        .await?;
    Ok(())
}

/// `commitq.effect_begin`: the recorded result of effect `name`, or the
/// key to do it under.
pub(crate) async fn effect_begin(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
    name: &str,
) -> Result<EffectRow, Error> {
    let row = client
        .query_one(
            "SELECT done, idempotency_key, result FROM commitq.effect_begin($1, $2, $3)",
            &[&job_id, &lease_token, &name],
        )
        .await?;
    Ok(EffectRow {
        done: row.get(0),
        idempotency_key: row.get(1),
        result: row.get(2),
    })
}

/// `commitq.effect_done`: record effect `name`'s result.
pub(crate) async fn effect_done(
    client: &impl GenericClient,
    job_id: i64,
    lease_token: i64,
    name: &str,
    result: &Value,
) -> Result<(), Error> {
    client
        .execute(
            "SELECT commitq.effect_done($1, $2, $3, $4)",
            &[&job_id, &lease_token, &name, result],
        )
        .await?;
    Ok(())
}

/// `commitq.try_acquire_lease`: the fencing token, `None` if `name` is held.
pub(crate) async fn try_acquire_lease(
    client: &impl GenericClient,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<i64>, Error> {
    let row = client
        .query_one(
            "SELECT commitq.try_acquire_lease($1, $2, make_interval(secs => $3))",
            &[&name, &owner, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(row.get(0))
}

/// `commitq.renew_lease`: keep lease `name` for another `ttl`.
pub(crate) async fn renew_lease(
    client: &impl GenericClient,
    name: &str,
    token: i64,
    ttl: Duration,
) -> Result<(), Error> {
    client
        .execute(
            "SELECT commitq.renew_lease($1, $2, make_interval(secs => $3))",
            &[&name, &token, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(())
}

/// `commitq.release_lease`: give lease `name` back.
pub(crate) async fn release_lease(
    client: &impl GenericClient,
    name: &str,
    token: i64,
) -> Result<(), Error> {
    client
        .execute("SELECT commitq.release_lease($1, $2)", &[&name, &token])
        .await?;
    Ok(())
}

/// `commitq.assert_fencing_token`: raise unless lease `name` is still held
/// under `token`, and keep it from changing hands until the caller's
/// transaction ends.
pub(crate) async fn assert_fencing_token(
    client: &impl GenericClient,
    name: &str,
    token: i64,
) -> Result<(), Error> {
    client
        .execute(
            "SELECT commitq.assert_fencing_token($1, $2)",
            &[&name, &token],
        )
        .await?;
    Ok(())
}

/// LISTEN on the channel enqueues to `queue` notify.
pub(crate) async fn listen(client: &impl GenericClient, queue: &str) -> Result<(), Error> {
    let sql = format!("LISTEN \"commitq:{queue}\"");
    client.batch_execute(&sql).await?;
    Ok(())
}

/// The queue a notification's channel belongs to, if it is one of ours.
pub(crate) fn channel_queue(channel: &str) -> Option<&str> {
    channel.strip_prefix("commitq:")
}

/// Jobs of `queue` left waiting or running (for [`crate::testing`]).
pub(crate) async fn live_jobs(client: &impl GenericClient, queue: &str) -> Result<i64, Error> {
    let row = client
        .query_one(
            "SELECT count(*) FROM commitq.jobs
                  WHERE queue = $1 AND state IN ('available', 'blocked', 'running')",
            &[&queue],
        )
        .await?;
    Ok(row.get(0))
}

/// `commitq.wait_supported()`: whether the server wakes waiting claims at
/// commit (pg_commitq preloaded). False for an extension without the
/// function (before 0.2.0).
pub(crate) async fn wait_supported(client: &impl GenericClient) -> Result<bool, Error> {
    match client
        .query_one("SELECT commitq.wait_supported()", &[])
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// `CALL commitq.claim_wait`: up to `limit` jobs of `queue`, waiting up to
/// `wait` for a commit that makes one available. Must run outside a
/// transaction (it commits between claims).
pub(crate) async fn claim_wait(
    client: &impl GenericClient,
    queue: &str,
    worker: &str,
    limit: usize,
    lease: Duration,
    wait: Duration,
) -> Result<Vec<ClaimedRow>, Error> {
    let row = client
        .query_one(
            "CALL commitq.claim_wait($1, $2, $3, make_interval(secs => $4), make_interval(secs => $5))",
            &[
                &queue,
                &worker,
                &(limit as i32),
                &lease.as_secs_f64(),
                &wait.as_secs_f64(),
            ],
        )
        .await?;
    let jobs: Value = row.get(0);
    let field = |j: &Value, k: &str| j.get(k).cloned().unwrap_or(Value::Null);
    Ok(jobs
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|j| ClaimedRow {
            job_id: field(j, "job_id").as_i64().unwrap_or_default(),
            queue: field(j, "queue").as_str().unwrap_or_default().to_string(),
            kind: field(j, "kind").as_str().unwrap_or_default().to_string(),
            args: field(j, "args"),
            attempt: field(j, "attempt").as_i64().unwrap_or_default() as i32,
            lease_token: field(j, "lease_token").as_i64().unwrap_or_default(),
            keyed: !field(j, "concurrency_key").is_null(),
            dependency_results: Some(field(j, "dependency_results")).filter(|v| !v.is_null()),
        })
        .collect())
}

/// `commitq.start_waiting`: have enqueues NOTIFY this worker, which LISTENs
/// on another connection than the one it claims on.
pub(crate) async fn start_waiting(
    client: &impl GenericClient,
    queue: &str,
    worker: &str,
) -> Result<(), Error> {
    client
        .execute("SELECT commitq.start_waiting($1, $2)", &[&queue, &worker])
        .await?;
    Ok(())
}
