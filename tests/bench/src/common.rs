//! What every system's measurements share: the cluster's addresses, the
//! job args, timing loops for the SQL-driven systems, and the sizes the
//! vacuum-blocked drain compares.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq_tests::connect;
use tokio_postgres::{Client, Statement};

use crate::systems::Workload;

/// The ~40-byte args of every benchmark job.
pub const ARGS_40_BYTES: &str = r#"{"user_id": 123456, "template": "welcome"}"#;

/// A measurement that failed, with why (shown in the table instead of a figure).
pub type Outcome<T> = Result<T, String>;

/// Turn any error into the message a table cell shows.
pub fn why<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// How to reach the benchmark cluster: over TCP on loopback for every
/// system alike, so no one gets the cheaper unix socket.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Cluster {
    /// key=value form, for tokio-postgres.
    pub fn kv(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={db}",
            self.host, self.port, self.user
        )
    }

    /// URL form, for the drivers of other languages.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@{}:{}/{db}", self.user, self.host, self.port)
    }

    /// Drop and create database `db`, empty.
    pub async fn fresh_database(&self, db: &str) -> Outcome<()> {
        let admin = connect(&self.kv("postgres")).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{db}\""),
        ] {
            admin.batch_execute(&sql).await.map_err(why(&sql))?;
        }
        Ok(())
    }
}

/// The settings every workload reads.
#[derive(Clone, Debug)]
pub struct Load {
    pub jobs: usize,
    pub seconds: u64,
    pub clients: usize,
    pub concurrency: usize,
    pub rate: u64,
    pub timeout: Duration,
    /// A drain by an external driver still running after this long is
    /// stopped and measured by what it finished (`Sample::finished`).
    pub drain_seconds: u64,
}

/// One measurement of one system: a rate, or latency percentiles.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Jobs per second.
    pub rate: f64,
    /// Latency percentiles in milliseconds (latency workload only).
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Bytes of the system's relations after a drain.
    pub bytes: Option<i64>,
    /// Jobs a drain had finished when it was stopped at `Load::drain_seconds`
    /// (None: it finished every job).
    pub finished: Option<u64>,
}

impl Sample {
    pub fn rate(rate: f64) -> Sample {
        Sample {
            rate,
            ..Default::default()
        }
    }

    /// Latency percentiles of a list of milliseconds.
    pub fn latencies(mut ms: Vec<f64>) -> Outcome<Sample> {
        if ms.is_empty() {
            return Err("no job started".into());
        }
        ms.sort_by(f64::total_cmp);
        Ok(Sample {
            p50: ms[ms.len() / 2],
            p99: ms[ms.len() * 99 / 100],
            max: ms[ms.len() - 1],
            ..Default::default()
        })
    }
}

/// Run statements one at a time (VACUUM refuses the implicit transaction of
/// a multi-statement batch).
pub async fn run_each(c: &Client, sqls: &[&str]) -> Outcome<()> {
    for sql in sqls {
        c.batch_execute(sql).await.map_err(why(sql))?;
    }
    Ok(())
}

/// The two enqueue workloads of an SQL-driven system: `bulk_sql` inserts the
/// jobs whose args are the array `$1` and returns how many; `single_sql`
/// enqueues one job with the benchmark's args (`{args}` stands for them).
pub async fn enqueue_rate(
    w: Workload,
    c: &Client,
    url: &str,
    load: &Load,
    bulk_sql: &str,
    single_sql: &str,
) -> Outcome<Sample> {
    let rate = match w {
        Workload::Bulk => bulk_rate(c, bulk_sql, load.jobs).await,
        Workload::Single => {
            let sql = single_sql.replace("{args}", ARGS_40_BYTES);
            single_statement_rate(url, &sql, load.clients, load.seconds).await
        }
        other => Err(format!("{other:?} is not an enqueue workload")),
    };
    rate.map(Sample::rate)
}

/// `clients` connections each run `sql` in its own transaction for `secs`;
/// statements per second.
pub async fn single_statement_rate(
    url: &str,
    sql: &str,
    clients: usize,
    secs: u64,
) -> Outcome<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, sql, done) = (url.to_string(), sql.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let stmt = c.prepare(&sql).await.map_err(why(&sql))?;
            while Instant::now() < deadline {
                c.execute(&stmt, &[]).await.map_err(why(&sql))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.map_err(why("enqueue task"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Time one bulk statement inserting `jobs` rows given as an array of args
/// in `$1`; rows per second, from the call to its commit.
pub async fn bulk_rate(c: &Client, sql: &str, jobs: usize) -> Outcome<f64> {
    let args: Vec<serde_json::Value> = vec![serde_json::from_str(ARGS_40_BYTES).unwrap(); jobs];
    let start = Instant::now();
    let inserted: i64 = c.query_one(sql, &[&args]).await.map_err(why(sql))?.get(0);
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    if inserted as usize != jobs {
        return Err(format!("inserted {inserted} of {jobs}"));
    }
    Ok(rate)
}

/// Rows per statement of a parallel bulk enqueue.
pub const BULK_CHUNK: usize = 5_000;

/// One connection per core inserts `jobs` rows together, each statement
/// (its own transaction) `BULK_CHUNK` rows given as an array of args in
/// `$1`, as an import sized to the machine would; rows per second, from the
/// first call to the last commit. (More connections than cores only queue
/// on the CPU: on 2 cores, 4 and 8 connections were 10-25% slower than 2.)
pub async fn parallel_bulk_rate(url: &str, sql: &str, jobs: usize) -> Outcome<f64> {
    let connections = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks = jobs.div_ceil(BULK_CHUNK);
    let next = Arc::new(AtomicU64::new(0));
    let inserted = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..connections {
        let c = connect(url).await;
        let stmt = c.prepare(sql).await.map_err(why(sql))?;
        clients.push((c, stmt));
    }
    let args: Arc<Vec<serde_json::Value>> = Arc::new(vec![
        serde_json::from_str(ARGS_40_BYTES)
            .unwrap();
        BULK_CHUNK
    ]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, stmt) in clients {
        let (next, inserted, sql) = (next.clone(), inserted.clone(), sql.to_string());
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let chunk = next.fetch_add(1, Ordering::Relaxed) as usize;
                if chunk >= chunks {
                    return Ok::<_, String>(());
                }
                let rows = BULK_CHUNK.min(jobs - chunk * BULK_CHUNK);
                let n: i64 = c
                    .query_one(&stmt, &[&&args[..rows]])
                    .await
                    .map_err(why(&sql))?
                    .get(0);
                inserted.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(why("bulk task"))??;
    }
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    match inserted.load(Ordering::Relaxed) as usize {
        n if n == jobs => Ok(rate),
        n => Err(format!("inserted {n} of {jobs}")),
    }
}

/// `claimers` connections run `step` until it returns 0; jobs per second.
/// Each connection prepares `sqls` once and hands them to every step, as a
/// real worker would, so no step pays a parse round trip.
pub async fn drain_rate<F, Fut>(
    url: &str,
    claimers: usize,
    jobs: usize,
    timeout: Duration,
    sqls: &[&str],
    step: F,
) -> Outcome<f64>
where
    F: Fn(Arc<Client>, Arc<Vec<Statement>>, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<usize, tokio_postgres::Error>> + Send,
{
    let total = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..claimers {
        let c = connect(url).await;
        let mut stmts = Vec::new();
        for sql in sqls {
            stmts.push(c.prepare(sql).await.map_err(why(sql))?);
        }
        clients.push((Arc::new(c), Arc::new(stmts)));
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let mut tasks = Vec::new();
    for (i, (c, stmts)) in clients.into_iter().enumerate() {
        let (step, total) = (step.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = step(c.clone(), stmts.clone(), format!("bench-{i}"))
                    .await
                    .map_err(why("drain step"))?;
                if n == 0 {
                    break;
                }
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(why("drain task"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let drained = total.load(Ordering::Relaxed) as usize;
    if drained != jobs {
        return Err(format!(
            "drained {drained} of {jobs} jobs in {elapsed:.0} s"
        ));
    }
    Ok(drained as f64 / elapsed)
}

/// A drain step of two statements, as queues that keep rows take them: the
/// first claims up to `batch` jobs and returns their ids, the second
/// finishes those ids (`$1`, an array) in a transaction of its own.
pub async fn claim_then_finish<P: tokio_postgres::types::ToSql + Sync>(
    c: &Client,
    statements: &[Statement],
    batch: P,
) -> Result<usize, tokio_postgres::Error> {
    let ids: Vec<i64> = c
        .query(&statements[0], &[&batch])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !ids.is_empty() {
        c.execute(&statements[1], &[&ids]).await?;
    }
    Ok(ids.len())
}

/// Steady producers for a latency run: four connections share `rate` jobs
/// per second until `committed.len()` jobs are in, each job one transaction
/// running `sql` with the job's number as `$1`; `committed[n]` is set when
/// job n's call returned.
pub async fn steady_producers(
    url: &str,
    sql: &str,
    rate: u64,
    committed: Arc<Vec<std::sync::OnceLock<Instant>>>,
) -> Outcome<()> {
    const PRODUCERS: usize = 4;
    let total = committed.len();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (url, sql, committed) = (url.to_string(), sql.to_string(), committed.clone());
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let stmt = c.prepare(&sql).await.map_err(why(&sql))?;
            let period = Duration::from_secs_f64(PRODUCERS as f64 / rate as f64);
            let mut tick = tokio::time::interval(period);
            for n in (p..total).step_by(PRODUCERS) {
                tick.tick().await;
                c.execute(&stmt, &[&(n as i64)]).await.map_err(why(&sql))?;
                let _ = committed[n].set(Instant::now());
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(why("producer"))??;
    }
    Ok(())
}

/// Per job, milliseconds from its commit to its handler's start (a handler
/// that starts before the producer noted the commit counts as 0). Waits up
/// to `timeout` for every job to have started.
pub async fn commit_to_start_ms(
    committed: &[std::sync::OnceLock<Instant>],
    started: &[std::sync::OnceLock<Instant>],
    timeout: Duration,
) -> Outcome<Vec<f64>> {
    let deadline = Instant::now() + timeout;
    while started.iter().any(|s| s.get().is_none()) {
        if Instant::now() > deadline {
            let missing = started.iter().filter(|s| s.get().is_none()).count();
            return Err(format!("{missing} jobs never started"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(committed
        .iter()
        .zip(started)
        .map(|(c, s)| {
            let (c, s) = (c.get().unwrap(), s.get().unwrap());
            s.saturating_duration_since(*c).as_secs_f64() * 1000.0
        })
        .collect())
}

/// Fresh slots for a latency run of `total` jobs.
pub fn instants(total: usize) -> Arc<Vec<std::sync::OnceLock<Instant>>> {
    Arc::new((0..total).map(|_| Default::default()).collect())
}

/// Bytes of every table of the database outside the system catalogs,
/// indexes and TOAST included: what a drain left behind.
pub async fn relation_bytes(c: &Client) -> Outcome<i64> {
    let sql = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'm')
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname NOT LIKE 'pg_toast%'";
    Ok(c.query_one(sql, &[]).await.map_err(why(sql))?.get(0))
}

/// A transaction held open on `url` with an assigned transaction id, so
/// vacuum cannot remove any row version deleted after it began. Dropped,
/// the connection closes and the transaction ends.
pub async fn hold_vacuum_horizon(url: &str) -> Outcome<Client> {
    let c = connect(url).await;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pg_current_xact_id();")
        .await
        .map_err(why("hold a transaction open"))?;
    Ok(c)
}
