//! Configuring a pool: [`WorkerPoolBuilder`], its settings and their
//! defaults.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::{Client, Job};

use super::context::{ErasedHandler, HandlerResult, JobContext, RunError};
use super::WorkerPool;

/// Builds a [`WorkerPool`].
pub struct WorkerPoolBuilder {
    pub(super) client: Client,
    pub(super) worker_id: String,
    pub(super) queues: Vec<(String, usize)>,
    pub(super) handlers: HashMap<&'static str, ErasedHandler>,
    pub(super) lease: Duration,
    pub(super) poll_interval: Duration,
    pub(super) job_timeout: Duration,
    pub(super) maintain_interval: Option<Duration>,
    pub(super) batch: usize,
    pub(super) claimers: usize,
    pub(super) prefetch: usize,
    pub(super) grace: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl WorkerPoolBuilder {
    /// A builder with the defaults its setters name.
    pub(super) fn new(client: Client) -> WorkerPoolBuilder {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        WorkerPoolBuilder {
            client,
            worker_id: format!("pid{}-{started}", std::process::id()),
            queues: Vec::new(),
            handlers: HashMap::new(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            job_timeout: Duration::from_secs(300),
            maintain_interval: Some(Duration::from_secs(5)),
            batch: 10,
            claimers: 1,
            prefetch: 0,
            grace: Duration::from_secs(10),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Serve `queue` with up to `concurrency` handlers at once.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency.max(1)));
        self
    }

    /// Run `handler` for jobs of kind `J::KIND`.
    pub fn handle<J, F, Fut>(mut self, handler: F) -> Self
    where
        J: Job,
        F: Fn(JobContext, J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |ctx, args| {
            let handler = handler.clone();
            Box::pin(async move {
                let job: J = serde_json::from_value(args).map_err(|e| {
                    RunError::Deserialize(format!("args do not match {}: {e}", J::KIND))
                })?;
                handler(ctx, job)
                    .await
                    .map_err(|e| RunError::Handler(e.to_string()))
            })
        });
        self.handlers.insert(J::KIND, erased);
        self
    }

    /// Name this worker reports in `commitq.jobs.worker` (default: pid and time).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = id.into();
        self
    }

    /// Lease per claim, renewed by heartbeats every third of it (default 30 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// How often an idle queue is polled when no NOTIFY arrives (default 1 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Longest a handler may run before it is failed (default 5 minutes).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// How often this pool runs `commitq.maintain()`; `None` to leave it to others.
    pub fn maintain_interval(mut self, every: Option<Duration>) -> Self {
        self.maintain_interval = every;
        self
    }

    /// Most jobs one claim takes (default 10).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, 10_000);
        self
    }

    /// Claim loops per queue (default 1). With short jobs one loop, waiting
    /// for each claim's round trip, cannot keep many handlers busy; several
    /// loops share the queue's handler slots.
    pub fn claimers(mut self, n: usize) -> Self {
        self.claimers = n.clamp(1, 64);
        self
    }

    /// Jobs per queue that may be claimed ahead of free handlers and wait in
    /// this process for one (default 0). With short jobs, handlers that
    /// free up one by one make small claims; a local queue lets each claim
    /// take a full batch: while the waiting jobs give every handler its
    /// next one, a claim loop waits for half a batch of free slots before
    /// it claims. Waiting jobs are under lease like running ones
    /// (heartbeated, so they are never rescued while they wait), and on
    /// shutdown they are handed back at once, unstarted.
    ///
    /// For throughput with short jobs, make it about two batches and use
    /// several claim loops, so that the next claims are on their way while
    /// one is taken: the benchmark's drain uses `batch(100)`,
    /// `prefetch(200)` and `claimers(4)` for 16 handlers. Keyed queues are
    /// better off without it: a prefetched job holds its key's slot while
    /// it waits.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.min(100_000);
        self
    }

    /// On shutdown, how long running jobs may finish before they are
    /// cancelled and handed back (default 10 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn build(self) -> WorkerPool {
        WorkerPool {
            inner: Arc::new(self),
        }
    }
}
