//! The dashboard's actions (POST): retry and cancel one job or every job of
//! a filter, pause and resume a queue. Each checks the CSRF token, then
//! whether the role may call the function (403 before asking the database,
//! which would refuse with 42501 too), acts, and redirects to a page that
//! says what happened.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Redirect;
use axum::Form;
use serde::Deserialize;

use super::{Shared, WebError};
use crate::queries::{self, JobAction, JobFilter};

#[derive(Deserialize)]
pub struct TokenForm {
    csrf: Option<String>,
}

#[derive(Deserialize)]
pub struct QueueForm {
    csrf: Option<String>,
    queue: String,
}

#[derive(Deserialize)]
pub struct BulkForm {
    csrf: Option<String>,
    action: String,
    queue: Option<String>,
    state: Option<String>,
    kind: Option<String>,
}

fn refused(what: &str, role: &str) -> WebError {
    WebError::new(
        StatusCode::FORBIDDEN,
        format!(
            "role {role} may not {what}: connect the dashboard as a role granted commitq_operator"
        ),
    )
}

async fn allowed(state: &Shared, action: JobAction) -> Result<(), WebError> {
    let db = state.pool.get().await?;
    let can = queries::privileges(&**db).await?;
    let ok = match action {
        JobAction::Retry => can.retry,
        JobAction::Cancel => can.cancel,
    };
    if ok {
        Ok(())
    } else {
        Err(refused(&format!("{} jobs", action.verb()), &state.role))
    }
}

async fn one(
    state: Shared,
    headers: HeaderMap,
    id: i64,
    form: TokenForm,
    action: JobAction,
) -> Result<Redirect, WebError> {
    state.csrf.check(form.csrf.as_deref(), &headers)?;
    allowed(&state, action).await?;
    let db = state.pool.get().await?;
    queries::act(&**db, action, id).await?;
    Ok(Redirect::to(&format!("/jobs/{id}?done={}", action.verb())))
}

pub async fn retry(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<TokenForm>,
) -> Result<Redirect, WebError> {
    one(state, headers, id, form, JobAction::Retry).await
}

pub async fn cancel(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<TokenForm>,
) -> Result<Redirect, WebError> {
    one(state, headers, id, form, JobAction::Cancel).await
}

/// Every job of a state (and queue and kind, if given) the action applies
/// to. The page asks for confirmation with the list it showed; a request
/// without a state is refused, as `commitq retry` refuses one without a
/// filter.
pub async fn bulk(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<BulkForm>,
) -> Result<Redirect, WebError> {
    state.csrf.check(form.csrf.as_deref(), &headers)?;
    let action = match form.action.as_str() {
        "retry" => JobAction::Retry,
        "cancel" => JobAction::Cancel,
        other => {
            return Err(WebError::new(
                StatusCode::BAD_REQUEST,
                format!("no action {other}"),
            ))
        }
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let filter = JobFilter {
        queue: nonempty(form.queue),
        state: nonempty(form.state),
        kind: nonempty(form.kind),
        before: None,
    };
    let Some(job_state) = filter.state.clone() else {
        return Err(WebError::new(
            StatusCode::BAD_REQUEST,
            "a bulk action needs a state: choose one on the jobs page",
        ));
    };
    if !action.states().contains(&job_state.as_str()) {
        return Err(WebError::new(
            StatusCode::BAD_REQUEST,
            format!("{} does not apply to {job_state} jobs", action.verb()),
        ));
    }
    allowed(&state, action).await?;
    let db = state.pool.get().await?;
    let ids = queries::matching_ids(&**db, &filter, action.states()).await?;
    let result = queries::act_on_all(&db, action, &ids).await?;
    let back = serde_urlencoded::to_string([
        ("state", job_state.as_str()),
        ("queue", filter.queue.as_deref().unwrap_or("")),
        ("kind", filter.kind.as_deref().unwrap_or("")),
        ("done", action.verb()),
        ("n", &result.done.to_string()),
        ("skipped", &result.skipped.to_string()),
    ])
    .map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Redirect::to(&format!("/jobs?{back}")))
}

async fn set_paused(
    state: Shared,
    headers: HeaderMap,
    form: QueueForm,
    paused: bool,
) -> Result<Redirect, WebError> {
    state.csrf.check(form.csrf.as_deref(), &headers)?;
    let db = state.pool.get().await?;
    let can = queries::privileges(&**db).await?;
    if !(if paused { can.pause } else { can.resume }) {
        let what = if paused {
            "pause queues"
        } else {
            "resume queues"
        };
        return Err(refused(what, &state.role));
    }
    queries::set_paused(&**db, &form.queue, paused).await?;
    Ok(Redirect::to(if paused {
        "/queues?done=pause"
    } else {
        "/queues?done=resume"
    }))
}

pub async fn pause(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<QueueForm>,
) -> Result<Redirect, WebError> {
    set_paused(state, headers, form, true).await
}

pub async fn resume(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<QueueForm>,
) -> Result<Redirect, WebError> {
    set_paused(state, headers, form, false).await
}
