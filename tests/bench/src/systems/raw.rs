//! The raw-SQL baseline: a bare job table with the claim index a
//! hand-rolled `SKIP LOCKED` queue would have, and nothing else (no
//! attempts, leases, retries or history).

use commitq_tests::connect;

use super::Workload;
use crate::common::{self, why, Cluster, Load, Outcome, Sample};

/// How a raw drain finishes the jobs it claimed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finish {
    /// Claim by `DELETE ... RETURNING`: one statement per batch.
    Delete,
    /// Claim by `UPDATE ... SET state = 'running'`, then a second
    /// transaction sets them `done`, as a queue that keeps rows would.
    Update,
}

#[derive(Clone, Copy, Debug)]
pub enum Raw {
    /// Plain INSERTs: one row per transaction, or all rows in one statement.
    Insert,
    /// The bulk INSERT in statements of `BULK_CHUNK` rows from one
    /// connection per core at once.
    ParallelInsert,
    /// A drain claiming `batch` jobs at a time.
    Claim { batch: i64, finish: Finish },
}

const SCHEMA: &str = "
    CREATE TABLE raw_jobs (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        kind text NOT NULL,
        args jsonb NOT NULL,
        state text NOT NULL DEFAULT 'available',
        run_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX raw_jobs_claim ON raw_jobs (queue, run_at, id) WHERE state = 'available';
";

pub async fn prepare(cluster: &Cluster, db: &str) -> Outcome<String> {
    cluster.fresh_database(db).await?;
    connect(&cluster.kv(db))
        .await
        .batch_execute(SCHEMA)
        .await
        .map_err(why("raw schema"))?;
    Ok("one table, a partial index over available jobs".into())
}

/// The name of the parallel bulk INSERT's row, which parallel rows of other
/// systems are compared with.
pub const PARALLEL_INSERT: &str = "raw INSERT, a connection per core, 5,000 rows a statement";

/// Insert the jobs whose args are `$1`; how many.
const BULK_INSERT: &str = "WITH i AS (INSERT INTO raw_jobs (queue, kind, args)
                                      SELECT 'bench', 'noop', a FROM unnest($1::jsonb[]) a
                                      RETURNING 1)
                           SELECT count(*) FROM i";

async fn reset(c: &tokio_postgres::Client) -> Outcome<()> {
    common::run_each(c, &["TRUNCATE raw_jobs", "VACUUM ANALYZE raw_jobs"]).await
}

impl Raw {
    pub fn name(&self) -> String {
        match self {
            Raw::Insert => "raw INSERT".into(),
            Raw::ParallelInsert => PARALLEL_INSERT.into(),
            Raw::Claim {
                batch,
                finish: Finish::Delete,
            } => format!("raw claim-{batch}-and-DELETE"),
            Raw::Claim {
                batch,
                finish: Finish::Update,
            } => {
                format!("raw claim-{batch} UPDATE, then UPDATE done")
            }
        }
    }

    pub async fn run(
        &self,
        w: Workload,
        cluster: &Cluster,
        db: &str,
        load: &Load,
    ) -> Outcome<Sample> {
        let url = cluster.kv(db);
        let c = connect(&url).await;
        reset(&c).await?;
        match (w, *self) {
            (Workload::Bulk, Raw::ParallelInsert) => {
                common::parallel_bulk_rate(&url, BULK_INSERT, load.jobs)
                    .await
                    .map(Sample::rate)
            }
            (Workload::Bulk | Workload::Single, Raw::Insert) => {
                let bulk = BULK_INSERT;
                let single =
                    "INSERT INTO raw_jobs (queue, kind, args) VALUES ('bench', 'noop', '{args}')";
                common::enqueue_rate(w, &c, &url, load, bulk, single).await
            }
            (Workload::Drain, Raw::Claim { batch, finish }) => {
                drain(&c, &url, load, batch, finish).await.map(Sample::rate)
            }
            (w, r) => Err(format!("{w:?} is not measured for {r:?}")),
        }
    }
}

async fn drain(
    c: &tokio_postgres::Client,
    url: &str,
    load: &Load,
    batch: i64,
    finish: Finish,
) -> Outcome<f64> {
    c.execute(
        &format!(
            "INSERT INTO raw_jobs (queue, kind, args)
                 SELECT 'bench', 'noop', '{}' FROM generate_series(1, $1::int)",
            common::ARGS_40_BYTES
        ),
        &[&(load.jobs as i32)],
    )
    .await
    .map_err(why("fill raw_jobs"))?;
    common::run_each(c, &["VACUUM ANALYZE raw_jobs"]).await?;
    let claim =
        "SELECT id FROM raw_jobs WHERE queue = 'bench' AND state = 'available' AND run_at <= now()
                      ORDER BY run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED";
    match finish {
        Finish::Delete => {
            let sql = format!("DELETE FROM raw_jobs WHERE id IN ({claim}) RETURNING id, args");
            common::drain_rate(
                url,
                load.concurrency,
                load.jobs,
                load.timeout,
                &[&sql],
                move |c, s, _| async move { Ok(c.query(&s[0], &[&batch]).await?.len()) },
            )
            .await
        }
        Finish::Update => {
            let take = format!(
                "UPDATE raw_jobs SET state = 'running' WHERE id IN ({claim}) RETURNING id, args"
            );
            let done = "UPDATE raw_jobs SET state = 'done' WHERE id = ANY($1)";
            common::drain_rate(
                url,
                load.concurrency,
                load.jobs,
                load.timeout,
                &[&take, done],
                move |c, s, _| async move { common::claim_then_finish(&c, &s, batch).await },
            )
            .await
        }
    }
}
