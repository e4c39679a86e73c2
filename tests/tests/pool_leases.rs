//! The worker pool keeps its leases whatever its handlers do: heartbeats
//! and completions do not wait for a connection a handler holds, and a
//! handler whose job was cancelled, or whose lease was lost, is stopped
//! within a heartbeat interval and the cancel grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commitq::{Outcome, WorkerPool};
use commitq_tests::{
    record, scalar, setup, start_pool, wait_until, Record, EFFECTS, INSERT_EFFECT,
};

/// Starts of each job's handler, by `n`.
type Starts = Arc<Mutex<HashMap<i64, usize>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_holding_every_connection_keep_their_leases() {
    // More handlers (40) than the client's connections (32), each holding
    // a connection in a transaction for 3 s under a 2 s lease, while
    // another process runs maintain(): heartbeats and completions must get
    // through anyway, so no lease is lost and no job runs twice.
    let (db, client) = setup("t_pool_leases_held_connections", EFFECTS).await;
    assert_eq!(client.max_connections(), commitq::DEFAULT_MAX_CONNECTIONS);
    let jobs: Vec<Record> = (1..=80).map(|n| record(n, "held")).collect();
    client.enqueue_many(&jobs).await.unwrap();

    let starts: Starts = Arc::default();
    let seen = starts.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 40)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .maintain_interval(None)
        .handle(move |ctx, job: Record| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap().entry(job.n).or_default() += 1;
                let mut conn = ctx.client().pool().get().await?;
                let tx = conn.transaction().await?;
                tx.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                    .await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                tx.commit().await?;
                Ok(Outcome::Complete)
            }
        })
        .build();
    let metrics = pool.metrics();

    // Another process rescues expired leases all along.
    let maintainer = db.connect().await;
    let rescuing = tokio::spawn(async move {
        loop {
            maintainer
                .execute("SELECT commitq.maintain()", &[])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let running = start_pool(pool);
    wait_until("80 completions", Duration::from_secs(90), async || {
        metrics.snapshot().completed + metrics.snapshot().lost_leases >= 80
    })
    .await;
    rescuing.abort();
    running.stop().await;

    let m = metrics.snapshot();
    let twice: Vec<i64> = starts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(job, _)| *job)
        .collect();
    assert_eq!(m.lost_leases, 0, "no lease lost: {m:?}");
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    assert_eq!(m.completed, 80);
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM public.effects").await,
        80
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
        0
    );
}

/// A pool of one handler that never looks at its cancellation: it sleeps
/// for a minute, and says when its future was dropped.
fn stubborn_pool(
    client: &commitq::Client,
    dropped: Arc<Mutex<Vec<Instant>>>,
    starts: Starts,
) -> WorkerPool {
    /// Records when the handler's future is dropped.
    struct OnDrop(Arc<Mutex<Vec<Instant>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(Instant::now());
        }
    }
    WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .lease(Duration::from_secs(3))
        .heartbeat_interval(Duration::from_secs(1))
        .cancel_grace(Duration::from_millis(500))
        .job_timeout(Duration::from_secs(120))
        .poll_interval(Duration::from_millis(100))
        .maintain_interval(None)
        .handle(move |_ctx, job: Record| {
            let dropped = dropped.clone();
            let starts = starts.clone();
            async move {
                *starts.lock().unwrap().entry(job.n).or_default() += 1;
                let _guard = OnDrop(dropped);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Outcome::Complete)
            }
        })
        .build()
}

/// Heartbeat interval plus cancel grace, and a second for a loaded machine.
const STOP_WITHIN: Duration = Duration::from_millis(1000 + 500 + 1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_its_handler_within_a_heartbeat() {
    let (_db, client) = setup("t_pool_leases_cancel", EFFECTS).await;
    let job = client.enqueue(&record(1, "cancel me")).await.unwrap();
    let dropped: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let starts: Starts = Arc::default();
    let running = start_pool(stubborn_pool(&client, dropped.clone(), starts.clone()));
    wait_until("the handler started", Duration::from_secs(20), async || {
        starts.lock().unwrap().contains_key(&1)
    })
    .await;

    let conn = client.pool().get().await.unwrap();
    conn.execute("SELECT commitq.cancel($1)", &[&job.job_id])
        .await
        .unwrap();
    let cancelled_at = Instant::now();
    wait_until("the handler dropped", Duration::from_secs(30), async || {
        !dropped.lock().unwrap().is_empty()
    })
    .await;
    let took = dropped.lock().unwrap()[0] - cancelled_at;
    assert!(took <= STOP_WITHIN, "handler stopped {took:?} after cancel");
    wait_until("the job cancelled", Duration::from_secs(10), async || {
        scalar(
            &client,
            "SELECT count(*) FROM commitq.finished_jobs WHERE state = 'cancelled'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_its_handler_within_a_heartbeat() {
    let (db, client) = setup("t_pool_leases_lost", EFFECTS).await;
    let job = client.enqueue(&record(1, "rescue me")).await.unwrap();
    let dropped: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let starts: Starts = Arc::default();
    let pool = stubborn_pool(&client, dropped.clone(), starts.clone());
    let metrics = pool.metrics();
    let running = start_pool(pool);
    wait_until("the handler started", Duration::from_secs(20), async || {
        starts.lock().unwrap().contains_key(&1)
    })
    .await;

    // As if this worker had stalled past its lease: the lease runs out and
    // maintain() rescues the job, in one transaction so that no heartbeat
    // renews it in between.
    let mut other = db.connect().await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "UPDATE commitq.jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        &[&job.job_id],
    )
    .await
    .unwrap();
    tx.execute("SELECT commitq.maintain()", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let lost_at = Instant::now();
    wait_until("the handler dropped", Duration::from_secs(30), async || {
        !dropped.lock().unwrap().is_empty()
    })
    .await;
    let took = dropped.lock().unwrap()[0] - lost_at;
    assert!(
        took <= STOP_WITHIN,
        "handler stopped {took:?} after its lease was lost"
    );
    assert_eq!(metrics.snapshot().lost_leases, 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_refuses_more_handlers_than_client_connections() {
    let (db, _) = setup("t_pool_leases_sizing", EFFECTS).await;
    let client = commitq::Client::connect_with(&db.url, 4).await.unwrap();
    assert_eq!(client.max_connections(), 4);
    let pool = |handlers| {
        WorkerPool::builder(client.clone())
            .queue("effects", handlers)
            .handle(|_ctx, _job: Record| async { Ok(Outcome::Complete) })
    };
    match pool(5).try_build() {
        Err(commitq::Error::Config(m)) => assert!(m.contains("5 handlers but 4"), "{m}"),
        Err(e) => panic!("expected Error::Config, got {e}"),
        Ok(_) => panic!("5 handlers on 4 connections were accepted"),
    }
    assert!(pool(4).try_build().is_ok());
    assert!(matches!(
        commitq::Client::connect_with(&db.url, 0).await,
        Err(commitq::Error::Config(_))
    ));
}
