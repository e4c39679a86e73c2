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
        "TRUNCATE commitq.jobs, commitq.finished_jobs, commitq.idempotency_keys, bench.raw_jobs",
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

async fn fill_commitq(c: &Client, jobs: usize) {
    c.execute(
        "SELECT count(*) FROM commitq.enqueue_many('bench', 'noop',
             array_fill($2::jsonb, ARRAY[$1::int]))",
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
    fill_commitq(c, args.jobs).await;
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

/// One measured system of one workload.
#[derive(Clone, Copy, Debug)]
enum Measure {
    RawInsert,
    Enqueue,
    RawBulk,
    EnqueueMany,
    RawDrain(i64),
    CommitqDrain(i32, Drain, bool),
}

impl Measure {
    fn workload(&self, args: &Args) -> String {
        match self {
            Measure::RawInsert | Measure::Enqueue => {
                format!("single enqueue, own transaction, {} clients", args.clients)
            }
            Measure::RawBulk | Measure::EnqueueMany => format!("bulk enqueue of {}", args.jobs),
            Measure::RawDrain(_) | Measure::CommitqDrain(..) => {
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
        }
    }

    /// The raw measure this one is compared with.
    fn baseline(&self) -> Option<Measure> {
        match self {
            Measure::Enqueue => Some(Measure::RawInsert),
            Measure::EnqueueMany => Some(Measure::RawBulk),
            Measure::CommitqDrain(..) => Some(Measure::RawDrain(10)),
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
        ],
    ];
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
        "\nPostgreSQL {version}, {} cores; median of {} interleaved rounds (min-max); ratios against the raw baseline of the same workload.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.rounds
    );
    println!("| workload | system | jobs/s | min-max | vs raw |");
    println!("|---|---|---:|---:|---:|");
    for (m, samples) in &results {
        let rate = median(samples);
        let (lo, hi) = samples
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let ratio = m
            .baseline()
            .and_then(|b| results.iter().find(|(r, _)| r.system() == b.system()))
            .map(|(_, base)| format!("{:.0}%", 100.0 * rate / median(base)))
            .unwrap_or_else(|| "baseline".into());
        println!(
            "| {} | {} | {rate:.0} | {lo:.0}-{hi:.0} | {ratio} |",
            m.workload(&args),
            m.system()
        );
    }
}
