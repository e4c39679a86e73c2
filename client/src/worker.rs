//! The worker pool: claims jobs in batches, runs their handlers, heartbeats
//! their leases, reports outcomes, and shuts down without losing a job.
//!
//! Everything that must be safe under concurrency (who gets a job, whether a
//! lease is still ours, retries and backoff) is decided by commitq's SQL;
//! this module only drives it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{GenericClient, NoTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};

use crate::driver::{self, ClaimedRow};
use crate::metrics::Metrics;
use crate::{Client, Error, Job};

/// What a handler decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done: the pool completes the job (unless the handler already did, with
    /// [`JobContext::complete_in`]).
    Complete,
    /// Not now: put the job back for this long without spending an attempt.
    Snooze(Duration),
}

/// A handler's error: the job is failed with its text, and retried with
/// backoff until it runs out of attempts.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns.
pub type HandlerResult = Result<Outcome, HandlerError>;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Outcome, RunError>> + Send>>;
type ErasedHandler = Arc<dyn Fn(JobContext, Value) -> BoxFuture + Send + Sync>;

/// Why a run did not end in an outcome.
enum RunError {
    /// The args no longer match the job type: no retry can fix that.
    Deserialize(String),
    Handler(String),
}

/// What a running handler knows about its job.
#[derive(Clone)]
pub struct JobContext {
    pub job_id: i64,
    pub lease_token: i64,
    pub attempt: i32,
    pub queue: String,
    pub kind: String,
    client: Client,
    cancel: CancellationToken,
    completed: Arc<AtomicBool>,
}

impl JobContext {
    /// Complete the job inside the handler's own transaction, so that its
    /// writes and the completion commit together; if the lease was lost in
    /// the meantime this fails (`Error::StaleLease` or `Error::LeaseExpired`)
    /// and the transaction must roll back.
    pub async fn complete_in<C: GenericClient>(&self, tx: &C) -> Result<(), Error> {
        driver::complete(tx, self.job_id, self.lease_token).await?;
        self.completed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Raise unless this job's lease is still current, and hold it until the
    /// caller's transaction ends: fences writes made for the job.
    pub async fn assert_lease<C: GenericClient>(&self, tx: &C) -> Result<(), Error> {
        driver::assert_lease(tx, self.job_id, self.lease_token).await
    }

    /// Do the named side effect `name` of this job at most once across its
    /// attempts: if an earlier attempt recorded it, return its recorded
    /// result without calling `effect`; otherwise call `effect` with an
    /// idempotency key that is the same for every attempt (hand it to the
    /// external API, so a call whose result was lost is not repeated there
    /// either) and record the result. Fails with `Error::StaleLease` or
    /// `Error::LeaseExpired` if the lease moved on.
    pub async fn effect<T, F, Fut>(&self, name: &str, effect: F) -> Result<T, Error>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T, HandlerError>>,
    {
        let conn = self.client.pool().get().await?;
        let begun = driver::effect_begin(&**conn, self.job_id, self.lease_token, name).await?;
        let (done, key) = (begun.done, begun.idempotency_key);
        if done {
            let recorded = begun.result;
            return serde_json::from_value(recorded.unwrap_or(Value::Null)).map_err(|e| {
                Error::Effect(format!(
                    "recorded result of {name} does not deserialize: {e}"
                ))
            });
        }
        let result = effect(key)
            .await
            .map_err(|e| Error::Effect(format!("{name}: {e}")))?;
        let value = serde_json::to_value(&result).map_err(Error::Serialize)?;
        driver::effect_done(&**conn, self.job_id, self.lease_token, name, &value).await?;
        Ok(result)
    }

    /// True once the job was cancelled by an operator, its lease was lost, or
    /// the pool is shutting down past its grace period: stop soon.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when [`JobContext::is_cancelled`] becomes true.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The client, for the handler's own queries and enqueues.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Builds a [`WorkerPool`].
pub struct WorkerPoolBuilder {
    client: Client,
    worker_id: String,
    queues: Vec<(String, usize)>,
    handlers: HashMap<&'static str, ErasedHandler>,
    lease: Duration,
    poll_interval: Duration,
    job_timeout: Duration,
    maintain_interval: Option<Duration>,
    batch: usize,
    claimers: usize,
    prefetch: usize,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl WorkerPoolBuilder {
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
    completions: mpsc::UnboundedSender<Completion>,
}

struct Claimed {
    job_id: i64,
    queue: String,
    kind: String,
    args: Value,
    attempt: i32,
    lease_token: i64,
    /// Has a concurrency key: its completion passes the key's slot on.
    keyed: bool,
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
            claimed_at,
        }
    }
}

/// A job whose handler returned `Outcome::Complete`, for the batch
/// completer.
struct Completion {
    job_id: i64,
    lease_token: i64,
    /// For a job with a concurrency key: its queue's slots, where the key's
    /// next job runs if the completion takes it (`commitq.complete_and_take`).
    next_runs_on: Option<Slots>,
}

impl WorkerPool {
    pub fn builder(client: Client) -> WorkerPoolBuilder {
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
        if let Some(url) = shared.cfg.client.url().map(str::to_string) {
            background.spawn(listen(url, notifies.clone(), shared.stopping.clone()));
        }
        if let Some(every) = shared.cfg.maintain_interval {
            background.spawn(maintain(shared.clone(), every));
        }
        for (queue, concurrency) in &shared.cfg.queues {
            // A claimed job holds a claim slot until it ends, and a handler
            // slot while it runs; the difference is the local queue.
            let slots = Slots {
                claim: Arc::new(Semaphore::new(*concurrency + shared.cfg.prefetch)),
                run: Arc::new(Semaphore::new(*concurrency)),
                handlers: *concurrency,
                waiting: Arc::new(AtomicUsize::new(0)),
            };
            for _ in 0..shared.cfg.claimers {
                background.spawn(claim_loop(
                    shared.clone(),
                    queue.clone(),
                    slots.clone(),
                    notifies[queue].clone(),
                    jobs.clone(),
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
        drop(shared);
        let _ = completer.await;
    }
}

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
struct Slots {
    claim: Arc<Semaphore>,
    run: Arc<Semaphore>,
    handlers: usize,
    /// Jobs claimed and waiting here for a handler slot.
    waiting: Arc<AtomicUsize>,
}

/// Counts a claimed job as waiting for a handler, from `new` until dropped.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Waiting {
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
async fn claim_loop(
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
        cfg.metrics.add_claimed(claimed.len() as u64);
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

async fn stop_waiting(cfg: &WorkerPoolBuilder, queue: &str) {
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

/// Wait for a handler slot, run the job's handler under heartbeats, then
/// report how it went.
async fn run_job(
    shared: Arc<Shared>,
    job: Claimed,
    claimed: Option<OwnedSemaphorePermit>,
    slots: Slots,
    waiting: Waiting,
) {
    let cfg = &shared.cfg;
    let span = info_span!("job", queue = %job.queue, kind = %job.kind, id = job.job_id, attempt = job.attempt);
    async {
        let cancel = shared.hard_stop.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        // From the claim on, also while the job waits for a handler slot.
        let heartbeat = tokio::spawn(heartbeat(
            cfg.client.clone(),
            job.job_id,
            job.lease_token,
            cfg.lease,
            cancel.clone(),
            lost.clone(),
        ));
        // A job taken by a completion (no claim slot yet) waits for a claim
        // slot like the claim loops do, then for a handler slot; without
        // prefetch a claimed job finds a handler slot free. A job still
        // waiting when the pool stops is handed back unstarted; one whose
        // lease was lost meanwhile belongs to someone else now.
        let slots_free = async {
            let claimed = match claimed {
                Some(p) => p,
                None => slots.claim.clone().acquire_owned().await.expect("semaphore never closed"),
            };
            let running = slots.run.clone().acquire_owned().await.expect("semaphore never closed");
            (claimed, running)
        };
        let _slots = tokio::select! {
            biased;
            p = slots_free => p,
            _ = shared.stopping.cancelled() => {
                heartbeat.abort();
                drop(waiting);
                hand_back(cfg, &job).await;
                return;
            }
            _ = cancel.cancelled() => {
                drop(waiting);
                heartbeat.abort();
                if lost.load(Ordering::SeqCst) {
                    cfg.metrics.add_lost_lease();
                    warn!("lease lost while waiting for a handler; the job will run again elsewhere");
                } else {
                    hand_back(cfg, &job).await;
                }
                return;
            }
        };
        drop(waiting);
        cfg.metrics.record_claim_to_start(job.claimed_at.elapsed());
        let ctx = JobContext {
            job_id: job.job_id,
            lease_token: job.lease_token,
            attempt: job.attempt,
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            client: cfg.client.clone(),
            cancel: cancel.clone(),
            completed: Arc::new(AtomicBool::new(false)),
        };
        let Some(handler) = cfg.handlers.get(job.kind.as_str()).cloned() else {
            let error = format!("no handler for kind {:?} in this worker", job.kind);
            report_failure(cfg, &job, &error, false).await;
            return;
        };

        // The handler runs in its own task so that a panic is caught here.
        let mut task = tokio::spawn(handler(ctx.clone(), job.args.clone()));
        let result = tokio::select! {
            r = tokio::time::timeout(cfg.job_timeout, &mut task) => match r {
                Ok(Ok(r)) => Some(r),
                Ok(Err(join)) => Some(Err(RunError::Handler(panic_message(join)))),
                Err(_) => {
                    task.abort();
                    Some(Err(RunError::Handler(format!("timed out after {:?}", cfg.job_timeout))))
                }
            },
            _ = shared.hard_stop.cancelled() => {
                task.abort();
                None
            }
        };
        heartbeat.abort();

        if lost.load(Ordering::SeqCst) {
            // Another worker may hold the job now: report nothing.
            cfg.metrics.add_lost_lease();
            warn!("lease lost while running; the job will run again elsewhere");
            return;
        }
        match result {
            // Cut short by shutdown (the handler may have returned its own
            // error on seeing the cancellation): not a failure of the job.
            None | Some(Err(_)) if shared.hard_stop.is_cancelled() => hand_back(cfg, &job).await,
            None => hand_back(cfg, &job).await,
            Some(Ok(Outcome::Complete)) => {
                if ctx.completed.load(Ordering::SeqCst) {
                    cfg.metrics.add_completed(1);
                } else {
                    let _ = shared.completions.send(Completion {
                        job_id: job.job_id,
                        lease_token: job.lease_token,
                        next_runs_on: job.keyed.then_some(slots),
                    });
                }
            }
            Some(Ok(Outcome::Snooze(delay))) => snooze(cfg, &job, delay).await,
            Some(Err(RunError::Deserialize(e))) => report_failure(cfg, &job, &e, true).await,
            Some(Err(RunError::Handler(e))) => report_failure(cfg, &job, &e, false).await,
        }
    }
    .instrument(span)
    .await
}

fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return "handler task was cancelled".into();
    }
    let payload = join.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    format!("handler panicked: {text}")
}

/// Renew the lease every third of it; cancel the handler when the job was
/// cancelled or the lease is lost.
async fn heartbeat(
    client: Client,
    job_id: i64,
    token: i64,
    lease: Duration,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let result = async {
            let conn = client.pool().get().await?;
            driver::heartbeat(&**conn, job_id, token).await
        }
        .await;
        match result {
            Ok(false) => {}
            Ok(true) => {
                debug!("cancellation requested");
                cancel.cancel();
            }
            Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => {
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "heartbeat failed; will retry"),
        }
    }
}

async fn report_failure(cfg: &WorkerPoolBuilder, job: &Claimed, error: &str, discard: bool) {
    cfg.metrics.add_failed();
    let result = async {
        let conn = cfg.client.pool().get().await?;
        driver::fail(&**conn, job.job_id, job.lease_token, error, discard).await
    }
    .await;
    match result {
        Ok(state) if state == "discarded" || state == "cancelled" => {
            cfg.metrics.add_discarded();
            warn!(%error, %state, "job failed for good");
        }
        Ok(_) => {
            cfg.metrics.add_retried();
            warn!(%error, "job failed; it will be retried");
        }
        Err(e) => {
            warn!(%error, report_error = %e, "could not record the failure; the lease will expire and the job be rescued")
        }
    }
}

async fn snooze(cfg: &WorkerPoolBuilder, job: &Claimed, delay: Duration) {
    let result = async {
        let conn = cfg.client.pool().get().await?;
        driver::snooze(&**conn, job.job_id, job.lease_token, delay).await
    }
    .await;
    match result {
        Ok(_) => cfg.metrics.add_snoozed(),
        Err(e) => warn!(error = %e, "could not snooze"),
    }
}

/// Shutdown past the grace period: give the job back at once, without
/// spending its attempt, so another worker can take it.
async fn hand_back(cfg: &WorkerPoolBuilder, job: &Claimed) {
    snooze(cfg, job, Duration::ZERO).await;
}

/// Complete finished jobs in batches: whatever has arrived while the last
/// batch was being written goes in the next one. A batch with jobs that
/// hold concurrency-key slots takes the keys' next jobs in the same
/// statement (`commitq.complete_and_take`) and runs them on the slots their
/// predecessors free: a key's jobs then follow one another without a claim,
/// a NOTIFY or a wait for the next claim loop. (One batch at a time: with
/// two or four in flight, the batches were smaller and both the keyed and
/// the plain drains slower, by more commits.)
async fn complete_batches(
    shared: Weak<Shared>,
    cfg: Arc<WorkerPoolBuilder>,
    stopping: CancellationToken,
    jobs: TaskTracker,
    mut rx: mpsc::UnboundedReceiver<Completion>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        complete_batch(&shared, &cfg, &stopping, &jobs, batch).await;
    }
}

/// Write one batch of completions and start the jobs it took.
async fn complete_batch(
    shared: &Weak<Shared>,
    cfg: &WorkerPoolBuilder,
    stopping: &CancellationToken,
    jobs: &TaskTracker,
    batch: Vec<Completion>,
) {
    let ids: Vec<i64> = batch.iter().map(|c| c.job_id).collect();
    let tokens: Vec<i64> = batch.iter().map(|c| c.lease_token).collect();
    // Once the pool stops, nothing new is taken.
    let take = batch.iter().any(|c| c.next_runs_on.is_some()) && !stopping.is_cancelled();
    let result = if take {
        complete_and_take(cfg, &ids, &tokens).await
    } else {
        complete_many(cfg, &ids, &tokens).await
    };
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            warn!(error = %e, jobs = ids.len(), "completing failed; the leases will expire and the jobs run again");
            return;
        }
    };
    let done = rows.iter().filter(|(completed, _)| *completed).count();
    cfg.metrics.add_completed(done as u64);
    for _ in done..ids.len() {
        cfg.metrics.add_lost_lease();
    }
    if done < ids.len() {
        warn!(
            lost = ids.len() - done,
            "completions refused: lease lost before completing"
        );
    }
    for (completion, (_, next)) in batch.into_iter().zip(rows) {
        let Some(next) = next else { continue };
        cfg.metrics.add_claimed(1);
        let upgraded = shared.upgrade().filter(|_| !stopping.is_cancelled());
        match (upgraded, completion.next_runs_on) {
            (Some(shared), Some(slots)) => {
                let waiting = Waiting::new(&slots.waiting);
                jobs.spawn(run_job(shared, next, None, slots, waiting));
            }
            // The pool is stopping: give the job back unstarted.
            _ => hand_back(cfg, &next).await,
        }
    }
}

/// Complete a batch; one `(completed, None)` per job, in order.
async fn complete_many(
    cfg: &WorkerPoolBuilder,
    ids: &[i64],
    tokens: &[i64],
) -> Result<Vec<(bool, Option<Claimed>)>, Error> {
    let conn = cfg.client.pool().get().await?;
    let rows = driver::complete_many(&**conn, ids, tokens).await?;
    Ok(rows
        .into_iter()
        .map(|completed| (completed, None))
        .collect())
}

/// Complete a batch and take the next jobs of the keys it frees; one
/// `(completed, next job)` per job, in order.
async fn complete_and_take(
    cfg: &WorkerPoolBuilder,
    ids: &[i64],
    tokens: &[i64],
) -> Result<Vec<(bool, Option<Claimed>)>, Error> {
    let conn = cfg.client.pool().get().await?;
    let rows = driver::complete_and_take(&**conn, ids, tokens, &cfg.worker_id, cfg.lease).await?;
    let claimed_at = Instant::now();
    Ok(rows
        .into_iter()
        .map(|row| {
            let next = row.next.map(|next| Claimed::new(next, claimed_at));
            (row.completed, next)
        })
        .collect())
}

/// Keep a LISTEN connection for the pool's queues, reconnecting when it
/// drops; after every (re)connect all queues are woken, since notifications
/// sent while disconnected are lost.
async fn listen(url: String, queues: HashMap<String, Arc<Notify>>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            let _ = tx.send(n);
                        }
                    }
                });
                let mut ok = true;
                for queue in queues.keys() {
                    if let Err(e) = driver::listen(&client, queue).await {
                        warn!(error = %e, "LISTEN failed");
                        ok = false;
                        break;
                    }
                }
                if ok {
                    backoff = Duration::from_millis(100);
                    queues.values().for_each(|n| n.notify_one());
                    loop {
                        tokio::select! {
                            n = rx.recv() => match n {
                                Some(n) => {
                                    if let Some(notify) = driver::channel_queue(n.channel()).and_then(|q| queues.get(q)) {
                                        notify.notify_one();
                                    }
                                }
                                None => break,
                            },
                            _ = stop.cancelled() => return,
                        }
                    }
                    warn!("LISTEN connection lost; reconnecting");
                }
            }
            Err(e) => warn!(error = %e, "LISTEN connection failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Run `commitq.maintain()` every `every`: rescues jobs of dead workers.
async fn maintain(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.stopping.cancelled() => return,
        }
        let result = async {
            let conn = shared.cfg.client.pool().get().await?;
            driver::maintain(&**conn).await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "maintain failed");
        }
    }
}
