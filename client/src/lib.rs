//! `commitq`: the Rust client of the commitq job queue.
//!
//! The queue lives in PostgreSQL (the `pg_commitq` extension); this crate is
//! a thin layer over its SQL functions. It never carries a copy of the
//! schema: it checks that the installed extension is a version it works
//! with (from [`MIN_EXTENSION_VERSION`] up to, not including, the next major
//! version after [`EXTENSION_VERSION`]) and fails with
//! [`Error::VersionMismatch`] otherwise.
//!
//! ```no_run
//! use std::time::Duration;
//! use commitq::{Client, Job, Outcome, WorkerPool};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendWelcome { user_id: i64 }
//!
//! impl Job for SendWelcome {
//!     const KIND: &'static str = "send_welcome";
//!     const QUEUE: &'static str = "mail";
//! }
//!
//! # async fn example() -> Result<(), commitq::Error> {
//! let client = Client::connect("host=/run/postgresql dbname=app").await?;
//!
//! // In the transaction that creates the user: the job exists if and only if
//! // the user does.
//! let mut conn = client.pool().get().await?;
//! let tx = conn.transaction().await?;
//! tx.execute("INSERT INTO users (id) VALUES (42)", &[]).await?;
//! // (`&*tx`: a pooled transaction derefs to tokio-postgres's own.)
//! commitq::enqueue(&*tx, &SendWelcome { user_id: 42 }, &Default::default()).await?;
//! tx.commit().await?;
//!
//! // A worker pool: 8 handlers on queue "mail", until Ctrl-C.
//! WorkerPool::builder(client)
//!     .queue("mail", 8)
//!     .handle(|_ctx, job: SendWelcome| async move {
//!         println!("welcome, user {}", job.user_id);
//!         Ok(Outcome::Complete)
//!     })
//!     .build()
//!     .run_until(async { tokio::signal::ctrl_c().await.ok(); })
//!     .await;
//! # Ok(()) }
//! ```

mod client;
mod driver;
mod error;
mod job;
mod metrics;
mod named_lease;
mod pool;
pub mod testing;
mod tls;
mod version;

pub use client::{enqueue, enqueue_many, Client, DEFAULT_MAX_CONNECTIONS};
pub use error::Error;
pub use job::{EnqueueOptions, Enqueued, Job, OnDuplicate};
pub use metrics::{Metrics, MetricsSnapshot};
pub use named_lease::Lease;
pub use pool::{HandlerError, HandlerResult, JobContext, Outcome, WorkerPool, WorkerPoolBuilder};

pub use version::{EXTENSION_VERSION, MIN_EXTENSION_VERSION};

/// The Prometheus client crate [`Metrics::register_prometheus`] registers
/// into, re-exported so that an application's registry is of the same
/// version.
pub use prometheus_client;

/// Check that `pg_commitq` is installed in the connected database at a
/// version this client works with: at least [`MIN_EXTENSION_VERSION`] and
/// below the next major version after [`EXTENSION_VERSION`]. Within a major
/// version the extension only adds or compatibly replaces SQL objects, so
/// the database and the workers can be upgraded in either order.
pub async fn check_extension<C: tokio_postgres::GenericClient>(client: &C) -> Result<(), Error> {
    let installed = driver::extension_version(client).await?;
    match installed {
        None => Err(Error::ExtensionMissing),
        Some(installed) => {
            if version::accepts(&installed, EXTENSION_VERSION, MIN_EXTENSION_VERSION) {
                Ok(())
            } else {
                Err(Error::VersionMismatch {
                    installed,
                    accepted: version::accepted_range(EXTENSION_VERSION, MIN_EXTENSION_VERSION),
                })
            }
        }
    }
}
