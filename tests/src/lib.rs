//! Helpers for commitq's integration tests and benchmarks: each test gets a
//! database of its own on the project-local cluster (`dev/cluster.sh`), with
//! `pg_commitq` freshly installed; and the small steps every test file needs
//! (one number from a query, waiting for a state, running a worker pool in
//! the background), written once.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

pub mod side_cluster;
pub mod sql_only;

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

/// The statement that installs the extension in a test's database: a plain
/// `CREATE EXTENSION`, or with `COMMITQ_TEST_EXTENSION_VERSION=V` the
/// extension created at release V and at once upgraded to the installed
/// default (`ALTER EXTENSION pg_commitq UPDATE`), so the same tests run on a
/// database that went through the upgrade scripts (tests/upgrade/run.sh).
pub fn create_extension_sql() -> String {
    match std::env::var("COMMITQ_TEST_EXTENSION_VERSION") {
        Ok(v) if !v.is_empty() => {
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c)),
                "COMMITQ_TEST_EXTENSION_VERSION={v:?} is not a version"
            );
            format!("CREATE EXTENSION pg_commitq VERSION '{v}'; ALTER EXTENSION pg_commitq UPDATE")
        }
        _ => "CREATE EXTENSION pg_commitq".to_string(),
    }
}

/// A database of one test's own, with the extension installed.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Create (or re-create) database `name` with `pg_commitq` installed
    /// (or, with `COMMITQ_TEST_INSTALL=sql-only`, commitq loaded from
    /// target/sql-only/commitq.sql into database `name`_sqlonly).
    pub async fn new(name: &str) -> TestDb {
        let name = &sql_only::db_name(name);
        let base = cluster_url();
        let admin = connect(&base).await;
        // Two statements, not one batch: DROP DATABASE refuses to run in the
        // implicit transaction of a multi-statement query.
        // The engine (a preloaded library's background workers) stays out
        // of tests' databases: tests that count what maintain() did would
        // race it. tests/tests/engine.rs turns it back on in its own.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
            format!("ALTER DATABASE \"{name}\" SET commitq.engine_enabled = off"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let url = with_dbname(&base, name);
        if sql_only::enabled() {
            sql_only::install(&admin, name, &url).await;
        } else {
            connect(&url)
                .await
                .batch_execute(&create_extension_sql())
                .await
                .unwrap();
        }
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

    /// A commitq client (with its connection pool) on this database.
    pub async fn client(&self) -> commitq::Client {
        commitq::Client::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("commitq client on {}: {e}", self.name))
    }
}

/// A test's database with the application's own tables (`tables`, SQL run
/// once), and a commitq client on it.
pub async fn setup(name: &str, tables: &str) -> (TestDb, commitq::Client) {
    let db = TestDb::new(name).await;
    db.connect()
        .await
        .batch_execute(tables)
        .await
        .unwrap_or_else(|e| panic!("{tables}: {e}"));
    let client = db.client().await;
    (db, client)
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

/// Where a test runs its checking queries: a plain connection, or a
/// connection taken from a commitq client's pool.
pub trait Sql {
    /// The one row `sql` returns; panics (naming the statement) otherwise.
    fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> impl Future<Output = Row> + Send;

    /// Run `sql`, one or several statements without parameters.
    fn run(&self, sql: &str) -> impl Future<Output = ()> + Send;
}

impl Sql for Client {
    async fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Row {
        self.query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn run(&self, sql: &str) {
        self.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Sql for commitq::Client {
    async fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Row {
        let conn = self.pool().get().await.expect("a pooled connection");
        conn.query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn run(&self, sql: &str) {
        let conn = self.pool().get().await.expect("a pooled connection");
        conn.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The number a query returns (a count, mostly).
pub async fn scalar(db: &impl Sql, sql: &str) -> i64 {
    scalar_with(db, sql, &[]).await
}

/// The number a query with parameters returns.
pub async fn scalar_with(db: &impl Sql, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    db.row(sql, params).await.get(0)
}

/// How many jobs are running now.
pub async fn running_jobs(db: &impl Sql) -> i64 {
    scalar(
        db,
        "SELECT count(*) FROM commitq.jobs WHERE state = 'running'",
    )
    .await
}

/// Retry at once: a failed job is due again immediately, so tests of
/// retries need not wait for a backoff.
pub async fn no_backoff(db: &impl Sql) {
    db.run("UPDATE commitq.config SET backoff_base = '0', backoff_cap = '0'")
        .await
}

/// Everything commitq stores, as text, to prove that a refused call
/// changed nothing.
pub async fn everything_stored(db: &impl Sql) -> String {
    let mut all = String::new();
    for table in [
        "jobs",
        "finished_jobs",
        "idempotency_keys",
        "concurrency_keys",
        "concurrency_limits",
        "job_effects",
        "named_leases",
        "rate_limits",
        "fair_queues",
    ] {
        let sql = format!(
            "SELECT coalesce(jsonb_agg(t ORDER BY t::text), '[]')::text FROM commitq.{table} t"
        );
        all.push_str(&db.row(&sql, &[]).await.get::<_, String>(0));
    }
    all
}

/// Poll `check` every 20 ms until it holds; fail the test, naming `what`,
/// after `timeout`. Tests wait for the state they need this way rather than
/// sleeping a fixed time, so a busy machine makes them slower, not red.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker pool running in the background until [`RunningPool::stop`].
pub struct RunningPool {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

/// Start `pool` on a task of its own.
pub fn start_pool(pool: commitq::WorkerPool) -> RunningPool {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(pool.run_until(async move {
        let _ = stopped.await;
    }));
    RunningPool { stop, handle }
}

impl RunningPool {
    /// Ask the pool to stop, and wait until it has (graceful shutdown
    /// included); a panic inside the pool fails the test here.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.expect("the pool ran to its end");
    }
}

/// The server's message of a failed call (without the SQLSTATE).
pub fn error_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The job of the worker-pool tests: its handlers write `n` and `label` to
/// the application's table `public.effects` ([`EFFECTS`]), so a test sees
/// what ran, how often, and on which attempt.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub n: i64,
    pub label: String,
}

impl commitq::Job for Record {
    const KIND: &'static str = "record";
    const QUEUE: &'static str = "effects";
}

/// A [`Record`] job.
pub fn record(n: i64, label: &str) -> Record {
    Record {
        n,
        label: label.into(),
    }
}

/// The application's table the [`Record`] handlers write to.
pub const EFFECTS: &str =
    "CREATE TABLE public.effects (n bigint NOT NULL, label text NOT NULL, attempt int)";

/// What a [`Record`] handler writes: `$1` n, `$2` label, `$3` attempt.
pub const INSERT_EFFECT: &str =
    "INSERT INTO public.effects (n, label, attempt) VALUES ($1, $2, $3)";

/// A pool of four handlers that record each job's args in `public.effects`
/// in the same transaction as its completion.
pub fn recording_pool(client: &commitq::Client) -> commitq::WorkerPool {
    use commitq::{Outcome, WorkerPool};
    WorkerPool::builder(client.clone())
        .queue("effects", 4)
        .poll_interval(Duration::from_millis(200))
        .handle(|ctx, job: Record| async move {
            let mut conn = ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            tx.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                .await?;
            ctx.complete_in(&*tx).await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
        .build()
}

/// How many workers wait on `queue`: those registered for a NOTIFY (a claim
/// that found the queue empty in a session that LISTENs, or
/// commitq.start_waiting; one that found work clears it), plus the sessions
/// of this database asleep in `CALL commitq.claim_wait` (of any queue: a
/// parameterized CALL does not show its queue). A test that needs "the pool
/// looked and found nothing" waits for this instead of sleeping.
pub async fn waiting_on(db: &impl Sql, queue: &str) -> i64 {
    scalar_with(
        db,
        "SELECT (SELECT count(*) FROM commitq.waiting_workers WHERE queue = $1)
              + (SELECT count(*) FROM pg_catalog.pg_stat_activity
                  WHERE datname = pg_catalog.current_database() AND wait_event_type = 'Extension'
                    AND query LIKE 'CALL commitq.claim_wait%')",
        &[&queue],
    )
    .await
}

/// A job's whole life across two roles: `producer` enqueues a job in queue
/// `q`, and `worker` claims and completes it. Shows that granted roles do
/// their part, not only get past the grant check.
pub async fn enqueue_claim_complete_as(producer: &Client, worker: &Client) {
    let id: i64 = producer
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'k', '{}')", &[])
        .await
        .unwrap()
        .get(0);
    let row = worker
        .query_one(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), id);
    worker
        .execute(
            "SELECT commitq.complete($1, $2)",
            &[&id, &row.get::<_, i64>(1)],
        )
        .await
        .unwrap();
}
