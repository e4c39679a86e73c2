//! A worker process of the fault-injection suite (`faults`): a commitq
//! worker pool whose handler leaves a trace of everything it does, so the
//! checker can tell what ran, how often, and with which effects. The suite
//! kills, stops and disconnects these processes at random points of a job's
//! life; small random pauses between the steps widen those points.

use std::time::Duration;

use clap::Parser;
use commitq::{Client, Job, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Args {
    /// Connection string (through the suite's TCP proxy).
    #[arg(long)]
    url: String,
    /// Handlers at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Lease of each claim, in seconds (short, so stalled workers lose it).
    #[arg(long, default_value_t = 2)]
    lease_secs: u64,
}

/// A job of the suite: `external` ones also make a call to an outside
/// service, through the effect ledger.
#[derive(Serialize, Deserialize)]
pub struct FaultJob {
    pub n: i64,
    pub external: bool,
}

impl Job for FaultJob {
    const KIND: &'static str = "fault_job";
    const QUEUE: &'static str = "faults";
}

/// A pause of 0 to 4 ms, different in every process and call.
async fn jitter(seed: i64) {
    let ms = (seed.wrapping_mul(2654435761) ^ std::process::id() as i64).rem_euclid(5) as u64;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = Client::connect(&args.url).await.expect("connect");
    let pid = std::process::id() as i32;
    let pool = WorkerPool::builder(client)
        .queue(FaultJob::QUEUE, args.concurrency)
        .worker_id(format!("fault-worker-{pid}"))
        .lease(Duration::from_secs(args.lease_secs))
        .poll_interval(Duration::from_millis(100))
        .maintain_interval(Some(Duration::from_millis(500)))
        .job_timeout(Duration::from_secs(20))
        .grace(Duration::from_millis(100))
        .handle(move |ctx, job: FaultJob| async move {
            // 1. The run started (outside any transaction: it stays even if
            //    the run dies).
            ctx.client()
                .pool()
                .get()
                .await?
                .execute(
                    "INSERT INTO public.starts (job_id, attempt, lease_token, pid) VALUES ($1, $2, $3, $4)",
                    &[&ctx.job_id, &ctx.attempt, &ctx.lease_token, &pid],
                )
                .await?;
            jitter(job.n).await;
            // 2. An outside call, through the effect ledger: its key is the
            //    same on every attempt, and the outside service applies each
            //    key once (as payment APIs do); every call is logged.
            if job.external {
                ctx.effect("external_call", |key| {
                    let client = ctx.client().clone();
                    let job_id = ctx.job_id;
                    async move {
                        let conn = client.pool().get().await?;
                        conn.execute(
                            "INSERT INTO public.external_calls (job_id, key, pid) VALUES ($1, $2, $3)",
                            &[&job_id, &key, &pid],
                        )
                        .await?;
                        conn.execute(
                            "INSERT INTO public.external_applied (key, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            &[&key, &job_id],
                        )
                        .await?;
                        Ok::<_, commitq::HandlerError>(serde_json::json!({ "key": key }))
                    }
                })
                .await?;
                jitter(job.n + 1).await;
            }
            // 3. The job's own write and its completion, in one transaction.
            let mut conn = ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "INSERT INTO public.effects (job_id, attempt, pid) VALUES ($1, $2, $3)",
                &[&ctx.job_id, &ctx.attempt, &pid],
            )
            .await?;
            jitter(job.n + 2).await;
            ctx.complete_in(&*tx).await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
        .build();
    pool.run_until(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
}
