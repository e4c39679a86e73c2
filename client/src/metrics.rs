//! Counters of a worker pool, cheap to update and to read: as a snapshot of
//! plain numbers, and in the Prometheus text format, labelled by queue and
//! kind (and the handler's outcome for the duration histogram).
//!
//! The Prometheus side is the `prometheus-client` crate (the official Rust
//! client of the Prometheus project): its text encoder follows the
//! exposition format, escaping included, so nothing here formats metrics
//! by hand. Metric families share their state with every clone, so the same
//! counters can be registered into an application's own registry and
//! encoded by [`Metrics::encode_prometheus`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The labels of every per-job metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    kind: String,
}

/// The labels of the duration histogram: how the handler's run ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    kind: String,
    outcome: String,
}

type Counters = Family<JobLabels, Counter>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets from 1 ms to about 9 minutes, doubling: handlers range from
/// sub-millisecond no-ops to long exports, and 20 buckets cover both.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

#[derive(Debug)]
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
    by_job: ByJob,
}

/// The labelled metrics, registered under the `commitq_` prefix.
#[derive(Debug, Clone)]
struct ByJob {
    claimed: Counters,
    completed: Counters,
    failed: Counters,
    retried: Counters,
    discarded: Counters,
    snoozed: Counters,
    lost_leases: Counters,
    duration: Histograms<OutcomeLabels>,
    claim_to_start: Histograms<JobLabels>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            claimed: AtomicU64::default(),
            completed: AtomicU64::default(),
            failed: AtomicU64::default(),
            retried: AtomicU64::default(),
            discarded: AtomicU64::default(),
            snoozed: AtomicU64::default(),
            lost_leases: AtomicU64::default(),
            claim_to_start_count: AtomicU64::default(),
            claim_to_start_total_us: AtomicU64::default(),
            claim_to_start_max_us: AtomicU64::default(),
            by_job: ByJob {
                claimed: Counters::default(),
                completed: Counters::default(),
                failed: Counters::default(),
                retried: Counters::default(),
                discarded: Counters::default(),
                snoozed: Counters::default(),
                lost_leases: Counters::default(),
                duration: Histograms::new_with_constructor(seconds_histogram),
                claim_to_start: Histograms::new_with_constructor(seconds_histogram),
            },
        }
    }
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

/// How a handler's run ended, for the duration histogram's `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// The handler returned success (the completion is written in a batch).
    Completed,
    /// An error, a panic, a timeout or args that did not deserialize.
    Failed,
    Snoozed,
    /// The lease was lost while it ran: another worker may hold the job.
    LostLease,
    /// Cut short by the pool's shutdown; the job is handed back.
    Stopped,
}

impl RunOutcome {
    fn label(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Failed => "failed",
            RunOutcome::Snoozed => "snoozed",
            RunOutcome::LostLease => "lost_lease",
            RunOutcome::Stopped => "stopped",
        }
    }
}

fn labels(queue: &str, kind: &str) -> JobLabels {
    JobLabels {
        queue: queue.to_owned(),
        kind: kind.to_owned(),
    }
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

    /// Register this pool's metrics into `registry`, under the `commitq_`
    /// prefix, for an application that serves its own `/metrics`. They stay
    /// live: the registry encodes the current values on every scrape. Two
    /// pools in one registry need a label of their own to tell them apart
    /// (`registry.sub_registry_with_label`).
    pub fn register_prometheus(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("commitq");
        let m = self.by_job.clone();
        r.register("jobs_claimed", "Jobs claimed by this pool", m.claimed);
        r.register(
            "jobs_completed",
            "Jobs whose completion was written",
            m.completed,
        );
        r.register(
            "jobs_failed",
            "Handler errors, panics and timeouts (each then retried or discarded)",
            m.failed,
        );
        r.register(
            "jobs_retried",
            "Failed jobs scheduled to run again",
            m.retried,
        );
        r.register(
            "jobs_discarded",
            "Failed jobs that will not run again (discarded, or cancelled)",
            m.discarded,
        );
        r.register(
            "jobs_snoozed",
            "Jobs put back for later without spending an attempt",
            m.snoozed,
        );
        r.register(
            "leases_lost",
            "Jobs whose lease was lost before they could be reported",
            m.lost_leases,
        );
        r.register_with_unit(
            "job_duration",
            "How long handlers ran, by how they ended",
            Unit::Seconds,
            m.duration,
        );
        r.register_with_unit(
            "job_claim_to_start",
            "From a claim returning to the job's handler starting",
            Unit::Seconds,
            m.claim_to_start,
        );
    }

    /// This pool's metrics in the Prometheus (OpenMetrics) text format, for
    /// a `/metrics` endpoint: serve it with the content type
    /// `application/openmetrics-text; version=1.0.0; charset=utf-8`.
    pub fn encode_prometheus(&self) -> String {
        let mut registry = Registry::default();
        self.register_prometheus(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub(crate) fn add_claimed(&self, queue: &str, kind: &str) {
        self.claimed.fetch_add(1, Relaxed);
        self.by_job
            .claimed
            .get_or_create(&labels(queue, kind))
            .inc();
    }
    pub(crate) fn add_completed(&self, queue: &str, kind: &str) {
        self.completed.fetch_add(1, Relaxed);
        self.by_job
            .completed
            .get_or_create(&labels(queue, kind))
            .inc();
    }
    pub(crate) fn add_failed(&self, queue: &str, kind: &str) {
        self.failed.fetch_add(1, Relaxed);
        self.by_job.failed.get_or_create(&labels(queue, kind)).inc();
    }
    pub(crate) fn add_retried(&self, queue: &str, kind: &str) {
        self.retried.fetch_add(1, Relaxed);
        self.by_job
            .retried
            .get_or_create(&labels(queue, kind))
            .inc();
    }
    pub(crate) fn add_discarded(&self, queue: &str, kind: &str) {
        self.discarded.fetch_add(1, Relaxed);
        self.by_job
            .discarded
            .get_or_create(&labels(queue, kind))
            .inc();
    }
    pub(crate) fn add_snoozed(&self, queue: &str, kind: &str) {
        self.snoozed.fetch_add(1, Relaxed);
        self.by_job
            .snoozed
            .get_or_create(&labels(queue, kind))
            .inc();
    }
    pub(crate) fn add_lost_lease(&self, queue: &str, kind: &str) {
        self.lost_leases.fetch_add(1, Relaxed);
        self.by_job
            .lost_leases
            .get_or_create(&labels(queue, kind))
            .inc();
    }
    pub(crate) fn record_claim_to_start(&self, queue: &str, kind: &str, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.claim_to_start_count.fetch_add(1, Relaxed);
        self.claim_to_start_total_us.fetch_add(us, Relaxed);
        self.claim_to_start_max_us.fetch_max(us, Relaxed);
        self.by_job
            .claim_to_start
            .get_or_create(&labels(queue, kind))
            .observe(d.as_secs_f64());
    }
    pub(crate) fn record_run(&self, queue: &str, kind: &str, outcome: RunOutcome, d: Duration) {
        self.by_job
            .duration
            .get_or_create(&OutcomeLabels {
                queue: queue.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.label().to_owned(),
            })
            .observe(d.as_secs_f64());
    }
}
