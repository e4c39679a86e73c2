//! The worker pool: typed jobs run exactly once, claim loops share a local
//! queue, a handler's `Outcome::Snooze` puts its job back without spending an
//! attempt, and a pool whose connections are killed recovers.

use std::time::Duration;

use commitq::{Outcome, WorkerPool};
use commitq_tests::{
    no_backoff, record, recording_pool, running_jobs, scalar, setup, start_pool, wait_until,
    Record, EFFECTS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_round_trip_and_run_exactly_once() {
    let (_db, client) = setup("t_pool_round_trip", EFFECTS).await;
    let first = client.enqueue(&record(1, "one")).await.unwrap();
    assert!(first.inserted);
    let many: Vec<Record> = (2..=50)
        .map(|n| Record {
            n,
            label: format!("n{n}"),
        })
        .collect();
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
    let jobs: Vec<Record> = (1..=3000)
        .map(|n| Record {
            n,
            label: "quick".into(),
        })
        .collect();
    client.enqueue_many(&jobs).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 8)
        .claimers(4)
        .batch(100)
        .prefetch(100)
        .handle(|ctx, job: Record| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(
                "INSERT INTO public.effects (n, label, attempt) VALUES ($1, 'done', $2)",
                &[&job.n, &ctx.attempt],
            )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_are_killed_recovers_and_runs_the_job_once() {
    let (db, client) = setup("t_pool_killed", EFFECTS).await;
    let admin = db.connect().await;
    no_backoff(&admin).await;
    client.enqueue(&record(1, "once")).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(100))
        .handle(|ctx, job: Record| async move {
            let mut conn = ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "INSERT INTO public.effects (n, label, attempt) VALUES ($1, $2, $3)",
                &[&job.n, &job.label, &ctx.attempt],
            )
            .await?;
            // The first attempt is slow: its connection is killed meanwhile.
            if ctx.attempt == 1 {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            ctx.complete_in(&*tx).await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
        .build();
    let running = start_pool(pool);
    wait_until(
        "the first attempt to run",
        Duration::from_secs(10),
        async || running_jobs(&client).await == 1,
    )
    .await;
    // Kill every connection of the worker's pool (everything but ours).
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    // From here on, look through our own connection: the pool's were killed.
    let on_admin = async |sql: &str| -> i64 { admin.query_one(sql, &[]).await.unwrap().get(0) };
    wait_until("the job to complete", Duration::from_secs(20), async || {
        on_admin("SELECT count(*) FROM commitq.jobs").await == 0
    })
    .await;
    running.stop().await;
    // The killed attempt's insert rolled back with its connection.
    assert_eq!(on_admin("SELECT count(*) FROM public.effects").await, 1);
    assert_eq!(
        on_admin("SELECT attempt::bigint FROM public.effects").await,
        2
    );
}
