//! Errors of the command line: each has an exit code that says what kind of
//! failure it was (docs/cli.md lists them) and a hint that says what to do.
//! Database errors are sorted by SQLSTATE, never by message text.

use std::fmt;

/// The exit codes of `commitq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Anything else: a database error, an I/O error.
    Error = 1,
    /// Wrong arguments (clap uses 2 as well), invalid input (CQ001), or a
    /// bulk action without a filter.
    Usage = 2,
    /// No such job (CQ101).
    NotFound = 3,
    /// The role may not do this (42501).
    PermissionDenied = 4,
    /// No connection: server down, wrong host or port, unknown database or
    /// role, failed authentication.
    Connection = 5,
    /// commitq is not installed in the database, or is too old for this
    /// command.
    NotInstalled = 6,
    /// The job is in a state the action does not apply to (CQ104).
    WrongState = 7,
    /// A bulk action was not confirmed: nothing was done.
    NotConfirmed = 8,
}

#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

const NOT_INSTALLED_HINT: &str = "install commitq in this database (as a superuser: CREATE EXTENSION pg_commitq), \
or update it (ALTER EXTENSION pg_commitq UPDATE), or point --url / DATABASE_URL at the database that has it";

const PERMISSION_HINT: &str = "connect as a role that may do this: commitq_operator for actions \
(GRANT commitq_operator TO your_role), commitq_reader to read (GRANT commitq_reader TO your_role)";

/// A database error, sorted by SQLSTATE.
pub fn from_db(e: &tokio_postgres::Error) -> CliError {
    let Some(db) = e.as_db_error() else {
        return connection_error(&e.to_string());
    };
    let message = db.message().to_string();
    let code = db.code().code();
    match code {
        "CQ001" => CliError::new(Exit::Usage, message),
        "CQ101" => CliError::new(Exit::NotFound, message),
        "CQ104" => CliError::new(Exit::WrongState, message),
        "42501" => CliError::new(Exit::PermissionDenied, message).hint(PERMISSION_HINT),
        // The schema, a view or a function is missing: no commitq, or an
        // older one without the monitoring views.
        "3F000" | "42P01" | "42883" => {
            CliError::new(Exit::NotInstalled, message).hint(NOT_INSTALLED_HINT)
        }
        "3D000" => CliError::new(Exit::Connection, message).hint(
            "the database in --url / DATABASE_URL does not exist: check its name (dbname=...)",
        ),
        "28000" | "28P01" => CliError::new(Exit::Connection, message).hint(
            "the server refused this role: check user= and password in --url / DATABASE_URL, \
             and that the role exists and may log in",
        ),
        "57P01" | "57P02" | "57P03" | "53300" => CliError::new(Exit::Connection, message)
            .hint("the server is shutting down, starting or full: try again shortly"),
        _ => CliError::new(Exit::Error, format!("{message} (SQLSTATE {code})")),
    }
}

fn connection_error(detail: &str) -> CliError {
    CliError::new(Exit::Connection, format!("cannot connect: {detail}")).hint(
        "is PostgreSQL running there? check host, port and dbname in --url or DATABASE_URL \
         (postgres://user@host:5432/db or \"host=... port=... dbname=...\")",
    )
}

impl From<tokio_postgres::Error> for CliError {
    fn from(e: tokio_postgres::Error) -> Self {
        from_db(&e)
    }
}

impl From<commitq::Error> for CliError {
    fn from(e: commitq::Error) -> Self {
        use commitq::Error as E;
        match e {
            E::ExtensionMissing => CliError::new(
                Exit::NotInstalled,
                "the pg_commitq extension is not installed in this database",
            )
            .hint(NOT_INSTALLED_HINT),
            E::VersionMismatch { .. } => CliError::new(Exit::NotInstalled, e.to_string())
                .hint("install a matching pg_commitq, or use the commitq command of its version"),
            E::InvalidArgument(m) => CliError::new(Exit::Usage, m),
            E::JobNotFound(m) => CliError::new(Exit::NotFound, m),
            E::InvalidState(m) => CliError::new(Exit::WrongState, m),
            E::Database(e) => from_db(&e),
            E::Config(m) | E::SslMode(m) => CliError::new(Exit::Usage, format!("connection string: {m}"))
                .hint("--url / DATABASE_URL takes postgres://user@host:port/db or \"host=... dbname=...\""),
            E::Pool(m) => connection_error(&m),
            other => CliError::new(Exit::Error, other.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for CliError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        CliError::from(commitq::Error::from(e))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(Exit::Error, e.to_string())
    }
}
