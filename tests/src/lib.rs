//! Helpers for commitq's integration tests and benchmarks: each test gets a
//! database of its own on the project-local cluster (`dev/cluster.sh`), with
//! `pg_commitq` freshly installed.

use tokio_postgres::{Client, NoTls};

/// The cluster's connection string, from `COMMITQ_DATABASE_URL`
/// (`eval "$(dev/cluster.sh env)"` sets it; `make test` does that for you).
pub fn cluster_url() -> String {
    std::env::var("COMMITQ_DATABASE_URL").expect(
        "COMMITQ_DATABASE_URL is not set: run `make test`, or `eval \"$(dev/cluster.sh env)\"` first",
    )
}

/// Open a connection and drive it on a background task.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the server goes away.
        let _ = conn.await;
    });
    client
}

/// Open a connection whose notifications (LISTEN/NOTIFY) arrive on the
/// returned channel.
pub async fn connect_listening(
    url: &str,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    use futures_util::{stream, StreamExt};
    let (client, mut conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
}

/// A database of one test's own, with the extension installed.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Create (or re-create) database `name` with `pg_commitq` installed.
    pub async fn new(name: &str) -> TestDb {
        let base = cluster_url();
        let admin = connect(&base).await;
        // Two statements, not one batch: DROP DATABASE refuses to run in the
        // implicit transaction of a multi-statement query.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let url = with_dbname(&base, name);
        connect(&url)
            .await
            .batch_execute("CREATE EXTENSION pg_commitq")
            .await
            .unwrap();
        TestDb {
            name: name.to_string(),
            url,
        }
    }

    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }

    /// The same database, as another role (which must be able to log in).
    pub fn url_as(&self, role: &str) -> String {
        format!("{} user={role}", self.url)
    }
}

/// Replace or add `dbname=` in a key=value connection string.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|p| !p.starts_with("dbname="))
        .map(str::to_string)
        .collect();
    parts.push(format!("dbname={dbname}"));
    parts.join(" ")
}

/// The SQLSTATE of a failed call, for asserting which error commitq raised.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A small deterministic generator (xorshift64) for fault and crash
/// schedules, so a run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// A number in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
