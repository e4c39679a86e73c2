//! Configuring a pool: [`WorkerPoolBuilder`], its settings and their
//! defaults.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tracing::warn;

use crate::metrics::Metrics;
use crate::{client, Client, Error, Job};

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
    /// `None`: adapted to the backlog (see `producer::Adaptive`).
    pub(super) batch: Option<usize>,
    pub(super) claimers: Option<usize>,
    pub(super) prefetch: Option<usize>,
    pub(super) heartbeat_interval: Option<Duration>,
    pub(super) cancel_grace: Duration,
    pub(super) grace: Duration,
    pub(super) metrics: Arc<Metrics>,
    /// The pool's own connections (claims, heartbeats, completions,
    /// failures, maintain), apart from the client's that handlers use; set
    /// by `build`.
    pub(super) own: Option<Pool>,
}

/// Most jobs an adaptive claim takes.
pub(super) const AUTO_BATCH: usize = 100;
/// Most claim loops per queue when adapted to the backlog.
pub(super) const AUTO_CLAIMERS: usize = 4;
/// Most jobs an adaptive local queue holds: two full claims.
pub(super) const AUTO_PREFETCH: usize = 2 * AUTO_BATCH;

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
            batch: None,
            claimers: None,
            prefetch: None,
            heartbeat_interval: None,
            cancel_grace: Duration::from_secs(5),
            grace: Duration::from_secs(10),
            metrics: Arc::new(Metrics::default()),
            own: None,
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

    /// Lease per claim, renewed by heartbeats every third of it (default
    /// 30 s): a worker that dies leaves its jobs for at most this long
    /// before `commitq.maintain()` rescues them. (The SQL functions'
    /// default of 5 minutes is for callers without heartbeats.)
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// How often the leases of held jobs are renewed, and so how soon a
    /// cancellation or a lost lease is seen (default: a third of the
    /// lease; at most half of it, at least 100 ms).
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = Some(every.max(Duration::from_millis(100)));
        self
    }

    /// After a job was cancelled or its lease lost, how long its handler
    /// may run on (to see [`super::JobContext::cancelled`] and stop
    /// cleanly) before it is dropped (default 5 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// The interval heartbeats use.
    pub(super) fn heartbeat_every(&self) -> Duration {
        let half = self.lease / 2;
        self.heartbeat_interval.unwrap_or(self.lease / 3).min(half)
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

    /// Most jobs one claim takes (default: adaptive, up to 100; a claim
    /// takes no more than the slots free, so a job enqueued alone is
    /// claimed alone).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = Some(batch.clamp(1, 10_000));
        self
    }

    /// Claim loops per queue (default: adaptive, one while the queue keeps
    /// up, up to four while claims come back full). With short jobs one
    /// loop, waiting for each claim's round trip, cannot keep many handlers
    /// busy; several loops share the queue's handler slots.
    pub fn claimers(mut self, n: usize) -> Self {
        self.claimers = Some(n.clamp(1, 64));
        self
    }

    /// Jobs per queue that may be claimed ahead of free handlers and wait in
    /// this process for one (default: adaptive, see below). With short jobs, handlers that
    /// free up one by one make small claims; a local queue lets each claim
    /// take a full batch: while the waiting jobs give every handler its
    /// next one, a claim loop waits for half a batch of free slots before
    /// it claims. Waiting jobs are under lease like running ones
    /// (heartbeated, so they are never rescued while they wait), and on
    /// shutdown they are handed back at once, unstarted.
    ///
    /// Unset, the pool sizes it itself: about as many jobs as its handlers
    /// finish during a claim's round trip (measured as jobs end), up to two
    /// full claims (200); none for long jobs, where a job waiting here
    /// would only wait longer than on the queue; and none while the
    /// queue's jobs have concurrency keys, since a prefetched keyed job
    /// holds its key's slot while it waits, and jobs of that key claimed
    /// meanwhile are parked. Set, it is fixed.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n.min(100_000));
        self
    }

    /// On shutdown, how long running jobs may finish before they are
    /// cancelled and handed back (default 10 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Claim loops a queue runs at most.
    pub(super) fn max_claimers(&self) -> usize {
        self.claimers.unwrap_or(AUTO_CLAIMERS)
    }

    /// Build the pool. Its own statements (claims, heartbeats, completions)
    /// get connections of its own, opened from the client's connection
    /// string, one per claim loop and three more; handlers use the
    /// client's pool. A client made by [`Client::from_pool`] without
    /// [`Client::with_listen_url`] has no connection string: the pool then
    /// shares the client's connections, and says so.
    ///
    /// Logs a warning when the queues' handlers outnumber the client's
    /// connections; [`WorkerPoolBuilder::try_build`] refuses instead.
    pub fn build(mut self) -> WorkerPool {
        let handlers: usize = self.queues.iter().map(|(_, n)| n).sum();
        let connections = self.client.max_connections();
        if handlers > connections {
            warn!(
                handlers,
                connections,
                "more handlers than client connections: handlers that hold a connection will wait \
                 for one (size the client with Client::connect_with)"
            );
        }
        let size = self.queues.len().max(1) * self.max_claimers() + 3;
        self.own = match self.client.url().map(|url| client::open_pool(url, size)) {
            Some(Ok(pool)) => Some(pool),
            Some(Err(e)) => {
                warn!(error = %e, "cannot open the worker pool's own connections; sharing the client's");
                None
            }
            None => {
                warn!("client without a connection string: heartbeats and completions share the connections handlers use");
                None
            }
        };
        WorkerPool {
            inner: Arc::new(self),
        }
    }

    /// [`WorkerPoolBuilder::build`], but refuse with [`Error::Config`] when
    /// the queues' handlers outnumber the client's connections, or when the
    /// client has no connection string for the pool's own connections.
    pub fn try_build(self) -> Result<WorkerPool, Error> {
        let handlers: usize = self.queues.iter().map(|(_, n)| n).sum();
        let connections = self.client.max_connections();
        if handlers > connections {
            return Err(Error::Config(format!(
                "{handlers} handlers but {connections} client connections: \
                 use Client::connect_with(url, {handlers}) or fewer handlers"
            )));
        }
        if self.client.url().is_none() {
            return Err(Error::Config(
                "the client has no connection string for the pool's own connections \
                 (Client::with_listen_url)"
                    .into(),
            ));
        }
        Ok(self.build())
    }

    /// A connection of the pool's own, waiting at most `wait` for one.
    pub(super) async fn own_conn(&self, wait: Duration) -> Result<Object, Error> {
        let pool = self.own.as_ref().unwrap_or(self.client.pool());
        match tokio::time::timeout(wait, pool.get()).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(Error::Pool(format!("no connection within {wait:?}"))),
        }
    }
}
