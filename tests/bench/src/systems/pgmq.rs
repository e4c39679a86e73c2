//! pgmq, installed from the SQL that ships inside its crates.io crate
//! (`install-peers.sh` copies it out), driven through its SQL API: the
//! calls its clients make. `send_batch` in bulk, `send` per transaction,
//! `read` of 100 then `delete` of the batch for the drain.

use std::time::{Duration, Instant};

use commitq_tests::connect;
use tokio_postgres::Client;

use super::Workload;
use crate::common::{self, why, Cluster, Load, Outcome, Sample};

/// Messages a drain worker reads per call.
const READ_BATCH: i32 = 100;

pub async fn prepare(cluster: &Cluster, db: &str) -> Outcome<String> {
    let path = crate::peers_dir().join("pgmq/pgmq.sql");
    let sql = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run tests/bench/install-peers.sh)", path.display()))?;
    let version =
        std::fs::read_to_string(crate::peers_dir().join("pgmq/VERSION")).unwrap_or_default();
    cluster.fresh_database(db).await?;
    let c = connect(&cluster.kv(db)).await;
    c.batch_execute(&sql).await.map_err(why("pgmq.sql"))?;
    c.batch_execute("SELECT pgmq.create('bench')")
        .await
        .map_err(why("pgmq.create"))?;
    Ok(format!(
        "pgmq {} (SQL of the crate, no extension); read {READ_BATCH} + delete by array; latency: read_with_poll every 10 ms",
        version.trim()
    ))
}

async fn reset(c: &Client) -> Outcome<()> {
    common::run_each(
        c,
        &[
            "TRUNCATE pgmq.q_bench, pgmq.a_bench",
            "VACUUM ANALYZE pgmq.q_bench",
        ],
    )
    .await
}

pub async fn run(w: Workload, cluster: &Cluster, db: &str, load: &Load) -> Outcome<Sample> {
    let url = cluster.kv(db);
    let c = connect(&url).await;
    reset(&c).await?;
    match w {
        Workload::Bulk | Workload::Single => {
            let bulk = "SELECT count(*) FROM pgmq.send_batch('bench', $1::jsonb[])";
            let single = "SELECT pgmq.send('bench', '{args}')";
            common::enqueue_rate(w, &c, &url, load, bulk, single).await
        }
        Workload::Drain => {
            c.execute(
                &format!(
                    "SELECT count(*) FROM pgmq.send_batch('bench',
                         array_fill('{}'::jsonb, ARRAY[$1::int]))",
                    common::ARGS_40_BYTES
                ),
                &[&(load.jobs as i32)],
            )
            .await
            .map_err(why("fill pgmq"))?;
            common::run_each(&c, &["VACUUM ANALYZE pgmq.q_bench"]).await?;
            let sqls = [
                "SELECT msg_id FROM pgmq.read('bench', 300, $1)",
                "SELECT count(*) FROM pgmq.delete('bench', $1::bigint[])",
            ];
            common::drain_rate(
                &url,
                load.concurrency,
                load.jobs,
                load.timeout,
                &sqls,
                |c, s, _| async move { common::claim_then_finish(&c, &s, READ_BATCH).await },
            )
            .await
            .map(Sample::rate)
        }
        Workload::Latency => latency(&url, load).await,
        other => Err(format!("{other:?} is not measured for pgmq")),
    }
}

/// One reader polling with `read_with_poll` (10 ms), handing each message
/// to a handler slot, `concurrency` of them, each with the connection it
/// deletes its message on (one shared connection could not commit 500
/// deletes a second).
async fn latency(url: &str, load: &Load) -> Outcome<Sample> {
    let total = (load.rate * load.seconds) as usize;
    let (committed, started) = (common::instants(total), common::instants(total));
    let reader = connect(url).await;
    // Free handler slots, each a connection.
    let (free_tx, mut free_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..load.concurrency {
        let _ = free_tx.send(connect(url).await);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let seen = started.clone();
    let deadline = Instant::now() + load.timeout;
    let consumer = tokio::spawn(async move {
        let read = reader
            .prepare("SELECT msg_id, (message->>'n')::bigint FROM pgmq.read_with_poll('bench', 300, $1, 1, 10)")
            .await
            .map_err(why("prepare read_with_poll"))?;
        // Read only when a slot is free, and at most as many as are free.
        let mut slots = Vec::new();
        while !*stop_rx.borrow_and_update() && Instant::now() < deadline {
            if slots.is_empty() {
                slots.push(free_rx.recv().await.ok_or("slots closed")?);
            }
            while let Ok(slot) = free_rx.try_recv() {
                slots.push(slot);
            }
            let want = slots.len() as i32;
            for row in reader
                .query(&read, &[&want])
                .await
                .map_err(why("read_with_poll"))?
            {
                let (id, n): (i64, i64) = (row.get(0), row.get(1));
                if let Some(s) = seen.get(n as usize) {
                    let _ = s.set(Instant::now());
                }
                let slot: Client = slots.pop().ok_or("more messages than asked for")?;
                let free_tx = free_tx.clone();
                tokio::spawn(async move {
                    let _ = slot
                        .execute("SELECT pgmq.delete('bench', $1::bigint)", &[&id])
                        .await;
                    let _ = free_tx.send(slot);
                });
            }
        }
        Ok::<_, String>(())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sql = "SELECT pgmq.send('bench', jsonb_build_object('n', $1::bigint))";
    let produced = common::steady_producers(url, sql, load.rate, committed.clone()).await;
    let ms = match produced {
        Ok(()) => common::commit_to_start_ms(&committed, &started, Duration::from_secs(30)).await,
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(true);
    consumer.await.map_err(why("reader"))??;
    Sample::latencies(ms?)
}
