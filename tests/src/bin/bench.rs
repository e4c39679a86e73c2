//! commitq's benchmark: each workload next to a raw-SQL baseline measured in
//! the same run on the same database, so the ratios mean something on a noisy
//! machine. Prints a markdown table.
//!
//!     make bench                 # full run
//!     cargo run --release -p commitq-tests --bin bench -- --quick

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use commitq_tests::{connect, TestDb};
use tokio_postgres::{Client, Statement};

#[derive(Parser, Debug)]
#[command(about = "Measure commitq against raw-SQL baselines on the project-local cluster")]
struct Args {
    /// Jobs for the bulk enqueue and drain workloads.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Seconds for the single-enqueue workload.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Clients for the single-enqueue workload.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Concurrent claimers for the drain workload.
    #[arg(long, default_value_t = 16)]
    claimers: usize,
    /// Rounds of every workload; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small and fast: 20,000 jobs, 3 seconds, one round.
    #[arg(long)]
    quick: bool,
    /// Run only the systems whose name contains this text (and skip the
    /// latency and memory runs), e.g. `--only WorkerPool`.
    #[arg(long)]
    only: Option<String>,
}

const SETUP: &str = "
    DROP SCHEMA IF EXISTS bench CASCADE;
    CREATE SCHEMA bench;
    -- The raw baseline: a bare job table with the claim index a hand-rolled
    -- SKIP LOCKED queue would have, and nothing else.
    CREATE TABLE bench.raw_jobs (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        kind text NOT NULL,
        args jsonb NOT NULL,
        run_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ON bench.raw_jobs (queue, run_at, id);
";

const ARGS_40_BYTES: &str = r#"{"user_id": 123456, "template": "welcome"}"#;

async fn reset(c: &Client) {
    // One statement per call: VACUUM refuses the implicit transaction of a batch.
    for sql in [
        "TRUNCATE commitq.jobs, commitq.finished_jobs, commitq.idempotency_keys,
                  commitq.concurrency_keys, bench.raw_jobs",
        "VACUUM ANALYZE commitq.jobs",
        "VACUUM ANALYZE bench.raw_jobs",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
}

/// `clients` connections each run `sql` in its own transaction for `secs`.
async fn single_statement_rate(url: &str, sql: &'static str, clients: usize, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, done) = (url.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let stmt = c.prepare(sql).await.unwrap();
            while Instant::now() < deadline {
                c.execute(&stmt, &[]).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Time one bulk statement inserting `jobs` rows; returns rows per second.
async fn bulk_rate(c: &Client, sql: &str, jobs: usize) -> f64 {
    let start = Instant::now();
    c.execute(sql, &[&(jobs as i32)]).await.unwrap();
    jobs as f64 / start.elapsed().as_secs_f64()
}

/// `claimers` connections run `step` until it returns 0; jobs per second.
/// Each connection prepares `sqls` once and hands them to every step, as a
/// real worker would, so no step pays a parse round trip.
async fn drain_rate<F, Fut>(url: &str, claimers: usize, jobs: usize, sqls: &[&str], step: F) -> f64
where
    F: Fn(Arc<Client>, Arc<Vec<Statement>>, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let total = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..claimers {
        let c = connect(url).await;
        let mut stmts = Vec::new();
        for sql in sqls {
            stmts.push(c.prepare(sql).await.unwrap());
        }
        clients.push((Arc::new(c), Arc::new(stmts)));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, (c, stmts)) in clients.into_iter().enumerate() {
        let (step, total) = (step.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = step(c.clone(), stmts.clone(), format!("bench-{i}")).await;
                if n == 0 {
                    break;
                }
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let drained = total.load(Ordering::Relaxed) as usize;
    assert_eq!(drained, jobs, "every job drained exactly once");
    drained as f64 / elapsed
}

/// Which keys the jobs of a commitq drain carry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Keys {
    None,
    /// A concurrency key out of this many, pseudo-random: jobs of one key
    /// often sit close together in the queue.
    Concurrency(i32),
    /// A distinct idempotency key on every job.
    Idempotency,
}

async fn fill_commitq(c: &Client, jobs: usize, keys: Keys) {
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
    };
    c.execute(
        &format!(
            "SELECT count(*) FROM commitq.enqueue_many('bench', 'noop',
                 array_fill($2::jsonb, ARRAY[$1::int]),
                 idempotency_keys => {ikeys}, concurrency_keys => {ckeys})"
        ),
        &[
            &(jobs as i32),
            &serde_json::from_str::<serde_json::Value>(ARGS_40_BYTES).unwrap(),
        ],
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE commitq.jobs")
        .await
        .unwrap();
}

async fn fill_raw(c: &Client, jobs: usize) {
    c.execute(
        &format!(
            "INSERT INTO bench.raw_jobs (queue, kind, args)
             SELECT 'bench', 'noop', '{ARGS_40_BYTES}' FROM generate_series(1, $1::int)"
        ),
        &[&(jobs as i32)],
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE bench.raw_jobs")
        .await
        .unwrap();
}

/// Job ids and lease tokens of a batch a worker has run but not completed.
type Batch = (Vec<i64>, Vec<i64>);

/// How a commitq drain worker talks to the queue.
#[derive(Clone, Copy, Debug)]
enum Drain {
    /// `claim`, then `complete_many`: two transactions per batch.
    ClaimThenComplete,
    /// `complete_and_claim`: the previous batch's completion and the next
    /// claim in one transaction.
    CompleteAndClaim,
}

async fn commitq_drain(
    url: &str,
    c: &Client,
    args: &Args,
    batch: i32,
    how: Drain,
    keep_completed: bool,
) -> f64 {
    reset(c).await;
    c.execute(
        "UPDATE commitq.config SET keep_completed = $1",
        &[&keep_completed],
    )
    .await
    .unwrap();
    fill_commitq(c, args.jobs, Keys::None).await;
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
    let rate = drain_rate(
        url,
        args.claimers,
        args.jobs,
        sqls,
        move |c, stmts, worker| {
            let held = held.clone();
            async move {
                let rows = match how {
                    Drain::ClaimThenComplete => {
                        c.query(&stmts[0], &[&worker, &batch]).await.unwrap()
                    }
                    Drain::CompleteAndClaim => {
                        let (ids, tokens) =
                            held.lock().unwrap().remove(&worker).unwrap_or_default();
                        c.query(&stmts[0], &[&ids, &tokens, &worker, &batch])
                            .await
                            .unwrap()
                    }
                };
                if rows.is_empty() {
                    return 0;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
                match how {
                    Drain::ClaimThenComplete => {
                        c.execute(&stmts[1], &[&ids, &tokens]).await.unwrap();
                    }
                    Drain::CompleteAndClaim => {
                        held.lock().unwrap().insert(worker, (ids, tokens));
                    }
                }
                rows.len()
            }
        },
    )
    .await;
    // A complete_and_claim worker stops on the call that completed its last
    // batch and found nothing more: the queue must be empty.
    let left: i64 = c
        .query_one("SELECT count(*) FROM commitq.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "every job completed");
    rate
}

async fn raw_drain(url: &str, c: &Client, args: &Args, batch: i64) -> f64 {
    reset(c).await;
    fill_raw(c, args.jobs).await;
    let sql = "DELETE FROM bench.raw_jobs WHERE id IN (
                   SELECT id FROM bench.raw_jobs WHERE queue = 'bench' AND run_at <= now()
                    ORDER BY run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING id, args";
    drain_rate(
        url,
        args.claimers,
        args.jobs,
        &[sql],
        move |c, stmts, _worker| async move { c.query(&stmts[0], &[&batch]).await.unwrap().len() },
    )
    .await
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

/// Drain the queue with the `commitq` crate's worker pool and no-op handlers.
async fn client_drain(url: &str, c: &Client, args: &Args, handlers: usize, keys: Keys) -> f64 {
    reset(c).await;
    c.execute("UPDATE commitq.config SET keep_completed = false", &[])
        .await
        .unwrap();
    fill_commitq(c, args.jobs, keys).await;
    let client = commitq::Client::connect(url).await.unwrap();
    let pool = commitq::WorkerPool::builder(client)
        .queue("bench", handlers)
        // One claim loop per 16 handlers, each claiming for its share.
        .claimers((handlers / 16).max(1))
        .batch(handlers / (handlers / 16).max(1))
        .poll_interval(Duration::from_millis(20))
        .handle(|_ctx, _job: Noop| async { Ok(commitq::Outcome::Complete) })
        .build();
    let metrics = pool.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    while metrics.snapshot().completed < args.jobs as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = args.jobs as f64 / start.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await.unwrap();
    rate
}

/// Enqueue-commit to handler-start latency at a steady `rate` jobs/s for
/// `secs`, through the worker pool: (p50, p99, max) in milliseconds.
async fn latency(url: &str, c: &Client, rate: u64, secs: u64) -> (f64, f64, f64) {
    reset(c).await;
    let total = (rate * secs) as usize;
    let committed: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..total).map(|_| Default::default()).collect());
    let started: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..total).map(|_| Default::default()).collect());
    let client = commitq::Client::connect(url).await.unwrap();
    let seen = started.clone();
    let pool = commitq::WorkerPool::builder(client.clone())
        .queue("bench", 16)
        .poll_interval(Duration::from_secs(1))
        .handle(move |_ctx, job: Noop| {
            let seen = seen.clone();
            async move {
                let _ = seen[job.n as usize].set(Instant::now());
                Ok(commitq::Outcome::Complete)
            }
        })
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Four producers, each its own connection, sharing the steady rate.
    let mut producers = Vec::new();
    for p in 0..4 {
        let (url, committed) = (url.to_string(), committed.clone());
        producers.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let stmt = c
                .prepare(
                    "SELECT commitq.enqueue('bench', 'noop', jsonb_build_object('n', $1::bigint))",
                )
                .await
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(4.0 / rate as f64));
            for n in (p..total).step_by(4) {
                tick.tick().await;
                c.execute(&stmt, &[&(n as i64)]).await.unwrap();
                let _ = committed[n].set(Instant::now());
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    while started.iter().any(|s| s.get().is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
    // A handler can start before the producer notes its commit time: count that as 0.
    let mut ms: Vec<f64> = (0..total)
        .map(|i| {
            let (c, s) = (committed[i].get().unwrap(), started[i].get().unwrap());
            s.saturating_duration_since(*c).as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 99 / 100], ms[ms.len() - 1])
}

/// Resident memory of this process, in MiB, while `handlers` handlers of a
/// worker pool are all busy.
async fn memory_at(url: &str, c: &Client, handlers: usize) -> f64 {
    reset(c).await;
    fill_commitq(c, handlers * 3, Keys::None).await;
    let client = commitq::Client::connect(url).await.unwrap();
    let pool = commitq::WorkerPool::builder(client)
        .queue("bench", handlers)
        .batch(handlers)
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
    running.await.unwrap();
    rss_kib / 1024.0
}

/// One measured system of one workload.
#[derive(Clone, Copy, Debug)]
enum Measure {
    RawInsert,
    Enqueue,
    RawBulk,
    EnqueueMany,
    RawDrain(i64),
    CommitqDrain(i32, Drain, bool),
    /// The `commitq` crate's worker pool, no-op handlers, this many at once.
    ClientDrain(usize, Keys),
}

impl Measure {
    fn workload(&self, args: &Args) -> String {
        match self {
            Measure::RawInsert | Measure::Enqueue => {
                format!("single enqueue, own transaction, {} clients", args.clients)
            }
            Measure::RawBulk | Measure::EnqueueMany => format!("bulk enqueue of {}", args.jobs),
            Measure::RawDrain(_) | Measure::CommitqDrain(..) | Measure::ClientDrain(..) => {
                format!("drain of {}, {} claimers", args.jobs, args.claimers)
            }
        }
    }

    fn system(&self) -> String {
        match self {
            Measure::RawInsert => "raw INSERT".into(),
            Measure::Enqueue => "commitq.enqueue".into(),
            Measure::RawBulk => "raw INSERT ... SELECT".into(),
            Measure::EnqueueMany => "commitq.enqueue_many".into(),
            Measure::RawDrain(b) => format!("raw claim-{b}-and-DELETE"),
            Measure::CommitqDrain(b, how, keep) => {
                let call = match how {
                    Drain::ClaimThenComplete => format!("claim {b} + complete_many"),
                    Drain::CompleteAndClaim => format!("complete_and_claim {b}"),
                };
                format!(
                    "commitq {call}{}",
                    if *keep { ", keep_completed" } else { "" }
                )
            }
            Measure::ClientDrain(n, keys) => format!(
                "commitq crate WorkerPool, {n} handlers{}",
                match keys {
                    Keys::None => String::new(),
                    Keys::Concurrency(k) => format!(", {k} concurrency keys"),
                    Keys::Idempotency => ", idempotency key on every job".into(),
                }
            ),
        }
    }

    /// The raw measure this one is compared with.
    fn baseline(&self) -> Option<Measure> {
        match self {
            Measure::Enqueue => Some(Measure::RawInsert),
            Measure::EnqueueMany => Some(Measure::RawBulk),
            Measure::CommitqDrain(..) => Some(Measure::RawDrain(10)),
            // The worker pool against commitq's own SQL-level drain by the
            // same number of claimers (claim 10, complete_many): what the
            // client adds or loses over calling the functions directly.
            Measure::ClientDrain(_, Keys::None) => {
                Some(Measure::CommitqDrain(10, Drain::ClaimThenComplete, false))
            }
            // Keyed drains against the same pool without keys.
            Measure::ClientDrain(n, _) => Some(Measure::ClientDrain(*n, Keys::None)),
            _ => None,
        }
    }

    async fn run(&self, url: &str, c: &Client, args: &Args) -> f64 {
        let insert = "INSERT INTO bench.raw_jobs (queue, kind, args) VALUES ('bench', 'noop', '{\"user_id\": 123456, \"template\": \"welcome\"}')";
        let enqueue = "SELECT commitq.enqueue('bench', 'noop', '{\"user_id\": 123456, \"template\": \"welcome\"}')";
        match *self {
            Measure::RawInsert | Measure::Enqueue => {
                reset(c).await;
                let sql = if matches!(self, Measure::RawInsert) {
                    insert
                } else {
                    enqueue
                };
                single_statement_rate(url, sql, args.clients, args.seconds).await
            }
            Measure::RawBulk => {
                reset(c).await;
                let sql = format!(
                    "INSERT INTO bench.raw_jobs (queue, kind, args)
                     SELECT 'bench', 'noop', '{ARGS_40_BYTES}' FROM generate_series(1, $1::int)"
                );
                bulk_rate(c, &sql, args.jobs).await
            }
            Measure::EnqueueMany => {
                reset(c).await;
                let sql = format!(
                    "SELECT count(*) FROM commitq.enqueue_many('bench', 'noop',
                         array_fill('{ARGS_40_BYTES}'::jsonb, ARRAY[$1::int]))"
                );
                bulk_rate(c, &sql, args.jobs).await
            }
            Measure::RawDrain(batch) => raw_drain(url, c, args, batch).await,
            Measure::CommitqDrain(batch, how, keep) => {
                commitq_drain(url, c, args, batch, how, keep).await
            }
            Measure::ClientDrain(handlers, keys) => {
                client_drain(url, c, args, handlers, keys).await
            }
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.jobs = 20_000;
        args.seconds = 3;
        args.rounds = 1;
    }
    let db = TestDb::new("commitq_bench").await;
    let c = db.connect().await;
    c.batch_execute(SETUP).await.unwrap();
    let version: String = c
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);

    // Each workload's systems run interleaved (A B A B ...), `rounds` times.
    let workloads: Vec<Vec<Measure>> = vec![
        vec![Measure::RawInsert, Measure::Enqueue],
        vec![Measure::RawBulk, Measure::EnqueueMany],
        vec![
            Measure::RawDrain(10),
            Measure::RawDrain(100),
            Measure::CommitqDrain(10, Drain::ClaimThenComplete, false),
            Measure::CommitqDrain(10, Drain::CompleteAndClaim, false),
            Measure::CommitqDrain(100, Drain::ClaimThenComplete, false),
            Measure::CommitqDrain(100, Drain::CompleteAndClaim, false),
            Measure::CommitqDrain(100, Drain::CompleteAndClaim, true),
            Measure::ClientDrain(16, Keys::None),
            Measure::ClientDrain(16, Keys::Concurrency(200)),
            Measure::ClientDrain(16, Keys::Idempotency),
            Measure::ClientDrain(64, Keys::None),
        ],
    ];
    let workloads: Vec<Vec<Measure>> = workloads
        .into_iter()
        .map(|systems| {
            systems
                .into_iter()
                .filter(|m| {
                    args.only
                        .as_ref()
                        .is_none_or(|o| m.system().contains(o.as_str()))
                })
                .collect::<Vec<_>>()
        })
        .filter(|systems| !systems.is_empty())
        .collect();
    let mut results: Vec<(Measure, Vec<f64>)> = Vec::new();
    for systems in &workloads {
        let mut samples = vec![Vec::new(); systems.len()];
        for round in 1..=args.rounds {
            for (i, m) in systems.iter().enumerate() {
                eprintln!(
                    "round {round}/{}: {} / {} ...",
                    args.rounds,
                    m.workload(&args),
                    m.system()
                );
                samples[i].push(m.run(&db.url, &c, &args).await);
            }
        }
        results.extend(systems.iter().copied().zip(samples));
    }

    println!(
        "\nPostgreSQL {version}, {} cores; median of {} interleaved rounds (min-max); ratios against the raw baseline of the same workload (the worker pool: against commitq claim 10 + complete_many; keyed drains: against the same pool without keys).\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.rounds
    );
    println!("| workload | system | jobs/s | min-max | vs baseline |");
    println!("|---|---|---:|---:|---:|");
    for (m, samples) in &results {
        let rate = median(samples);
        let (lo, hi) = samples
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let ratio = match m.baseline() {
            None => "baseline".into(),
            Some(b) => results
                .iter()
                .find(|(r, _)| r.system() == b.system())
                .map(|(_, base)| format!("{:.0}%", 100.0 * rate / median(base)))
                .unwrap_or_else(|| "-".into()),
        };
        println!(
            "| {} | {} | {rate:.0} | {lo:.0}-{hi:.0} | {ratio} |",
            m.workload(&args),
            m.system()
        );
    }

    if args.only.is_some() {
        return;
    }
    eprintln!("latency at 500 jobs/s ...");
    let (p50, p99, max) = latency(&db.url, &c, 500, args.seconds).await;
    eprintln!("memory at 100 handlers ...");
    let rss = memory_at(&db.url, &c, 100).await;
    println!(
        "\n| enqueue-commit to handler start, 500 jobs/s, {} s | p50 | p99 | max |",
        args.seconds
    );
    println!("|---|---:|---:|---:|");
    println!("| commitq crate WorkerPool, 16 handlers | {p50:.2} ms | {p99:.2} ms | {max:.2} ms |");
    println!("\nWorker process memory with 100 busy handlers (this benchmark process, RSS): {rss:.1} MiB");
}
