//! A worker process of the fault-injection suite (`faults`): a commitq
//! worker pool whose handlers keep their own record of everything they do,
//! so the checker can judge what ran, how often, under which lease and with
//! which effects without reading commitq's own bookkeeping. The suite
//! kills, stops and disconnects these processes at random points of a job's
//! life; small random pauses between the steps widen those points.
//!
//! Every record a handler writes while it works is fenced: written in a
//! transaction that first checks the job's lease (`commitq.heartbeat`,
//! `commitq.assert_lease`, or the completion itself), so its timestamp is a
//! moment at which commitq said this attempt held the lease. The checker
//! builds each attempt's lease interval from these timestamps.
//!
//! Three kinds of job, each on its own path through the pool:
//! - `fault_job` (queue `faults`): completed in the handler's own
//!   transaction (`complete_in`); may make an outside call through the
//!   effect ledger, and may enqueue a child job under an idempotency key.
//! - `fault_keyed` (queue `faults_keyed`): has a concurrency key and is
//!   completed by the pool, which then uses `complete_and_take` to hand the
//!   key's slot to its next job.
//! - `fault_child`: the child a `fault_job` enqueues.
//!
//! A few jobs of each kind work longer than their lease (`slow`): they keep
//! it only through the pool's heartbeats.
//!
//! Some jobs fail their first attempt on purpose at the point that tests a
//! mechanism: right after the outside service applied a call whose reply is
//! lost (the retry must reuse the key), or right after enqueueing the child
//! (the retry's enqueue must find it by its idempotency key).

use std::time::Duration;

use clap::Parser;
use commitq::{Client, HandlerError, Job, JobContext, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Args {
    /// Connection string (through the suite's TCP proxy).
    #[arg(long)]
    url: String,
    /// Handlers at once, per queue.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Lease of each claim, in seconds (short, so stalled workers lose it).
    #[arg(long, default_value_t = 2)]
    lease_secs: u64,
    /// Jobs claimed ahead of free handlers, per queue (0: none).
    #[arg(long, default_value_t = 0)]
    prefetch: usize,
}

/// What a job's first attempt does wrong on purpose.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum FailFirst {
    /// The outside service applies the call, and its reply is lost.
    AfterCall,
    /// The handler fails after it enqueued its child.
    AfterChild,
    /// The handler fails before doing anything.
    AtStart,
}

/// A job of the suite: `external` ones also make a call to an outside
/// service, through the effect ledger; `child` ones enqueue a child job.
#[derive(Serialize, Deserialize)]
pub struct FaultJob {
    pub n: i64,
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub child: bool,
    #[serde(default)]
    pub slow: bool,
    #[serde(default)]
    pub fail_first: Option<FailFirst>,
}

impl Job for FaultJob {
    const KIND: &'static str = "fault_job";
    const QUEUE: &'static str = "faults";
}

/// A job with a concurrency key, completed by the pool.
#[derive(Serialize, Deserialize)]
pub struct KeyedJob {
    pub n: i64,
    /// The same key the job was enqueued with; the worker records it from
    /// here, not from commitq.
    pub key: String,
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub slow: bool,
    #[serde(default)]
    pub fail_first: Option<FailFirst>,
}

impl Job for KeyedJob {
    const KIND: &'static str = "fault_keyed";
    const QUEUE: &'static str = "faults_keyed";
}

/// The job a `fault_job` with `child` enqueues, once across its attempts.
#[derive(Serialize, Deserialize)]
pub struct ChildJob {
    pub parent: i64,
}

impl Job for ChildJob {
    const KIND: &'static str = "fault_child";
    const QUEUE: &'static str = "faults";
}

/// How long a slow job works: longer than its lease, so it keeps the lease
/// only through the pool's heartbeats.
const SLOW: Duration = Duration::from_millis(2500);

/// A pause of 0 to 4 ms, different in every process and call.
async fn jitter(seed: i64) {
    let ms = (seed.wrapping_mul(2654435761) ^ std::process::id() as i64).rem_euclid(5) as u64;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

type Result<T> = std::result::Result<T, HandlerError>;

/// What the handlers share: this process's id and whether it prefetches.
#[derive(Clone, Copy)]
struct Me {
    pid: i32,
    prefetch: bool,
}

impl Me {
    /// Record the start of an attempt, with the lease commitq gives it now
    /// (a heartbeat: raises unless the lease is current, and returns its
    /// new expiry). Returns false when the lease is no longer ours.
    async fn start(&self, ctx: &JobContext, mode: &str, key: Option<&str>) -> Result<()> {
        ctx.client()
            .pool()
            .get()
            .await?
            .execute(
                "INSERT INTO public.starts (job_id, attempt, lease_token, pid, prefetch, mode, key,
                                            at, lease_until)
                 SELECT $1, $2, $3, $4, $5, $6, $7, clock_timestamp(), h.lease_expires_at
                   FROM commitq.heartbeat($1, $3) h",
                &[
                    &ctx.job_id,
                    &ctx.attempt,
                    &ctx.lease_token,
                    &self.pid,
                    &self.prefetch,
                    &mode,
                    &key,
                ],
            )
            .await?;
        Ok(())
    }

    /// Record how the attempt ended, before the pool reports it to commitq
    /// (so the end of its lease comes after this). Retried while the
    /// database restarts: the pool reports nothing until this returns.
    async fn end(&self, ctx: &JobContext, outcome: &str) {
        for _ in 0..300 {
            let done = async {
                ctx.client()
                    .pool()
                    .get()
                    .await?
                    .execute(
                        "UPDATE public.starts SET ended_at = clock_timestamp(), outcome = $3
                          WHERE job_id = $1 AND lease_token = $2",
                        &[&ctx.job_id, &ctx.lease_token, &outcome],
                    )
                    .await?;
                Ok::<_, HandlerError>(())
            }
            .await;
            if done.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An outside call through the effect ledger: the attempt is recorded
    /// (fenced) with the key it is made under, then the outside service
    /// applies each key once, as payment APIs do.
    async fn outside_call(&self, ctx: &JobContext, lose_reply: bool) -> Result<()> {
        let pid = self.pid;
        ctx.effect("external_call", |key| {
            let client = ctx.client().clone();
            let (job_id, attempt, token) = (ctx.job_id, ctx.attempt, ctx.lease_token);
            async move {
                let mut conn = client.pool().get().await?;
                let tx = conn.transaction().await?;
                tx.execute("SELECT commitq.assert_lease($1, $2)", &[&job_id, &token])
                    .await?;
                tx.execute(
                    "INSERT INTO public.external_calls (job_id, attempt, lease_token, key, pid, at)
                     VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
                    &[&job_id, &attempt, &token, &key, &pid],
                )
                .await?;
                tx.commit().await?;
                conn.execute(
                    "INSERT INTO public.external_applied (key, job_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                    &[&key, &job_id],
                )
                .await?;
                if lose_reply {
                    return Err("the outside service's reply was lost".into());
                }
                Ok::<_, HandlerError>(serde_json::json!({ "key": key }))
            }
        })
        .await?;
        Ok(())
    }

    /// Enqueue the job's child under an idempotency key that is the same on
    /// every attempt, in a fenced transaction that records what the enqueue
    /// returned.
    async fn enqueue_child(&self, ctx: &JobContext) -> Result<()> {
        let mut conn = ctx.client().pool().get().await?;
        let tx = conn.transaction().await?;
        ctx.assert_lease(&*tx).await?;
        let key = format!("child-of-{}", ctx.job_id);
        let args = serde_json::json!({ "parent": ctx.job_id });
        let row = tx
            .query_one(
                "SELECT job_id, inserted FROM commitq.enqueue($1, $2, $3, idempotency_key => $4)",
                &[&ChildJob::QUEUE, &ChildJob::KIND, &args, &key],
            )
            .await?;
        let (child, inserted): (i64, bool) = (row.get(0), row.get(1));
        tx.execute(
            "INSERT INTO public.child_enqueues (parent_id, attempt, lease_token, child_id, inserted, at)
             VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
            &[&ctx.job_id, &ctx.attempt, &ctx.lease_token, &child, &inserted],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The job's own write and its completion, in one transaction.
    async fn write_and_complete(&self, ctx: &JobContext, seed: i64) -> Result<()> {
        let mut conn = ctx.client().pool().get().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "INSERT INTO public.effects (job_id, attempt, lease_token, pid, at)
             VALUES ($1, $2, $3, $4, clock_timestamp())",
            &[&ctx.job_id, &ctx.attempt, &ctx.lease_token, &self.pid],
        )
        .await?;
        jitter(seed).await;
        ctx.complete_in(&*tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The job's own write, fenced, for a job the pool completes: once per
    /// job, since an attempt whose completion was lost runs again.
    async fn write_once(&self, ctx: &JobContext) -> Result<()> {
        let mut conn = ctx.client().pool().get().await?;
        let tx = conn.transaction().await?;
        ctx.assert_lease(&*tx).await?;
        tx.execute(
            "INSERT INTO public.effects (job_id, attempt, lease_token, pid, at)
             SELECT $1, $2, $3, $4, clock_timestamp()
              WHERE NOT EXISTS (SELECT 1 FROM public.effects WHERE job_id = $1)",
            &[&ctx.job_id, &ctx.attempt, &ctx.lease_token, &self.pid],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn failing(fail_first: Option<FailFirst>, ctx: &JobContext, at: FailFirst) -> bool {
    fail_first == Some(at) && ctx.attempt == 1
}

async fn plain(me: Me, ctx: &JobContext, job: &FaultJob) -> Result<Outcome> {
    me.start(ctx, "plain", None).await?;
    if failing(job.fail_first, ctx, FailFirst::AtStart) {
        return Err("failed at its start on purpose".into());
    }
    jitter(job.n).await;
    if job.slow {
        tokio::time::sleep(SLOW).await;
    }
    if job.external {
        let lose = failing(job.fail_first, ctx, FailFirst::AfterCall);
        me.outside_call(ctx, lose).await?;
        jitter(job.n + 1).await;
    }
    if job.child {
        me.enqueue_child(ctx).await?;
        if failing(job.fail_first, ctx, FailFirst::AfterChild) {
            return Err("failed after enqueueing its child on purpose".into());
        }
    }
    me.write_and_complete(ctx, job.n + 2).await?;
    Ok(Outcome::Complete)
}

async fn keyed(me: Me, ctx: &JobContext, job: &KeyedJob) -> Result<Outcome> {
    me.start(ctx, "keyed", Some(&job.key)).await?;
    if failing(job.fail_first, ctx, FailFirst::AtStart) {
        return Err("failed at its start on purpose".into());
    }
    // Long enough that two holders of one key would overlap if the key
    // let them.
    jitter(job.n).await;
    if job.slow {
        tokio::time::sleep(SLOW).await;
    }
    if job.external {
        let lose = failing(job.fail_first, ctx, FailFirst::AfterCall);
        me.outside_call(ctx, lose).await?;
    }
    me.write_once(ctx).await?;
    jitter(job.n + 1).await;
    // Completed by the pool: with a concurrency key, by complete_and_take.
    Ok(Outcome::Complete)
}

async fn child(me: Me, ctx: &JobContext, job: &ChildJob) -> Result<Outcome> {
    me.start(ctx, "child", None).await?;
    jitter(job.parent).await;
    me.write_and_complete(ctx, job.parent + 1).await?;
    Ok(Outcome::Complete)
}

/// Record the end of an attempt, then hand its result to the pool.
async fn ended(me: Me, ctx: &JobContext, result: Result<Outcome>) -> Result<Outcome> {
    let outcome = match &result {
        Ok(_) => "complete",
        Err(_) => "error",
    };
    me.end(ctx, outcome).await;
    result
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = Client::connect(&args.url).await.expect("connect");
    let me = Me {
        pid: std::process::id() as i32,
        prefetch: args.prefetch > 0,
    };
    let mut builder = WorkerPool::builder(client)
        .queue(FaultJob::QUEUE, args.concurrency)
        .queue(KeyedJob::QUEUE, args.concurrency)
        .worker_id(format!("fault-worker-{}", me.pid))
        .lease(Duration::from_secs(args.lease_secs))
        .poll_interval(Duration::from_millis(100))
        .maintain_interval(Some(Duration::from_millis(500)))
        .job_timeout(Duration::from_secs(20))
        .grace(Duration::from_millis(100));
    if args.prefetch > 0 {
        builder = builder
            .prefetch(args.prefetch)
            .batch(args.prefetch.div_ceil(2))
            .claimers(2);
    }
    let pool = builder
        .handle(move |ctx, job: FaultJob| async move {
            let result = plain(me, &ctx, &job).await;
            ended(me, &ctx, result).await
        })
        .handle(move |ctx, job: KeyedJob| async move {
            let result = keyed(me, &ctx, &job).await;
            ended(me, &ctx, result).await
        })
        .handle(move |ctx, job: ChildJob| async move {
            let result = child(me, &ctx, &job).await;
            ended(me, &ctx, result).await
        })
        .build();
    pool.run_until(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
}
