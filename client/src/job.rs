//! Typed jobs: a job is a serde type with a kind and a default queue.

use std::time::{Duration, SystemTime};

use serde::{de::DeserializeOwned, Serialize};

/// Arguments of one kind of job. The handler registered for `KIND` receives
/// this type, deserialized from the job's `args`.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcome { user_id: i64 }
///
/// impl commitq::Job for SendWelcome {
///     const KIND: &'static str = "send_welcome";
///     const QUEUE: &'static str = "mail";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job's kind, as stored in `commitq.jobs.kind`.
    const KIND: &'static str;
    /// The queue jobs of this kind go to unless the options say otherwise.
    const QUEUE: &'static str = "default";

    /// Options for this particular job (idempotency key, priority, ...).
    fn options(&self) -> EnqueueOptions {
        EnqueueOptions::default()
    }
}

/// How a job is enqueued; every field is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnqueueOptions {
    /// Another queue than the job type's default.
    pub queue: Option<String>,
    /// Lower runs first; default 0.
    pub priority: Option<i32>,
    /// Run no earlier than this time.
    pub run_at: Option<SystemTime>,
    /// Run no earlier than this long from now (by the database's clock).
    pub delay: Option<Duration>,
    /// Attempts before the job is discarded; default 25.
    pub max_attempts: Option<i32>,
    /// A second enqueue with the same key in the same queue returns the first job.
    pub idempotency_key: Option<String>,
    /// Jobs sharing this key (`account:42`) never run at the same time, in
    /// any queue; `commitq.set_concurrency_limit` allows more per key or
    /// per key prefix.
    pub concurrency_key: Option<String>,
    /// Claimable only once this transaction (a `pg_current_xact_id()` of
    /// another connection) has committed; cancelled if it aborts.
    pub after_xact: Option<i64>,
    /// Run only after all these jobs have completed; cancelled if one of
    /// them is discarded or cancelled. An id that is not a live job and not
    /// remembered as finished is [`Error::JobNotFound`](crate::Error::JobNotFound).
    pub depends_on: Option<Vec<i64>>,
    /// What an idempotency key that names an existing job does.
    pub on_duplicate: Option<OnDuplicate>,
}

/// What an enqueue whose idempotency key already names a job of the queue
/// does (docs/features.md, Replace and debounce).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Return the existing job unchanged (the default).
    Return,
    /// A job still waiting takes the new args, priority, run_at and
    /// max_attempts; a running one gets one follow-up run after it.
    Replace,
    /// A job still waiting runs at the later of its run_at and the new one;
    /// its args stay. A running one gets one follow-up run after it.
    Debounce,
}

impl OnDuplicate {
    pub(crate) fn as_sql(self) -> &'static str {
        match self {
            OnDuplicate::Return => "return",
            OnDuplicate::Replace => "replace",
            OnDuplicate::Debounce => "debounce",
        }
    }
}

impl EnqueueOptions {
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n);
        self
    }
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }
    pub fn after_xact(mut self, xact: i64) -> Self {
        self.after_xact = Some(xact);
        self
    }
    pub fn depends_on(mut self, jobs: impl IntoIterator<Item = i64>) -> Self {
        self.depends_on = Some(jobs.into_iter().collect());
        self
    }
    pub fn on_duplicate(mut self, mode: OnDuplicate) -> Self {
        self.on_duplicate = Some(mode);
        self
    }
}

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub job_id: i64,
    /// False when an idempotency key named an existing job, whose id this is.
    pub inserted: bool,
}
