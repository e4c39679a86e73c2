//! PgQ (Debian's `postgresql-15-pgq3`), the log-style ceiling: events are
//! appended to rotating tables and consumed in batches between ticks, with
//! no per-event acknowledgement, lease or retry. One consumer reads each
//! batch whole (`next_batch`, `get_batch_events`, `finish_batch`); the
//! benchmark calls `pgq.ticker()` itself in place of the pgqd daemon.

use std::time::Instant;

use commitq_tests::connect;
use tokio_postgres::Client;

use super::Workload;
use crate::common::{self, why, Cluster, Load, Outcome, Sample};

pub async fn prepare(cluster: &Cluster, db: &str) -> Outcome<String> {
    cluster.fresh_database(db).await?;
    let c = connect(&cluster.kv(db)).await;
    c.batch_execute("CREATE EXTENSION pgq")
        .await
        .map_err(why("CREATE EXTENSION pgq (install postgresql-15-pgq3)"))?;
    let v: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pgq'",
            &[],
        )
        .await
        .map_err(why("version"))?
        .get(0);
    Ok(format!(
        "PgQ {v}; one consumer, whole batches; ticker called by the benchmark"
    ))
}

/// A queue of its own for every run: dropping it drops its event tables.
async fn reset(c: &Client) -> Outcome<()> {
    c.batch_execute(
        "SELECT pgq.drop_queue('bench', true) FROM pgq.queue WHERE queue_name = 'bench';
         SELECT pgq.create_queue('bench');
         SELECT pgq.register_consumer('bench', 'bench');",
    )
    .await
    .map_err(why("recreate the pgq queue"))
}

pub async fn run(w: Workload, cluster: &Cluster, db: &str, load: &Load) -> Outcome<Sample> {
    let url = cluster.kv(db);
    let c = connect(&url).await;
    reset(&c).await?;
    match w {
        Workload::Bulk | Workload::Single => {
            let bulk = "SELECT count(pgq.insert_event('bench', 'noop', a::text)) FROM unnest($1::jsonb[]) a";
            let single = "SELECT pgq.insert_event('bench', 'noop', '{args}')";
            common::enqueue_rate(w, &c, &url, load, bulk, single).await
        }
        Workload::Drain => drain(&c, load).await.map(Sample::rate),
        other => Err(format!("{other:?} is not measured for PgQ")),
    }
}

async fn drain(c: &Client, load: &Load) -> Outcome<f64> {
    c.execute(
        &format!(
            "SELECT count(pgq.insert_event('bench', 'noop', '{}')) FROM generate_series(1, $1::int)",
            common::ARGS_40_BYTES
        ),
        &[&(load.jobs as i32)],
    )
    .await
    .map_err(why("fill pgq"))?;
    // The tick that closes the batch holding the filled events.
    c.batch_execute("SELECT pgq.ticker()")
        .await
        .map_err(why("ticker"))?;
    let next = c
        .prepare("SELECT pgq.next_batch('bench', 'bench')")
        .await
        .map_err(why("prepare"))?;
    let events = c
        .prepare("SELECT ev_id, ev_data FROM pgq.get_batch_events($1)")
        .await
        .map_err(why("prepare"))?;
    let finish = c
        .prepare("SELECT pgq.finish_batch($1)")
        .await
        .map_err(why("prepare"))?;
    let start = Instant::now();
    let mut seen = 0usize;
    while seen < load.jobs && start.elapsed() < load.timeout {
        let batch: Option<i64> = c
            .query_one(&next, &[])
            .await
            .map_err(why("next_batch"))?
            .get(0);
        let Some(batch) = batch else {
            c.batch_execute("SELECT pgq.ticker()")
                .await
                .map_err(why("ticker"))?;
            continue;
        };
        // The no-op handler runs for each event as the rows arrive.
        seen += c
            .query(&events, &[&batch])
            .await
            .map_err(why("get_batch_events"))?
            .len();
        c.execute(&finish, &[&batch])
            .await
            .map_err(why("finish_batch"))?;
    }
    if seen != load.jobs {
        return Err(format!("consumed {seen} of {} events", load.jobs));
    }
    Ok(seen as f64 / start.elapsed().as_secs_f64())
}
