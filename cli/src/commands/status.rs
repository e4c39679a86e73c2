//! `commitq status` and `commitq schedules`: what the queues and schedules
//! look like now.

use crate::error::CliError;
use crate::output::{self, opt, opt_time, Table};
use crate::queries;

pub async fn run(client: &commitq::Client, json: bool) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    let stats = queries::queue_stats(&**db).await?;
    if json {
        print!("{}", output::json(&stats));
        return Ok(());
    }
    if stats.is_empty() {
        println!("no queues yet: nothing was enqueued (commitq enqueue QUEUE KIND ARGS)");
        return Ok(());
    }
    let mut t = Table::new(&[
        "QUEUE",
        "PAUSED",
        "AVAILABLE",
        "SCHEDULED",
        "RUNNING",
        "BLOCKED",
        "LATENCY_S",
        "DONE/MIN",
        "DONE/H",
        "FAILED/H",
        "DISCARDED/H",
        "CANCELLED/H",
    ]);
    for s in &stats {
        t.row(vec![
            s.queue.clone(),
            if s.paused { "paused" } else { "" }.into(),
            // An estimate (a backlog past 10,000) reads "~".
            if s.available_exact {
                s.available.to_string()
            } else {
                format!("~{}", s.available)
            },
            s.scheduled.to_string(),
            s.running.to_string(),
            s.blocked.to_string(),
            format!("{:.1}", s.latency_seconds),
            s.completed_last_minute.to_string(),
            s.completed_last_hour.to_string(),
            s.failed_last_hour.to_string(),
            s.discarded_last_hour.to_string(),
            s.cancelled_last_hour.to_string(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub async fn schedules(client: &commitq::Client, json: bool) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    let rows = queries::schedules(&**db).await?;
    if json {
        print!("{}", output::json(&rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no schedules (commitq.schedule(...) creates one: docs/features.md)");
        return Ok(());
    }
    let mut t = Table::new(&[
        "NAME",
        "CRON",
        "TIMEZONE",
        "QUEUE",
        "KIND",
        "PAUSED",
        "NEXT_TICK",
        "LAST_TICK",
        "LAST_JOB",
        "OUTCOME",
    ]);
    for s in &rows {
        t.row(vec![
            s.name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            s.queue.clone(),
            s.kind.clone(),
            if s.paused { "paused" } else { "" }.into(),
            opt_time(&s.next_tick),
            opt_time(&s.last_tick),
            opt(&s.last_job_id),
            opt(&s.last_outcome),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
