//! A job's lease: checking it costs a lookup of the batch, not a walk of
//! every running job; and a handler whose lease was lost cannot commit its
//! writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitq::{Outcome, WorkerPool};
use commitq_tests::{
    no_backoff, record, running_jobs, scalar, setup, start_pool, wait_until, Record, TestDb,
    EFFECTS, INSERT_EFFECT,
};
use tokio_postgres::Client;

/// Shared buffers (hit or read) that one call touches, by EXPLAIN ANALYZE:
/// the top node's count includes the statements run inside the function.
async fn buffers_of(c: &Client, call: &str, ids: &[i64], tokens: &[i64]) -> u64 {
    let rows = c
        .query(
            &format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {call}"),
            &[&ids, &tokens],
        )
        .await
        .unwrap();
    let line = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .find(|l| l.trim_start().starts_with("Buffers: shared"))
        .expect("a Buffers line");
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("hit=").or_else(|| w.strip_prefix("read=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn lease_checks_read_the_batch_not_every_running_job() {
    // Statistics taken while no job runs, as after a quiet night: a lease
    // test written as `state = 'running' AND lease_expires_at > ...` implies
    // jobs_lease_idx's predicate, and the planner then walked that index,
    // every running job, for each completion or heartbeat.
    let db = TestDb::new("t_lease_lookup").await;
    let c = db.connect().await;
    c.execute(
        "SELECT count(*) FROM commitq.enqueue_many('lookup', 'noop', array_fill('{}'::jsonb, ARRAY[20000]))",
        &[],
    )
    .await
    .unwrap();
    c.batch_execute("ANALYZE commitq.jobs").await.unwrap();
    let claimed = c
        .query(
            "SELECT job_id, lease_token FROM commitq.claim('lookup', 'w', 8000)
             UNION ALL
             SELECT job_id, lease_token FROM commitq.claim('lookup', 'w', 8000)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 16000);
    let ids: Vec<i64> = claimed.iter().map(|r| r.get(0)).collect();
    let tokens: Vec<i64> = claimed.iter().map(|r| r.get(1)).collect();

    let complete = "SELECT * FROM commitq.complete_many($1, $2)";
    let heartbeat = "SELECT * FROM commitq.heartbeat(($1::bigint[])[1], ($2::bigint[])[1])";
    // Once each first: a session's first call also reads the catalogs.
    buffers_of(&c, complete, &ids[100..102], &tokens[100..102]).await;
    buffers_of(&c, heartbeat, &ids[102..103], &tokens[102..103]).await;

    let batch = buffers_of(&c, complete, &ids[..10], &tokens[..10]).await;
    // Measured: about 60 by primary key, over 600 by walking the index.
    assert!(
        batch < 200,
        "completing 10 of 16000 running jobs touched {batch} buffers"
    );
    let one = buffers_of(&c, heartbeat, &ids[10..11], &tokens[10..11]).await;
    assert!(
        one < 100,
        "one heartbeat among 16000 running jobs touched {one} buffers"
    );
    eprintln!("buffers: complete_many of 10: {batch}, heartbeat: {one}");
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM commitq.jobs WHERE state = 'running'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 15988, "the twelve completed, the rest still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_rolls_back_the_handlers_writes() {
    let (db, client) = setup("t_lease_lost", EFFECTS).await;
    let admin = db.connect().await;
    no_backoff(&admin).await;
    client.enqueue(&record(1, "charge")).await.unwrap();
    let (release, gate) = tokio::sync::watch::channel(false);
    // Set when the first attempt's handler has returned, whatever it returned.
    let zombie_done = Arc::new(AtomicBool::new(false));
    let done = zombie_done.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(100))
        .lease(Duration::from_secs(60))
        .handle(move |ctx, job: Record| {
            let (mut gate, done) = (gate.clone(), done.clone());
            async move {
                let mut conn = ctx.client().pool().get().await?;
                let tx = conn.transaction().await?;
                tx.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                    .await?;
                if ctx.attempt != 1 {
                    ctx.complete_in(&*tx).await?;
                    tx.commit().await?;
                    return Ok(Outcome::Complete);
                }
                // The first attempt stalls here while its lease is taken away.
                let _ = gate.wait_for(|open| *open).await;
                let outcome: Result<(), commitq::Error> = async {
                    ctx.complete_in(&*tx).await?;
                    Ok(tx.commit().await?)
                }
                .await;
                done.store(true, Ordering::SeqCst);
                outcome?;
                Ok(Outcome::Complete)
            }
        })
        .build();
    let running = start_pool(pool);
    wait_until(
        "the first attempt to run",
        Duration::from_secs(10),
        async || running_jobs(&client).await == 1,
    )
    .await;
    // The lease runs out (moved in time), maintain rescues the job, and
    // another worker claims it: attempt 1 is now a zombie.
    admin
        .batch_execute("UPDATE commitq.jobs SET lease_expires_at = now() - interval '1 second'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT commitq.maintain()")
        .await
        .unwrap();
    let other: (i64, i64) = {
        let row = admin
            .query_one(
                "SELECT job_id, lease_token FROM commitq.claim('effects', 'other', 1)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    release.send(true).unwrap();
    // The zombie's complete_in fails, so its insert rolls back.
    wait_until(
        "the zombie to finish",
        Duration::from_secs(20),
        async || zombie_done.load(Ordering::SeqCst),
    )
    .await;
    let effects = "SELECT count(*) FROM public.effects";
    assert_eq!(scalar(&admin, effects).await, 0, "the zombie's write");
    admin
        .execute("SELECT commitq.complete($1, $2)", &[&other.0, &other.1])
        .await
        .unwrap();
    running.stop().await;
    // Every handler has ended: nothing the zombie wrote committed later.
    assert_eq!(scalar(&admin, effects).await, 0, "the zombie's write");
    assert_eq!(scalar(&admin, "SELECT count(*) FROM commitq.jobs").await, 0);
}
