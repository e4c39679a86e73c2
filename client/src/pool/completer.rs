//! The completer: writes the completions of finished jobs in batches.

use std::sync::{Arc, Weak};

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::{driver, Error};

use super::executor::{hand_back, run_job};
use super::heartbeat::Held;
use super::producer::{Slots, Waiting};
use super::{Claimed, Shared, WorkerPoolBuilder};

/// A job whose handler returned `Outcome::Complete`, for the batch
/// completer.
pub(super) struct Completion {
    pub(super) job_id: i64,
    pub(super) lease_token: i64,
    /// For a job with a concurrency key: its queue's slots, where the key's
    /// next job runs if the completion takes it (`commitq.complete_and_take`).
    pub(super) next_runs_on: Option<Slots>,
    /// The job's queue and kind, for the metrics' labels.
    pub(super) queue: String,
    pub(super) kind: String,
    /// The job's lease stays renewed until its completion is written.
    pub(super) held: Held,
}

/// Complete finished jobs in batches: whatever has arrived while the last
/// batch was being written goes in the next one. A batch with jobs that
/// hold concurrency-key slots takes the keys' next jobs in the same
/// statement (`commitq.complete_and_take`) and runs them on the slots their
/// predecessors free: a key's jobs then follow one another without a claim,
/// a NOTIFY or a wait for the next claim loop. (One batch at a time: with
/// two or four in flight, the batches were smaller and both the keyed and
/// the plain drains slower, by more commits.)
pub(super) async fn complete_batches(
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
    // Written (or refused): no more heartbeats for these jobs.
    let batch: Vec<(String, String, Option<Slots>, Held)> = batch
        .into_iter()
        .map(|c| (c.queue, c.kind, c.next_runs_on, c.held))
        .collect();
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            warn!(error = %e, jobs = ids.len(), "completing failed; the leases will expire and the jobs run again");
            return;
        }
    };
    let done = rows.iter().filter(|(completed, _)| *completed).count();
    // One row per completion, in the batch's order.
    for ((queue, kind, _, _), (completed, _)) in batch.iter().zip(&rows) {
        if *completed {
            cfg.metrics.add_completed(queue, kind);
        } else {
            cfg.metrics.add_lost_lease(queue, kind);
        }
    }
    if done < ids.len() {
        warn!(
            lost = ids.len() - done,
            "completions refused: lease lost before completing"
        );
    }
    for ((_, _, next_runs_on, held), (_, next)) in batch.into_iter().zip(rows) {
        drop(held);
        let Some(next) = next else { continue };
        cfg.metrics.add_claimed(&next.queue, &next.kind);
        let upgraded = shared.upgrade().filter(|_| !stopping.is_cancelled());
        match (upgraded, next_runs_on) {
            (Some(shared), Some(slots)) => {
                slots.adapt.saw_keyed();
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
    let conn = cfg.own_conn(cfg.lease).await?;
    let rows = driver::complete_many(&conn, ids, tokens).await?;
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
    let conn = cfg.own_conn(cfg.lease).await?;
    let rows = driver::complete_and_take(&conn, ids, tokens, &cfg.worker_id, cfg.lease).await?;
    let claimed_at = Instant::now();
    Ok(rows
        .into_iter()
        .map(|row| {
            let next = row.next.map(|next| Claimed::new(next, claimed_at));
            (row.completed, next)
        })
        .collect())
}
