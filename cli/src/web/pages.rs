//! The dashboard's pages (GET): each reads the monitoring views once and
//! renders its template from cli/templates. Nothing here writes.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use serde::Deserialize;

use super::{chart, Shared, WebError};
use crate::queries::{
    self, JobFilter, JobRow, KeyRow, LeaseRow, Privileges, QueueStat, ScheduleRow,
};

/// What every page's frame shows.
pub struct Layout<'a> {
    pub title: String,
    pub section: &'static str,
    pub role: &'a str,
    pub csrf: &'a str,
    pub flash: Option<String>,
}

fn layout<'a>(state: &'a Shared, title: impl Into<String>, section: &'static str) -> Layout<'a> {
    Layout {
        title: title.into(),
        section,
        role: &state.role,
        csrf: state.csrf.value(),
        flash: None,
    }
}

pub fn render(t: &impl Template) -> String {
    t.render()
        .unwrap_or_else(|e| format!("template error: {e}"))
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub message: &'a str,
}

/// A query string's text field: absent and empty are the same.
fn given(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|s| !s.is_empty()).cloned()
}

#[derive(Deserialize, Default)]
pub struct Flash {
    /// What an action did, as the redirect after it says (a fixed word and
    /// numbers, never text from the request: see `flash_text`).
    done: Option<String>,
    n: Option<u64>,
    skipped: Option<u64>,
}

fn flash_text(f: &Flash) -> Option<String> {
    let n = f.n.unwrap_or(0);
    let word = match f.done.as_deref()? {
        "retry" => "retried",
        "cancel" => "cancel requested or done for",
        "pause" => return Some("queue paused: it hands out no jobs until resumed".into()),
        "resume" => return Some("queue resumed".into()),
        _ => return None,
    };
    Some(match f.skipped {
        Some(s) => format!("{word} {n} jobs ({s} skipped: their state changed meanwhile)"),
        None => format!("{word} the job"),
    })
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview<'a> {
    layout: Layout<'a>,
    queues: Vec<QueueStat>,
    total: QueueTotals,
    chart: String,
}

#[derive(Default)]
struct QueueTotals {
    available: i64,
    scheduled: i64,
    running: i64,
    blocked: i64,
    completed_last_minute: i64,
    completed_last_hour: i64,
    failed_last_hour: i64,
    discarded_last_hour: i64,
    max_latency: f64,
    /// Some queue's available count is an estimate.
    estimated: bool,
}

pub async fn overview(State(state): State<Shared>) -> Result<Html<String>, WebError> {
    let db = state.pool.get().await?;
    let queues = queries::queue_stats(&**db).await?;
    let minutes = queries::throughput(&**db, None).await?;
    let mut total = QueueTotals::default();
    for q in &queues {
        total.available += q.available;
        total.scheduled += q.scheduled;
        total.running += q.running;
        total.blocked += q.blocked;
        total.completed_last_minute += q.completed_last_minute;
        total.completed_last_hour += q.completed_last_hour;
        total.failed_last_hour += q.failed_last_hour;
        total.discarded_last_hour += q.discarded_last_hour;
        total.max_latency = total.max_latency.max(q.latency_seconds);
        total.estimated |= !q.available_exact;
    }
    let page = Overview {
        layout: layout(&state, "Overview", "overview"),
        queues,
        total,
        chart: chart::throughput_svg(&minutes, chrono::Utc::now()),
    };
    Ok(Html(render(&page)))
}

#[derive(Template)]
#[template(path = "queues.html")]
struct Queues<'a> {
    layout: Layout<'a>,
    queues: Vec<QueueStat>,
    can: Privileges,
}

pub async fn queues(
    State(state): State<Shared>,
    Query(flash): Query<Flash>,
) -> Result<Html<String>, WebError> {
    let db = state.pool.get().await?;
    let queues = queries::queue_stats(&**db).await?;
    let can = queries::privileges(&**db).await?;
    let mut layout = layout(&state, "Queues", "queues");
    layout.flash = flash_text(&flash);
    Ok(Html(render(&Queues {
        layout,
        queues,
        can,
    })))
}

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    queue: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    before: Option<i64>,
    #[serde(flatten)]
    flash: Flash,
}

const PAGE_SIZE: i64 = 50;

#[derive(Template)]
#[template(path = "jobs.html")]
struct Jobs<'a> {
    layout: Layout<'a>,
    states: &'static [&'static str],
    filter: JobFilter,
    jobs: Vec<JobRow>,
    next_before: Option<i64>,
    can_bulk_retry: bool,
    can_bulk_cancel: bool,
}

impl Jobs<'_> {
    fn queue(&self) -> &str {
        self.filter.queue.as_deref().unwrap_or("")
    }
    fn state(&self) -> &str {
        self.filter.state.as_deref().unwrap_or("")
    }
    fn kind(&self) -> &str {
        self.filter.kind.as_deref().unwrap_or("")
    }
}

pub async fn jobs(
    State(state): State<Shared>,
    Query(q): Query<JobsQuery>,
) -> Result<Html<String>, WebError> {
    let filter = JobFilter {
        queue: given(&q.queue),
        state: given(&q.state),
        kind: given(&q.kind),
        before: q.before,
    };
    if let Some(s) = &filter.state {
        if !queries::STATES.contains(&s.as_str()) {
            return Err(WebError::new(
                StatusCode::BAD_REQUEST,
                format!("no state {s}"),
            ));
        }
    }
    let db = state.pool.get().await?;
    let jobs = queries::job_list(&**db, &filter, PAGE_SIZE).await?;
    let can = queries::privileges(&**db).await?;
    let next_before = (jobs.len() as i64 == PAGE_SIZE)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    // Bulk actions act on a state's jobs, where the action applies to it.
    let in_state = |states: &[&str]| filter.state.as_deref().is_some_and(|s| states.contains(&s));
    let mut layout = layout(&state, "Jobs", "jobs");
    layout.flash = flash_text(&q.flash);
    let page = Jobs {
        layout,
        states: &queries::STATES,
        can_bulk_retry: can.retry && in_state(&queries::RETRYABLE),
        can_bulk_cancel: can.cancel && in_state(&queries::CANCELLABLE),
        filter,
        jobs,
        next_before,
    };
    Ok(Html(render(&page)))
}

#[derive(Template)]
#[template(path = "job.html")]
struct Job<'a> {
    layout: Layout<'a>,
    job: queries::JobDetail,
    args: String,
    can_retry: bool,
    can_cancel: bool,
}

pub async fn job(
    State(state): State<Shared>,
    Path(id): Path<i64>,
    Query(flash): Query<Flash>,
) -> Result<Html<String>, WebError> {
    let db = state.pool.get().await?;
    let job = queries::job_detail(&**db, id)
        .await?
        .ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, format!("job {id} not found")))?;
    let can = queries::privileges(&**db).await?;
    let mut layout = layout(&state, format!("Job {id}"), "jobs");
    layout.flash = flash_text(&flash);
    let page = Job {
        layout,
        args: serde_json::to_string_pretty(&job.args).unwrap_or_default(),
        can_retry: can.retry && queries::RETRYABLE.contains(&job.state.as_str()),
        can_cancel: can.cancel && queries::CANCELLABLE.contains(&job.state.as_str()),
        job,
    };
    Ok(Html(render(&page)))
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct Schedules<'a> {
    layout: Layout<'a>,
    schedules: Vec<ScheduleRow>,
}

pub async fn schedules(State(state): State<Shared>) -> Result<Html<String>, WebError> {
    let db = state.pool.get().await?;
    let schedules = queries::schedules(&**db).await?;
    let layout = layout(&state, "Schedules", "schedules");
    Ok(Html(render(&Schedules { layout, schedules })))
}

/// Keys shown at most: the view orders those at their limit first.
const KEYS_SHOWN: i64 = 500;

#[derive(Template)]
#[template(path = "keys.html")]
struct Keys<'a> {
    layout: Layout<'a>,
    keys: Vec<KeyRow>,
    shown: i64,
}

pub async fn keys(State(state): State<Shared>) -> Result<Html<String>, WebError> {
    let db = state.pool.get().await?;
    let keys = queries::concurrency_keys(&**db, KEYS_SHOWN).await?;
    let layout = layout(&state, "Concurrency keys", "keys");
    Ok(Html(render(&Keys {
        layout,
        keys,
        shown: KEYS_SHOWN,
    })))
}

#[derive(Template)]
#[template(path = "leases.html")]
struct Leases<'a> {
    layout: Layout<'a>,
    leases: Vec<LeaseRow>,
}

pub async fn leases(State(state): State<Shared>) -> Result<Html<String>, WebError> {
    let db = state.pool.get().await?;
    let leases = queries::named_leases(&**db).await?;
    let layout = layout(&state, "Named leases", "leases");
    Ok(Html(render(&Leases { layout, leases })))
}
