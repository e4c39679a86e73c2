//! Wake-up: a worker that found its queue empty is sent a NOTIFY when a job
//! is committed, and the worker pool's LISTEN connection (on a server
//! without the preload line) comes back after it is killed.

use std::time::Duration;

use commitq::{Outcome, WorkerPool};
use commitq_tests::side_cluster::SideCluster;
use commitq_tests::{
    connect, record, scalar, start_pool, wait_until, waiting_on, Record, TestDb, EFFECTS,
    INSERT_EFFECT,
};

/// A worker whose claim came back empty is woken by a NOTIFY on
/// "commitq:<queue>" when a producer commits a job, not before; a queue with
/// no waiting worker gets no NOTIFY (so busy producers keep group commit).
#[tokio::test]
async fn waiting_workers_are_notified_at_commit_and_only_then() {
    use tokio::time::timeout;
    let db = TestDb::new("t_wakeup_notify").await;
    let producer = db.connect().await;
    let (worker, mut notes) = commitq_tests::connect_listening(&db.url).await;
    worker
        .batch_execute("LISTEN \"commitq:mail\"")
        .await
        .unwrap();
    let quiet = Duration::from_millis(300);
    let claimed = async || {
        let sql = "SELECT 1 FROM commitq.claim('mail', 'w1', 10)";
        worker.query(sql, &[]).await.unwrap().len()
    };
    let produce = async |sql: &str| producer.batch_execute(sql).await.unwrap();
    let one_job = "SELECT commitq.enqueue('mail', 'k')";
    // Err: nothing came in time; Ok(None) would be a lost listener connection.
    let mut next_note = async |wait: Duration| timeout(wait, notes.recv()).await;

    // No worker has found the queue empty yet: nobody waits, nothing is sent.
    produce(one_job).await;
    assert!(
        next_note(quiet).await.is_err(),
        "notified with nobody waiting"
    );

    // The worker takes that job (and so is busy), then finds the queue empty.
    assert_eq!(claimed().await, 1);
    assert_eq!(claimed().await, 0);

    // Now an enqueue wakes it, at commit and not before.
    produce("BEGIN; SELECT commitq.enqueue('mail', 'k');").await;
    assert!(next_note(quiet).await.is_err(), "notified before commit");
    produce("COMMIT").await;
    let note = next_note(Duration::from_secs(5)).await;
    let note = note.expect("woken at commit").expect("listener open");
    assert_eq!(note.channel(), "commitq:mail");

    // A rolled-back enqueue wakes nobody.
    produce("BEGIN; SELECT commitq.enqueue('mail', 'k'); ROLLBACK;").await;
    assert!(next_note(quiet).await.is_err(), "notified by a rollback");

    // Once the worker claims work again, it is busy: no more wake-ups.
    assert_eq!(claimed().await, 1);
    produce(one_job).await;
    assert!(next_note(quiet).await.is_err(), "notified a busy worker");

    // Waiting again (the job just enqueued taken, then none), then stopping:
    // a stopped worker is not woken.
    assert_eq!(claimed().await, 1);
    assert_eq!(claimed().await, 0);
    worker
        .batch_execute("SELECT commitq.stop_waiting('mail', 'w1')")
        .await
        .unwrap();
    produce(one_job).await;
    assert!(
        next_note(quiet).await.is_err(),
        "notified a worker that stopped waiting"
    );
}

/// On a server without the preload line: with it, the pool waits in
/// claim_wait and opens no LISTEN connection at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let cluster = SideCluster::start("pg-wakeup-listener");
    let url = cluster.database("t_wakeup_listener");
    let admin = connect(&url).await;
    admin.batch_execute(EFFECTS).await.unwrap();
    let client = commitq::Client::connect(&url).await.unwrap();
    // Polling so rare that only a NOTIFY can wake the pool in time.
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .poll_interval(Duration::from_secs(60))
        .handle(|ctx, job: Record| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let running = start_pool(pool);
    let wait_for_listener = async |what: &str| {
        let listening = "SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND query LIKE 'LISTEN%'";
        wait_until(what, Duration::from_secs(10), async || {
            let row = admin.query_one(listening, &[]).await.unwrap();
            row.get::<_, i64>(0) == 1
        })
        .await;
        // The pool found the queue empty and is registered as waiting, so
        // an enqueue now sends it a NOTIFY (one enqueued before might not).
        wait_until("the pool to wait", Duration::from_secs(20), async || {
            waiting_on(&admin, "effects").await == 1
        })
        .await;
    };
    // Enqueue job n and wait for its effect, which only a NOTIFY brings in time.
    let enqueue_and_see_it_run = async |n: i64, label: &str| {
        client.enqueue(&record(n, label)).await.unwrap();
        // Well past a busy machine's delays, and far short of the poll.
        let what = format!("the job enqueued {label} the reconnect");
        wait_until(&what, Duration::from_secs(20), async || {
            scalar(&client, "SELECT count(*) FROM public.effects").await == n
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
    running.stop().await;
}

/// A worker that polls (its session does not LISTEN on the queue's channel)
/// is not registered by an empty claim, so producers send no NOTIFY for it;
/// one that LISTENs in the session that claims is, and one that LISTENs on
/// another connection registers with commitq.start_waiting.
#[tokio::test]
async fn a_polling_worker_makes_enqueues_send_no_notify() {
    use tokio::time::timeout;
    let db = TestDb::new("t_wakeup_poller").await;
    let producer = db.connect().await;
    let poller = db.connect().await;
    // A bystander that hears every NOTIFY of the channel, and claims nothing.
    let (ear, mut notes) = commitq_tests::connect_listening(&db.url).await;
    ear.batch_execute("LISTEN \"commitq:mail\"").await.unwrap();
    let quiet = Duration::from_millis(300);
    let empty = "SELECT 1 FROM commitq.claim('mail', 'poller', 10)";

    assert!(poller.query(empty, &[]).await.unwrap().is_empty());
    assert_eq!(waiting_on(&producer, "mail").await, 0);
    producer
        .batch_execute("SELECT commitq.enqueue('mail', 'k')")
        .await
        .unwrap();
    assert!(
        timeout(quiet, notes.recv()).await.is_err(),
        "NOTIFY for a poller"
    );
    producer
        .batch_execute("DELETE FROM commitq.jobs")
        .await
        .unwrap();

    // The same claim in a session that LISTENs registers it: now it is sent.
    poller
        .batch_execute("LISTEN \"commitq:mail\"")
        .await
        .unwrap();
    assert!(poller.query(empty, &[]).await.unwrap().is_empty());
    assert_eq!(waiting_on(&producer, "mail").await, 1);
    producer
        .batch_execute("SELECT commitq.enqueue('mail', 'k')")
        .await
        .unwrap();
    let note = timeout(Duration::from_secs(5), notes.recv()).await;
    assert!(
        matches!(note, Ok(Some(_))),
        "no NOTIFY for a listening worker"
    );
    producer
        .batch_execute("DELETE FROM commitq.jobs; DELETE FROM commitq.waiting_workers")
        .await
        .unwrap();

    // LISTEN elsewhere: start_waiting registers the worker.
    poller.batch_execute("UNLISTEN *").await.unwrap();
    assert!(poller.query(empty, &[]).await.unwrap().is_empty());
    assert_eq!(waiting_on(&producer, "mail").await, 0);
    poller
        .batch_execute("SELECT commitq.start_waiting('mail', 'poller')")
        .await
        .unwrap();
    producer
        .batch_execute("SELECT commitq.enqueue('mail', 'k')")
        .await
        .unwrap();
    let note = timeout(Duration::from_secs(5), notes.recv()).await;
    assert!(matches!(note, Ok(Some(_))), "no NOTIFY after start_waiting");
}
