//! The waiting claim, `CALL commitq.claim_wait(...)`: woken at the commit of
//! a job of its queue (never by a rollback) through shared memory, by every
//! path that makes a job available; holding no snapshot while it waits;
//! ended cleanly by a cancel or statement_timeout; refused inside a
//! transaction block; working at REPEATABLE READ and SERIALIZABLE, through
//! PgBouncer's transaction pooling (where LISTEN cannot), and by polling on
//! a server without the preload line (its own cluster, below).

use std::time::{Duration, Instant};

use commitq_tests::{cluster_url, connect, sqlstate, wait_until, TestDb};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

#[path = "waiting_claim/pgbouncer.rs"]
mod pgbouncer;

/// Longer than any test waits for a wake-up, so a wait that ends in time
/// was woken, not timed out.
const LONG_WAIT_SECS: f64 = 60.0;
/// A wake-up arrives well within this on a loaded machine.
const WOKEN_WITHIN: Duration = Duration::from_secs(10);

/// Sessions of this database asleep in claim_wait, with their backend_xmin.
const SLEEPERS: &str = "SELECT pid, backend_xmin::text FROM pg_catalog.pg_stat_activity
    WHERE datname = pg_catalog.current_database() AND wait_event_type = 'Extension'
      AND query LIKE 'CALL commitq.claim_wait%'";

/// A waiting claim of `queue` on its own connection, through the extended
/// protocol (parameters); returns the job ids it claimed and how long it took.
fn waiter(
    url: &str,
    queue: &str,
    wait_secs: f64,
) -> JoinHandle<Result<(Vec<i64>, Duration), String>> {
    waiter_after(url, "", queue, wait_secs)
}

/// [`waiter`], on a session that first runs `setup`.
fn waiter_after(
    url: &str,
    setup: &str,
    queue: &str,
    wait_secs: f64,
) -> JoinHandle<Result<(Vec<i64>, Duration), String>> {
    let (url, setup, queue) = (url.to_string(), setup.to_string(), queue.to_string());
    tokio::spawn(async move {
        let c = connect(&url).await;
        c.batch_execute(&setup).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let row = c
            .query_one(
                "CALL commitq.claim_wait($1, 'waiter', 10, '1 minute', make_interval(secs => $2))",
                &[&queue, &wait_secs],
            )
            .await
            .map_err(|e| format!("{}: {e}", sqlstate(&e)))?;
        Ok((job_ids(&row.get::<_, Value>(0)), started.elapsed()))
    })
}

fn job_ids(jobs: &Value) -> Vec<i64> {
    jobs.as_array()
        .expect("jobs is a JSON array")
        .iter()
        .map(|j| j["job_id"].as_i64().expect("job_id"))
        .collect()
}

async fn sleepers(admin: &Client) -> Vec<(i32, Option<String>)> {
    let rows = admin.query(SLEEPERS, &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Until `n` sessions sleep in claim_wait.
async fn until_asleep(admin: &Client, n: usize) {
    wait_until("claim_wait to sleep", Duration::from_secs(20), async || {
        sleepers(admin).await.len() == n
    })
    .await;
}

/// The waiter's answer, which must come within WOKEN_WITHIN.
async fn woken(w: JoinHandle<Result<(Vec<i64>, Duration), String>>, what: &str) -> Vec<i64> {
    match tokio::time::timeout(WOKEN_WITHIN, w).await {
        Ok(r) => r.unwrap().unwrap_or_else(|e| panic!("{what}: {e}")).0,
        Err(_) => panic!("{what}: not woken within {WOKEN_WITHIN:?}"),
    }
}

async fn one_id(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A commit from another connection wakes the wait long before its end and
/// the claimed job comes back; an open transaction or a rollback does not
/// end it.
#[tokio::test]
async fn a_commit_wakes_the_wait_with_the_job_and_a_rollback_does_not() {
    let db = TestDb::new("t_wait_commit").await;
    let admin = db.connect().await;
    let producer = db.connect().await;
    let w = waiter(&db.url, "mail", LONG_WAIT_SECS);
    until_asleep(&admin, 1).await;

    producer
        .batch_execute("BEGIN; SELECT commitq.enqueue('mail', 'k');")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.is_finished(), "the wait ended without a committed job");
    assert_eq!(sleepers(&admin).await.len(), 1);

    let id = one_id(&producer, "SELECT job_id FROM commitq.enqueue('mail', 'k')").await;
    assert_eq!(woken(w, "commit").await, vec![id]);
    let state: String = admin
        .query_one("SELECT state::text FROM commitq.jobs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "running");
    // A wait that nothing wakes ends when asked, with nothing.
    let (ids, took) = waiter(&db.url, "mail", 0.3).await.unwrap().unwrap();
    assert!(
        ids.is_empty() && took >= Duration::from_millis(300),
        "{ids:?} {took:?}"
    );
}

/// Every way a job becomes available wakes a waiting claim: each step sets
/// a job up without waking anyone, starts a wait, then makes it available.
#[tokio::test]
async fn every_path_that_makes_a_job_available_wakes_the_wait() {
    let db = TestDb::new("t_wait_paths").await;
    let admin = db.connect().await;
    let other = db.connect().await;
    admin
        .batch_execute("UPDATE commitq.config SET maintain_batch = 1000")
        .await
        .unwrap();
    let later = "run_at => now() + interval '1 hour'";
    // (what, SQL that sets up and returns the job id the wait must claim,
    // SQL that makes it available, $1 = that id, $2 = its lease token)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "enqueue",
            "SELECT 0::bigint".into(),
            "SELECT commitq.enqueue('q', 'k')",
        ),
        (
            "enqueue with an idempotency key",
            "SELECT 0::bigint".into(),
            "SELECT commitq.enqueue('q', 'k', idempotency_key => 'i1')",
        ),
        (
            "enqueue_many of arrays",
            "SELECT 0::bigint".into(),
            "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}'::jsonb])",
        ),
        (
            "enqueue_many of JSON",
            "SELECT 0::bigint".into(),
            r#"SELECT commitq.enqueue_many('[{"queue": "q", "kind": "k"}]'::jsonb)"#,
        ),
        (
            "retry of a scheduled job",
            format!("SELECT job_id FROM commitq.enqueue('q', 'k', {later})"),
            "SELECT commitq.retry($1)",
        ),
        (
            "fail with retry now",
            "SELECT job_id FROM commitq.enqueue('q', 'k')".into(),
            "SELECT commitq.fail($1, $2, 'boom', retry_in => '0')",
        ),
        (
            "snooze to now",
            "SELECT job_id FROM commitq.enqueue('q', 'k')".into(),
            "SELECT commitq.snooze($1, $2, '0')",
        ),
        (
            "maintain promoting a due job",
            format!("SELECT job_id FROM commitq.enqueue('q', 'k', {later})"),
            "UPDATE commitq.jobs SET run_at = now() - interval '1 second' WHERE id = $1;
          SELECT commitq.maintain()",
        ),
        (
            "a key's slot handed on",
            "SELECT job_id FROM commitq.enqueue('q', 'k', concurrency_key => 'acct')".into(),
            "SELECT commitq.complete($1, $2)",
        ),
        (
            "a rescued lease handing its key on",
            "SELECT job_id FROM commitq.enqueue('q', 'k', concurrency_key => 'acct2')".into(),
            "UPDATE commitq.jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1;
          SELECT commitq.maintain()",
        ),
    ];
    for (what, setup, make_available) in cases {
        admin
            .batch_execute("DELETE FROM commitq.jobs; DELETE FROM commitq.concurrency_keys")
            .await
            .unwrap();
        let first = one_id(&admin, &setup).await;
        let mut token = 0i64;
        let mut expect: Option<i64> = None;
        if setup.contains("concurrency_key") {
            // The first job of the key runs (taken by another worker); the
            // second waits blocked behind it: it is what the wait gets.
            let second = one_id(&admin, &setup).await;
            token = one_id(
                &other,
                "SELECT lease_token FROM commitq.claim('q', 'other', 10)",
            )
            .await;
            expect = Some(second);
        } else if make_available.contains("$2") {
            token = one_id(
                &other,
                "SELECT lease_token FROM commitq.claim('q', 'other', 10)",
            )
            .await;
        }
        let w = waiter(&db.url, "q", LONG_WAIT_SECS);
        until_asleep(&admin, 1).await;
        let statements: Vec<String> = make_available
            .split(';')
            .map(|s| {
                s.replace("$1", &first.to_string())
                    .replace("$2", &token.to_string())
            })
            .collect();
        for s in statements.iter().filter(|s| !s.trim().is_empty()) {
            admin
                .batch_execute(s)
                .await
                .unwrap_or_else(|e| panic!("{what}: {s}: {e}"));
        }
        let ids = woken(w, what).await;
        assert_eq!(ids.len(), 1, "{what}: {ids:?}");
        if let Some(id) = expect {
            assert_eq!(ids, vec![id], "{what}");
        } else if first != 0 {
            assert_eq!(ids, vec![first], "{what}");
        }
    }

    // The claim's own promotion of due jobs: another worker's claim makes
    // two due jobs available and takes one; the wait gets the other.
    admin
        .batch_execute("DELETE FROM commitq.jobs")
        .await
        .unwrap();
    for _ in 0..2 {
        one_id(
            &admin,
            &format!("SELECT job_id FROM commitq.enqueue('q', 'k', {later})"),
        )
        .await;
    }
    let w = waiter(&db.url, "q", LONG_WAIT_SECS);
    until_asleep(&admin, 1).await;
    admin
        .batch_execute("UPDATE commitq.jobs SET run_at = now() - interval '1 second'")
        .await
        .unwrap();
    assert_eq!(
        other
            .query("SELECT 1 FROM commitq.claim('q', 'other', 1)", &[])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(woken(w, "a claim's promotion").await.len(), 1);
}

/// While it waits the session holds no snapshot (backend_xmin NULL), through
/// the extended and the simple protocol, where a sleeping SELECT holds one.
#[tokio::test]
async fn a_waiting_claim_holds_back_no_vacuum_horizon() {
    let db = TestDb::new("t_wait_xmin").await;
    let admin = db.connect().await;
    // Control: a statement that sleeps holds its snapshot.
    let sleeper = db.connect().await;
    let sleeping = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(2)").await });
    let held = "SELECT count(*) FROM pg_stat_activity
                 WHERE query = 'SELECT pg_sleep(2)' AND backend_xmin IS NOT NULL";
    wait_until(
        "pg_sleep to hold an xmin",
        Duration::from_secs(10),
        async || one_id(&admin, held).await == 1,
    )
    .await;
    sleeping.await.unwrap().unwrap();

    // Something to keep the horizon moving: a transaction with an xid.
    admin
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let extended = waiter(&db.url, "q", 3.0);
    let simple_client = db.connect().await;
    let simple = tokio::spawn(async move {
        simple_client
            .simple_query("CALL commitq.claim_wait('q2', 'w', 1, '1 minute', '3 seconds')")
            .await
            .map(|_| ())
    });
    until_asleep(&admin, 2).await;
    for _ in 0..10 {
        admin.batch_execute("UPDATE t SET x = x + 1").await.unwrap();
        let s = sleepers(&admin).await;
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(
            s.iter().all(|(_, xmin)| xmin.is_none()),
            "an xmin while waiting: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    extended.await.unwrap().unwrap();
    simple.await.unwrap().unwrap();
}

/// pg_cancel_backend and statement_timeout end a wait with their SQLSTATE
/// (57014), the session stays usable, and a later wait of the same session
/// is woken as before: nothing of the ended one stays registered.
#[tokio::test]
async fn cancel_and_statement_timeout_end_the_wait_cleanly() {
    let db = TestDb::new("t_wait_cancel").await;
    let admin = db.connect().await;
    let c = db.connect().await;
    let call = "CALL commitq.claim_wait('q', 'w', 1, '1 minute', '60 seconds')";

    let cancel = c.cancel_token();
    let (pid, waited) = tokio::join!(
        async {
            until_asleep(&admin, 1).await;
            let pid = sleepers(&admin).await[0].0;
            cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
            pid
        },
        async {
            let started = Instant::now();
            (c.batch_execute(call).await, started.elapsed())
        }
    );
    let e = waited.0.expect_err("a cancelled wait is an error");
    assert_eq!(sqlstate(&e), "57014");
    assert!(waited.1 < WOKEN_WITHIN, "cancel took {:?}", waited.1);
    assert!(pid > 0);

    c.batch_execute("SET statement_timeout = '500ms'")
        .await
        .unwrap();
    let started = Instant::now();
    let e = c
        .batch_execute(call)
        .await
        .expect_err("the timeout ends the wait");
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < WOKEN_WITHIN, "{:?}", started.elapsed());
    c.batch_execute("RESET statement_timeout").await.unwrap();

    // Nothing left behind: no registration, no sleeper, and the same
    // session is woken by the next commit.
    assert!(sleepers(&admin).await.is_empty());
    assert_eq!(
        one_id(&admin, "SELECT count(*) FROM commitq.waiting_workers").await,
        0
    );
    let id = tokio::spawn(async move {
        let row = c
            .query_one(
                "CALL commitq.claim_wait('q', 'w', 1, '1 minute', '60 seconds')",
                &[],
            )
            .await
            .unwrap();
        job_ids(&row.get::<_, Value>(0))
    });
    until_asleep(&admin, 1).await;
    let job = one_id(&admin, "SELECT job_id FROM commitq.enqueue('q', 'k')").await;
    let got = tokio::time::timeout(WOKEN_WITHIN, id)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(got, vec![job]);
}

/// Inside a transaction block it cannot commit: refused with 2D000, even
/// with jobs there; a bad wait is CQ001.
#[tokio::test]
async fn inside_a_transaction_block_the_wait_is_refused() {
    let db = TestDb::new("t_wait_atomic").await;
    let c = db.connect().await;
    c.batch_execute("SELECT commitq.enqueue('q', 'k')")
        .await
        .unwrap();
    let e = c
        .batch_execute("BEGIN; CALL commitq.claim_wait('q', 'w', 1, '1 minute', '1 second')")
        .await
        .expect_err("refused in a block");
    assert_eq!(sqlstate(&e), "2D000");
    c.batch_execute("ROLLBACK").await.unwrap();
    for bad in ["NULL", "'-1 second'", "'2 days'"] {
        let sql = format!("CALL commitq.claim_wait('q', 'w', 1, '1 minute', {bad})");
        let e = c.batch_execute(&sql).await.expect_err(bad);
        assert_eq!(sqlstate(&e), "CQ001", "{bad}");
    }
    // Outside a block the job is there to take.
    let row = c
        .query_one(
            "CALL commitq.claim_wait('q', 'w', 1, '1 minute', '1 second')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(job_ids(&row.get::<_, Value>(0)).len(), 1);
}

/// With default_transaction_isolation at REPEATABLE READ or SERIALIZABLE
/// each claim runs in a transaction of its own, so a commit still wakes it.
#[tokio::test]
async fn repeatable_read_and_serializable_waits_are_woken() {
    let db = TestDb::new("t_wait_isolation").await;
    let admin = db.connect().await;
    for level in ["repeatable read", "serializable"] {
        let setup = format!("SET default_transaction_isolation = '{level}'");
        let w = waiter_after(&db.url, &setup, "q", LONG_WAIT_SECS);
        until_asleep(&admin, 1).await;
        let id = one_id(&admin, "SELECT job_id FROM commitq.enqueue('q', 'k')").await;
        assert_eq!(woken(w, level).await, vec![id], "{level}");
    }
}

/// Through PgBouncer in transaction pooling a LISTEN hears nothing (its
/// server connection goes back to the pool), while the waiting claim is
/// woken at commit.
#[tokio::test]
async fn through_pgbouncer_the_waiting_claim_works_where_listen_cannot() {
    let db = TestDb::new("t_wait_pgbouncer").await;
    let admin = db.connect().await;
    let bouncer = pgbouncer::PgBouncer::start(&cluster_url(), &db.name);
    let url = bouncer.url(&db.name);

    // LISTEN through the bouncer, and directly (the control).
    let (through, mut through_notes) = commitq_tests::connect_listening(&url).await;
    through.simple_query("LISTEN \"commitq:q\"").await.unwrap();
    let (direct, mut direct_notes) = commitq_tests::connect_listening(&db.url).await;
    direct.batch_execute("LISTEN \"commitq:q\"").await.unwrap();
    admin
        .batch_execute("SELECT commitq.start_waiting('q', 'listener')")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT commitq.enqueue('q', 'k')")
        .await
        .unwrap();
    let note = tokio::time::timeout(WOKEN_WITHIN, direct_notes.recv()).await;
    assert!(
        matches!(note, Ok(Some(_))),
        "the direct LISTEN got its NOTIFY"
    );
    let note = tokio::time::timeout(Duration::from_secs(1), through_notes.recv()).await;
    assert!(
        note.is_err(),
        "a LISTEN through pgbouncer got a NOTIFY: {note:?}"
    );
    admin
        .batch_execute("DELETE FROM commitq.jobs")
        .await
        .unwrap();

    // The waiting claim through the bouncer (simple protocol: PgBouncer 1.18
    // keeps no prepared statement across transactions).
    let c = connect(&url).await;
    let w = tokio::spawn(async move {
        let msgs = c
            .simple_query("CALL commitq.claim_wait('q', 'w', 1, '1 minute', '60 seconds')")
            .await
            .unwrap();
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .expect("a row")
    });
    until_asleep(&admin, 1).await;
    let id = one_id(&admin, "SELECT job_id FROM commitq.enqueue('q', 'k')").await;
    let jobs = tokio::time::timeout(WOKEN_WITHIN, w)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(job_ids(&serde_json::from_str(&jobs).unwrap()), vec![id]);
}

/// Without shared_preload_libraries the procedure polls: wait_supported()
/// says so, a commit is picked up within a poll, and between claims the
/// session holds no snapshot.
#[tokio::test]
async fn without_the_preload_line_the_wait_polls() {
    let cluster = commitq_tests::side_cluster::SideCluster::start("pg-wait-nopreload");
    let url = cluster.database("nopreload");
    let admin = connect(&url).await;
    let supported: bool = admin
        .query_one("SELECT commitq.wait_supported()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!supported);
    let w = waiter(&url, "q", LONG_WAIT_SECS);
    until_asleep(&admin, 1).await;
    for _ in 0..10 {
        let s = sleepers(&admin).await;
        assert!(
            s.iter().all(|(_, xmin)| xmin.is_none()),
            "an xmin between polls: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let id = one_id(&admin, "SELECT job_id FROM commitq.enqueue('q', 'k')").await;
    assert_eq!(woken(w, "poll").await, vec![id]);
}

/// A worker pool whose client has no LISTEN connection (made from a pool of
/// its own) and polls once an hour still runs a job at once: its claim loop
/// waits in claim_wait, and nothing registers it for a NOTIFY.
#[tokio::test]
async fn a_worker_pool_is_woken_at_commit_without_listen() {
    use commitq::{Outcome, WorkerPool};
    use commitq_tests::{record, scalar, start_pool, Record, EFFECTS, INSERT_EFFECT};
    let db = TestDb::new("t_wait_pool").await;
    let admin = db.connect().await;
    admin.batch_execute(EFFECTS).await.unwrap();
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    let pg_pool = deadpool_postgres::Pool::builder(manager)
        .max_size(8)
        .build()
        .unwrap();
    let client = commitq::Client::from_pool(pg_pool).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .poll_interval(Duration::from_secs(3600))
        .handle(|ctx, job: Record| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let running = start_pool(pool);
    until_asleep(&admin, 1).await;
    let listening = "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    assert_eq!(scalar(&admin, listening).await, 0);
    for n in 1..=3 {
        client.enqueue(&record(n, "woken")).await.unwrap();
        let what = format!("job {n} to run");
        wait_until(&what, WOKEN_WITHIN, async || {
            scalar(&admin, "SELECT count(*) FROM public.effects").await == n
        })
        .await;
    }
    assert_eq!(
        scalar(&admin, "SELECT count(*) FROM commitq.waiting_workers").await,
        0
    );
    // A stopping pool cancels its wait instead of sitting out the hour.
    let started = Instant::now();
    running.stop().await;
    assert!(
        started.elapsed() < WOKEN_WITHIN,
        "stop took {:?}",
        started.elapsed()
    );
}

/// A worker pool made from a connection string, which could open a LISTEN
/// connection, opens none when the server has the waiting claim: its claim
/// loops wait in claim_wait, and a LISTEN session would hold a server
/// connection (and a PgBouncer slot) for nothing.
#[tokio::test]
async fn a_worker_pool_with_a_url_opens_no_listen_connection_when_it_can_wait() {
    use commitq::{Outcome, WorkerPool};
    use commitq_tests::{record, scalar, start_pool, Record, EFFECTS, INSERT_EFFECT};
    let db = TestDb::new("t_wait_pool_url").await;
    let admin = db.connect().await;
    admin.batch_execute(EFFECTS).await.unwrap();
    let client = commitq::Client::connect(&db.url).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 2)
        .poll_interval(Duration::from_secs(3600))
        .handle(|ctx, job: Record| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let running = start_pool(pool);
    until_asleep(&admin, 1).await;
    client.enqueue(&record(1, "woken")).await.unwrap();
    wait_until("the job to run", WOKEN_WITHIN, async || {
        scalar(&admin, "SELECT count(*) FROM public.effects").await == 1
    })
    .await;
    // Asleep again: a listener would have connected long before.
    until_asleep(&admin, 1).await;
    let listening = "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    assert_eq!(
        scalar(&admin, listening).await,
        0,
        "a LISTEN session is open"
    );
    running.stop().await;
}

/// A pool stopped while it waits cancels the wait; that cancel request
/// travels apart from the connection and may land after the CALL ended. The
/// connection must not go back to the client's pool, where the cancel would
/// hit the application's next statement. Stopped at many moments of short
/// waits, on a client of two connections that the application then uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_waiting_pool_cancels_nothing_of_the_applications() {
    use commitq::{Outcome, WorkerPool};
    use commitq_tests::{start_pool, Record};
    let db = TestDb::new("t_wait_stop_cancel").await;
    let client = commitq::Client::connect_with(&db.url, 2).await.unwrap();
    for round in 0..100u64 {
        let pool = WorkerPool::builder(client.clone())
            .queue("idle", 1)
            .poll_interval(Duration::from_millis(20))
            .maintain_interval(None)
            .handle(|_ctx, _job: Record| async move { Ok(Outcome::Complete) })
            .build();
        let running = start_pool(pool);
        tokio::time::sleep(Duration::from_millis(30 + round % 7 * 3)).await;
        running.stop().await;
        // Both connections at once, so the one the wait used is among them.
        let (a, b) = (
            client.pool().get().await.unwrap(),
            client.pool().get().await.unwrap(),
        );
        let sleep = "SELECT pg_sleep(0.05)";
        let (ra, rb) = tokio::join!(a.execute(sleep, &[]), b.execute(sleep, &[]));
        for r in [ra, rb] {
            if let Err(e) = r {
                panic!("round {round}: the application's statement failed: {e:?}");
            }
        }
    }
}
