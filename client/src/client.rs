//! Connecting, and enqueueing on a pool or inside the caller's transaction.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::GenericClient;

use crate::{check_extension, driver, tls, EnqueueOptions, Enqueued, Error, Job};

/// A handle on a database with `pg_commitq` installed: a connection pool
/// whose extension version was checked.
#[derive(Clone)]
pub struct Client {
    pool: Pool,
    url: Option<String>,
}

/// Connections of the pool [`Client::connect`] opens: enough for a worker
/// pool's default handlers and a web process's requests, well within
/// PostgreSQL's default `max_connections` of 100. Size it to the handlers
/// that hold a connection with [`Client::connect_with`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;

impl Client {
    /// Connect with a libpq-style connection string or URL
    /// (`host=/run/postgresql dbname=app` or `postgres://...`). TLS is as
    /// libpq's `sslmode` and `sslrootcert` in it say (default: prefer),
    /// for the pool and the worker pool's LISTEN connection alike.
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Client::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`Client::connect`] with a pool of at most `max_connections`
    /// connections (opened as needed). Handlers that hold a connection
    /// while they run need one each: a [`crate::WorkerPool`] warns when
    /// its handlers outnumber them. The worker pool's own statements
    /// (claims, heartbeats, completions) use connections of its own, not
    /// these.
    pub async fn connect_with(url: &str, max_connections: usize) -> Result<Client, Error> {
        if max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        let pool = open_pool(url, max_connections)?;
        let mut client = Client::from_pool(pool).await?;
        client.url = Some(url.to_string());
        Ok(client)
    }

    /// Most connections the pool opens.
    pub fn max_connections(&self) -> usize {
        self.pool.status().max_size
    }

    /// Use an existing pool. Workers that LISTEN for wake-ups need
    /// [`Client::connect`] or [`Client::with_listen_url`], since a pooled
    /// connection cannot be kept for LISTEN.
    pub async fn from_pool(pool: Pool) -> Result<Client, Error> {
        let conn = pool.get().await?;
        check_extension(&**conn).await?;
        Ok(Client { pool, url: None })
    }

    /// The connection string the worker pool opens its LISTEN connection
    /// with, TLS settings included (as for [`Client::connect`]).
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

/// A pool of at most `size` connections to `url`, opened as needed.
pub(crate) fn open_pool(url: &str, size: usize) -> Result<Pool, Error> {
    let (config, tls) = tls::configure(url)?;
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| Error::Config(e.to_string()))
}

/// Enqueue `job` with `options` through `client`, which may be a
/// transaction of the caller's: the job then commits, or vanishes, with it.
pub async fn enqueue<C: GenericClient, J: Job>(
    client: &C,
    job: &J,
    options: &EnqueueOptions,
) -> Result<Enqueued, Error> {
    let args = serde_json::to_value(job).map_err(Error::Serialize)?;
    let queue = options.queue.as_deref().unwrap_or(J::QUEUE);
    driver::enqueue(client, queue, J::KIND, &args, options).await
}

/// Enqueue many jobs of one type in one statement, each with its own
/// [`Job::options`]; one bad job rejects them all. Results are in input order.
///
/// Jobs that share their queue, priority, run_at, delay and max_attempts
/// (the usual batch) go through `commitq.enqueue_many`'s arrays form, one
/// INSERT for them all; a batch whose jobs differ in those goes through its
/// JSON form, which takes every option per job. Both store the same jobs
/// and reject the same ones.
pub async fn enqueue_many<C: GenericClient, J: Job>(
    client: &C,
    jobs: &[J],
) -> Result<Vec<Enqueued>, Error> {
    let options: Vec<EnqueueOptions> = jobs.iter().map(Job::options).collect();
    let mut args = Vec::with_capacity(jobs.len());
    for job in jobs {
        args.push(serde_json::to_value(job).map_err(Error::Serialize)?);
    }
    let queue_of = |o: &EnqueueOptions| o.queue.clone().unwrap_or_else(|| J::QUEUE.to_string());
    let shares = |a: &EnqueueOptions, b: &EnqueueOptions| {
        queue_of(a) == queue_of(b)
            && a.priority == b.priority
            && a.run_at == b.run_at
            && a.delay == b.delay
            && a.max_attempts == b.max_attempts
    };
    match options.first() {
        Some(first) if options.iter().all(|o| shares(first, o)) => {
            let queue = queue_of(first);
            let shared = driver::SharedOptions {
                queue: &queue,
                kind: J::KIND,
                priority: first.priority,
                run_at: first.run_at,
                delay: first.delay,
                max_attempts: first.max_attempts,
            };
            // NULL rather than an array of NULLs: the INSERT's fast path.
            let keys = |key: fn(&EnqueueOptions) -> &Option<String>| {
                options
                    .iter()
                    .any(|o| key(o).is_some())
                    .then(|| options.iter().map(|o| key(o).clone()).collect::<Vec<_>>())
            };
            let ikeys = keys(|o| &o.idempotency_key);
            let ckeys = keys(|o| &o.concurrency_key);
            driver::enqueue_many_arrays(client, &shared, &args, ikeys, ckeys).await
        }
        _ => {
            let batch = args
                .into_iter()
                .zip(&options)
                .map(|(args, o)| driver::enqueue_many_item(&queue_of(o), J::KIND, args, o))
                .collect();
            driver::enqueue_many(client, batch).await
        }
    }
}
