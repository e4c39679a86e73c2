//! commitq's two ways of waiting for work, side by side at the SQL level,
//! as a worker in any stack would run them: `CALL commitq.claim_wait`
//! (woken at commit through shared memory) and LISTEN with a claim (woken by
//! NOTIFY). Workers claim up to 10 jobs, note when each started, and
//! complete them with complete_many. Measured: enqueue-commit to start at a
//! steady rate, and single enqueue while such workers wait on the queue
//! (NOTIFY serializes notifying commits through their flush; the waiting
//! claim's commit does an atomic add and a broadcast).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::common::{self, why, Load, Outcome, Sample};

/// How the workers wait for work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Waiting {
    /// `CALL commitq.claim_wait(..., wait => 1 second)` in a loop.
    ClaimWait,
    /// LISTEN "commitq:bench" on the claiming connection, then claim, and
    /// after an empty claim wait for a notification (1 s at most).
    Listen,
}

/// Workers of the latency run and of the single enqueue beside waiters.
const WORKERS: usize = 4;

impl Waiting {
    pub fn name(self) -> &'static str {
        match self {
            Waiting::ClaimWait => "CALL commitq.claim_wait",
            Waiting::Listen => "LISTEN + claim (NOTIFY)",
        }
    }
}

type Started = Arc<Vec<std::sync::OnceLock<Instant>>>;

/// `WORKERS` workers waiting on queue bench until `stop`; each started job
/// with an `n` in its args is noted in `started`.
fn spawn_workers(
    url: &str,
    how: Waiting,
    started: Option<Started>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<Outcome<()>>> {
    (0..WORKERS)
        .map(|i| {
            let (url, started, stop) = (url.to_string(), started.clone(), stop.clone());
            tokio::spawn(async move {
                let worker = format!("waiter-{i}");
                let (c, mut notes) = commitq_tests::connect_listening(&url).await;
                if how == Waiting::Listen {
                    c.batch_execute("LISTEN \"commitq:bench\"")
                        .await
                        .map_err(why("LISTEN"))?;
                }
                let claim_wait = c
                    .prepare("CALL commitq.claim_wait('bench', $1, 10, '5 minutes', '1 second')")
                    .await
                    .map_err(why("prepare claim_wait"))?;
                let claim = c
                    .prepare(
                        "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(j)), '[]')
                                FROM commitq.claim('bench', $1, 10, '5 minutes') j",
                    )
                    .await
                    .map_err(why("prepare claim"))?;
                let complete = c
                    .prepare("SELECT count(*) FROM commitq.complete_many($1, $2)")
                    .await
                    .map_err(why("prepare complete_many"))?;
                while !stop.load(Ordering::Relaxed) {
                    let stmt = match how {
                        Waiting::ClaimWait => &claim_wait,
                        Waiting::Listen => &claim,
                    };
                    let jobs: Value = c
                        .query_one(stmt, &[&worker])
                        .await
                        .map_err(why("claim"))?
                        .get(0);
                    let jobs = jobs.as_array().cloned().unwrap_or_default();
                    let now = Instant::now();
                    if let Some(started) = &started {
                        for j in &jobs {
                            if let Some(s) = j["args"]["n"]
                                .as_u64()
                                .and_then(|n| started.get(n as usize))
                            {
                                let _ = s.set(now);
                            }
                        }
                    }
                    if jobs.is_empty() {
                        if how == Waiting::Listen {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), notes.recv()).await;
                        }
                        continue;
                    }
                    let ids: Vec<i64> = jobs.iter().filter_map(|j| j["job_id"].as_i64()).collect();
                    let tokens: Vec<i64> = jobs
                        .iter()
                        .filter_map(|j| j["lease_token"].as_i64())
                        .collect();
                    c.execute(&complete, &[&ids, &tokens])
                        .await
                        .map_err(why("complete_many"))?;
                }
                c.batch_execute(&format!("SELECT commitq.stop_waiting('bench', '{worker}')"))
                    .await
                    .map_err(why("stop_waiting"))?;
                Ok(())
            })
        })
        .collect()
}

async fn stop_workers(stop: Arc<AtomicBool>, workers: Vec<JoinHandle<Outcome<()>>>) -> Outcome<()> {
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.map_err(why("worker"))??;
    }
    Ok(())
}

/// Enqueue-commit to handler start at `load.rate` jobs/s, workers waiting `how`.
pub async fn latency(url: &str, load: &Load, how: Waiting) -> Outcome<Sample> {
    let total = (load.rate * load.seconds) as usize;
    let (committed, started) = (common::instants(total), common::instants(total));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(url, how, Some(started.clone()), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sql = "SELECT commitq.enqueue('bench', 'noop', jsonb_build_object('n', $1::bigint))";
    let produced = common::steady_producers(url, sql, load.rate, committed.clone()).await;
    let ms = match produced {
        Ok(()) => common::commit_to_start_ms(&committed, &started, Duration::from_secs(30)).await,
        Err(e) => Err(e),
    };
    stop_workers(stop, workers).await?;
    Sample::latencies(ms?)
}

/// Single enqueue (one job a transaction, `load.clients` connections)
/// while workers wait on the queue `how`, taking and completing the jobs.
pub async fn single_beside(url: &str, load: &Load, how: Waiting) -> Outcome<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(url, how, None, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sql = format!(
        "SELECT commitq.enqueue('bench', 'noop', '{}')",
        common::ARGS_40_BYTES
    );
    let rate = common::single_statement_rate(url, &sql, load.clients, load.seconds).await;
    stop_workers(stop, workers).await?;
    rate.map(Sample::rate)
}
