//! Many small dependency graphs (chains, fan-out, fan-in) drained by
//! several workers, each on its own server process, while a killer
//! terminates worker backends at random (pg_terminate_backend: the job's
//! transaction dies with its connection and its lease must be rescued).
//! Judged from what committed: every job ran exactly once (its record is
//! written in the transaction that completes it), and no job ran before all
//! its dependencies had (a handler records a violation if, under its own
//! snapshot, a dependency's record is missing).
//!
//! COMMITQ_GRAPHS sets how many graphs (default 1,000; each has 3 to 6 jobs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq_tests::{connect, Rng, TestDb};

const WORKERS: usize = 4;

async fn build_graphs(c: &tokio_postgres::Client, graphs: usize, rng: &mut Rng) -> i64 {
    let mut jobs = 0;
    for g in 0..graphs {
        c.batch_execute("BEGIN").await.unwrap();
        let one = |deps: Vec<i64>| async move {
            c.query_one(
                "SELECT job_id FROM commitq.enqueue('g', 'node', depends_on => $1)",
                &[&(!deps.is_empty()).then_some(deps)],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        };
        match g % 3 {
            // chain of 3 to 6
            0 => {
                let mut prev = Vec::new();
                for _ in 0..3 + rng.below(4) {
                    prev = vec![one(prev).await];
                    jobs += 1;
                }
            }
            // fan-out: a root and 2 to 5 children
            1 => {
                let root = one(vec![]).await;
                jobs += 1;
                for _ in 0..2 + rng.below(4) {
                    one(vec![root]).await;
                    jobs += 1;
                }
            }
            // fan-in: 2 to 5 parts and a join
            _ => {
                let mut parts = Vec::new();
                for _ in 0..2 + rng.below(4) {
                    parts.push(one(vec![]).await);
                    jobs += 1;
                }
                one(parts).await;
                jobs += 1;
            }
        }
        c.batch_execute("COMMIT").await.unwrap();
    }
    jobs
}

/// Claim a few jobs, and run each in its own transaction: check that every
/// dependency already ran, record the run, complete with a result.
async fn worker(url: String, n: usize, done: Arc<AtomicBool>) {
    while !done.load(Ordering::SeqCst) {
        let c = connect(&url).await;
        c.batch_execute(&format!("SET application_name = 'graph_worker_{n}'"))
            .await
            .unwrap();
        loop {
            if done.load(Ordering::SeqCst) {
                return;
            }
            let Ok(rows) = c
                .query(
                    "SELECT job_id, lease_token FROM commitq.claim('g', $1, 4, '1 second')",
                    &[&format!("w{n}")],
                )
                .await
            else {
                break; // killed: reconnect
            };
            if rows.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let mut killed = false;
            for r in rows {
                let (id, token): (i64, i64) = (r.get(0), r.get(1));
                let run = c
                    .batch_execute(&format!(
                        "BEGIN;
                         INSERT INTO graph_violations (job_id, missing)
                         SELECT {id}, d FROM commitq.jobs j, unnest(j.depends_on) d
                          WHERE j.id = {id} AND d NOT IN (SELECT job_id FROM graph_runs);
                         INSERT INTO graph_runs (job_id) VALUES ({id});
                         SELECT commitq.complete({id}, {token}, jsonb_build_object('ran', {id}));
                         COMMIT;"
                    ))
                    .await;
                if run.is_err() {
                    // Killed, or the lease expired while we were away: the
                    // job runs again elsewhere.
                    if c.batch_execute("ROLLBACK").await.is_err() {
                        killed = true;
                        break;
                    }
                }
            }
            if killed {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graphs_run_in_order_exactly_once_while_workers_are_killed() {
    let graphs: usize = std::env::var("COMMITQ_GRAPHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let db = TestDb::new("t_dep_graphs").await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE graph_runs (job_id bigint, at timestamptz DEFAULT clock_timestamp());
         CREATE TABLE graph_violations (job_id bigint, missing bigint);
         UPDATE commitq.config SET backoff_base = '10 milliseconds', backoff_cap = '10 milliseconds';",
    )
    .await
    .unwrap();
    let mut rng = Rng(0x5eed_6a9b);
    let jobs = build_graphs(&c, graphs, &mut rng).await;

    let done = Arc::new(AtomicBool::new(false));
    let url = db.url_as("postgres");
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| tokio::spawn(worker(url.clone(), n, done.clone())))
        .collect();
    // maintain() rescues the leases of killed workers.
    let maintainer = {
        let (url, done) = (url.clone(), done.clone());
        tokio::spawn(async move {
            let c = connect(&url).await;
            while !done.load(Ordering::SeqCst) {
                c.batch_execute("SELECT commitq.maintain()").await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let mut kills = 0;
    loop {
        let left: i64 = c
            .query_one("SELECT count(*) FROM commitq.jobs WHERE queue = 'g'", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{left} jobs never ran"
        );
        // Kill one worker backend every 100 ms while the graphs drain.
        let pick = rng.below(WORKERS as u64);
        let killed: i64 = c
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name = $1",
                &[&format!("graph_worker_{pick}")],
            )
            .await
            .unwrap()
            .get(0);
        kills += killed;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    maintainer.await.unwrap();

    let runs = c
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM graph_runs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (runs.get::<_, i64>(0), runs.get::<_, i64>(1)),
        (jobs, jobs),
        "every job ran exactly once"
    );
    let violations: i64 = c
        .query_one("SELECT count(*) FROM graph_violations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(violations, 0, "a job ran before one of its dependencies");
    assert!(kills > 0, "no worker was killed");
    eprintln!(
        "{graphs} graphs, {jobs} jobs, {kills} workers killed, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
