//! Stopping a worker pool: running jobs finish (or are cut short after the
//! grace period and handed back), and prefetched jobs that never started go
//! back with their attempt unspent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq::{Outcome, WorkerPool};
use commitq_tests::{
    record, running_jobs, scalar, setup, start_pool, wait_until, Record, EFFECTS, INSERT_EFFECT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_jobs_and_hands_back_the_rest() {
    let (_db, client) = setup("t_shutdown_graceful", EFFECTS).await;
    let jobs: Vec<Record> = (1..=6).map(|n| record(n, "slow")).collect();
    client.enqueue_many(&jobs).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        // No local queue: exactly the two running jobs hold leases (the
        // adaptive one could hold a job when claims are slow).
        .prefetch(0)
        .grace(Duration::from_millis(1500))
        .handle(|ctx, job: Record| async move {
            // Job 1 and 2 take 300 ms, the rest would take a minute.
            let secs = if job.n <= 2 { 0.3 } else { 60.0 };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = ctx.cancelled() => return Err("cancelled".into()),
            }
            let conn = ctx.client().pool().get().await?;
            conn.execute(INSERT_EFFECT, &[&job.n, &"done", &ctx.attempt])
                .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let running = start_pool(pool);
    wait_until(
        "two slow jobs to start",
        Duration::from_secs(20),
        async || {
            scalar(&client, "SELECT count(*) FROM public.effects").await == 2
                && running_jobs(&client).await == 2
        },
    )
    .await;
    let started = Instant::now();
    running.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Nothing left running; the two cut short are back, claimable now, attempt not spent.
    assert_eq!(running_jobs(&client).await, 0);
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
        4,
        "none lost"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM commitq.jobs WHERE attempt = 0"
        )
        .await,
        4
    );
    let claimable = client
        .pool()
        .get()
        .await
        .unwrap()
        .query(
            "SELECT job_id FROM commitq.claim('effects', 'next', 10)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimable.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_wait_under_lease_and_are_handed_back_unstarted_on_shutdown() {
    let (_db, client) = setup("t_shutdown_prefetch", EFFECTS).await;
    let jobs: Vec<Record> = (1..=40).map(|n| record(n, "slow")).collect();
    client.enqueue_many(&jobs).await.unwrap();
    let busy = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (release, gate) = tokio::sync::watch::channel(false);
    let (b, m) = (busy.clone(), most.clone());
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .prefetch(10)
        .batch(12)
        // The prefetched jobs wait longer than this lease, while maintain
        // runs every 100 ms: only heartbeats (every third of the lease) keep
        // them from being rescued. A lease of 10 s lets a heartbeat be late
        // by over 6 s on a busy machine.
        .lease(Duration::from_secs(10))
        .maintain_interval(Some(Duration::from_millis(100)))
        .grace(Duration::from_secs(5))
        .handle(move |ctx, job: Record| {
            let (b, m, mut gate) = (b.clone(), m.clone(), gate.clone());
            async move {
                m.fetch_max(b.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                // The first two hold their handlers until the others have
                // waited past their lease.
                let _ = gate.wait_for(|open| *open).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
                let conn = ctx.client().pool().get().await?;
                conn.execute(INSERT_EFFECT, &[&job.n, &"done", &ctx.attempt])
                    .await?;
                b.fetch_sub(1, Ordering::SeqCst);
                Ok(Outcome::Complete)
            }
        })
        .build();
    let running = start_pool(pool);
    // Two run at a time; the claim took handlers plus prefetch, and all
    // twelve are still under their first lease a second after it ran out.
    let held_past_lease = "SELECT count(*) FROM commitq.jobs
                            WHERE state = 'running' AND attempt = 1
                              AND claimed_at < now() - lease_interval - interval '1 second'";
    wait_until(
        "twelve claimed jobs held past their first lease",
        Duration::from_secs(60),
        async || scalar(&client, held_past_lease).await == 12,
    )
    .await;
    release.send(true).unwrap();
    wait_until(
        "handlers to run while others wait",
        Duration::from_secs(60),
        async || scalar(&client, "SELECT count(*) FROM public.effects").await >= 4,
    )
    .await;
    running.stop().await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more handlers than the concurrency"
    );
    let done = scalar(&client, "SELECT count(*) FROM public.effects").await;
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM public.effects WHERE attempt <> 1"
        )
        .await,
        0,
        "no job ran twice or after a rescue"
    );
    assert_eq!(
        running_jobs(&client).await,
        0,
        "the waiting jobs were handed back"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM commitq.jobs WHERE attempt = 0"
        )
        .await
            + done,
        40,
        "every job not run is back with its attempt unspent"
    );
}
