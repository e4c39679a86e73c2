//! The heartbeater: one task per pool renews the leases of every job the
//! pool holds (running or waiting for a handler), on the pool's own
//! connections, and tells a job when it was cancelled or its lease lost.
//!
//! One task for all jobs rather than one per job: a drain of short jobs
//! spawns nothing per job for its lease, and the renewals of a tick go out
//! pipelined on one connection. That connection is never one a handler can
//! hold (the pool's own, see `WorkerPoolBuilder::build`), and every wait for
//! it is bounded, so a handler that keeps its connection, or its
//! transaction, open for longer than the lease cannot starve the renewals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{driver, Error};

use super::WorkerPoolBuilder;

/// What the heartbeater knows of one held job.
pub(super) struct LeaseState {
    lease_token: i64,
    /// Cancelled when the job was cancelled, its lease lost, or the pool
    /// stops past its grace period (a child of the pool's hard stop).
    pub(super) cancel: CancellationToken,
    /// The lease is no longer ours: report nothing for the job.
    pub(super) lost: AtomicBool,
    /// An operator asked for the job's cancellation.
    pub(super) cancel_requested: AtomicBool,
    /// When the lease runs out by this process's clock, as last renewed
    /// (from when the renewal was sent, so never later than the server's).
    expires: Mutex<Instant>,
}

impl LeaseState {
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }
}

/// The jobs a pool holds, by id.
#[derive(Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<i64, Arc<LeaseState>>>,
}

/// A job's entry in [`Leases`], removed when this is dropped (the job
/// ended, was handed back, or its lease was lost).
pub(super) struct Held {
    leases: Arc<Leases>,
    job_id: i64,
    pub(super) state: Arc<LeaseState>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leases.held.lock().unwrap().remove(&self.job_id);
    }
}

impl Leases {
    /// Hold `job_id` under `lease_token`, leased for `lease` from
    /// `claimed_at`.
    pub(super) fn hold(
        self: &Arc<Self>,
        job_id: i64,
        lease_token: i64,
        claimed_at: Instant,
        lease: Duration,
        cancel: CancellationToken,
    ) -> Held {
        let state = Arc::new(LeaseState {
            lease_token,
            cancel,
            lost: AtomicBool::new(false),
            cancel_requested: AtomicBool::new(false),
            expires: Mutex::new(claimed_at + lease),
        });
        self.held.lock().unwrap().insert(job_id, state.clone());
        Held {
            leases: self.clone(),
            job_id,
            state,
        }
    }

    fn snapshot(&self) -> Vec<(i64, Arc<LeaseState>)> {
        let held = self.held.lock().unwrap();
        held.iter().map(|(id, s)| (*id, s.clone())).collect()
    }
}

/// Every `every`, renew the lease of every held job. A job whose renewal
/// says it was cancelled is told so; a job whose lease is stale, or has run
/// out by this process's clock because no renewal got through in time
/// (the database unreachable, say), is marked lost: from then on another
/// worker may hold it.
pub(super) async fn renew_leases(
    cfg: Arc<WorkerPoolBuilder>,
    leases: Arc<Leases>,
    every: Duration,
    finished: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Jobs still held after the stop are handed back or finish
            // within the grace period; the stop's end cancels this task.
            _ = finished.cancelled() => return,
        }
        let now = Instant::now();
        let held = leases.snapshot();
        for (_, state) in &held {
            if now >= *state.expires.lock().unwrap() && !state.is_lost() {
                warn!("lease ran out before a heartbeat could renew it");
                state.lose();
            }
        }
        let live: Vec<_> = held.into_iter().filter(|(_, s)| !s.is_lost()).collect();
        if live.is_empty() {
            continue;
        }
        // Bounded: a renewal that cannot be sent within one interval is
        // retried at the next tick, and a lease that runs out meanwhile is
        // given up above.
        let sent = Instant::now();
        let renewed = tokio::time::timeout(every, async {
            let conn = cfg.own_conn(every).await?;
            let calls = live
                .iter()
                .map(|(id, s)| driver::heartbeat(&conn, *id, s.lease_token));
            Ok::<_, Error>(join_all(calls).await)
        })
        .await;
        let results = match renewed {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => {
                warn!(error = %e, "heartbeats failed; will retry");
                continue;
            }
            Err(_) => {
                warn!(jobs = live.len(), "heartbeats timed out; will retry");
                continue;
            }
        };
        for ((_, state), result) in live.iter().zip(results) {
            match result {
                Ok(requested) => {
                    *state.expires.lock().unwrap() = sent + cfg.lease;
                    if requested {
                        debug!("cancellation requested");
                        state.cancel_requested.store(true, Ordering::SeqCst);
                        state.cancel.cancel();
                    }
                }
                Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => state.lose(),
                Err(e) => warn!(error = %e, "heartbeat failed; will retry"),
            }
        }
    }
}
