//! The producer: claim loops that fill a queue's slots with claimed jobs,
//! in batches, and wait for work while the queue is empty.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::{driver, Error};

use super::builder::{AUTO_BATCH, AUTO_PREFETCH};
use super::executor::run_job;
use super::waiter::{Waited, Waiter};
use super::{Claimed, Shared, WorkerPoolBuilder};

/// How long a claim loop waits for more free slots before claiming for the
/// ones it has. Only spent while handlers are busy, never when idle.
const GATHER: Duration = Duration::from_millis(1);

/// How often a claim loop waiting for a fuller batch looks again at whether
/// the handlers still have jobs waiting for them.
const REFILL_CHECK: Duration = Duration::from_millis(5);

/// With a local queue, the claim size a claim loop waits for while handlers
/// have jobs waiting: half the batch, and at most half the local queue.
fn refill_at(batch: usize, prefetch: usize) -> usize {
    match prefetch {
        0 => 0,
        n => batch.min(n).div_ceil(2),
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
    pub(super) adapt: Arc<Adaptive>,
}

impl Slots {
    pub(super) fn new(handlers: usize, prefetch: Option<usize>) -> Slots {
        let start = prefetch.unwrap_or(0);
        Slots {
            claim: Arc::new(Semaphore::new(handlers + start)),
            run: Arc::new(Semaphore::new(handlers)),
            handlers,
            waiting: Arc::new(AtomicUsize::new(0)),
            adapt: Arc::new(Adaptive {
                fixed_prefetch: prefetch,
                prefetch: Mutex::new(start),
                run_ns: AtomicU64::new(0),
                claim_ns: AtomicU64::new(0),
                keyed: AtomicBool::new(false),
                backlog: AtomicBool::new(false),
                backlog_seen: Notify::new(),
            }),
        }
    }
}

/// What a queue's claim loops adapt to, unless the user fixed it: the local
/// queue's size to how long jobs run and whether they have concurrency
/// keys, and the number of claim loops at work to the backlog.
pub(super) struct Adaptive {
    fixed_prefetch: Option<usize>,
    /// The local queue's current size (claim slots beyond the handlers').
    prefetch: Mutex<usize>,
    /// Moving averages of a handler's run and of a claim's round trip, ns.
    run_ns: AtomicU64,
    claim_ns: AtomicU64,
    /// The last claim brought jobs with concurrency keys.
    keyed: AtomicBool,
    /// The last claim came back full: more loops may claim.
    backlog: AtomicBool,
    backlog_seen: Notify,
}

/// A moving average over about the last 16 values.
fn average_in(avg: &AtomicU64, value: Duration) {
    let v = value.as_nanos().min(u64::MAX as u128) as u64;
    let old = avg.load(Ordering::Relaxed);
    let new = if old == 0 { v } else { old - old / 16 + v / 16 };
    avg.store(new.max(1), Ordering::Relaxed);
}

impl Adaptive {
    pub(super) fn record_run(&self, took: Duration) {
        average_in(&self.run_ns, took);
    }

    pub(super) fn saw_keyed(&self) {
        self.keyed.store(true, Ordering::Relaxed);
    }

    /// The local queue this queue should have now: as many jobs as the
    /// handlers finish in two claims' round trips, at most two full claims;
    /// none for jobs with concurrency keys.
    fn wanted_prefetch(&self, handlers: usize) -> usize {
        if let Some(n) = self.fixed_prefetch {
            return n;
        }
        let (run, claim) = (
            self.run_ns.load(Ordering::Relaxed),
            self.claim_ns.load(Ordering::Relaxed),
        );
        // Keyed jobs get none: one waiting here holds its key's slot, and
        // claims park the jobs of keys so held (tried: a local queue as
        // large as the handlers halved the keyed drain, in single rounds).
        if self.keyed.load(Ordering::Relaxed) || run == 0 || claim == 0 {
            return 0;
        }
        let jobs = (handlers as u128 * 2 * claim as u128) / run as u128;
        jobs.min(AUTO_PREFETCH as u128) as usize
    }

    /// Grow or shrink the claim slots to the wanted local queue. Shrinking
    /// takes back only free slots; the rest follow as jobs end.
    fn resize(&self, slots: &Semaphore, handlers: usize) {
        let want = self.wanted_prefetch(handlers);
        let mut now = self.prefetch.lock().unwrap();
        if want > *now {
            slots.add_permits(want - *now);
            *now = want;
            // Helper loops waiting for enough slots may claim now.
            self.backlog_seen.notify_waiters();
        } else if want < *now {
            *now -= slots.forget_permits(*now - want);
        }
    }

    fn prefetch_now(&self) -> usize {
        *self.prefetch.lock().unwrap()
    }

    fn set_backlog(&self, full: bool) {
        if full && !self.backlog.swap(true, Ordering::SeqCst) {
            self.backlog_seen.notify_waiters();
        } else if !full {
            self.backlog.store(false, Ordering::SeqCst);
        }
    }
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

/// Claim batches for one queue while there are free claim slots. Loop
/// `index` 0 always claims; with adaptive claim loops the others claim only
/// while the queue has a backlog (the last claim came back full).
pub(super) async fn claim_loop(
    shared: Arc<Shared>,
    queue: String,
    all: Slots,
    wake: Arc<Notify>,
    jobs: TaskTracker,
    index: usize,
    wait_supported: Option<bool>,
) {
    let cfg = &shared.cfg;
    let slots = &all.claim;
    let adapt = &all.adapt;
    let helper = index > 0 && cfg.claimers.is_none();
    let batch = cfg.batch.unwrap_or(AUTO_BATCH);
    // A helper loop claims only while its share of the claim slots makes
    // at least half a batch: with few slots (no local queue), more loops
    // would only split them into smaller claims, each costing the database
    // about as much as a full one (measured: with four loops over 16
    // slots, the pool without a local queue drained at 15% of the same
    // pool with one, in one run).
    let worth_it = || all.handlers + adapt.prefetch_now() >= (index + 1) * batch.div_ceil(2);
    let mut waiter = Waiter::new(wait_supported);
    loop {
        while helper && !(adapt.backlog.load(Ordering::SeqCst) && worth_it()) {
            let seen = adapt.backlog_seen.notified();
            tokio::pin!(seen);
            seen.as_mut().enable();
            if !(adapt.backlog.load(Ordering::SeqCst) && worth_it()) {
                tokio::select! {
                    _ = seen => {}
                    _ = shared.stopping.cancelled() => return,
                }
            }
        }
        adapt.resize(slots, all.handlers);
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shared.stopping.cancelled() => return,
        };
        // Take every slot that is free, and wait a moment for slots about to
        // be freed: with short jobs, handlers finish one by one, and claiming
        // for each as it frees would make every claim a batch of one.
        let mut permits = vec![first];
        let gather_until = tokio::time::Instant::now() + GATHER;
        let refill = refill_at(batch, adapt.prefetch_now());
        while permits.len() < batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    // With a local queue, also keep waiting for at least half
                    // a batch while the jobs waiting here give every handler
                    // its next job: nobody idles meanwhile, and a claim's
                    // cost is mostly per call (measured: claims of ~20 jobs
                    // drained at 60% of the rate of claims of 100).
                    let refilling = permits.len() < refill
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
        let asked = permits.len();
        let sent = Instant::now();
        let mut claimed = match claim(cfg, &queue, asked).await {
            Ok(c) => c,
            Err(e) => {
                warn!(queue = %queue, error = %e, "claim failed; retrying");
                drop(permits);
                wait_for_work(&shared, &wake, cfg.poll_interval).await;
                continue;
            }
        };
        average_in(&adapt.claim_ns, sent.elapsed());
        adapt.set_backlog(asked > 1 && claimed.len() == asked);
        if !claimed.is_empty() {
            adapt
                .keyed
                .store(claimed.iter().any(|c| c.keyed), Ordering::Relaxed);
        }
        if claimed.is_empty() && helper {
            continue;
        }
        if claimed.is_empty() {
            // Waits in the database when it can (waiter.rs), else below.
            match waiter.wait(&shared, &queue, permits.len()).await {
                Waited::Claimed(jobs) => claimed = jobs,
                Waited::Nothing => continue,
                Waited::Listen => {
                    drop(permits);
                    wait_for_work(&shared, &wake, cfg.poll_interval).await;
                    continue;
                }
            }
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
        let conn = cfg.own_conn(cfg.lease).await?;
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
    let conn = cfg.own_conn(cfg.lease).await?;
    let rows = driver::claim(&conn, queue, &cfg.worker_id, n, cfg.lease).await?;
    let claimed_at = Instant::now();
    Ok(rows
        .into_iter()
        .map(|row| Claimed::new(row, claimed_at))
        .collect())
}
