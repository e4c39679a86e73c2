//! The worker pool: claims jobs in batches, runs their handlers, heartbeats
//! their leases, reports outcomes, and shuts down without losing a job.
//!
//! Everything that must be safe under concurrency (who gets a job, whether a
//! lease is still ours, retries and backoff) is decided by commitq's SQL;
//! this module only drives it.
//!
//! Its parts, each in its own file: the builder (settings and defaults), the
//! context a handler gets, the producer (claim loops and slots), the
//! executor (one job: heartbeats, timeout, failure, hand-back), the
//! completer (batched completion), the notifier (LISTEN) and the maintainer
//! (periodic `commitq.maintain()`).

mod builder;
mod completer;
mod context;
mod executor;
mod heartbeat;
mod maintainer;
mod notifier;
mod producer;
mod waiter;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::driver::ClaimedRow;
use crate::metrics::Metrics;
use crate::Client;

use completer::{complete_batches, Completion};
use heartbeat::{renew_leases, Leases};
use maintainer::maintain;
use notifier::listen;
use producer::{claim_loop, stop_waiting, Slots};

pub use builder::WorkerPoolBuilder;
pub use context::{HandlerError, HandlerResult, JobContext, Outcome};

/// A pool of workers over one or more queues. Run it with
/// [`WorkerPool::run_until`].
pub struct WorkerPool {
    inner: Arc<WorkerPoolBuilder>,
}

/// State shared by the tasks of a running pool.
struct Shared {
    cfg: Arc<WorkerPoolBuilder>,
    /// Stop claiming.
    stopping: CancellationToken,
    /// Grace period over: cancel what still runs.
    hard_stop: CancellationToken,
    /// Every job has ended: heartbeats stop.
    finished: CancellationToken,
    /// The jobs this pool holds, whose leases the heartbeater renews.
    leases: Arc<Leases>,
    completions: mpsc::UnboundedSender<Completion>,
}

/// A job leased to this pool, from its claim (or the completion that took
/// it) until it ends.
struct Claimed {
    job_id: i64,
    queue: String,
    kind: String,
    args: Value,
    attempt: i32,
    lease_token: i64,
    /// Has a concurrency key: its completion passes the key's slot on.
    keyed: bool,
    dependency_results: Option<Value>,
    claimed_at: Instant,
}

impl Claimed {
    fn new(row: ClaimedRow, claimed_at: Instant) -> Claimed {
        Claimed {
            job_id: row.job_id,
            queue: row.queue,
            kind: row.kind,
            args: row.args,
            attempt: row.attempt,
            lease_token: row.lease_token,
            keyed: row.keyed,
            dependency_results: row.dependency_results,
            claimed_at,
        }
    }
}

impl WorkerPool {
    pub fn builder(client: Client) -> WorkerPoolBuilder {
        WorkerPoolBuilder::new(client)
    }

    /// Counters of this pool, for export.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Run until `shutdown` resolves, then stop claiming, let running jobs
    /// finish within the grace period, cancel and hand back the rest.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg: self.inner.clone(),
            stopping: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            finished: CancellationToken::new(),
            leases: Arc::new(Leases::default()),
            completions: tx,
        });
        let notifies: HashMap<String, Arc<Notify>> = shared
            .cfg
            .queues
            .iter()
            .map(|(q, _)| (q.clone(), Arc::new(Notify::new())))
            .collect();
        let jobs = TaskTracker::new();
        let background = TaskTracker::new();

        let completer = tokio::spawn(complete_batches(
            Arc::downgrade(&shared),
            self.inner.clone(),
            shared.stopping.clone(),
            jobs.clone(),
            rx,
        ));
        let heartbeats = tokio::spawn(renew_leases(
            self.inner.clone(),
            shared.leases.clone(),
            shared.cfg.heartbeat_every(),
            shared.finished.clone(),
        ));
        // Asked once for all claim loops. Where the server wakes waiting
        // claims at commit, they wait in `commitq.claim_wait` and never
        // listen: a LISTEN connection would hold a server connection for
        // nothing. Unknown (the question failed): listen, as before.
        let wait_supported = waiter::wait_supported(&shared.cfg).await;
        if wait_supported != Some(true) {
            if let Some(url) = shared.cfg.client.url().map(str::to_string) {
                background.spawn(listen(url, notifies.clone(), shared.stopping.clone()));
            }
        }
        if let Some(every) = shared.cfg.maintain_interval {
            background.spawn(maintain(shared.clone(), every));
        }
        for (queue, concurrency) in &shared.cfg.queues {
            // A claimed job holds a claim slot until it ends, and a handler
            // slot while it runs; the difference is the local queue.
            let slots = Slots::new(*concurrency, shared.cfg.prefetch);
            for index in 0..shared.cfg.max_claimers() {
                background.spawn(claim_loop(
                    shared.clone(),
                    queue.clone(),
                    slots.clone(),
                    notifies[queue].clone(),
                    jobs.clone(),
                    index,
                    wait_supported,
                ));
            }
        }

        shutdown.await;
        shared.stopping.cancel();
        background.close();
        background.wait().await;
        // No claim runs any more: enqueues need not wake this pool.
        for (queue, _) in &shared.cfg.queues {
            stop_waiting(&shared.cfg, queue).await;
        }
        jobs.close();
        if tokio::time::timeout(shared.cfg.grace, jobs.wait())
            .await
            .is_err()
        {
            warn!("grace period over: cancelling running jobs and handing them back");
            shared.hard_stop.cancel();
            jobs.wait().await;
        }
        // Completions hold their jobs' leases until written: heartbeats
        // go on until the completer is done.
        let finished = shared.finished.clone();
        drop(shared);
        let _ = completer.await;
        finished.cancel();
        let _ = heartbeats.await;
    }
}
