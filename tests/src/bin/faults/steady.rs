//! The second phase: what a transaction held open (vacuum blocked) does to
//! throughput and to the size of the job table, on fresh workers without
//! faults.

use std::time::{Duration, Instant};

use crate::harness::connect_retrying;

/// A steady load for `secs`: a producer keeps about a thousand jobs waiting
/// while the workers drain, optionally with a transaction held open on
/// another connection (so vacuum can remove nothing); returns the completion
/// rate and how much commitq.jobs grew (bytes, table and indexes).
pub async fn steady_load(url: &str, secs: Duration, hold_open: bool) -> (f64, i64) {
    let db = connect_retrying(url).await;
    db.batch_execute("VACUUM commitq.jobs").await.unwrap();
    let one = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let before_size = one("SELECT pg_total_relation_size('commitq.jobs')").await;
    let before_done =
        one("SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed'").await;
    let holder = connect_retrying(url).await;
    if hold_open {
        holder
            .batch_execute("BEGIN; SELECT txid_current();")
            .await
            .unwrap();
    }
    let until = Instant::now() + secs;
    while Instant::now() < until {
        let waiting = one("SELECT count(*) FROM commitq.jobs WHERE state = 'available'").await;
        if waiting < 1000 {
            db.batch_execute(
                "SELECT count(*) FROM commitq.enqueue_many('faults', 'fault_job',
                     array_fill('{\"n\": 0, \"external\": false}'::jsonb, ARRAY[200]))",
            )
            .await
            .unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let after_done =
        one("SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed'").await;
    let after_size = one("SELECT pg_total_relation_size('commitq.jobs')").await;
    if hold_open {
        holder.batch_execute("COMMIT").await.unwrap();
    }
    (
        (after_done - before_done) as f64 / secs.as_secs_f64(),
        after_size - before_size,
    )
}
