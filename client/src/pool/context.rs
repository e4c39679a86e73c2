//! What a handler sees and returns: [`JobContext`], [`Outcome`],
//! [`HandlerError`]; and the type-erased handler the pool stores.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;

use crate::{driver, Client, Error};

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

pub(super) type BoxFuture = Pin<Box<dyn Future<Output = Result<Outcome, RunError>> + Send>>;
pub(super) type ErasedHandler = Arc<dyn Fn(JobContext, Value) -> BoxFuture + Send + Sync>;

/// Why a run did not end in an outcome.
pub(super) enum RunError {
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
    /// The results of the jobs this one was enqueued to wait for
    /// ([`EnqueueOptions::depends_on`](crate::EnqueueOptions::depends_on)),
    /// as `{"<job id>": result}`; `null` for one completed without a result.
    /// `None` for a job without dependencies.
    pub dependency_results: Option<Value>,
    pub(super) client: Client,
    pub(super) cancel: CancellationToken,
    pub(super) completed: Arc<AtomicBool>,
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

    /// [`complete_in`](Self::complete_in) with a result (any JSON value up
    /// to `commitq.max_args_bytes`) that the jobs depending on this one read
    /// in their [`dependency_results`](Self::dependency_results).
    pub async fn complete_in_with_result<C: GenericClient>(
        &self,
        tx: &C,
        result: &Value,
    ) -> Result<(), Error> {
        driver::complete_with_result(tx, self.job_id, self.lease_token, result).await?;
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
