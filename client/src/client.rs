//! Connecting, and enqueueing on a pool or inside the caller's transaction.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{GenericClient, NoTls};

use crate::{check_extension, EnqueueOptions, Enqueued, Error, Job};

/// A handle on a database with `pg_commitq` installed: a connection pool
/// whose extension version was checked.
#[derive(Clone)]
pub struct Client {
    pool: Pool,
    url: Option<String>,
}

impl Client {
    /// Connect with a libpq-style connection string or URL
    /// (`host=/run/postgresql dbname=app` or `postgres://...`).
    pub async fn connect(url: &str) -> Result<Client, Error> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Config(e.to_string()))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(32)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut client = Client::from_pool(pool).await?;
        client.url = Some(url.to_string());
        Ok(client)
    }

    /// Use an existing pool. Workers that LISTEN for wake-ups need
    /// [`Client::connect`] or [`Client::with_listen_url`], since a pooled
    /// connection cannot be kept for LISTEN.
    pub async fn from_pool(pool: Pool) -> Result<Client, Error> {
        let conn = pool.get().await?;
        check_extension(&**conn).await?;
        Ok(Client { pool, url: None })
    }

    /// The connection string the worker pool opens its LISTEN connection with.
    pub fn with_listen_url(mut self, url: impl Into<String>) -> Client {
        self.url = Some(url.into());
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Enqueue a job on its own connection (its own transaction).
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<Enqueued, Error> {
        let conn = self.pool.get().await?;
        enqueue(&**conn, job, &job.options()).await
    }

    /// Enqueue a job on its own connection with these options instead of
    /// the job type's own.
    pub async fn enqueue_with<J: Job>(
        &self,
        job: &J,
        options: &EnqueueOptions,
    ) -> Result<Enqueued, Error> {
        let conn = self.pool.get().await?;
        enqueue(&**conn, job, options).await
    }

    /// Enqueue many jobs of one type in one statement.
    pub async fn enqueue_many<J: Job>(&self, jobs: &[J]) -> Result<Vec<Enqueued>, Error> {
        let conn = self.pool.get().await?;
        enqueue_many(&**conn, jobs).await
    }
}

const ENQUEUE_SQL: &str = "SELECT job_id, inserted FROM commitq.enqueue(
    $1, $2, $3, coalesce($4::int4, 0),
    coalesce($5::timestamptz, now() + make_interval(secs => coalesce($6::float8, 0))),
    coalesce($7::int4, 25), $8, $9, $10::int8::text::xid8)";

/// Enqueue `job` with `options` through `client`, which may be a
/// transaction of the caller's: the job then commits, or vanishes, with it.
pub async fn enqueue<C: GenericClient, J: Job>(
    client: &C,
    job: &J,
    options: &EnqueueOptions,
) -> Result<Enqueued, Error> {
    let args = serde_json::to_value(job).map_err(Error::Serialize)?;
    let queue = options.queue.as_deref().unwrap_or(J::QUEUE);
    let delay = options.delay.map(|d| d.as_secs_f64());
    let row = client
        .query_one(
            ENQUEUE_SQL,
            &[
                &queue,
                &J::KIND,
                &args,
                &options.priority,
                &options.run_at,
                &delay,
                &options.max_attempts,
                &options.idempotency_key,
                &options.concurrency_key,
                &options.after_xact,
            ],
        )
        .await?;
    Ok(Enqueued {
        job_id: row.get(0),
        inserted: row.get(1),
    })
}

/// Enqueue many jobs of one type in one statement, each with its own
/// [`Job::options`]; one bad job rejects them all. Results are in input order.
pub async fn enqueue_many<C: GenericClient, J: Job>(
    client: &C,
    jobs: &[J],
) -> Result<Vec<Enqueued>, Error> {
    let mut batch = Vec::with_capacity(jobs.len());
    for job in jobs {
        let o = job.options();
        let delay = o.delay.map(|d| d.as_secs_f64());
        let run_at = o.run_at.map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        });
        batch.push(serde_json::json!({
            "queue": o.queue.as_deref().unwrap_or(J::QUEUE),
            "kind": J::KIND,
            "args": serde_json::to_value(job).map_err(Error::Serialize)?,
            "priority": o.priority,
            "max_attempts": o.max_attempts,
            "idempotency_key": o.idempotency_key,
            "concurrency_key": o.concurrency_key,
            "run_at_epoch": run_at,
            "delay_secs": delay,
        }));
    }
    // The JSON form takes run_at as a timestamp: computed here from the
    // epoch seconds or the delay, by the database's clock.
    let rows = client
        .query(
            "SELECT job_id, inserted FROM commitq.enqueue_many((
                 SELECT coalesce(jsonb_agg(
                            (j - 'run_at_epoch' - 'delay_secs')
                            || jsonb_build_object('run_at', coalesce(
                                   to_timestamp((j->>'run_at_epoch')::float8),
                                   now() + make_interval(secs => coalesce((j->>'delay_secs')::float8, 0))))
                            ORDER BY i), '[]')
                   FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(j, i)))",
            &[&serde_json::Value::Array(batch)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Enqueued {
            job_id: r.get(0),
            inserted: r.get(1),
        })
        .collect())
}
