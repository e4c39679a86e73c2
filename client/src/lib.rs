//! `commitq`: the Rust client of the commitq job queue.
//!
//! The queue lives in PostgreSQL (the `pg_commitq` extension); this crate is
//! a thin layer over its SQL functions. It never carries a copy of the
//! schema: it checks that the installed extension is the version it was
//! built with and fails with [`Error::VersionMismatch`] otherwise.

mod error;

pub use error::Error;

/// The `pg_commitq` version this client speaks to: the workspace version.
pub const EXTENSION_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Check that `pg_commitq` is installed in the connected database at
/// [`EXTENSION_VERSION`].
pub async fn check_extension<C: tokio_postgres::GenericClient>(client: &C) -> Result<(), Error> {
    let row = client
        .query_opt(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_commitq'",
            &[],
        )
        .await?;
    match row {
        None => Err(Error::ExtensionMissing),
        Some(row) => {
            let installed: String = row.get(0);
            if installed == EXTENSION_VERSION {
                Ok(())
            } else {
                Err(Error::VersionMismatch {
                    installed,
                    expected: EXTENSION_VERSION,
                })
            }
        }
    }
}
