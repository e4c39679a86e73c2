//! commitq, through its SQL functions (as any stack would call them) and
//! through the `commitq` crate's worker pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq_tests::connect;
use tokio_postgres::Client;

use super::Workload;
use crate::common::{self, why, Cluster, Load, Outcome, Sample};

/// Which keys the jobs of a drain carry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keys {
    None,
    /// A concurrency key out of this many, pseudo-random: jobs of one key
    /// often sit close together in the queue.
    Concurrency(i32),
    /// A distinct idempotency key on every job.
    Idempotency,
    /// A key of this many tenants (`tenant:N`, no concurrency limit in
    /// effect), half the jobs of one tenant; `fair`: the queue is fair across
    /// them (commitq.set_fairness).
    Tenants {
        tenants: i32,
        fair: bool,
    },
}

/// How an SQL-level drain worker talks to the queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Drain {
    /// `claim`, then `complete_many`: two transactions per batch.
    ClaimThenComplete,
    /// `complete_and_claim`: the previous batch's completion and the next
    /// claim in one transaction.
    CompleteAndClaim,
}

/// How a benchmark's worker pool is configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolConfig {
    /// `WorkerPool::builder(client).queue(q, handlers)`, nothing else set:
    /// batch, local queue and claim loops adapt by themselves.
    Defaults,
    /// The defaults with `prefetch(0)`: no local queue.
    NoPrefetch,
    /// Set by hand for a drain of short jobs: `batch(100)`,
    /// `prefetch(200)`, `claimers(4)`.
    Tuned,
}

#[derive(Clone, Copy, Debug)]
pub enum Commitq {
    /// `enqueue` one job per transaction, `enqueue_many` in bulk.
    Functions,
    /// `enqueue_many` of `BULK_CHUNK` jobs from one connection per core at once.
    ParallelFunctions,
    /// Claimers calling the SQL functions directly, `batch` jobs a claim.
    Sql { batch: i32, how: Drain },
    /// Four SQL-level workers waiting for work one way (commitq_wait.rs):
    /// their latency, or single enqueue while they wait.
    Waiters(super::commitq_wait::Waiting),
    /// The crate's `WorkerPool` with no-op handlers.
    Pool {
        handlers: usize,
        config: PoolConfig,
        keys: Keys,
    },
}

pub async fn prepare(cluster: &Cluster, db: &str) -> Outcome<String> {
    cluster.fresh_database(db).await?;
    let c = connect(&cluster.kv(db)).await;
    c.batch_execute("CREATE EXTENSION pg_commitq")
        .await
        .map_err(why("CREATE EXTENSION pg_commitq"))?;
    let v: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_commitq'",
            &[],
        )
        .await
        .map_err(why("version"))?
        .get(0);
    Ok(format!(
        "pg_commitq {v}; commitq crate {}; SQL drains: one claimer per handler, \
         claim 100 then complete_many, or complete_and_claim 100; WorkerPool: defaults \
         (adaptive batch, local queue and claim loops; the waiting claim when the library \
         is preloaded, else NOTIFY wake-up) unless the row \
         says otherwise; tuned: batch 100, prefetch 200, 4 claim loops",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Enqueue the jobs whose args are `$1`; how many.
const BULK_ENQUEUE: &str =
    "SELECT count(*) FROM commitq.enqueue_many('bench', 'noop', $1::jsonb[])";

async fn reset(c: &Client) -> Outcome<()> {
    common::run_each(
        c,
        &[
            // waiting_workers too: a worker left registered as waiting makes
            // every enqueue of its queue send a NOTIFY.
            "TRUNCATE commitq.jobs, commitq.finished_jobs, commitq.idempotency_keys,
                      commitq.concurrency_keys, commitq.waiting_workers, commitq.fair_queues",
            "UPDATE commitq.config SET keep_completed = false",
            "VACUUM ANALYZE commitq.jobs",
        ],
    )
    .await
}

async fn fill(c: &Client, jobs: usize, keys: Keys) -> Outcome<()> {
    let (ikeys, ckeys) = match keys {
        Keys::None => ("NULL".to_string(), "NULL".to_string()),
        Keys::Concurrency(n) => (
            "NULL".into(),
            format!("(SELECT array_agg('account:' || (abs(hashint4(i)) % {n})) FROM generate_series(1, $1::int) i)"),
        ),
        Keys::Idempotency => (
            "(SELECT array_agg('order:' || i) FROM generate_series(1, $1::int) i)".into(),
            "NULL".into(),
        ),
        Keys::Tenants { tenants, fair } => {
            let mut setup = vec!["SELECT commitq.set_concurrency_limit('tenant:*', 100000)"];
            if fair {
                setup.push("SELECT commitq.set_fairness('bench', 'tenant:')");
            }
            common::run_each(c, &setup).await?;
            (
                "NULL".into(),
                format!(
                    "(SELECT array_agg('tenant:' || CASE WHEN i % 2 = 0 THEN 0
                                                       ELSE abs(hashint4(i)) % {tenants} END)
                        FROM generate_series(1, $1::int) i)"
                ),
            )
        }
    };
    let sql = format!(
        "SELECT count(*) FROM commitq.enqueue_many('bench', 'noop',
             array_fill($2::jsonb, ARRAY[$1::int]),
             idempotency_keys => {ikeys}, concurrency_keys => {ckeys})"
    );
    let args: serde_json::Value = serde_json::from_str(common::ARGS_40_BYTES).unwrap();
    c.execute(&sql, &[&(jobs as i32), &args])
        .await
        .map_err(why("fill commitq.jobs"))?;
    common::run_each(c, &["VACUUM ANALYZE commitq.jobs"]).await
}

impl Commitq {
    /// The same worker pool without keys: what a keyed drain is compared
    /// with; for a fair drain, the same drain without fairness.
    pub fn without_keys(self) -> Commitq {
        match self {
            Commitq::Pool {
                handlers,
                config,
                keys:
                    Keys::Tenants {
                        tenants,
                        fair: true,
                    },
            } => Commitq::Pool {
                handlers,
                config,
                keys: Keys::Tenants {
                    tenants,
                    fair: false,
                },
            },
            Commitq::Pool {
                handlers, config, ..
            } => Commitq::Pool {
                handlers,
                config,
                keys: Keys::None,
            },
            other => other,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Commitq::Functions => "commitq (enqueue, enqueue_many)".into(),
            Commitq::ParallelFunctions => {
                "commitq enqueue_many, a connection per core, 5,000 jobs a call".into()
            }
            Commitq::Waiters(how) => format!("commitq, 4 SQL workers waiting by {}", how.name()),
            Commitq::Sql { batch, how } => match how {
                Drain::ClaimThenComplete => format!("commitq SQL: claim {batch} + complete_many"),
                Drain::CompleteAndClaim => format!("commitq SQL: complete_and_claim {batch}"),
            },
            Commitq::Pool {
                handlers,
                config,
                keys,
            } => format!(
                "commitq crate WorkerPool, {handlers} handlers{}{}",
                match config {
                    PoolConfig::Defaults => "",
                    PoolConfig::NoPrefetch => ", no prefetch",
                    PoolConfig::Tuned => ", tuned (batch 100, prefetch 200, 4 claim loops)",
                },
                match keys {
                    Keys::None => String::new(),
                    Keys::Concurrency(k) => format!(", {k} concurrency keys"),
                    Keys::Idempotency => ", idempotency key on every job".into(),
                    Keys::Tenants { tenants, fair } => format!(
                        ", {tenants} tenant keys, half the jobs one tenant's{}",
                        if *fair { ", fair queue" } else { "" }
                    ),
                }
            ),
        }
    }

    pub async fn run(
        &self,
        w: Workload,
        cluster: &Cluster,
        db: &str,
        load: &Load,
    ) -> Outcome<Sample> {
        let url = cluster.kv(db);
        let c = connect(&url).await;
        reset(&c).await?;
        match (w, *self) {
            (Workload::Bulk, Commitq::ParallelFunctions) => {
                common::parallel_bulk_rate(&url, BULK_ENQUEUE, load.jobs)
                    .await
                    .map(Sample::rate)
            }
            (Workload::Bulk | Workload::Single, Commitq::Functions) => {
                let single = "SELECT commitq.enqueue('bench', 'noop', '{args}')";
                common::enqueue_rate(w, &c, &url, load, BULK_ENQUEUE, single).await
            }
            (Workload::Drain, Commitq::Sql { batch, how }) => {
                fill(&c, load.jobs, Keys::None).await?;
                sql_drain(&c, &url, load, batch, how)
                    .await
                    .map(Sample::rate)
            }
            (
                Workload::Drain | Workload::KeyedDrain,
                Commitq::Pool {
                    handlers,
                    config,
                    keys,
                },
            ) => {
                fill(&c, load.jobs, keys).await?;
                pool_drain(&url, load, handlers, config)
                    .await
                    .map(Sample::rate)
            }
            (Workload::Latency, Commitq::Pool { handlers, .. }) => {
                latency(&url, load, handlers).await
            }
            (Workload::Latency, Commitq::Waiters(how)) => {
                super::commitq_wait::latency(&url, load, how).await
            }
            (Workload::Single, Commitq::Waiters(how)) => {
                super::commitq_wait::single_beside(&url, load, how).await
            }
            (w, s) => Err(format!("{w:?} is not measured for {s:?}")),
        }
    }
}

/// Job ids and lease tokens of a batch a worker has run but not completed.
type Batch = (Vec<i64>, Vec<i64>);

async fn sql_drain(c: &Client, url: &str, load: &Load, batch: i32, how: Drain) -> Outcome<f64> {
    // Each claimer remembers the batch it has run but not yet completed.
    let held: Arc<std::sync::Mutex<HashMap<String, Batch>>> = Default::default();
    let sqls: &[&str] = match how {
        Drain::ClaimThenComplete => &[
            "SELECT job_id, lease_token FROM commitq.claim('bench', $1, $2, '5 minutes')",
            "SELECT count(*) FROM commitq.complete_many($1, $2)",
        ],
        Drain::CompleteAndClaim => &[
            "SELECT job_id, lease_token FROM commitq.complete_and_claim($1, $2, 'bench', $3, $4, '5 minutes')",
        ],
    };
    let rate = common::drain_rate(
        url,
        load.concurrency,
        load.jobs,
        load.timeout,
        sqls,
        move |c, stmts, worker| {
            let held = held.clone();
            async move {
                let rows = match how {
                    Drain::ClaimThenComplete => c.query(&stmts[0], &[&worker, &batch]).await?,
                    Drain::CompleteAndClaim => {
                        let (ids, tokens) =
                            held.lock().unwrap().remove(&worker).unwrap_or_default();
                        c.query(&stmts[0], &[&ids, &tokens, &worker, &batch])
                            .await?
                    }
                };
                if rows.is_empty() {
                    return Ok(0);
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
                match how {
                    Drain::ClaimThenComplete => {
                        c.execute(&stmts[1], &[&ids, &tokens]).await?;
                    }
                    Drain::CompleteAndClaim => {
                        held.lock().unwrap().insert(worker, (ids, tokens));
                    }
                }
                Ok(rows.len())
            }
        },
    )
    .await?;
    // Each claimer's last claim found nothing and registered it as waiting:
    // as a stopping worker does, it says it stops.
    for i in 0..load.concurrency {
        c.execute(
            "SELECT commitq.stop_waiting('bench', $1)",
            &[&format!("bench-{i}")],
        )
        .await
        .map_err(why("stop_waiting"))?;
    }
    // A complete_and_claim worker stops on the call that completed its last
    // batch and found nothing more: the queue must be empty.
    let left: i64 = c
        .query_one("SELECT count(*) FROM commitq.jobs", &[])
        .await
        .map_err(why("count"))?
        .get(0);
    if left != 0 {
        return Err(format!("{left} jobs left after the drain"));
    }
    Ok(rate)
}

/// The benchmark's no-op job: the drain fills the queue with other args,
/// which it ignores; the latency run numbers its jobs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Noop {
    #[serde(default)]
    n: i64,
}

impl commitq::Job for Noop {
    const KIND: &'static str = "noop";
    const QUEUE: &'static str = "bench";
}

/// Drain the queue with the worker pool and no-op handlers.
async fn pool_drain(url: &str, load: &Load, handlers: usize, config: PoolConfig) -> Outcome<f64> {
    let client = commitq::Client::connect(url)
        .await
        .map_err(why("commitq client"))?;
    let builder = commitq::WorkerPool::builder(client).queue("bench", handlers);
    let builder = match config {
        PoolConfig::Defaults => builder,
        PoolConfig::NoPrefetch => builder.prefetch(0),
        // Loops claiming 100 at a time, so that the next batches are on
        // their way while one is being taken (measured with prefetch 200:
        // 2 loops 24k jobs/s, 4 loops 34k).
        PoolConfig::Tuned => builder.claimers(4).batch(100).prefetch(200),
    };
    let pool = builder
        .handle(|_ctx, _job: Noop| async { Ok(commitq::Outcome::Complete) })
        .build();
    let metrics = pool.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    while metrics.snapshot().completed < load.jobs as u64 && start.elapsed() < load.timeout {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = load.jobs as f64 / start.elapsed().as_secs_f64();
    let done = metrics.snapshot().completed;
    let _ = stop.send(());
    running.await.map_err(why("worker pool"))?;
    if done != load.jobs as u64 {
        return Err(format!("completed {done} of {} jobs", load.jobs));
    }
    Ok(rate)
}

/// Enqueue-commit to handler-start latency through the worker pool.
async fn latency(url: &str, load: &Load, handlers: usize) -> Outcome<Sample> {
    let total = (load.rate * load.seconds) as usize;
    let (committed, started) = (common::instants(total), common::instants(total));
    let client = commitq::Client::connect(url)
        .await
        .map_err(why("commitq client"))?;
    let seen = started.clone();
    let pool = commitq::WorkerPool::builder(client)
        .queue("bench", handlers)
        .poll_interval(Duration::from_secs(1))
        .handle(move |_ctx, job: Noop| {
            let seen = seen.clone();
            async move {
                if let Some(s) = seen.get(job.n as usize) {
                    let _ = s.set(Instant::now());
                }
                Ok(commitq::Outcome::Complete)
            }
        })
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sql = "SELECT commitq.enqueue('bench', 'noop', jsonb_build_object('n', $1::bigint))";
    let produced = common::steady_producers(url, sql, load.rate, committed.clone()).await;
    let ms = match produced {
        Ok(()) => common::commit_to_start_ms(&committed, &started, Duration::from_secs(30)).await,
        Err(e) => Err(e),
    };
    let _ = stop.send(());
    running.await.map_err(why("worker pool"))?;
    Sample::latencies(ms?)
}

/// Resident memory of this process, in MiB, while `handlers` handlers of a
/// worker pool are all busy.
pub async fn memory_at(cluster: &Cluster, db: &str, handlers: usize) -> Outcome<f64> {
    let url = cluster.kv(db);
    let c = connect(&url).await;
    reset(&c).await?;
    fill(&c, handlers * 3, Keys::None).await?;
    let client = commitq::Client::connect(&url)
        .await
        .map_err(why("commitq client"))?;
    let pool = commitq::WorkerPool::builder(client)
        .queue("bench", handlers)
        .handle(|_ctx, _job: Noop| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(commitq::Outcome::Complete)
        })
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_kib: f64 = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0.0);
    let _ = stop.send(());
    running.await.map_err(why("worker pool"))?;
    Ok(rss_kib / 1024.0)
}
