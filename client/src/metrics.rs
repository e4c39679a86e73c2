//! Counters of a worker pool, cheap to update and to read, for an
//! application to export to whatever it monitors with.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Metrics {
    claimed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    discarded: AtomicU64,
    snoozed: AtomicU64,
    lost_leases: AtomicU64,
    claim_to_start_count: AtomicU64,
    claim_to_start_total_us: AtomicU64,
    claim_to_start_max_us: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub claimed: u64,
    pub completed: u64,
    /// Handler errors, panics and timeouts (each then retried or discarded).
    pub failed: u64,
    pub retried: u64,
    pub discarded: u64,
    pub snoozed: u64,
    /// Jobs whose lease was lost before they could be reported.
    pub lost_leases: u64,
    /// From the claim returning to the handler starting.
    pub claim_to_start_mean: Duration,
    pub claim_to_start_max: Duration,
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let n = self.claim_to_start_count.load(Relaxed);
        let total = self.claim_to_start_total_us.load(Relaxed);
        MetricsSnapshot {
            claimed: self.claimed.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            snoozed: self.snoozed.load(Relaxed),
            lost_leases: self.lost_leases.load(Relaxed),
            claim_to_start_mean: Duration::from_micros(total.checked_div(n).unwrap_or(0)),
            claim_to_start_max: Duration::from_micros(self.claim_to_start_max_us.load(Relaxed)),
        }
    }

    pub(crate) fn add_claimed(&self, n: u64) {
        self.claimed.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_completed(&self, n: u64) {
        self.completed.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_retried(&self) {
        self.retried.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_discarded(&self) {
        self.discarded.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_snoozed(&self) {
        self.snoozed.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_lost_lease(&self) {
        self.lost_leases.fetch_add(1, Relaxed);
    }
    pub(crate) fn record_claim_to_start(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.claim_to_start_count.fetch_add(1, Relaxed);
        self.claim_to_start_total_us.fetch_add(us, Relaxed);
        self.claim_to_start_max_us.fetch_max(us, Relaxed);
    }
}
