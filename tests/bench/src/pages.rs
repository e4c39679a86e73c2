//! `bench --bench-pages N`: how long each page of `commitq web` takes on a
//! database of N jobs (live and finished, several queues and states,
//! outcome counters for the last hour), against the target of 100 ms a
//! page. The dashboard is the release binary of cli/ (`cargo build
//! --release -p commitq-cli`), reached over HTTP as a browser would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use commitq_tests::connect;

use crate::common::{why, Cluster, Outcome};

const DB: &str = "bench_pages";
const ROUNDS: usize = 15;

pub async fn run(cluster: &Cluster, jobs: i64) -> Outcome<()> {
    let bin = binary()?;
    cluster.fresh_database(DB).await?;
    let db = connect(&cluster.kv(DB)).await;
    db.batch_execute(&format!(
        "ALTER DATABASE {DB} SET commitq.engine_enabled = off; CREATE EXTENSION pg_commitq"
    ))
    .await
    .map_err(why("create extension"))?;
    let t = Instant::now();
    load(&db, jobs).await?;
    eprintln!("loaded {jobs} jobs in {:.0} s", t.elapsed().as_secs_f64());

    let probe: (i64, i64) = {
        let r = db
            .query_one(
                "SELECT (SELECT max(id) FROM commitq.finished_jobs WHERE state = 'discarded'),
                        (SELECT id FROM commitq.jobs WHERE state = 'available' ORDER BY id LIMIT 1 OFFSET 1000)",
                &[],
            )
            .await
            .map_err(why("probe ids"))?;
        (r.get(0), r.get(1))
    };
    let mut child = Command::new(&bin)
        .args(["web", "--listen", "127.0.0.1:0", "--url", &cluster.kv(DB)])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(why("start commitq web"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(why("read commitq web's address"))?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .ok_or(format!("commitq web said {line:?}"))?
        .to_string();

    let pages = [
        "/".to_string(),
        "/queues".into(),
        "/jobs?state=available".into(),
        "/jobs?state=available&queue=q3".into(),
        "/jobs?state=available&queue=q3&kind=k7".into(),
        format!("/jobs?state=available&before={}", probe.1),
        "/jobs?state=scheduled".into(),
        "/jobs?state=running".into(),
        "/jobs?state=discarded".into(),
        "/jobs?state=discarded&queue=q1&kind=k2".into(),
        "/jobs?state=completed&queue=q4".into(),
        "/jobs".into(),
        format!("/jobs/{}", probe.0),
        "/schedules".into(),
        "/keys".into(),
        "/leases".into(),
        "/metrics".into(),
    ];
    println!("\nPage times of commitq web on {jobs} jobs, {ROUNDS} requests each after 2 to warm up (ms):\n");
    println!("| page | median | p90 | max | status |");
    println!("|---|---:|---:|---:|---|");
    let mut slowest = 0.0f64;
    for page in &pages {
        for _ in 0..2 {
            get(&addr, page)?;
        }
        let mut times = Vec::new();
        let mut status = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            status = get(&addr, page)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[ROUNDS / 2];
        slowest = slowest.max(median);
        println!(
            "| `{page}` | {median:.1} | {:.1} | {:.1} | {status} |",
            times[ROUNDS * 9 / 10],
            times[ROUNDS - 1]
        );
    }
    println!("\nslowest median: {slowest:.1} ms (target: under 100 ms)");
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The release build of `commitq` next to this benchmark's own binary.
fn binary() -> Outcome<std::path::PathBuf> {
    let me = std::env::current_exe().map_err(why("current exe"))?;
    let bin = me.with_file_name("commitq");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: cargo build --release -p commitq-cli first",
            bin.display()
        ))
    }
}

/// `jobs` jobs: 70% available over 8 queues and 20 kinds, 8% scheduled,
/// 2% running under a lease, 10% discarded, 5% cancelled, 5% completed;
/// outcome counters for every minute of the last hour; a few hundred
/// concurrency keys and named leases; a few schedules.
async fn load(db: &tokio_postgres::Client, jobs: i64) -> Outcome<()> {
    let live = jobs * 80 / 100;
    let finished = jobs - live;
    let sql = format!(
        "INSERT INTO commitq.jobs (queue, kind, args, state, priority, run_at, max_attempts,
                                   attempt, worker, lease_token, lease_expires_at, lease_interval,
                                   claimed_at, concurrency_key, errors, enqueued_at)
         SELECT 'q' || (i % 8), 'k' || (i % 20), jsonb_build_object('user_id', i, 'template', 'welcome'),
                s, 0,
                CASE s WHEN 'scheduled' THEN now() + interval '1 hour' ELSE now() - interval '5 minutes' END,
                25,
                CASE s WHEN 'running' THEN 1 ELSE 0 END,
                CASE s WHEN 'running' THEN 'worker-' || (i % 16) END,
                CASE s WHEN 'running' THEN 1 ELSE 0 END,
                CASE s WHEN 'running' THEN now() + interval '5 minutes' END,
                CASE s WHEN 'running' THEN interval '5 minutes' END,
                CASE s WHEN 'running' THEN now() END,
                NULL, '[]', now() - interval '5 minutes'
           FROM (SELECT i, CASE WHEN i % 40 < 35 THEN 'available'
                                WHEN i % 40 < 39 THEN 'scheduled'
                                ELSE 'running' END::commitq.job_state AS s
                   FROM generate_series(1, {live}) i) g;
         INSERT INTO commitq.finished_jobs (id, queue, kind, args, state, priority, run_at, attempt,
                                            max_attempts, lease_token, worker, errors, enqueued_at,
                                            claimed_at, finished_at)
         SELECT nextval('commitq.job_id_seq'), 'q' || (i % 8), 'k' || (i % 20),
                jsonb_build_object('user_id', i), s, 0, now() - interval '1 hour', 1, 1, 1, 'worker-1',
                CASE s WHEN 'discarded' THEN jsonb_build_array(jsonb_build_object(
                    'attempt', 1, 'at', now(), 'worker', 'worker-1', 'error', 'boom ' || i))
                     ELSE '[]' END,
                now() - interval '2 hours', now() - interval '1 hour',
                now() - (i % 3600) * interval '1 second'
           FROM (SELECT i, CASE WHEN i % 4 < 2 THEN 'discarded'
                                WHEN i % 4 = 2 THEN 'cancelled'
                                ELSE 'completed' END::commitq.job_state AS s
                   FROM generate_series(1, {finished}) i) g;
         INSERT INTO commitq.queue_counters (queue, minute, bucket, completed, failed, discarded, cancelled)
         SELECT 'q' || q, date_trunc('minute', now()) - m * interval '1 minute', b,
                1000 + (m * 37 + q * 11 + b) % 500, (m + b) % 7, (m * q + b) % 3, 0
           FROM generate_series(0, 7) q, generate_series(0, 59) m, generate_series(0, 7) b;
         INSERT INTO commitq.concurrency_keys (key, running, blocked, max_running)
         SELECT 'account:' || i, i % 2, CASE WHEN i % 2 = 1 THEN i % 5 ELSE 0 END, 1
           FROM generate_series(1, 500) i;
         INSERT INTO commitq.named_leases (name, owner, token, expires_at)
         SELECT 'lease-' || i, 'host-' || (i % 10), nextval('commitq.lease_token_seq'),
                now() + (i - 100) * interval '1 second'
           FROM generate_series(1, 300) i;
         SELECT commitq.schedule(name => 'digest-' || i, cron => '*/5 * * * *', queue => 'q1', kind => 'digest')
           FROM generate_series(1, 20) i;
         VACUUM ANALYZE commitq.jobs;
         VACUUM ANALYZE commitq.finished_jobs;
         VACUUM ANALYZE commitq.queue_counters;"
    );
    for statement in sql.split_inclusive(";\n") {
        db.batch_execute(statement)
            .await
            .map_err(why(&format!("loading: {}", statement.trim())))?;
    }
    Ok(())
}

/// One GET on its own connection; returns the status. The body is read
/// to its end, as a browser would before showing the page.
fn get(addr: &str, path: &str) -> Outcome<u16> {
    let mut s = TcpStream::connect(addr).map_err(why("connect"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(why("timeout"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(why("send"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(why("read"))?;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("GET {path}: no status in {head:?}"))
}
