//! The executor: runs one claimed job. It waits for a handler slot, runs
//! the handler under heartbeats and a timeout, and reports a failure,
//! snoozes the job or hands it back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{info_span, warn, Instrument};

use crate::driver;
use crate::metrics::RunOutcome;

use super::completer::Completion;
use super::context::{JobContext, Outcome, RunError};
use super::heartbeat::Held;
use super::producer::{Slots, Waiting};
use super::{Claimed, Shared, WorkerPoolBuilder};

/// Wait for a handler slot, run the job's handler under heartbeats, then
/// report how it went.
pub(super) async fn run_job(
    shared: Arc<Shared>,
    job: Claimed,
    claimed: Option<OwnedSemaphorePermit>,
    slots: Slots,
    waiting: Waiting,
) {
    let cfg = &shared.cfg;
    let span = info_span!("job", queue = %job.queue, kind = %job.kind, id = job.job_id, attempt = job.attempt);
    async {
        // From the claim on, also while the job waits for a handler slot,
        // the heartbeater renews its lease.
        let held: Held = shared.leases.hold(
            job.job_id,
            job.lease_token,
            job.claimed_at,
            cfg.lease,
            shared.hard_stop.child_token(),
        );
        let lease = held.state.clone();
        let cancel = lease.cancel.clone();
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
                drop(waiting);
                hand_back(cfg, &job).await;
                return;
            }
            _ = cancel.cancelled() => {
                drop(waiting);
                if lease.is_lost() {
                    cfg.metrics.add_lost_lease(&job.queue, &job.kind);
                    warn!("lease lost while waiting for a handler; the job will run again elsewhere");
                } else {
                    hand_back(cfg, &job).await;
                }
                return;
            }
        };
        drop(waiting);
        cfg.metrics.record_claim_to_start(&job.queue, &job.kind, job.claimed_at.elapsed());
        let ctx = JobContext {
            job_id: job.job_id,
            lease_token: job.lease_token,
            attempt: job.attempt,
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            dependency_results: job.dependency_results.clone(),
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
        // A job cancelled or whose lease was lost (both seen at the next
        // heartbeat) has `cancel_grace` to stop by itself; then its task is
        // dropped, so it never runs on until the job timeout.
        let started = tokio::time::Instant::now();
        let mut task = tokio::spawn(handler(ctx.clone(), job.args.clone()));
        let stop_after_cancel = async {
            cancel.cancelled().await;
            tokio::time::sleep(cfg.cancel_grace).await;
        };
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
            _ = stop_after_cancel => {
                task.abort();
                warn!(grace = ?cfg.cancel_grace, "handler did not stop after cancellation; dropped");
                Some(Err(RunError::Handler(format!(
                    "cancelled; handler stopped after the cancel grace of {:?}",
                    cfg.cancel_grace
                ))))
            }
        };
        let ran = match &result {
            _ if lease.is_lost() => RunOutcome::LostLease,
            None => RunOutcome::Stopped,
            Some(Err(_)) if shared.hard_stop.is_cancelled() => RunOutcome::Stopped,
            Some(Ok(Outcome::Complete)) => RunOutcome::Completed,
            Some(Ok(Outcome::Snooze(_))) => RunOutcome::Snoozed,
            Some(Err(_)) => RunOutcome::Failed,
        };
        cfg.metrics.record_run(&job.queue, &job.kind, ran, started.elapsed());
        slots.adapt.record_run(started.elapsed());

        if lease.is_lost() {
            // Another worker may hold the job now: report nothing.
            cfg.metrics.add_lost_lease(&job.queue, &job.kind);
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
                    cfg.metrics.add_completed(&job.queue, &job.kind);
                } else {
                    let _ = shared.completions.send(Completion {
                        job_id: job.job_id,
                        lease_token: job.lease_token,
                        next_runs_on: job.keyed.then_some(slots),
                        queue: job.queue.clone(),
                        kind: job.kind.clone(),
                        held,
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

async fn report_failure(cfg: &WorkerPoolBuilder, job: &Claimed, error: &str, discard: bool) {
    cfg.metrics.add_failed(&job.queue, &job.kind);
    let result = async {
        let conn = cfg.own_conn(cfg.lease).await?;
        driver::fail(&**conn, job.job_id, job.lease_token, error, discard).await
    }
    .await;
    match result {
        Ok(state) if state == "discarded" || state == "cancelled" => {
            cfg.metrics.add_discarded(&job.queue, &job.kind);
            warn!(%error, %state, "job failed for good");
        }
        Ok(_) => {
            cfg.metrics.add_retried(&job.queue, &job.kind);
            warn!(%error, "job failed; it will be retried");
        }
        Err(e) => {
            warn!(%error, report_error = %e, "could not record the failure; the lease will expire and the job be rescued")
        }
    }
}

async fn snooze(cfg: &WorkerPoolBuilder, job: &Claimed, delay: Duration) {
    let result = async {
        let conn = cfg.own_conn(cfg.lease).await?;
        driver::snooze(&**conn, job.job_id, job.lease_token, delay).await
    }
    .await;
    match result {
        Ok(_) => cfg.metrics.add_snoozed(&job.queue, &job.kind),
        Err(e) => warn!(error = %e, "could not snooze"),
    }
}

/// Shutdown past the grace period: give the job back at once, without
/// spending its attempt, so another worker can take it.
pub(super) async fn hand_back(cfg: &WorkerPoolBuilder, job: &Claimed) {
    snooze(cfg, job, Duration::ZERO).await;
}
