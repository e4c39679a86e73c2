//! The SQL core against a real server with several connections: draining
//! under concurrency, retries and discards, rescue of vanished workers, bad
//! input, grants and hostile objects.

use std::collections::HashMap;
use std::time::Duration;

use commitq_tests::{connect, sqlstate, TestDb};
use tokio_postgres::Client;

/// A snapshot of everything commitq stores, to prove a failed call changed nothing.
async fn table_state(c: &Client) -> String {
    let row = c
        .query_one(
            "SELECT (SELECT coalesce(jsonb_agg(j ORDER BY id), '[]')::text FROM commitq.jobs j)
                 || (SELECT coalesce(jsonb_agg(f ORDER BY id), '[]')::text FROM commitq.finished_jobs f)
                 || (SELECT coalesce(jsonb_agg(k ORDER BY queue, key), '[]')::text FROM commitq.idempotency_keys k)",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_drain_ten_thousand_jobs_each_completed_once() {
    let db = TestDb::new("t_core_drain").await;
    let setup = db.connect().await;
    // Keep completed jobs, to check each one's bookkeeping afterwards.
    setup
        .batch_execute("UPDATE commitq.config SET keep_completed = true")
        .await
        .unwrap();
    setup
        .execute(
            "SELECT count(*) FROM commitq.enqueue_many('drain', 'noop',
                 (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 10000) i))",
            &[],
        )
        .await
        .unwrap();

    let mut workers = Vec::new();
    for w in 0..8 {
        let url = db.url.clone();
        workers.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let mut seen = Vec::new();
            loop {
                let rows = c
                    .query(
                        "SELECT job_id, lease_token FROM commitq.claim('drain', $1, 25, '1 minute')",
                        &[&format!("w{w}")],
                    )
                    .await
                    .unwrap();
                if rows.is_empty() {
                    break;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
                let done = c
                    .query("SELECT completed FROM commitq.complete_many($1, $2)", &[&ids, &tokens])
                    .await
                    .unwrap();
                assert!(done.iter().all(|r| r.get::<_, bool>(0)), "a fresh lease was refused");
                seen.extend(ids);
            }
            seen
        }));
    }
    let mut counts: HashMap<i64, u32> = HashMap::new();
    for w in workers {
        for id in w.await.unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 10_000, "every job claimed");
    assert!(counts.values().all(|&n| n == 1), "no job claimed twice");
    let row = setup
        .query_one(
            "SELECT (SELECT count(*) FROM commitq.jobs),
                    (SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed' AND attempt = 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "nothing left in the queue");
    assert_eq!(
        row.get::<_, i64>(1),
        10_000,
        "each completed on its first attempt"
    );
}

#[tokio::test]
async fn failures_back_off_then_discard_keeping_every_error() {
    let db = TestDb::new("t_core_retry").await;
    let c = db.connect().await;
    c.batch_execute(
        "UPDATE commitq.config SET backoff_base = '10 seconds', backoff_cap = '25 seconds'",
    )
    .await
    .unwrap();
    let id: i64 = c
        .query_one(
            "SELECT job_id FROM commitq.enqueue('q', 'k', '{}', max_attempts => 3)",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let row = c
            .query_one(
                "SELECT job_id, lease_token, attempt FROM commitq.claim('q', 'w', 1)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), id);
        assert_eq!(row.get::<_, i32>(2), attempt);
        let token: i64 = row.get(1);
        let failed = c
            .query_one(
                "SELECT state::text, extract(epoch FROM run_at - now())::float8 FROM commitq.fail($1, $2, $3)",
                &[&id, &token, &format!("error {attempt}")],
            )
            .await
            .unwrap();
        let state: String = failed.get(0);
        if attempt < 3 {
            assert_eq!(state, "scheduled");
            delays.push(failed.get::<_, f64>(1));
            // Not claimable before its run_at...
            assert!(c
                .query("SELECT 1 FROM commitq.claim('q', 'w', 1)", &[])
                .await
                .unwrap()
                .is_empty());
            // ...so move it due, as time passing would.
            c.execute(
                "UPDATE commitq.jobs SET run_at = now() WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        } else {
            assert_eq!(state, "discarded");
        }
    }
    // Exponential with equal jitter: attempt 1 waits 5..10 s, attempt 2 10..20 s.
    assert!(
        (5.0..=10.0).contains(&delays[0]),
        "first delay {}",
        delays[0]
    );
    assert!(
        (10.0..=20.0).contains(&delays[1]),
        "second delay {}",
        delays[1]
    );

    let row = c
        .query_one(
            "SELECT state::text, attempt, jsonb_path_query_array(errors, '$[*].error')::text
               FROM commitq.finished_jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "discarded");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(
        row.get::<_, String>(2),
        r#"["error 1", "error 2", "error 3"]"#
    );
}

#[tokio::test]
async fn maintain_rescues_a_job_whose_worker_vanished() {
    let db = TestDb::new("t_core_rescue").await;
    let c = db.connect().await;
    c.batch_execute("UPDATE commitq.config SET backoff_base = '0', backoff_cap = '0'")
        .await
        .unwrap();
    let id: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'k')", &[])
        .await
        .unwrap()
        .get(0);

    // A worker claims with a one-second lease, then its connection goes away.
    let old_token: i64 = {
        let doomed = db.connect().await;
        doomed
            .query_one(
                "SELECT lease_token FROM commitq.claim('q', 'doomed', 1, '1 second')",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    // Before the lease runs out, maintain leaves the job alone.
    let early = c
        .query_one("SELECT rescued FROM commitq.maintain()", &[])
        .await
        .unwrap();
    assert_eq!(early.get::<_, i64>(0), 0);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let row = c
        .query_one("SELECT rescued, discarded FROM commitq.maintain()", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 0));

    let again = c
        .query_one(
            "SELECT job_id, attempt, lease_token FROM commitq.claim('q', 'w2', 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(again.get::<_, i64>(0), id);
    assert_eq!(again.get::<_, i32>(1), 2, "the lost attempt counts");
    assert!(again.get::<_, i64>(2) > old_token);
    let errors: String = c
        .query_one(
            "SELECT errors->0->>'error' FROM commitq.jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(errors.contains("lease expired"), "{errors}");
}

#[tokio::test]
async fn concurrent_maintain_calls_rescue_each_job_once() {
    let db = TestDb::new("t_core_maintain_concurrent").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT count(*) FROM commitq.enqueue_many('q', 'k', array_fill('{}'::jsonb, ARRAY[500]));
         SELECT count(*) FROM commitq.claim('q', 'w', 500, '1 minute');
         UPDATE commitq.jobs SET lease_expires_at = now() - interval '1 second';",
    )
    .await
    .unwrap();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        calls.push(tokio::spawn(async move {
            let c = connect(&url).await;
            c.query_one("SELECT rescued FROM commitq.maintain()", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }));
    }
    let mut total = 0;
    for call in calls {
        total += call.await.unwrap();
    }
    assert_eq!(total, 500);
    let attempts: i64 = c
        .query_one("SELECT count(*) FROM commitq.jobs WHERE state = 'scheduled' AND jsonb_array_length(errors) = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 500, "each job rescued exactly once");
}

/// Every misuse: its SQLSTATE, and nothing written.
#[tokio::test]
async fn bad_input_gets_its_sqlstate_and_changes_nothing() {
    let db = TestDb::new("t_core_bad_input").await;
    let c = db.connect().await;
    // Something to protect: a live job, a running job, a finished job, a key.
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{\"keep\": 1}', idempotency_key => 'kept');
         SELECT commitq.enqueue('q', 'k', '{\"keep\": 2}');
         SELECT commitq.enqueue('q', 'k', '{\"keep\": 3}');
         SELECT commitq.claim('q', 'w', 2);
         SELECT commitq.complete(id, lease_token) FROM commitq.jobs WHERE id = 2;",
    )
    .await
    .unwrap();
    let before = table_state(&c).await;

    let big = format!(
        "SELECT commitq.enqueue('q', 'k', jsonb_build_object('x', repeat('a', {})))",
        2 << 20
    );
    let cases: Vec<(&str, String)> = vec![
        ("CQ001", "SELECT commitq.enqueue(NULL, 'k', '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', NULL, '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', NULL)".into()),
        ("CQ001", "SELECT commitq.enqueue('', 'k', '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('Emails', 'k', '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('q''; DROP TABLE commitq.jobs; --', 'k', '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('q\u{0430}', 'k', '{}')".into()),
        ("CQ001", format!("SELECT commitq.enqueue('{}', 'k', '{{}}')", "q".repeat(49))),
        ("CQ001", "SELECT commitq.enqueue('q', 'send mail', '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '[1, 2]')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '\"text\"')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', 'null')".into()),
        ("CQ001", big),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', priority => 40000)".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', priority => NULL)".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', max_attempts => 0)".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', max_attempts => 1001)".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', run_at => 'infinity')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', idempotency_key => '')".into()),
        ("CQ001", format!("SELECT commitq.enqueue('q', 'k', '{{}}', idempotency_key => '{}')", "x".repeat(256))),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', concurrency_key => E'a\\nb')".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}', '[]']::jsonb[])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], idempotency_keys => ARRAY['a', 'b'])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('{\"queue\": \"q\"}'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\"}, 7]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\", \"idempotencyKey\": \"x\"}]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\"}, {\"queue\": \"Q!\", \"kind\": \"k\"}]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.claim('q', 'w', 0)".into()),
        ("CQ001", "SELECT commitq.claim('q', 'w', 10001)".into()),
        ("CQ001", "SELECT commitq.claim('q', NULL, 1)".into()),
        ("CQ001", "SELECT commitq.claim('q', 'w', 1, '0 seconds')".into()),
        ("CQ001", "SELECT commitq.claim('bad queue', 'w', 1)".into()),
        ("CQ001", "SELECT commitq.complete(NULL, 1)".into()),
        ("CQ001", "SELECT commitq.fail(1, 1, NULL)".into()),
        ("CQ001", "SELECT commitq.snooze(1, 1, '-1 second')".into()),
        ("CQ001", "SELECT commitq.complete_many(ARRAY[1, 2], ARRAY[1])".into()),
        ("CQ101", "SELECT commitq.complete(999, 1)".into()),
        ("CQ101", "SELECT commitq.cancel(999)".into()),
        ("CQ101", "SELECT commitq.retry(999)".into()),
        ("CQ102", "SELECT commitq.complete(1, 999)".into()),
        ("CQ102", "SELECT commitq.complete(2, 1)".into()),
        ("CQ102", "SELECT commitq.complete(3, 0)".into()),
        ("CQ102", "SELECT commitq.heartbeat(3, 0)".into()),
        ("CQ104", "SELECT commitq.retry(1)".into()),
        ("CQ104", "SELECT commitq.retry(3)".into()),
        ("22P02", "SELECT commitq.enqueue('q', 'k', '{not json')".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], concurrency_keys => ARRAY[E'a\\tb'])".into()),
        ("CQ001", format!("SELECT commitq.enqueue('q', 'k', '{{}}', concurrency_key => '{}')", "k".repeat(256))),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], concurrency_keys => ARRAY['']::text[])".into()),
        ("CQ001", "SELECT commitq.set_concurrency_limit('account:*', 0)".into()),
        ("CQ001", "SELECT commitq.set_concurrency_limit(NULL, 2)".into()),
        ("CQ001", "SELECT commitq.set_concurrency_limit(E'a\\nb', 2)".into()),
    ];
    for (code, sql) in &cases {
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(&sqlstate(&err), code, "{sql}: {err:?}");
        assert_eq!(table_state(&c).await, before, "{sql} changed something");
    }
}

#[tokio::test]
async fn roles_without_grants_can_do_nothing_and_granted_roles_only_their_part() {
    let db = TestDb::new("t_core_grants").await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS cq_nobody; DROP ROLE IF EXISTS cq_app; DROP ROLE IF EXISTS cq_worker;
             CREATE ROLE cq_nobody LOGIN; CREATE ROLE cq_app LOGIN; CREATE ROLE cq_worker LOGIN;
             GRANT commitq_producer TO cq_app; GRANT commitq_worker TO cq_worker;",
        )
        .await
        .unwrap();
    let nobody = connect(&db.url_as("cq_nobody")).await;
    for sql in [
        "SELECT commitq.enqueue('q', 'k', '{}')",
        "SELECT commitq.claim('q', 'w', 1)",
        "SELECT commitq.maintain()",
        "SELECT * FROM commitq.jobs",
    ] {
        let err = nobody.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err), "42501", "{sql}");
    }

    let app = connect(&db.url_as("cq_app")).await;
    app.batch_execute("SELECT commitq.enqueue('q', 'k', '{}')")
        .await
        .unwrap();
    for sql in [
        "SELECT commitq.claim('q', 'w', 1)",
        "SELECT * FROM commitq.jobs",
        "SELECT commitq.cancel(1)",
    ] {
        assert_eq!(
            sqlstate(&app.batch_execute(sql).await.expect_err(sql)),
            "42501",
            "{sql}"
        );
    }

    let worker = connect(&db.url_as("cq_worker")).await;
    let row = worker
        .query_one(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 1)",
            &[],
        )
        .await
        .unwrap();
    worker
        .execute(
            "SELECT commitq.complete($1, $2)",
            &[&row.get::<_, i64>(0), &row.get::<_, i64>(1)],
        )
        .await
        .unwrap();
    for sql in [
        "SELECT commitq.enqueue('q', 'k', '{}')",
        "DELETE FROM commitq.jobs",
        "SELECT commitq.retry(1)",
    ] {
        assert_eq!(
            sqlstate(&worker.batch_execute(sql).await.expect_err(sql)),
            "42501",
            "{sql}"
        );
    }

    // Nothing in the schema is granted to PUBLIC.
    let public: i64 = admin
        .query_one(
            "SELECT count(*) FROM (
                 SELECT p.oid FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                  WHERE p.pronamespace = 'commitq'::regnamespace AND a.grantee = 0
                 UNION ALL
                 SELECT c.oid FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                  WHERE c.relnamespace = 'commitq'::regnamespace AND a.grantee = 0) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(public, 0);
}

/// A user who plants look-alike tables, functions and operators in their own
/// schema and in pg_temp cannot change what commitq's functions do.
#[tokio::test]
async fn look_alike_objects_do_not_hijack_commitq() {
    let db = TestDb::new("t_core_hostile").await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS cq_mallory; CREATE ROLE cq_mallory LOGIN;
             GRANT commitq_producer, commitq_worker TO cq_mallory;
             CREATE SCHEMA mallory AUTHORIZATION cq_mallory;",
        )
        .await
        .unwrap();
    let m = connect(&db.url_as("cq_mallory")).await;
    m.batch_execute(
        "SET search_path = mallory, public;
         CREATE TABLE mallory.jobs (id bigint);
         CREATE TABLE mallory.config (max_args_bytes int);
         CREATE TABLE mallory.log (what text);
         CREATE FUNCTION mallory.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$;
         CREATE FUNCTION mallory.pg_notify(text, text) RETURNS void LANGUAGE sql
             AS $$ INSERT INTO mallory.log VALUES ('notify hijacked') $$;
         CREATE FUNCTION mallory.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'object' $$;
         CREATE FUNCTION mallory.texteq_evil(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
         CREATE OPERATOR mallory.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mallory.texteq_evil);
         CREATE TEMP TABLE jobs (id bigint);
         CREATE TEMP TABLE config (max_args_bytes int);
         INSERT INTO config VALUES (1);",
    )
    .await
    .unwrap();
    // With the look-alikes on the path, commitq still validates, stores and hands out real jobs.
    let err = m
        .batch_execute("SELECT commitq.enqueue('q', 'k', '[1]')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "CQ001");
    m.batch_execute("SELECT commitq.enqueue('q', 'k', '{\"a\": 1}')")
        .await
        .unwrap();
    m.batch_execute("SELECT commitq.enqueue('other', 'k', '{\"b\": 2}')")
        .await
        .unwrap();
    let claimed = m
        .query(
            "SELECT job_id, queue, lease_expires_at > now() FROM commitq.claim('q', 'w', 10)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "only the job of queue q");
    assert_eq!(claimed[0].get::<_, String>(1), "q");
    m.batch_execute("SELECT commitq.maintain()").await.unwrap();
    let hijacked: i64 = m
        .query_one("SELECT count(*) FROM mallory.log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hijacked, 0);
    let real: i64 = admin
        .query_one("SELECT count(*) FROM commitq.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(real, 2);
    let enqueued_at_epoch: i64 = admin
        .query_one(
            "SELECT count(*) FROM commitq.jobs WHERE enqueued_at < '2000-01-01'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enqueued_at_epoch, 0);
}

#[tokio::test]
async fn idempotency_key_is_reused_only_after_its_window_and_its_job_have_passed() {
    let db = TestDb::new("t_core_idempotency_window").await;
    let c = db.connect().await;
    let enqueue = "SELECT job_id, inserted FROM commitq.enqueue('pay', 'charge', '{}', idempotency_key => 'order-9')";
    let first = c.query_one(enqueue, &[]).await.unwrap();
    let id: i64 = first.get(0);
    assert!(first.get::<_, bool>(1));
    let second = c.query_one(enqueue, &[]).await.unwrap();
    assert_eq!(
        (second.get::<_, i64>(0), second.get::<_, bool>(1)),
        (id, false)
    );

    // Finished, but within the window: still deduplicated.
    c.batch_execute(
        "SELECT commitq.complete(job_id, lease_token) FROM commitq.claim('pay', 'w', 1)",
    )
    .await
    .unwrap();
    let third = c.query_one(enqueue, &[]).await.unwrap();
    assert_eq!(
        (third.get::<_, i64>(0), third.get::<_, bool>(1)),
        (id, false)
    );

    // The window has passed and the job is finished: the key is free again.
    c.batch_execute("UPDATE commitq.idempotency_keys SET created_at = now() - interval '25 hours'")
        .await
        .unwrap();
    let fourth = c.query_one(enqueue, &[]).await.unwrap();
    assert!(fourth.get::<_, bool>(1));
    assert_ne!(fourth.get::<_, i64>(0), id);

    // A live job keeps its key however old the key is.
    c.batch_execute("UPDATE commitq.idempotency_keys SET created_at = now() - interval '25 hours'")
        .await
        .unwrap();
    let fifth = c.query_one(enqueue, &[]).await.unwrap();
    assert!(!fifth.get::<_, bool>(1));

    // A repeated key inside one batch is deduplicated too.
    let rows = c
        .query(
            "SELECT job_id, inserted FROM commitq.enqueue_many('pay', 'charge', ARRAY['{}', '{}', '{}']::jsonb[],
                 idempotency_keys => ARRAY['a', NULL, 'a'])",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got.len(), 3);
    assert!(got[0].1 && got[1].1 && !got[2].1);
    assert_eq!(got[0].0, got[2].0);
}

#[tokio::test]
async fn cancel_and_retry_follow_the_job_through_its_states() {
    let db = TestDb::new("t_core_operator").await;
    let c = db.connect().await;
    let waiting: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'k')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        c.query_one("SELECT commitq.cancel($1)::text", &[&waiting])
            .await
            .unwrap()
            .get::<_, String>(0),
        "cancelled"
    );
    assert_eq!(
        c.query_one("SELECT commitq.retry($1)::text", &[&waiting])
            .await
            .unwrap()
            .get::<_, String>(0),
        "available"
    );

    // Cancelling a running job asks its worker to stop; its next fail cancels it.
    let row = c
        .query_one(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 1)",
            &[],
        )
        .await
        .unwrap();
    let (id, token): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(id, waiting);
    assert_eq!(
        c.query_one("SELECT commitq.cancel($1)::text", &[&id])
            .await
            .unwrap()
            .get::<_, String>(0),
        "running"
    );
    let hb = c
        .query_one(
            "SELECT cancel_requested FROM commitq.heartbeat($1, $2)",
            &[&id, &token],
        )
        .await
        .unwrap();
    assert!(hb.get::<_, bool>(0));
    let failed = c
        .query_one(
            "SELECT state::text FROM commitq.fail($1, $2, 'stopped on request')",
            &[&id, &token],
        )
        .await
        .unwrap();
    assert_eq!(failed.get::<_, String>(0), "cancelled");
}

/// A worker whose claim came back empty is woken by a NOTIFY on
/// "commitq:<queue>" when a producer commits a job, not before; a queue with
/// no waiting worker gets no NOTIFY (so busy producers keep group commit).
#[tokio::test]
async fn waiting_workers_are_notified_at_commit_and_only_then() {
    use tokio::time::timeout;
    let db = TestDb::new("t_core_notify").await;
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

/// enqueue_many returns one row per job, in input order, ids increasing.
#[tokio::test]
async fn bulk_enqueue_returns_jobs_in_input_order() {
    let db = TestDb::new("t_core_bulk_order").await;
    let c = db.connect().await;
    let rows = c
        .query(
            "SELECT job_id, inserted FROM commitq.enqueue_many('q', 'k',
                 (SELECT array_agg(jsonb_build_object('n', i) ORDER BY i) FROM generate_series(1, 5000) i))",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids increase in input order"
    );
    assert!(rows.iter().all(|r| r.get::<_, bool>(1)));
    let mismatched: i64 = c
        .query_one(
            "SELECT count(*) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, n)
               JOIN commitq.jobs j ON j.id = t.id WHERE (j.args->>'n')::bigint <> t.n",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0, "job k of the result carries args k");
}

/// complete_and_claim completes what it still holds under a live lease,
/// skips (with a warning) what it lost, and claims the next batch.
#[tokio::test]
async fn complete_and_claim_completes_live_leases_and_claims_more() {
    let db = TestDb::new("t_core_complete_and_claim").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT count(*) FROM commitq.enqueue_many('q', 'k', array_fill('{}'::jsonb, ARRAY[4]))",
    )
    .await
    .unwrap();
    let first = c
        .query(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 2)",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<i64> = first.iter().map(|r| r.get(0)).collect();
    let tokens: Vec<i64> = first.iter().map(|r| r.get(1)).collect();
    // The lease of the first job runs out before the worker reports.
    c.execute(
        "UPDATE commitq.jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        &[&ids[0]],
    )
    .await
    .unwrap();
    let next = c
        .query(
            "SELECT job_id FROM commitq.complete_and_claim($1, $2, 'q', 'w', 10)",
            &[&ids, &tokens],
        )
        .await
        .unwrap();
    assert_eq!(next.len(), 2, "the two waiting jobs");
    let left: Vec<i64> = c
        .query("SELECT id FROM commitq.jobs WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left,
        vec![ids[0]],
        "the expired one is not completed, the live one is"
    );
}

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
    let db = TestDb::new("t_core_lease_lookup").await;
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
