//! The producer: claim loops that fill a queue's slots with claimed jobs,
//! in batches, and wait for work while the queue is empty.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::{driver, Error};

use super::executor::run_job;
use super::{Claimed, Shared, WorkerPoolBuilder};

/// How long a claim loop waits for more free slots before claiming for the
/// ones it has. Only spent while handlers are busy, never when idle.
const GATHER: Duration = Duration::from_millis(1);

/// How often a claim loop waiting for a fuller batch looks again at whether
/// the handlers still have jobs waiting for them.
const REFILL_CHECK: Duration = Duration::from_millis(5);

/// With a local queue, the claim size a claim loop waits for while handlers
/// have jobs waiting: half the batch, and at most half the local queue.
fn refill_at(cfg: &WorkerPoolBuilder) -> usize {
    match cfg.prefetch {
        0 => 0,
        n => cfg.batch.min(n).div_ceil(2),
    }
}

/// A queue's slots: jobs claimed and not ended (handlers plus prefetch),
/// and jobs running.
#[derive(Clone)]
pub(super) struct Slots {
    pub(super) claim: Arc<Semaphore>,
    pub(super) run: Arc<Semaphore>,
    pub(super) handlers: usize,
    /// Jobs claimed and waiting here for a handler slot.
    pub(super) waiting: Arc<AtomicUsize>,
}

/// Counts a claimed job as waiting for a handler, from `new` until dropped.
pub(super) struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Waiting {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Claim batches for one queue while there are free claim slots.
pub(super) async fn claim_loop(
    shared: Arc<Shared>,
    queue: String,
    all: Slots,
    wake: Arc<Notify>,
    jobs: TaskTracker,
) {
    let cfg = &shared.cfg;
    let slots = &all.claim;
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shared.stopping.cancelled() => return,
        };
        // Take every slot that is free, and wait a moment for slots about to
        // be freed: with short jobs, handlers finish one by one, and claiming
        // for each as it frees would make every claim a batch of one.
        let mut permits = vec![first];
        let gather_until = tokio::time::Instant::now() + GATHER;
        while permits.len() < cfg.batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    // With a local queue, also keep waiting for at least half
                    // a batch while the jobs waiting here give every handler
                    // its next job: nobody idles meanwhile, and a claim's
                    // cost is mostly per call (measured: claims of ~20 jobs
                    // drained at 60% of the rate of claims of 100).
                    let refilling = permits.len() < refill_at(cfg)
                        && all.waiting.load(Ordering::SeqCst) >= all.handlers;
                    let until = if refilling {
                        tokio::time::Instant::now() + REFILL_CHECK
                    } else {
                        gather_until
                    };
                    match tokio::time::timeout_at(until, slots.clone().acquire_owned()).await {
                        Ok(p) => permits.push(p.expect("semaphore never closed")),
                        // Look again whether the handlers still have work.
                        Err(_) if refilling => {}
                        Err(_) => break,
                    }
                }
            }
        }
        let claimed = match claim(cfg, &queue, permits.len()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(queue = %queue, error = %e, "claim failed; retrying");
                drop(permits);
                wait_for_work(&shared, &wake, cfg.poll_interval).await;
                continue;
            }
        };
        if claimed.is_empty() {
            drop(permits);
            wait_for_work(&shared, &wake, cfg.poll_interval).await;
            continue;
        }
        for job in &claimed {
            cfg.metrics.add_claimed(&job.queue, &job.kind);
        }
        for (job, permit) in claimed.into_iter().zip(permits) {
            let waiting = Waiting::new(&all.waiting);
            jobs.spawn(run_job(
                shared.clone(),
                job,
                Some(permit),
                all.clone(),
                waiting,
            ));
        }
    }
}

pub(super) async fn stop_waiting(cfg: &WorkerPoolBuilder, queue: &str) {
    let result = async {
        let conn = cfg.client.pool().get().await?;
        driver::stop_waiting(&**conn, queue, &cfg.worker_id).await
    }
    .await;
    if let Err(e) = result {
        // maintain() prunes the entry within minutes.
        warn!(queue = %queue, error = %e, "could not stop waiting");
    }
}

async fn wait_for_work(shared: &Shared, wake: &Notify, poll: Duration) {
    tokio::select! {
        _ = wake.notified() => {}
        _ = tokio::time::sleep(poll) => {}
        _ = shared.stopping.cancelled() => {}
    }
}

async fn claim(cfg: &WorkerPoolBuilder, queue: &str, n: usize) -> Result<Vec<Claimed>, Error> {
    let conn = cfg.client.pool().get().await?;
    let rows = driver::claim(&**conn, queue, &cfg.worker_id, n, cfg.lease).await?;
    let claimed_at = Instant::now();
    Ok(rows
        .into_iter()
        .map(|row| Claimed::new(row, claimed_at))
        .collect())
}
