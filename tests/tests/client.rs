//! The Rust client and worker pool against the project-local cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq::{Client, EnqueueOptions, Job, Outcome, WorkerPool};
use commitq_tests::TestDb;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    n: i64,
    label: String,
}

impl Job for Record {
    const KIND: &'static str = "record";
    const QUEUE: &'static str = "effects";
}

/// Start a pool built by `build` in the background; the sender stops it.
fn start(pool: WorkerPool) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(pool.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    db.connect()
        .await
        .batch_execute(
            "CREATE TABLE public.effects (n bigint NOT NULL, label text NOT NULL, attempt int)",
        )
        .await
        .unwrap();
    let client = Client::connect(&db.url).await.unwrap();
    (db, client)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .pool()
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// How many jobs are running now.
async fn running_jobs(client: &Client) -> i64 {
    count(
        client,
        "SELECT count(*) FROM commitq.jobs WHERE state = 'running'",
    )
    .await
}

/// Handler that records each job's args in the effects table, in the same
/// transaction as its completion.
fn recording_pool(client: &Client) -> WorkerPool {
    WorkerPool::builder(client.clone())
        .queue("effects", 4)
        .poll_interval(Duration::from_millis(200))
        .handle(|ctx, job: Record| async move {
            let mut conn = ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "INSERT INTO public.effects (n, label, attempt) VALUES ($1, $2, $3)",
                &[&job.n, &job.label, &ctx.attempt],
            )
            .await?;
            ctx.complete_in(&*tx).await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_round_trip_and_run_exactly_once() {
    let (_db, client) = setup("t_client_round_trip").await;
    let first = client
        .enqueue(&Record {
            n: 1,
            label: "one".into(),
        })
        .await
        .unwrap();
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
    let (stop, handle) = start(pool);
    wait_until("all 50 effects", Duration::from_secs(20), async || {
        count(&client, "SELECT count(*) FROM public.effects").await == 50
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(count(&client, "SELECT count(DISTINCT n) FROM public.effects WHERE label = CASE WHEN n = 1 THEN 'one' ELSE 'n' || n END").await, 50);
    assert_eq!(count(&client, "SELECT count(*) FROM commitq.jobs").await, 0);
    let m = metrics.snapshot();
    assert_eq!((m.claimed, m.completed, m.failed), (50, 50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs() {
    let (_db, client) = setup("t_client_rollback").await;
    {
        let mut conn = client.pool().get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        commitq::enqueue(
            &*tx,
            &Record {
                n: 1,
                label: "ghost".into(),
            },
            &EnqueueOptions::default(),
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        commitq::enqueue(
            &*tx,
            &Record {
                n: 2,
                label: "real".into(),
            },
            &EnqueueOptions::default(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let (stop, handle) = start(recording_pool(&client));
    wait_until("the committed job", Duration::from_secs(20), async || {
        count(&client, "SELECT count(*) FROM public.effects").await == 1
    })
    .await;
    // Give a ghost every chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM public.effects WHERE label = 'ghost'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM public.effects WHERE label = 'real'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_the_worker_survives() {
    let (db, client) = setup("t_client_panic").await;
    db.connect()
        .await
        .batch_execute("UPDATE commitq.config SET backoff_base = '0', backoff_cap = '0'")
        .await
        .unwrap();
    client
        .enqueue(&Record {
            n: 7,
            label: "flaky".into(),
        })
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .poll_interval(Duration::from_millis(100))
        .handle(move |ctx, job: Record| {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first attempt blows up");
                }
                let conn = ctx.client().pool().get().await?;
                conn.execute(
                    "INSERT INTO public.effects (n, label, attempt) VALUES ($1, $2, $3)",
                    &[&job.n, &job.label, &ctx.attempt],
                )
                .await?;
                Ok(Outcome::Complete)
            }
        })
        .build();
    let metrics = pool.metrics();
    let (stop, handle) = start(pool);
    wait_until(
        "the retry to succeed",
        Duration::from_secs(20),
        async || {
            count(&client, "SELECT count(*) FROM public.effects").await == 1
                && count(&client, "SELECT count(*) FROM commitq.jobs").await == 0
        },
    )
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        count(&client, "SELECT attempt::bigint FROM public.effects").await,
        2
    );
    let m = metrics.snapshot();
    assert_eq!((m.failed, m.retried, m.completed), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_that_no_longer_deserialize_are_discarded_not_retried() {
    let (db, client) = setup("t_client_bad_args").await;
    db.connect()
        .await
        .batch_execute("SELECT commitq.enqueue('effects', 'record', '{\"n\": \"not a number\"}')")
        .await
        .unwrap();
    let (stop, handle) = start(recording_pool(&client));
    wait_until("the discard", Duration::from_secs(20), async || {
        count(
            &client,
            "SELECT count(*) FROM commitq.finished_jobs WHERE state = 'discarded'",
        )
        .await
            == 1
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        count(&client, "SELECT attempt::bigint FROM commitq.finished_jobs").await,
        1,
        "no retry loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_jobs_and_hands_back_the_rest() {
    let (_db, client) = setup("t_client_shutdown").await;
    let jobs: Vec<Record> = (1..=6)
        .map(|n| Record {
            n,
            label: "slow".into(),
        })
        .collect();
    client.enqueue_many(&jobs).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .grace(Duration::from_millis(1500))
        .handle(|ctx, job: Record| async move {
            // Job 1 and 2 take 300 ms, the rest would take a minute.
            let secs = if job.n <= 2 { 0.3 } else { 60.0 };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = ctx.cancelled() => return Err("cancelled".into()),
            }
            let conn = ctx.client().pool().get().await?;
            conn.execute(
                "INSERT INTO public.effects (n, label) VALUES ($1, 'done')",
                &[&job.n],
            )
            .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let (stop, handle) = start(pool);
    wait_until(
        "two slow jobs to start",
        Duration::from_secs(20),
        async || {
            count(&client, "SELECT count(*) FROM public.effects").await == 2
                && running_jobs(&client).await == 2
        },
    )
    .await;
    stop.send(()).unwrap();
    let started = Instant::now();
    handle.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Nothing left running; the two cut short are back, claimable now, attempt not spent.
    assert_eq!(running_jobs(&client).await, 0);
    assert_eq!(
        count(&client, "SELECT count(*) FROM commitq.jobs").await,
        4,
        "none lost"
    );
    assert_eq!(
        count(
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
    let (_db, client) = setup("t_client_prefetch").await;
    let jobs: Vec<Record> = (1..=40)
        .map(|n| Record {
            n,
            label: "slow".into(),
        })
        .collect();
    client.enqueue_many(&jobs).await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .prefetch(10)
        .batch(12)
        // A lease shorter than the local wait: only heartbeats keep the
        // waiting jobs from being rescued by maintain.
        .lease(Duration::from_secs(1))
        .maintain_interval(Some(Duration::from_millis(100)))
        .grace(Duration::from_secs(5))
        .handle(move |ctx, job: Record| {
            let (r, m) = (r.clone(), m.clone());
            async move {
                m.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                let conn = ctx.client().pool().get().await?;
                conn.execute(
                    "INSERT INTO public.effects (n, label, attempt) VALUES ($1, 'done', $2)",
                    &[&job.n, &ctx.attempt],
                )
                .await?;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(Outcome::Complete)
            }
        })
        .build();
    let (stop, handle) = start(pool);
    // Two run at a time; the claim took handlers plus prefetch.
    wait_until(
        "a full claim with prefetched jobs",
        Duration::from_secs(20),
        async || running_jobs(&client).await == 12,
    )
    .await;
    // Past the lease: the waiting jobs were heartbeated, none rescued.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more handlers than the concurrency"
    );
    let done = count(&client, "SELECT count(*) FROM public.effects").await;
    assert!(
        done >= 4,
        "handlers kept running while others waited: {done}"
    );
    assert_eq!(
        count(
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
        count(
            &client,
            "SELECT count(*) FROM commitq.jobs WHERE attempt = 0"
        )
        .await
            + done,
        40,
        "every job not run is back with its attempt unspent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_claim_loops_share_a_local_queue_without_stalling() {
    // Claim loops wait for fuller batches while the local queue keeps the
    // handlers busy. With four loops whose batches together exceed the claim
    // slots, a loop must never wait on slots the others hold: every job
    // still runs, each once.
    let (_db, client) = setup("t_client_claim_loops").await;
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
    let (stop, handle) = start(pool);
    wait_until("every job completed", Duration::from_secs(60), async || {
        metrics.snapshot().completed == 3000
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT n) FROM public.effects WHERE attempt = 1"
        )
        .await,
        3000,
        "every job ran"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM public.effects").await,
        3000,
        "no job ran twice"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM commitq.jobs").await,
        0,
        "nothing left in the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let (db, client) = setup("t_client_listener").await;
    // Polling so rare that only a NOTIFY can wake the pool in time.
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .poll_interval(Duration::from_secs(60))
        .handle(|ctx, job: Record| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(
                "INSERT INTO public.effects (n, label) VALUES ($1, $2)",
                &[&job.n, &job.label],
            )
            .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let (stop, handle) = start(pool);
    let admin = db.connect().await;
    let wait_for_listener = async |what: &str| {
        let listening = "SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND query LIKE 'LISTEN%'";
        wait_until(what, Duration::from_secs(10), async || {
            let row = admin.query_one(listening, &[]).await.unwrap();
            row.get::<_, i64>(0) == 1
        })
        .await;
        // Let the pool find the queue empty and wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Enqueue job n and wait for its effect, which only a NOTIFY brings in time.
    let enqueue_and_see_it_run = async |n: i64, label: &str| {
        let record = Record {
            n,
            label: label.into(),
        };
        client.enqueue(&record).await.unwrap();
        let what = format!("the job enqueued {label} the reconnect");
        wait_until(&what, Duration::from_secs(5), async || {
            count(&client, "SELECT count(*) FROM public.effects").await == n
        })
        .await;
    };

    wait_for_listener("the LISTEN connection").await;
    enqueue_and_see_it_run(1, "before").await;
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await
        .unwrap();
    wait_for_listener("a new LISTEN connection").await;
    enqueue_and_see_it_run(2, "after").await;
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_rolls_back_the_handlers_writes() {
    let (db, client) = setup("t_client_fenced").await;
    let admin = db.connect().await;
    admin
        .batch_execute("UPDATE commitq.config SET backoff_base = '0', backoff_cap = '0'")
        .await
        .unwrap();
    client
        .enqueue(&Record {
            n: 1,
            label: "charge".into(),
        })
        .await
        .unwrap();
    let (release, gate) = tokio::sync::watch::channel(false);
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(100))
        .lease(Duration::from_secs(60))
        .handle(move |ctx, job: Record| {
            let mut gate = gate.clone();
            async move {
                let mut conn = ctx.client().pool().get().await?;
                let tx = conn.transaction().await?;
                tx.execute(
                    "INSERT INTO public.effects (n, label, attempt) VALUES ($1, $2, $3)",
                    &[&job.n, &job.label, &ctx.attempt],
                )
                .await?;
                // The first attempt stalls here while its lease is taken away.
                if ctx.attempt == 1 {
                    let _ = gate.wait_for(|open| *open).await;
                }
                ctx.complete_in(&*tx).await?;
                tx.commit().await?;
                Ok(Outcome::Complete)
            }
        })
        .build();
    let (stop, handle) = start(pool);
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM public.effects").await,
        0
    );
    admin
        .execute("SELECT commitq.complete($1, $2)", &[&other.0, &other.1])
        .await
        .unwrap();
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM commitq.jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_are_killed_recovers_and_runs_the_job_once() {
    let (db, client) = setup("t_client_killed").await;
    let admin = db.connect().await;
    admin
        .batch_execute("UPDATE commitq.config SET backoff_base = '0', backoff_cap = '0'")
        .await
        .unwrap();
    client
        .enqueue(&Record {
            n: 1,
            label: "once".into(),
        })
        .await
        .unwrap();
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
    let (stop, handle) = start(pool);
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
    stop.send(()).unwrap();
    handle.await.unwrap();
    // The killed attempt's insert rolled back with its connection.
    assert_eq!(on_admin("SELECT count(*) FROM public.effects").await, 1);
    assert_eq!(
        on_admin("SELECT attempt::bigint FROM public.effects").await,
        2
    );
}

/// A retried job does not repeat an effect an earlier attempt recorded:
/// "charge the card" runs once although the receipt step fails once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_skips_effects_already_done() {
    let (db, client) = setup("t_client_effects").await;
    db.connect()
        .await
        .batch_execute("UPDATE commitq.config SET backoff_base = '0', backoff_cap = '0'")
        .await
        .unwrap();
    let job = client
        .enqueue(&Record {
            n: 9,
            label: "order".into(),
        })
        .await
        .unwrap();
    let charges: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let calls = charges.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(100))
        .handle(move |ctx, _job: Record| {
            let calls = calls.clone();
            async move {
                let charge_id: String = ctx
                    .effect("charge_card", |key| async move {
                        // The payment API, called with a key stable across attempts.
                        calls.lock().unwrap().push(key.clone());
                        Ok(format!("ch_{key}"))
                    })
                    .await?;
                if ctx.attempt == 1 {
                    return Err(format!("receipt for {charge_id} bounced").into());
                }
                Ok(Outcome::Complete)
            }
        })
        .build();
    let (stop, handle) = start(pool);
    wait_until("the job to complete", Duration::from_secs(20), async || {
        count(&client, "SELECT count(*) FROM commitq.jobs").await == 0
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    let calls = charges.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![format!("commitq-{}-charge_card", job.job_id)],
        "charged exactly once"
    );
}

/// A job enqueued from another connection, gated on the request's
/// transaction, runs only after that transaction commits and sees its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gated_on_another_transaction_waits_for_its_commit() {
    let (db, client) = setup("t_client_gated").await;
    let mut request = db.connect().await;
    let tx = request.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO public.effects (n, label) VALUES (5, 'request row')",
        &[],
    )
    .await
    .unwrap();
    let xact: i64 = tx
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    // Enqueued on a pooled connection, outside the request's transaction.
    let opts = EnqueueOptions::default().after_xact(xact);
    let conn = client.pool().get().await.unwrap();
    commitq::enqueue(
        &**conn,
        &Record {
            n: 5,
            label: "mail".into(),
        },
        &opts,
    )
    .await
    .unwrap();
    drop(conn);

    let saw_row = Arc::new(AtomicUsize::new(0));
    let seen = saw_row.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(50))
        .handle(move |ctx, job: Record| {
            let seen = seen.clone();
            async move {
                let conn = ctx.client().pool().get().await?;
                let rows: i64 = conn
                    .query_one(
                        "SELECT count(*) FROM public.effects WHERE n = $1",
                        &[&job.n],
                    )
                    .await?
                    .get(0);
                seen.store(rows as usize + 1, Ordering::SeqCst);
                Ok(Outcome::Complete)
            }
        })
        .build();
    let (stop, handle) = start(pool);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        saw_row.load(Ordering::SeqCst),
        0,
        "ran before the request committed"
    );
    tx.commit().await.unwrap();
    wait_until("the gated job", Duration::from_secs(10), async || {
        saw_row.load(Ordering::SeqCst) > 0
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        saw_row.load(Ordering::SeqCst),
        2,
        "the job saw the request's row"
    );
}

#[tokio::test]
async fn enqueue_with_uses_the_given_options_instead_of_the_types() {
    let (_db, client) = setup("t_client_enqueue_with").await;
    let options = EnqueueOptions::default()
        .queue("elsewhere")
        .priority(-5)
        .concurrency_key("account:7")
        .idempotency_key("once");
    let first = client
        .enqueue_with(
            &Record {
                n: 1,
                label: "a".into(),
            },
            &options,
        )
        .await
        .unwrap();
    let again = client
        .enqueue_with(
            &Record {
                n: 2,
                label: "b".into(),
            },
            &options,
        )
        .await
        .unwrap();
    assert!(first.inserted && !again.inserted);
    assert_eq!(first.job_id, again.job_id);
    let row = client
        .pool()
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT queue, priority::int, concurrency_key, idempotency_key FROM commitq.jobs WHERE id = $1",
            &[&first.job_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "elsewhere");
    assert_eq!(row.get::<_, i32>(1), -5);
    assert_eq!(row.get::<_, String>(2), "account:7");
    assert_eq!(row.get::<_, String>(3), "once");
}
