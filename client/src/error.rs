use tokio_postgres::error::SqlState;

/// Everything the client can fail with. SQLSTATEs raised by commitq's SQL
/// functions come back as their own variants, so callers match on types,
/// never on message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database has no `pg_commitq` extension.
    #[error("the pg_commitq extension is not installed in this database")]
    ExtensionMissing,
    /// The installed extension is a version this client does not work
    /// with: older than the oldest one with every function it calls, or of
    /// a later major version (see `check_extension`).
    #[error("pg_commitq {installed} is installed, this client needs a version {accepted}")]
    VersionMismatch {
        installed: String,
        /// The accepted versions, as `>= MIN, < NEXT_MAJOR.0.0`.
        accepted: String,
    },
    /// SQLSTATE CQ001: an argument was NULL, malformed or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// SQLSTATE CQ101: no such job.
    #[error("job not found: {0}")]
    JobNotFound(String),
    /// SQLSTATE CQ102: the job is no longer running under this lease.
    #[error("stale lease: {0}")]
    StaleLease(String),
    /// SQLSTATE CQ103: the lease ran out before this call.
    #[error("lease expired: {0}")]
    LeaseExpired(String),
    /// SQLSTATE CQ104: the operator action does not apply to the job's state.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The connection string or pool settings are not usable.
    #[error("configuration: {0}")]
    Config(String),
    /// The connection string's `sslmode` is not one libpq knows, or is
    /// weaker than its `sslrootcert=system` allows.
    #[error("sslmode: {0}")]
    SslMode(String),
    /// The CA certificates to check the server's certificate against (the
    /// file `sslrootcert` names, `~/.postgresql/root.crt` that verify-ca
    /// and verify-full fall back to, or the system's) could not be read.
    #[error("sslrootcert {path}: {reason}")]
    SslRootCert { path: String, reason: String },
    /// No connection could be had from the pool.
    #[error("connection pool: {0}")]
    Pool(String),
    /// A job's args could not be turned into JSON.
    #[error("serializing job args: {0}")]
    Serialize(serde_json::Error),
    /// A side effect run through `JobContext::effect` failed.
    #[error("effect failed: {0}")]
    Effect(String),
    /// Any other database or connection error.
    #[error(transparent)]
    Database(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return Error::Database(e);
        };
        let message = db.message().to_string();
        match db.code().code() {
            "CQ001" => Error::InvalidArgument(message),
            "CQ101" => Error::JobNotFound(message),
            "CQ102" => Error::StaleLease(message),
            "CQ103" => Error::LeaseExpired(message),
            "CQ104" => Error::InvalidState(message),
            _ => Error::Database(e),
        }
    }
}

impl Error {
    /// True for errors a caller may retry as they are: a serialization
    /// failure or deadlock of the surrounding transaction.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
            ),
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::from(e),
            other => Error::Pool(other.to_string()),
        }
    }
}
