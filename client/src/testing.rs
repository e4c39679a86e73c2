//! Reproduce your own races before production does.
//!
//! A race needs several runs at the same moment against a real database,
//! many times over. [`Race`] does that: each round it prepares data, starts
//! `workers` runs together, waits for them, and asks your check whether an
//! invariant broke; the [`RaceReport`] lists the rounds that broke.
//!
//! Two ways to run:
//! - [`Race::run`]: plain async code (a handler before it became a job, a
//!   request handler), all runs released by one barrier.
//! - [`Race::run_jobs`]: real commitq jobs. Your setup enqueues them (with
//!   whatever options: concurrency keys, idempotency keys); a worker pool with
//!   `workers` handlers claims and runs them through the same code as in
//!   production, handlers that can start together wait for each other, and
//!   the round ends when the queue is empty.
//!
//! ```no_run
//! use commitq::testing::Race;
//! use commitq::{Client, Job, Outcome};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Suspend { account: i64 }
//! # impl Job for Suspend { const KIND: &'static str = "suspend"; const QUEUE: &'static str = "billing"; }
//! # async fn example(client: Client) {
//! let report = Race::new(client.clone())
//!     .workers(8)
//!     .rounds(20)
//!     .run_jobs(
//!         |round| {
//!             let client = client.clone();
//!             async move {
//!                 for _ in 0..8 {
//!                     client.enqueue(&Suspend { account: round as i64 }).await.unwrap();
//!                 }
//!             }
//!         },
//!         |ctx, job: Suspend| async move {
//!             // check, act and complete in one transaction ...
//!             Ok(Outcome::Complete)
//!         },
//!         |round| async move {
//!             // e.g. SELECT count(*) FROM emails WHERE account = round: must be 1
//!             Ok(())
//!         },
//!     )
//!     .await;
//! report.assert_clean();
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Barrier, Mutex, Notify};

use crate::{Client, HandlerResult, Job, JobContext, WorkerPool};

/// Runs code or jobs concurrently, round after round, and collects the
/// rounds where your invariant broke.
#[derive(Clone)]
pub struct Race {
    client: Client,
    workers: usize,
    rounds: usize,
    timeout: Duration,
    align: Duration,
    stop_on_first_broken: bool,
}

/// One run of [`Race::run`]: which round, which of the concurrent runs.
#[derive(Clone)]
pub struct RaceRun {
    pub round: usize,
    pub index: usize,
    pub client: Client,
}

/// What a race found.
#[derive(Debug, Default)]
pub struct RaceReport {
    /// Rounds played.
    pub rounds: usize,
    /// Rounds whose check failed, with its message.
    pub broken: Vec<(usize, String)>,
    /// Errors of the runs themselves (not of the invariant), per round.
    pub errors: Vec<(usize, String)>,
}

impl RaceReport {
    /// No round broke its invariant and no run failed.
    pub fn is_clean(&self) -> bool {
        self.broken.is_empty() && self.errors.is_empty()
    }

    /// Panic with the report unless it is clean: for tests.
    pub fn assert_clean(&self) {
        assert!(self.is_clean(), "{self}");
    }
}

impl fmt::Display for RaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} rounds, {} broke the invariant, {} had failing runs",
            self.rounds,
            self.broken.len(),
            self.errors
                .iter()
                .map(|(r, _)| r)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        )?;
        for (round, message) in &self.broken {
            writeln!(f, "  round {round}: {message}")?;
        }
        for (round, message) in self.errors.iter().take(10) {
            writeln!(f, "  round {round}, run failed: {message}")?;
        }
        Ok(())
    }
}

impl Race {
    /// A race of 8 workers, 20 rounds, 30 seconds at most per round.
    pub fn new(client: Client) -> Race {
        Race {
            client,
            workers: 8,
            rounds: 20,
            timeout: Duration::from_secs(30),
            align: Duration::from_millis(50),
            stop_on_first_broken: false,
        }
    }

    /// How many runs go at once.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// How many rounds to play.
    pub fn rounds(mut self, n: usize) -> Self {
        self.rounds = n.max(1);
        self
    }

    /// How long one round may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// For [`Race::run_jobs`]: how long a handler that starts waits for the
    /// others to start too (jobs that cannot start together, such as jobs of
    /// one concurrency key, go on after this).
    pub fn align(mut self, wait: Duration) -> Self {
        self.align = wait;
        self
    }

    /// Stop at the first round that breaks (a quick "does it break?").
    pub fn stop_on_first_broken(mut self, stop: bool) -> Self {
        self.stop_on_first_broken = stop;
        self
    }

    /// Each round: `setup(round)`, then `workers` copies of `action`
    /// released together by a barrier, then `check(round)`; `Err` from the
    /// check is a broken invariant.
    pub async fn run<S, SF, A, AF, E, C, CF>(&self, setup: S, action: A, check: C) -> RaceReport
    where
        S: Fn(usize) -> SF,
        SF: Future<Output = ()>,
        A: Fn(RaceRun) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
        C: Fn(usize) -> CF,
        CF: Future<Output = Result<(), String>>,
    {
        let action = Arc::new(action);
        let mut report = RaceReport::default();
        for round in 0..self.rounds {
            setup(round).await;
            let barrier = Arc::new(Barrier::new(self.workers));
            let runs: Vec<_> = (0..self.workers)
                .map(|index| {
                    let (barrier, action) = (barrier.clone(), action.clone());
                    let run = RaceRun {
                        round,
                        index,
                        client: self.client.clone(),
                    };
                    tokio::spawn(async move {
                        barrier.wait().await;
                        action(run).await.map_err(|e| e.to_string())
                    })
                })
                .collect();
            let deadline = tokio::time::Instant::now() + self.timeout;
            for run in runs {
                match tokio::time::timeout_at(deadline, run).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => report.errors.push((round, e)),
                    Ok(Err(join)) => report.errors.push((round, format!("run panicked: {join}"))),
                    Err(_) => report.errors.push((round, "run timed out".into())),
                }
            }
            if !self.checked(&mut report, round, check(round).await) {
                break;
            }
        }
        report
    }

    /// Count a played round and its check's verdict; false to stop here.
    fn checked(&self, report: &mut RaceReport, round: usize, verdict: Result<(), String>) -> bool {
        report.rounds += 1;
        match verdict {
            Ok(()) => true,
            Err(message) => {
                report.broken.push((round, message));
                !self.stop_on_first_broken
            }
        }
    }

    /// Each round: `setup(round)` enqueues jobs of type `J`; a worker pool
    /// with `workers` handlers runs `handler` on them (handlers that can
    /// start together wait up to [`Race::align`] for each other) until no
    /// job of `J::QUEUE` is left waiting or running; then `check(round)`.
    /// Jobs that failed and wait for a retry end the round too.
    pub async fn run_jobs<J, S, SF, H, HF, C, CF>(
        &self,
        setup: S,
        handler: H,
        check: C,
    ) -> RaceReport
    where
        J: Job,
        S: Fn(usize) -> SF,
        SF: Future<Output = ()>,
        H: Fn(JobContext, J) -> HF + Clone + Send + Sync + 'static,
        HF: Future<Output = HandlerResult> + Send + 'static,
        C: Fn(usize) -> CF,
        CF: Future<Output = Result<(), String>>,
    {
        let mut report = RaceReport::default();
        for round in 0..self.rounds {
            setup(round).await;
            let start = Arc::new(SoftBarrier::new(self.workers, self.align));
            let user = handler.clone();
            let pool = WorkerPool::builder(self.client.clone())
                .queue(J::QUEUE, self.workers)
                // One claimer per handler, each claiming one job: the runs
                // that can start together are claimed together.
                .claimers(self.workers)
                .batch(1)
                .poll_interval(Duration::from_millis(10))
                .maintain_interval(None)
                .handle(move |ctx, job: J| {
                    let (start, user) = (start.clone(), user.clone());
                    async move {
                        start.arrive().await;
                        user(ctx, job).await
                    }
                })
                .build();
            let metrics = pool.metrics();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let running = tokio::spawn(pool.run_until(async {
                let _ = stopped.await;
            }));
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match self.live_jobs(J::QUEUE).await {
                    Ok(0) => break,
                    Ok(left) if started.elapsed() > self.timeout => {
                        report.errors.push((
                            round,
                            format!(
                                "{left} jobs still waiting or running after {:?}",
                                self.timeout
                            ),
                        ));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        report.errors.push((round, e.to_string()));
                        break;
                    }
                }
            }
            let _ = stop.send(());
            let _ = running.await;
            let failed = metrics.snapshot().failed;
            if failed > 0 {
                report
                    .errors
                    .push((round, format!("{failed} job runs failed")));
            }
            if !self.checked(&mut report, round, check(round).await) {
                break;
            }
        }
        report
    }

    async fn live_jobs(&self, queue: &str) -> Result<i64, crate::Error> {
        let conn = self.client.pool().get().await?;
        crate::driver::live_jobs(&**conn, queue).await
    }
}

/// A barrier that gives up waiting after a while: `n` arrivals release
/// everyone, and an arrival that waited `wait` goes on alone. Jobs that can
/// run together are started together; jobs that cannot (one concurrency
/// key) do not wait forever for each other.
struct SoftBarrier {
    n: usize,
    wait: Duration,
    arrived: Mutex<usize>,
    all_here: Notify,
}

impl SoftBarrier {
    fn new(n: usize, wait: Duration) -> SoftBarrier {
        SoftBarrier {
            n,
            wait,
            arrived: Mutex::new(0),
            all_here: Notify::new(),
        }
    }

    async fn arrive(&self) {
        let notified = self.all_here.notified();
        tokio::pin!(notified);
        // Registered before counting, so the last arrival's wake-up cannot
        // slip between our count and our wait.
        notified.as_mut().enable();
        {
            let mut arrived = self.arrived.lock().await;
            *arrived += 1;
            if *arrived >= self.n {
                self.all_here.notify_waiters();
                return;
            }
        }
        let _ = tokio::time::timeout(self.wait, notified).await;
    }
}
