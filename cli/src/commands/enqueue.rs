//! `commitq enqueue QUEUE KIND [ARGS]`: one job, its args as JSON from the
//! argument or from stdin (`-`).

use std::io::Read;

use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{json, Value};

use crate::error::CliError;
use crate::output;

#[derive(Args)]
pub struct EnqueueArgs {
    queue: String,
    kind: String,
    /// The job's args as a JSON object; `-` reads them from stdin.
    #[arg(default_value = "{}")]
    args: String,
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// When it may run (RFC 3339, e.g. 2026-12-24T18:00:00Z); default now.
    #[arg(long)]
    run_at: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 25)]
    max_attempts: i32,
    #[arg(long)]
    idempotency_key: Option<String>,
    #[arg(long)]
    concurrency_key: Option<String>,
}

pub async fn run(client: &commitq::Client, a: &EnqueueArgs, json: bool) -> Result<(), CliError> {
    let text = if a.args == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        a.args.clone()
    };
    let args: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!("args are not JSON: {e}"))
            .hint("give a JSON object, e.g. '{\"user_id\": 42}', or - to read it from stdin")
    })?;
    let db = client.pool().get().await?;
    let row = db
        .query_one(
            "SELECT job_id, inserted FROM commitq.enqueue(queue => $1, kind => $2, args => $3,
                    priority => $4, run_at => $5, max_attempts => $6,
                    idempotency_key => $7, concurrency_key => $8)",
            &[
                &a.queue,
                &a.kind,
                &args,
                &a.priority,
                &a.run_at,
                &a.max_attempts,
                &a.idempotency_key,
                &a.concurrency_key,
            ],
        )
        .await?;
    let (id, inserted): (i64, bool) = (row.get(0), row.get(1));
    if json {
        print!(
            "{}",
            output::json(&json!({ "id": id, "inserted": inserted }))
        );
    } else if inserted {
        println!("enqueued job {id}");
    } else {
        println!("job {id} already holds this idempotency key: nothing enqueued");
    }
    Ok(())
}
