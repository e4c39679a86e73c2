//! The measured systems. Each has a database of its own on the benchmark
//! cluster, prepared once (`prepare`), and runs the workloads it supports
//! (`run`); every run first empties the system's tables.

pub mod commitq;
pub mod commitq_wait;
pub mod external;
pub mod pgmq;
pub mod pgq;
pub mod raw;

use crate::common::{Cluster, Load, Outcome, Sample};

/// The workloads of the benchmark, in the order of its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// Bulk enqueue of `jobs` jobs with the system's best bulk API.
    Bulk,
    /// Drain of `jobs` jobs by `concurrency` handlers.
    Drain,
    /// One job per transaction, `clients` connections, `seconds`.
    Single,
    /// Enqueue-commit to handler-start latency at a steady rate.
    Latency,
    /// The drain with a transaction held open on the database throughout.
    DrainVacuumBlocked,
    /// commitq only: the worker pool's drain with keys on every job.
    KeyedDrain,
}

impl Workload {
    pub fn title(self, load: &Load) -> String {
        match self {
            Workload::Bulk => format!("bulk enqueue of {} jobs", load.jobs),
            Workload::Drain => {
                format!("drain of {} jobs, {} handlers", load.jobs, load.concurrency)
            }
            Workload::Single => format!(
                "single enqueue, one transaction each, {} clients, {} s",
                load.clients, load.seconds
            ),
            Workload::Latency => format!(
                "enqueue-commit to handler start at {} jobs/s, {} s",
                load.rate, load.seconds
            ),
            Workload::DrainVacuumBlocked => format!(
                "drain of {} jobs with a transaction held open (vacuum blocked)",
                load.jobs
            ),
            Workload::KeyedDrain => format!(
                "commitq worker pool drain of {} jobs with keys and without, {} handlers",
                load.jobs, load.concurrency
            ),
        }
    }
}

/// One measured system (one row of a workload's table).
#[derive(Clone, Debug)]
pub enum System {
    Raw(raw::Raw),
    Commitq(commitq::Commitq),
    Pgmq,
    Pgq,
    External(external::Driver),
}

impl System {
    /// The name in the table.
    pub fn name(&self) -> String {
        match self {
            System::Raw(r) => r.name(),
            System::Commitq(c) => c.name(),
            System::Pgmq => "pgmq (read 100, delete)".into(),
            System::Pgq => "PgQ (one consumer, whole batches)".into(),
            System::External(d) => d.name.to_string(),
        }
    }

    /// The family the system belongs to (one database, one colour).
    pub fn family(&self) -> &'static str {
        match self {
            System::Raw(_) => "raw SQL",
            System::Commitq(_) => "commitq",
            System::Pgmq => "pgmq",
            System::Pgq => "PgQ",
            System::External(d) => d.name,
        }
    }

    /// The database of the family.
    pub fn database(&self) -> String {
        let slug: String = self
            .family()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("bench_{slug}")
    }

    /// Create the family's database and install the system; returns its
    /// version and configuration for the report.
    pub async fn prepare(&self, cluster: &Cluster) -> Outcome<String> {
        let db = self.database();
        match self {
            System::Raw(_) => raw::prepare(cluster, &db).await,
            System::Commitq(_) => commitq::prepare(cluster, &db).await,
            System::Pgmq => pgmq::prepare(cluster, &db).await,
            System::Pgq => pgq::prepare(cluster, &db).await,
            System::External(d) => d.prepare(cluster, &db).await,
        }
    }

    /// Run one workload once. `DrainVacuumBlocked` is run by the caller as a
    /// `Drain` inside a held transaction.
    pub async fn run(&self, w: Workload, cluster: &Cluster, load: &Load) -> Outcome<Sample> {
        let db = self.database();
        match self {
            System::Raw(r) => r.run(w, cluster, &db, load).await,
            System::Commitq(c) => c.run(w, cluster, &db, load).await,
            System::Pgmq => pgmq::run(w, cluster, &db, load).await,
            System::Pgq => pgq::run(w, cluster, &db, load).await,
            System::External(d) => d.run(w, cluster, &db, load).await,
        }
    }
}
