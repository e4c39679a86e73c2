//! `commitq jobs list` and `commitq jobs show ID`.

use serde_json::json;

use crate::error::{CliError, Exit};
use crate::output::{self, opt, opt_time, short, time, Table};
use crate::queries::{self, JobFilter};

pub async fn list(
    client: &commitq::Client,
    filter: &JobFilter,
    limit: i64,
    json: bool,
) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    let rows = queries::job_list(&**db, filter, limit).await?;
    // The next page starts below the last id shown, when the page was full.
    let next_before = if rows.len() as i64 == limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    if json {
        print!(
            "{}",
            output::json(&json!({ "jobs": rows, "next_before": next_before }))
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no jobs match");
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "QUEUE",
        "KIND",
        "STATE",
        "ATTEMPT",
        "RUN_AT",
        "ENQUEUED_AT",
        "LAST_ERROR",
    ]);
    for r in &rows {
        t.row(vec![
            r.id.to_string(),
            r.queue.clone(),
            r.kind.clone(),
            r.state.clone(),
            format!("{}/{}", r.attempt, r.max_attempts),
            time(&r.run_at),
            time(&r.enqueued_at),
            r.last_error
                .as_deref()
                .map(|e| short(e, 60))
                .unwrap_or_default(),
        ]);
    }
    print!("{}", t.render());
    if let Some(b) = next_before {
        println!("next page: --before {b}");
    }
    Ok(())
}

pub async fn show(client: &commitq::Client, id: i64, json: bool) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    let job = queries::job_detail(&**db, id)
        .await?
        .ok_or_else(|| CliError::new(Exit::NotFound, format!("job {id} not found")).hint(
            "finished jobs are kept for commitq.config.finished_retention (completed ones only with keep_completed); \
             list jobs with `commitq jobs list`",
        ))?;
    if json {
        print!("{}", output::json(&job));
        return Ok(());
    }
    let fields = [
        ("id", job.id.to_string()),
        ("queue", job.queue.clone()),
        ("kind", job.kind.clone()),
        ("state", job.state.clone()),
        ("priority", job.priority.to_string()),
        (
            "attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        ("run_at", time(&job.run_at)),
        ("enqueued_at", time(&job.enqueued_at)),
        ("claimed_at", opt_time(&job.claimed_at)),
        ("worker", opt(&job.worker)),
        ("lease_expires_at", opt_time(&job.lease_expires_at)),
        ("finished_at", opt_time(&job.finished_at)),
        ("concurrency_key", opt(&job.concurrency_key)),
        ("idempotency_key", opt(&job.idempotency_key)),
    ];
    for (k, v) in fields {
        println!("{k:<17} {v}");
    }
    println!("args:");
    let args = serde_json::to_string_pretty(&job.args).unwrap_or_default();
    for line in args.lines() {
        println!("  {line}");
    }
    if job.errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors (oldest first):");
        let mut t = Table::new(&["ATTEMPT", "AT", "WORKER", "ERROR"]);
        for e in &job.errors {
            t.row(vec![
                opt(&e.attempt),
                opt(&e.at),
                opt(&e.worker),
                short(&e.error, 100),
            ]);
        }
        for line in t.render().lines() {
            println!("  {line}");
        }
    }
    Ok(())
}
