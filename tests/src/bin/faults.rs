//! commitq's fault-injection suite: real worker processes (`fault_worker`)
//! drain a queue on a cluster of the suite's own while it kills them, stops
//! them past their leases, terminates their backends (the LISTEN one too),
//! cuts connections right after they send COMMIT, and crashes PostgreSQL;
//! then a checker reads the ledger of what happened, in the manner of
//! Jepsen's queue checker:
//!
//! - lost: a job enqueued by a committed transaction that never completed;
//! - unexpected: anything done for a job whose transaction rolled back;
//! - duplicate effects: a job whose write (made in the transaction that
//!   completes it) happened twice, or whose outside call was applied twice;
//! - re-executions: runs beyond the first, each of which must follow a lease
//!   that really expired or a failure the database recorded.
//!
//! A second phase measures what a transaction held open (vacuum blocked)
//! does to throughput and to the size of the job table.
//!
//!     cargo run -p commitq-tests --bin faults -- --short   # make test runs this
//!     cargo run --release -p commitq-tests --bin faults    # long: make faults-long

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use commitq_tests::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

#[derive(Parser, Debug)]
#[command(
    about = "Inject faults into real commitq workers and check that nothing is lost or done twice"
)]
struct Args {
    /// The short mode `make test` runs (about two minutes).
    #[arg(long)]
    short: bool,
    /// Jobs to enqueue (default: 3,000 short, 100,000 long).
    #[arg(long)]
    jobs: Option<usize>,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 20261122)]
    seed: u64,
}

/// The suite's own cluster, so that crashing it disturbs nobody.
const PGDIR: &str = "faults-pg";
const PGPORT: u16 = 54339;
const PROXY_PORT: u16 = 54349;
const DB: &str = "commitq_faults";
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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cluster(cmd: &str) {
    let status = Command::new(root().join("dev/cluster.sh"))
        .arg(cmd)
        .env("COMMITQ_PGDIR", PGDIR)
        .env("COMMITQ_PGPORT", PGPORT.to_string())
        .status()
        .expect("run dev/cluster.sh");
    assert!(status.success(), "dev/cluster.sh {cmd} failed");
}

fn direct_url(db: &str) -> String {
    format!("host=127.0.0.1 port={PGPORT} user=postgres dbname={db}")
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connect, retrying while the server restarts.
async fn connect_retrying(url: &str) -> Client {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(url).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect to the fault cluster: {e}"),
        }
    }
}

/// A TCP proxy between the workers and PostgreSQL that, when armed, lets a
/// client's COMMIT through and then cuts the connection before the reply
/// comes back: the worker cannot know whether its transaction committed.
struct Proxy {
    armed: AtomicU64,
    cuts: AtomicU64,
}

impl Proxy {
    async fn serve(self: Arc<Self>) {
        let listener = TcpListener::bind(("127.0.0.1", PROXY_PORT))
            .await
            .expect("bind proxy port");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(("127.0.0.1", PGPORT)).await {
                    proxy.relay(client, server).await;
                }
            });
        }
    }

    async fn relay(&self, client: TcpStream, server: TcpStream) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_up = cut.clone();
        let up = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if server_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                // A simple-query COMMIT ('Q' message) while armed: it has
                // reached the server; drop the connection before the reply.
                if contains(&buf[..n], b"Q\0\0\0\x0bCOMMIT\0")
                    && self
                        .armed
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1))
                        .is_ok()
                {
                    self.cuts.fetch_add(1, Ordering::SeqCst);
                    cut_up.store(true, Ordering::SeqCst);
                    return;
                }
            }
        };
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) || client_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The worker processes, killed when the suite ends however it ends.
struct Workers {
    exe: PathBuf,
    url: String,
    children: Vec<Child>,
}

impl Workers {
    fn spawn_one(&self, index: usize) -> Child {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--url", &self.url, "--lease-secs", &LEASE_SECS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if index == 0 {
            // A worker whose local clock reads 14 hours ahead: leases are
            // set and expired by the server's clock, so it makes no
            // difference.
            cmd.env("TZ", "Etc/GMT-14");
        }
        cmd.spawn().expect("spawn fault_worker")
    }

    fn signal(&self, index: usize, signal: &str) {
        let _ = Command::new("kill")
            .args([
                &format!("-{signal}"),
                &self.children[index].id().to_string(),
            ])
            .status();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const SETUP: &str = "
    UPDATE commitq.config SET keep_completed = true, backoff_base = '100 milliseconds',
                              backoff_cap = '1 second';
    CREATE TABLE public.ledger (job_id bigint PRIMARY KEY);
    CREATE TABLE public.starts (job_id bigint NOT NULL, attempt int NOT NULL, lease_token bigint NOT NULL,
                                pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE TABLE public.effects (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL);
    CREATE TABLE public.external_calls (job_id bigint NOT NULL, key text NOT NULL, pid int NOT NULL);
    CREATE TABLE public.external_applied (key text PRIMARY KEY, job_id bigint NOT NULL);
";

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
            drain_timeout: Duration::from_secs(120),
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
    let started = Instant::now();
    cluster("start");
    let result = run(&args, &mode).await;
    cluster("stop");
    let (table, violations) = result;
    println!("{table}");
    let out = root().join("target/faults");
    std::fs::create_dir_all(&out).unwrap();
    let name = if args.short {
        "last-short.md"
    } else {
        "last-long.md"
    };
    std::fs::write(out.join(name), &table).unwrap();
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    if violations > 0 {
        eprintln!("faults: {violations} violations");
        std::process::exit(1);
    }
    println!("faults: 0 violations");
}

async fn run(args: &Args, mode: &Mode) -> (String, u32) {
    let admin = connect_retrying(&direct_url("postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await
        .unwrap();
    drop(admin);
    let db = connect_retrying(&direct_url(DB)).await;
    db.batch_execute("CREATE EXTENSION pg_commitq")
        .await
        .unwrap();
    db.batch_execute(SETUP).await.unwrap();

    // Enqueue in transactions of ten jobs; one in ten rolls back. The ledger
    // row is written in the same transaction as the jobs it records.
    let mut rolled_back: Vec<i64> = Vec::new();
    let mut rng = Rng(args.seed);
    let mut committed = 0usize;
    let mut n = 0i64;
    while committed < mode.jobs {
        db.batch_execute("BEGIN").await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..10 {
            n += 1;
            let args = serde_json::json!({ "n": n, "external": n % 2 == 0 });
            let id: i64 = db
                .query_one(
                    "SELECT job_id FROM commitq.enqueue('faults', 'fault_job', $1)",
                    &[&args],
                )
                .await
                .unwrap()
                .get(0);
            db.execute("INSERT INTO public.ledger VALUES ($1)", &[&id])
                .await
                .unwrap();
            ids.push(id);
        }
        if rng.below(10) == 0 {
            db.batch_execute("ROLLBACK").await.unwrap();
            rolled_back.extend(ids);
        } else {
            db.batch_execute("COMMIT").await.unwrap();
            committed += ids.len();
        }
    }
    drop(db);

    let proxy = Arc::new(Proxy {
        armed: AtomicU64::new(0),
        cuts: AtomicU64::new(0),
    });
    tokio::spawn(proxy.clone().serve());
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("fault_worker");
    let mut workers = Workers {
        exe,
        url: format!("host=127.0.0.1 port={PROXY_PORT} user=postgres dbname={DB}"),
        children: Vec::new(),
    };
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
    let mut db = connect_retrying(&direct_url(DB)).await;
    let mut stopped: Vec<(usize, Instant)> = Vec::new();
    let mut listen_terminated = 0u32;
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
                db = connect_retrying(&direct_url(DB)).await;
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
                    cluster("crash");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    cluster("start");
                    db = connect_retrying(&direct_url(DB)).await;
                }
                _ => unreachable!(),
            }
            *injected.entry(kind).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let cuts_done = proxy.cuts.load(Ordering::SeqCst);

    // The checker.
    let db = connect_retrying(&direct_url(DB)).await;
    let q = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let completed = q("SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed'").await;
    let discarded =
        q("SELECT count(*) FROM commitq.finished_jobs WHERE state IN ('discarded', 'cancelled')")
            .await;
    let lost = q("SELECT count(*) FROM public.ledger l
                   WHERE NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f WHERE f.id = l.job_id)")
    .await;
    let unexpected_jobs: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM commitq.jobs WHERE id = ANY($1))
                  + (SELECT count(*) FROM commitq.finished_jobs WHERE id = ANY($1))
                  + (SELECT count(*) FROM public.starts WHERE job_id = ANY($1))
                  + (SELECT count(*) FROM public.effects WHERE job_id = ANY($1))
                  + (SELECT count(*) FROM public.external_calls WHERE job_id = ANY($1))",
            &[&rolled_back],
        )
        .await
        .unwrap()
        .get(0);
    let duplicate_effects = q("SELECT count(*) FROM (SELECT job_id FROM public.effects GROUP BY job_id HAVING count(*) > 1) d").await;
    let completed_without_effect = q("SELECT count(*) FROM commitq.finished_jobs f WHERE f.state = 'completed'
                                        AND NOT EXISTS (SELECT 1 FROM public.effects e WHERE e.job_id = f.id)").await;
    let effect_without_completion = q("SELECT count(*) FROM public.effects e
                                        WHERE NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f
                                                           WHERE f.id = e.job_id AND f.state = 'completed')").await;
    let external_repeated =
        q("SELECT count(*) - count(DISTINCT key) FROM public.external_calls").await;
    let external_missing = q("SELECT count(*) FROM commitq.finished_jobs f
                               WHERE f.state = 'completed' AND (f.args->>'external')::boolean
                                 AND NOT EXISTS (SELECT 1 FROM public.external_applied a WHERE a.job_id = f.id)").await;
    let reruns = q("SELECT count(*) - count(DISTINCT job_id) FROM public.starts").await;
    // Every run after the first follows an attempt the database recorded as
    // ended: its lease expired (rescued by maintain) or it failed (an error
    // reported by the worker). A rerun beyond that would be unexplained.
    let unexplained = q("SELECT count(*) FROM (
                           SELECT s.job_id, count(*) - 1 AS reruns,
                                  (SELECT jsonb_array_length(f.errors) FROM commitq.finished_jobs f WHERE f.id = s.job_id) AS ended
                             FROM public.starts s GROUP BY s.job_id) r
                          WHERE r.reruns > coalesce(r.ended, 0)").await;
    let after_expiry = q(
        "SELECT count(*) FROM commitq.finished_jobs f, jsonb_array_elements(f.errors) e
                           WHERE e->>'error' LIKE 'lease expired%'",
    )
    .await;
    let after_failure = q(
        "SELECT count(*) FROM commitq.finished_jobs f, jsonb_array_elements(f.errors) e
                            WHERE e->>'error' NOT LIKE 'lease expired%'",
    )
    .await;

    // Vacuum blocked: the same steady load with and without a transaction
    // held open on another connection, on fresh workers without faults.
    drop(workers);
    let mut workers = Workers {
        exe: std::env::current_exe()
            .unwrap()
            .with_file_name("fault_worker"),
        url: direct_url(DB),
        children: Vec::new(),
    };
    for i in 1..=mode.workers {
        let child = workers.spawn_one(i);
        workers.children.push(child);
    }
    let (rate_free, growth_free) = steady_load(mode.long_tx, false).await;
    let (rate_blocked, growth_blocked) = steady_load(mode.long_tx, true).await;
    drop(workers);

    let violations = [
        lost,
        unexpected_jobs,
        duplicate_effects,
        completed_without_effect,
        effect_without_completion,
        external_missing,
        unexplained,
    ]
    .iter()
    .filter(|v| **v != 0)
    .count() as u32;
    let mut t = String::new();
    let mode_name = if args.short { "short" } else { "long" };
    t.push_str(&format!(
        "Fault-injection run ({mode_name} mode, seed {}): {} jobs enqueued by committed transactions, {} by rolled-back ones, {} worker processes, drained in {drain_secs:.0} s.\n\n",
        args.seed, mode.jobs, rolled_back.len(), mode.workers
    ));
    t.push_str("| fault | injected |\n|---|---:|\n");
    for (kind, _) in &plan {
        let n = if kind.starts_with("connection cut") {
            cuts_done as u32
        } else {
            injected.get(kind).copied().unwrap_or(0)
        };
        t.push_str(&format!("| {kind} | {n} |\n"));
    }
    t.push_str(&format!(
        "| (of the terminations: LISTEN connections) | {listen_terminated} |\n"
    ));
    t.push_str("| a worker with its clock 14 hours ahead | 1 |\n");
    t.push_str("\n| check | result |\n|---|---:|\n");
    for (name, value) in [
        ("jobs completed", completed),
        (
            "jobs discarded or cancelled (after max_attempts)",
            discarded,
        ),
        ("**lost** (committed, never completed or discarded)", lost),
        (
            "**unexpected** (anything done for a rolled-back job)",
            unexpected_jobs,
        ),
        (
            "**duplicate effects** (a job's transactional write twice)",
            duplicate_effects,
        ),
        (
            "completed without its write / write without completion",
            completed_without_effect + effect_without_completion,
        ),
        (
            "outside calls repeated (same idempotency key, absorbed by it)",
            external_repeated,
        ),
        (
            "outside effects missing for a completed job",
            external_missing,
        ),
        ("re-executions (runs after the first)", reruns),
        (
            "  of which after a real lease expiry (rescued by maintain)",
            after_expiry,
        ),
        (
            "  of which after a failure the worker reported",
            after_failure,
        ),
        (
            "  **unexplained** (a rerun without an ended attempt)",
            unexplained,
        ),
    ] {
        t.push_str(&format!("| {name} | {value} |\n"));
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

/// A steady load for `secs`: a producer keeps about a thousand jobs waiting
/// while the workers drain, optionally with a transaction held open on
/// another connection (so vacuum can remove nothing); returns the completion
/// rate and how much commitq.jobs grew (bytes, table and indexes).
async fn steady_load(secs: Duration, hold_open: bool) -> (f64, i64) {
    let db = connect_retrying(&direct_url(DB)).await;
    db.batch_execute("VACUUM commitq.jobs").await.unwrap();
    let one = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let before_size = one("SELECT pg_total_relation_size('commitq.jobs')").await;
    let before_done =
        one("SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed'").await;
    let holder = connect_retrying(&direct_url(DB)).await;
    if hold_open {
        holder
            .batch_execute("BEGIN; SELECT txid_current();")
            .await
            .unwrap();
    }
    let until = Instant::now() + secs;
    while Instant::now() < until {
        let waiting = one("SELECT count(*) FROM commitq.jobs WHERE state = 'available'").await;
        if waiting < 1000 {
            db.batch_execute(
                "SELECT count(*) FROM commitq.enqueue_many('faults', 'fault_job',
                     array_fill('{\"n\": 0, \"external\": false}'::jsonb, ARRAY[200]))",
            )
            .await
            .unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let after_done =
        one("SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed'").await;
    let after_size = one("SELECT pg_total_relation_size('commitq.jobs')").await;
    if hold_open {
        holder.batch_execute("COMMIT").await.unwrap();
    }
    (
        (after_done - before_done) as f64 / secs.as_secs_f64(),
        after_size - before_size,
    )
}
