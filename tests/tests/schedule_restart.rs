//! A schedule every second for 10 s, four sessions calling maintain() in a
//! loop, and an immediate restart of the server in the middle: every tick in
//! the window has exactly one job, none two. Evaluators race to insert the
//! same tick row, and a crash loses only transactions that had not
//! committed, whose ticks are fired again after the restart (the schedule's
//! backfill window covers the downtime).
//!
//! The restart would break the tests that share the project cluster, so
//! this file runs a cluster of its own (dev/cluster.sh with COMMITQ_PGDIR
//! pg-schedule-restart, on the project cluster's port + 13, or
//! COMMITQ_SCHEDULE_RESTART_PGPORT), stopped at the end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq_tests::{cluster_url, create_extension_sql};
use tokio_postgres::{Client, NoTls};

const DIR: &str = "pg-schedule-restart";

struct OwnCluster {
    port: u16,
}

impl OwnCluster {
    fn run(&self, cmd: &str) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(root.join("dev/cluster.sh"))
            .arg(cmd)
            .env("COMMITQ_PGDIR", DIR)
            .env("COMMITQ_PGPORT", self.port.to_string())
            .status()
            .expect("run dev/cluster.sh");
        assert!(status.success(), "dev/cluster.sh {cmd} failed");
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.run("stop");
    }
}

fn port() -> u16 {
    if let Ok(p) = std::env::var("COMMITQ_SCHEDULE_RESTART_PGPORT") {
        return p
            .parse()
            .expect("COMMITQ_SCHEDULE_RESTART_PGPORT is a port");
    }
    let url = cluster_url();
    let main: u16 = url
        .split_whitespace()
        .find_map(|p| p.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(54329);
    main + 13
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
            Err(e) if Instant::now() > until => panic!("connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tick_fires_once_across_concurrent_maintain_and_a_restart() {
    let cluster = Arc::new(OwnCluster { port: port() });
    cluster.run("start");
    let admin = connect_retrying(&cluster.url("postgres")).await;
    // Apart: DROP DATABASE refuses the transaction of a batch.
    for sql in [
        "DROP DATABASE IF EXISTS t_schedule_restart WITH (FORCE)",
        "CREATE DATABASE t_schedule_restart",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    drop(admin);
    let url = cluster.url("t_schedule_restart");
    let c = connect_retrying(&url).await;
    c.batch_execute(&create_extension_sql()).await.unwrap();
    // Ticks from the first whole second after now, for 10 seconds.
    c.batch_execute(
        "SELECT commitq.schedule('every-second', '* * * * * *', 'q', 'tick', backfill => '1 minute')",
    )
    .await
    .unwrap();
    let window: (String, String) = {
        let row = c
            .query_one(
                "SELECT (date_trunc('second', evaluated_until) + interval '1 second')::text,
                        (date_trunc('second', evaluated_until) + interval '10 seconds')::text
                   FROM commitq.cron_schedules WHERE name = 'every-second'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let started = Instant::now();
    drop(c);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (url, stop, calls, failures) =
            (url.clone(), stop.clone(), calls.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let c = connect_retrying(&url).await;
                while !stop.load(Ordering::Relaxed) {
                    if c.batch_execute("SELECT commitq.maintain()").await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    // The immediate restart, five seconds into the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || {
        restarting.run("crash");
        restarting.run("start");
    })
    .await
    .unwrap();
    // The window ends within 11 s of its start; evaluate 2 s more.
    let left = Duration::from_secs(13).saturating_sub(started.elapsed());
    tokio::time::sleep(left).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert!(
        failures.load(Ordering::Relaxed) >= 1,
        "the restart interrupted no maintain() call"
    );

    let c = connect_retrying(&url).await;
    let restarted_inside: bool = c
        .query_one(
            "SELECT pg_postmaster_start_time() BETWEEN $1::text::timestamptz AND $2::text::timestamptz",
            &[&window.0, &window.1],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        restarted_inside,
        "the server restarted outside the window {window:?}"
    );
    let rows = c
        .query(
            "WITH expected AS (
                 SELECT generate_series($1::text::timestamptz, $2::text::timestamptz, interval '1 second') AS tick),
             fired AS (
                 SELECT (args->'_schedule'->>'tick')::timestamptz AS tick, count(*) AS jobs
                   FROM commitq.jobs WHERE args->'_schedule'->>'name' = 'every-second' GROUP BY 1)
             SELECT e.tick::text, coalesce(f.jobs, 0) FROM expected e LEFT JOIN fired f USING (tick)
              WHERE coalesce(f.jobs, 0) <> 1
             UNION
             SELECT f.tick::text, f.jobs FROM fired f WHERE f.jobs > 1
             ORDER BY 1",
            &[&window.0, &window.1],
        )
        .await
        .unwrap();
    let wrong: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        wrong.is_empty(),
        "ticks without exactly one job (tick, jobs): {wrong:?}; {} maintain calls, {} interrupted",
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    eprintln!(
        "10 ticks, one job each; {} maintain calls, {} interrupted by the restart",
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
}
