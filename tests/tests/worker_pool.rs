//! The worker pool: typed jobs run exactly once, claim loops share a local
//! queue, a handler's `Outcome::Snooze` puts its job back without spending an
//! attempt, and a pool whose connections are killed recovers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitq::{Outcome, WorkerPool};
use commitq_tests::{
    no_backoff, record, recording_pool, running_jobs, scalar, scalar_with, setup, start_pool,
    wait_until, Record, EFFECTS, INSERT_EFFECT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_round_trip_and_run_exactly_once() {
    let (_db, client) = setup("t_pool_round_trip", EFFECTS).await;
    let first = client.enqueue(&record(1, "one")).await.unwrap();
    assert!(first.inserted);
    let many: Vec<Record> = (2..=50).map(|n| record(n, &format!("n{n}"))).collect();
    let enqueued = client.enqueue_many(&many).await.unwrap();
    assert_eq!(enqueued.len(), 49);
    assert!(enqueued.windows(2).all(|w| w[0].job_id < w[1].job_id));

    let pool = recording_pool(&client);
    let metrics = pool.metrics();
    let running = start_pool(pool);
    wait_until("all 50 effects", Duration::from_secs(20), async || {
        scalar(&client, "SELECT count(*) FROM public.effects").await == 50
    })
    .await;
    running.stop().await;
    assert_eq!(scalar(&client, "SELECT count(DISTINCT n) FROM public.effects WHERE label = CASE WHEN n = 1 THEN 'one' ELSE 'n' || n END").await, 50);
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
        0
    );
    let m = metrics.snapshot();
    assert_eq!((m.claimed, m.completed, m.failed), (50, 50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_claim_loops_share_a_local_queue_without_stalling() {
    // Claim loops wait for fuller batches while the local queue keeps the
    // handlers busy. With four loops whose batches together exceed the claim
    // slots, a loop must never wait on slots the others hold: every job
    // still runs, each once.
    let (_db, client) = setup("t_pool_claim_loops", EFFECTS).await;
    let jobs: Vec<Record> = (1..=3000).map(|n| record(n, "quick")).collect();
    client.enqueue_many(&jobs).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 8)
        .claimers(4)
        .batch(100)
        .prefetch(100)
        .handle(|ctx, job: Record| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(INSERT_EFFECT, &[&job.n, &"done", &ctx.attempt])
                .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let metrics = pool.metrics();
    let running = start_pool(pool);
    wait_until("every job completed", Duration::from_secs(60), async || {
        metrics.snapshot().completed == 3000
    })
    .await;
    running.stop().await;
    assert_eq!(
        scalar(
            &client,
            "SELECT count(DISTINCT n) FROM public.effects WHERE attempt = 1"
        )
        .await,
        3000,
        "every job ran"
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM public.effects").await,
        3000,
        "no job ran twice"
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
        0,
        "nothing left in the queue"
    );
}

/// A handler that answers `Outcome::Snooze` puts its job back for that long,
/// without spending an attempt or recording an error, and it runs again
/// once due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snoozing_handler_puts_its_job_back_without_spending_an_attempt() {
    let (db, client) = setup("t_pool_snooze", EFFECTS).await;
    let admin = db.connect().await;
    let job = client.enqueue(&record(1, "later")).await.unwrap().job_id;
    let runs = Arc::new(AtomicUsize::new(0));
    let seen = runs.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(50))
        .handle(move |ctx, job: Record| {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Ok(Outcome::Snooze(Duration::from_secs(3600)));
                }
                let conn = ctx.client().pool().get().await?;
                conn.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                    .await?;
                Ok(Outcome::Complete)
            }
        })
        .build();
    let metrics = pool.metrics();
    let running = start_pool(pool);
    let state = "SELECT state::text, attempt, jsonb_array_length(errors),
                        extract(epoch FROM run_at - now())::float8
                   FROM commitq.jobs WHERE id = $1";
    wait_until("the snooze", Duration::from_secs(20), async || {
        admin
            .query_one(state, &[&job])
            .await
            .unwrap()
            .get::<_, String>(0)
            == "scheduled"
    })
    .await;
    let row = admin.query_one(state, &[&job]).await.unwrap();
    assert_eq!(row.get::<_, i32>(1), 0, "no attempt spent");
    assert_eq!(row.get::<_, i32>(2), 0, "no error recorded");
    let delay: f64 = row.get(3);
    assert!((3500.0..=3600.0).contains(&delay), "back in {delay} s");
    let m = metrics.snapshot();
    assert_eq!((m.snoozed, m.failed, m.completed), (1, 0, 0));

    // Due now, as an hour passing would make it.
    admin
        .execute(
            "UPDATE commitq.jobs SET run_at = now() WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    wait_until("the second run", Duration::from_secs(20), async || {
        scalar(&admin, "SELECT count(*) FROM commitq.jobs").await == 0
    })
    .await;
    running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        scalar(&admin, "SELECT attempt::bigint FROM public.effects").await,
        1,
        "the run after the snooze is still the first attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_are_killed_recovers_and_runs_the_job_once() {
    let (db, client) = setup("t_pool_killed", EFFECTS).await;
    let admin = db.connect().await;
    no_backoff(&admin).await;
    client.enqueue(&record(1, "once")).await.unwrap();
    let (release, gate) = tokio::sync::watch::channel(false);
    // Should the pool's report of the failed attempt be lost with its
    // connections, the job comes back when its lease expires: a short lease
    // and frequent maintenance keep that path inside the test's wait too.
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(100))
        .lease(Duration::from_secs(5))
        .maintain_interval(Some(Duration::from_secs(1)))
        .handle(move |ctx, job: Record| {
            let mut gate = gate.clone();
            async move {
                let mut conn = ctx.client().pool().get().await?;
                let tx = conn.transaction().await?;
                tx.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                    .await?;
                // The first attempt waits until its connection has been killed.
                if ctx.attempt == 1 {
                    let _ = gate.wait_for(|open| *open).await;
                }
                ctx.complete_in(&*tx).await?;
                tx.commit().await?;
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
    // Kill every connection of the worker's pool (everything but ours), and
    // let the first attempt go on once they are gone.
    let killed: Vec<i32> = admin
        .query_one(
            "SELECT array_agg(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid",
            &[&killed],
        )
        .await
        .unwrap();
    let gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)";
    wait_until(
        "the killed backends to exit",
        Duration::from_secs(20),
        async || scalar_with(&admin, gone, &[&killed]).await == 0,
    )
    .await;
    release.send(true).unwrap();
    // From here on, look through our own connection: the pool's were killed.
    wait_until("the job to complete", Duration::from_secs(60), async || {
        scalar(&admin, "SELECT count(*) FROM commitq.jobs").await == 0
    })
    .await;
    running.stop().await;
    // The killed attempt's insert rolled back with its connection.
    assert_eq!(
        scalar(&admin, "SELECT count(*) FROM public.effects").await,
        1
    );
    assert_eq!(
        scalar(&admin, "SELECT attempt::bigint FROM public.effects").await,
        2
    );
}
