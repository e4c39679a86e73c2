//! `commitq retry`, `commitq cancel` (one job, or every job matching
//! filters, after a count and a confirmation) and `commitq pause/resume`.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use crate::error::{CliError, Exit};
use crate::output;
use crate::queries::{self, JobAction};
use crate::BulkArgs;

pub async fn bulk(
    client: &commitq::Client,
    action: JobAction,
    args: &BulkArgs,
    json: bool,
) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    if let Some(id) = args.id {
        let state = queries::act(&**db, action, id).await?;
        if json {
            print!("{}", output::json(&json!({ "id": id, "state": state })));
        } else {
            println!("job {id}: {state}");
        }
        return Ok(());
    }
    let filter = args.filter.to_filter(None);
    if filter.is_empty() && !args.all {
        return Err(CliError::usage(format!(
            "{} what? give a job id, a filter (--queue, --state, --kind), or --all for every job",
            action.verb()
        )));
    }
    if let Some(s) = &filter.state {
        if !action.states().contains(&s.as_str()) {
            return Err(CliError::usage(format!(
                "a {s} job cannot be {}: choose --state among {}",
                past(action),
                action.states().join(", ")
            )));
        }
    }
    let ids = queries::matching_ids(&**db, &filter, action.default_states()).await?;
    if ids.is_empty() {
        if json {
            print!("{}", output::json(&queries::BulkResult::default()));
        } else {
            println!("no job matches: nothing to {}", action.verb());
        }
        return Ok(());
    }
    if !args.yes
        && !confirm(&format!(
            "{} jobs match; {} them?",
            ids.len(),
            action.verb()
        ))?
    {
        return Err(
            CliError::new(Exit::NotConfirmed, "not confirmed: nothing was done")
                .hint("answer y, or pass --yes"),
        );
    }
    let result = queries::act_on_all(&db, action, &ids).await?;
    if json {
        print!("{}", output::json(&result));
    } else {
        println!(
            "{} {} of {} jobs ({} skipped: their state changed meanwhile)",
            past(action),
            result.done,
            result.matched,
            result.skipped
        );
    }
    Ok(())
}

fn past(action: JobAction) -> &'static str {
    match action {
        JobAction::Retry => "retried",
        JobAction::Cancel => "cancelled",
    }
}

/// Ask on stderr, read the answer from stdin (a terminal or a pipe); no
/// answer is no.
fn confirm(question: &str) -> Result<bool, CliError> {
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if !stdin.is_terminal() {
        writeln!(err)?;
    }
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub async fn pause(
    client: &commitq::Client,
    queue: &str,
    paused: bool,
    json: bool,
) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    let changed = queries::set_paused(&**db, queue, paused).await?;
    let word = if paused { "paused" } else { "resumed" };
    if json {
        print!(
            "{}",
            output::json(&json!({ "queue": queue, "paused": paused, "changed": changed }))
        );
    } else if changed {
        println!("queue {queue} {word}");
    } else {
        println!("queue {queue} was already {word}");
    }
    Ok(())
}
