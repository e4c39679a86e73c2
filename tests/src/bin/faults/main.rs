//! commitq's fault-injection suite: real worker processes (`fault_worker`)
//! drain a queue on a cluster of the suite's own while it kills them, stops
//! them past their leases, terminates their backends (the LISTEN one too),
//! cuts connections right after they send COMMIT, and crashes PostgreSQL;
//! then a checker judges the run, in the manner of Jepsen's queue checker,
//! from records the suite and the workers keep themselves (see checker.rs):
//!
//! - every committed job completed once, none lost, discarded or cancelled
//!   (but the few the suite cancels), nothing done for a rolled-back one;
//! - a job's write happened once, with its completion; its outside call was
//!   made under one key on every attempt, and applied once;
//! - no two attempts of one job held their leases at the same time, and no
//!   concurrency key was held by more attempts at once than its limit
//!   allows; every key slot was given back;
//! - a job that enqueues a child under an idempotency key made one child,
//!   however often it ran;
//! - each path (complete_in, pool completion with complete_and_take,
//!   prefetch, idempotent enqueue, outside calls whose reply was lost)
//!   really ran under the faults.
//!
//! A second phase measures what a transaction held open (vacuum blocked)
//! does to throughput and to the size of the job table.
//!
//!     cargo run -p commitq-tests --bin faults -- --short   # make test runs this
//!     cargo run --release -p commitq-tests --bin faults    # long: make faults-long

mod checker;
mod harness;
mod plan;
mod steady;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use commitq_tests::Rng;

use harness::{connect_retrying, root, Cluster, Proxy, Workers, DB};

#[derive(Parser, Debug)]
#[command(
    about = "Inject faults into real commitq workers and check that nothing is lost or done twice"
)]
struct Args {
    /// The short mode `make test` runs (a few minutes).
    #[arg(long)]
    short: bool,
    /// Jobs to enqueue (default: 3,000 short, 100,000 long).
    #[arg(long)]
    jobs: Option<usize>,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 20261122)]
    seed: u64,
    /// Port of the suite's own cluster.
    #[arg(long, default_value_t = 54339)]
    pgport: u16,
    /// Port of the proxy in front of it.
    #[arg(long, default_value_t = 54349)]
    proxy_port: u16,
    /// Folder of the suite's cluster, under target/.
    #[arg(long, default_value = "faults-pg")]
    pgdir: String,
}

const LEASE_SECS: u64 = 2;

struct Mode {
    jobs: usize,
    workers: usize,
    kills: u32,
    stops: u32,
    terminations: u32,
    restarts: u32,
    cuts: u32,
    long_tx: Duration,
    drain_timeout: Duration,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mode = if args.short {
        Mode {
            jobs: args.jobs.unwrap_or(3_000),
            workers: 4,
            kills: 6,
            stops: 2,
            terminations: 12,
            restarts: 1,
            cuts: 6,
            long_tx: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(240),
        }
    } else {
        Mode {
            jobs: args.jobs.unwrap_or(100_000),
            workers: 6,
            kills: 50,
            stops: 10,
            terminations: 100,
            restarts: 3,
            cuts: 30,
            long_tx: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(1800),
        }
    };
    let cluster = Cluster {
        dir: args.pgdir.clone(),
        port: args.pgport,
        proxy_port: args.proxy_port,
    };
    let started = Instant::now();
    let running = cluster.start();
    let (table, violations) = run(&args, &mode, &cluster).await;
    drop(running);
    println!("{table}");
    let out = root().join("target/faults");
    std::fs::create_dir_all(&out).unwrap();
    let name = match (args.short, args.pgdir.as_str()) {
        (true, "faults-pg") => "last-short.md".to_string(),
        (false, "faults-pg") => "last-long.md".to_string(),
        (short, dir) => format!("last-{}-{dir}.md", if short { "short" } else { "long" }),
    };
    std::fs::write(out.join(name), &table).unwrap();
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    if violations > 0 {
        eprintln!("faults: {violations} violations");
        std::process::exit(1);
    }
    println!("faults: 0 violations");
}

async fn run(args: &Args, mode: &Mode, cluster: &Cluster) -> (String, u32) {
    let admin = connect_retrying(&cluster.url("postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await
        .unwrap();
    drop(admin);
    let db = connect_retrying(&cluster.url(DB)).await;
    db.batch_execute("CREATE EXTENSION pg_commitq")
        .await
        .unwrap();
    db.batch_execute(checker::SETUP).await.unwrap();
    let mut rng = Rng(args.seed);
    let enqueued = plan::enqueue(&db, mode.jobs, &mut rng).await;
    drop(db);

    let proxy = Arc::new(Proxy::default());
    tokio::spawn(proxy.clone().serve(cluster.proxy_port, cluster.port));
    let mut workers = Workers::new(cluster.proxied_url(DB), LEASE_SECS);
    for i in 0..mode.workers {
        let child = workers.spawn_one(i);
        workers.children.push(child);
    }

    // Faults, spread over the drain, while jobs are left.
    let mut injected: BTreeMap<&str, u32> = BTreeMap::new();
    let plan: Vec<(&str, u32)> = vec![
        ("worker SIGKILL", mode.kills),
        ("worker SIGSTOP past its lease, then SIGCONT", mode.stops),
        (
            "pg_terminate_backend (worker connections)",
            mode.terminations,
        ),
        ("connection cut after COMMIT, before the reply", mode.cuts),
        (
            "PostgreSQL stopped -m immediate and restarted",
            mode.restarts,
        ),
    ];
    let total: u32 = plan.iter().map(|(_, n)| n).sum();
    let drain_start = Instant::now();
    let mut db = connect_retrying(&cluster.url(DB)).await;
    let mut stopped: Vec<(usize, Instant)> = Vec::new();
    let mut listen_terminated = 0u32;
    let mut timed_out = false;
    loop {
        let left = match db
            .query_one(
                "SELECT count(*) FROM commitq.jobs WHERE state IN ('available', 'running', 'scheduled', 'blocked')",
                &[],
            )
            .await
        {
            Ok(r) => r.get::<_, i64>(0),
            Err(_) => {
                db = connect_retrying(&cluster.url(DB)).await;
                continue;
            }
        };
        // Wake the stopped ones whose time is up.
        stopped.retain(|(i, until)| {
            if Instant::now() >= *until {
                workers.signal(*i, "CONT");
                false
            } else {
                true
            }
        });
        let done: u32 = injected.values().sum();
        if left == 0 && done >= total && stopped.is_empty() {
            break;
        }
        if drain_start.elapsed() > mode.drain_timeout {
            eprintln!("faults: drain timed out with {left} jobs left");
            timed_out = true;
            break;
        }
        let progress = 1.0 - left as f64 / mode.jobs as f64;
        // Inject the next fault once the drain has got that far, so faults
        // are spread over it; what is left goes in at the end.
        if done < total && (progress >= done as f64 / total as f64 || left == 0) {
            let remaining: Vec<&str> = plan
                .iter()
                .filter(|(k, n)| injected.get(k).copied().unwrap_or(0) < *n)
                .map(|(k, _)| *k)
                .collect();
            let kind = remaining[rng.below(remaining.len() as u64) as usize];
            let victim = rng.below(workers.children.len() as u64) as usize;
            match kind {
                "worker SIGKILL" => {
                    let _ = workers.children[victim].kill();
                    let _ = workers.children[victim].wait();
                    stopped.retain(|(i, _)| *i != victim);
                    workers.children[victim] = workers.spawn_one(victim);
                }
                "worker SIGSTOP past its lease, then SIGCONT" => {
                    if stopped.iter().any(|(i, _)| *i == victim) {
                        continue;
                    }
                    workers.signal(victim, "STOP");
                    stopped.push((victim, Instant::now() + Duration::from_secs(LEASE_SECS + 2)));
                }
                "pg_terminate_backend (worker connections)" => {
                    // One in four hits a LISTEN connection.
                    let listen = rng.below(4) == 0;
                    let hit: i64 = db
                        .query_one(
                            "SELECT count(*) FROM (
                                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                                    AND client_addr IS NOT NULL AND backend_type = 'client backend'
                                    AND (query LIKE 'LISTEN%') = $1
                                  ORDER BY random() LIMIT 1) t",
                            &[&listen],
                        )
                        .await
                        .map(|r| r.get(0))
                        .unwrap_or(0);
                    if hit == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    if listen {
                        listen_terminated += 1;
                    }
                }
                "connection cut after COMMIT, before the reply" => {
                    proxy.armed.fetch_add(1, Ordering::SeqCst);
                }
                "PostgreSQL stopped -m immediate and restarted" => {
                    cluster.run("crash");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    cluster.run("start");
                    db = connect_retrying(&cluster.url(DB)).await;
                }
                _ => unreachable!(),
            }
            *injected.entry(kind).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    // The workers stop before the checker reads: nothing moves under it.
    drop(workers);

    let db = connect_retrying(&cluster.url(DB)).await;
    let known = checker::Known {
        rolled_back: enqueued.rolled_back.clone(),
        expected_completed: enqueued.expected_completed,
        claims: proxy.claims.load(Ordering::SeqCst) as i64,
        takes: proxy.takes.load(Ordering::SeqCst) as i64,
    };
    let mut checks = checker::check(&db, &known).await;
    checks.push(checker::Check {
        name: "**drain timed out**".into(),
        value: timed_out as i64,
        violation: true,
    });

    // Vacuum blocked: the same steady load with and without a transaction
    // held open on another connection, on fresh workers without faults.
    let mut workers = Workers::new(cluster.url(DB), LEASE_SECS);
    for i in 1..=mode.workers {
        let child = workers.spawn_one(i * 2);
        workers.children.push(child);
    }
    let url = cluster.url(DB);
    let (rate_free, growth_free) = steady::steady_load(&url, mode.long_tx, false).await;
    let (rate_blocked, growth_blocked) = steady::steady_load(&url, mode.long_tx, true).await;
    drop(workers);

    let violations = checks
        .iter()
        .filter(|c| c.violation && c.value != 0)
        .count() as u32;
    let mut t = String::new();
    let mode_name = if args.short { "short" } else { "long" };
    t.push_str(&format!(
        "Fault-injection run ({mode_name} mode, seed {}): {} jobs enqueued by committed transactions, {} by rolled-back ones, {} worker processes (odd ones prefetch), drained in {drain_secs:.0} s.\n\n",
        args.seed, enqueued.committed, enqueued.rolled_back.len(), mode.workers
    ));
    t.push_str("| fault | injected |\n|---|---:|\n");
    for (kind, _) in &plan {
        let n = if kind.starts_with("connection cut") {
            proxy.cuts.load(Ordering::SeqCst) as u32
        } else {
            injected.get(kind).copied().unwrap_or(0)
        };
        t.push_str(&format!("| {kind} | {n} |\n"));
    }
    t.push_str(&format!(
        "| (of the terminations: LISTEN connections) | {listen_terminated} |\n"
    ));
    t.push_str("| a worker with its clock 14 hours ahead | 1 |\n");
    t.push_str("\n| check (**bold**: must be 0) | result |\n|---|---:|\n");
    for c in &checks {
        t.push_str(&format!("| {} | {} |\n", c.name, c.value));
    }
    t.push_str(&format!(
        "\nVacuum blocked ({:.0} s of steady load each, about 1,000 jobs kept waiting): {rate_free:.0} jobs/s with no open transaction, {rate_blocked:.0} jobs/s with one held open ({:+.0}%); commitq.jobs (table and indexes) grew by {} kB and by {} kB.\n",
        mode.long_tx.as_secs_f64(),
        100.0 * (rate_blocked / rate_free.max(1.0) - 1.0),
        growth_free / 1024,
        growth_blocked / 1024
    ));
    (t, violations)
}
