//! What a caller's search_path can do to commitq: nothing. Every SECURITY
//! DEFINER function pins its own search_path (or, in C, qualifies every
//! name), and every public function called by a user who planted look-alike
//! functions, operators and temp tables on their path does exactly what it
//! does for anyone else.

use commitq_tests::{connect, sqlstate, TestDb};

/// A SECURITY DEFINER function runs with the owner's rights whatever the
/// caller's search_path says, so each pins its own; the one exception is C
/// code (commitq.enqueue), whose statements qualify every name and which the
/// look-alike test below covers.
#[tokio::test]
async fn every_security_definer_function_pins_its_search_path() {
    let db = TestDb::new("t_sec_pinned").await;
    let c = db.connect().await;
    let rows = c
        .query(
            "SELECT p.oid::regprocedure::text, l.lanname::text,
                    coalesce(p.proconfig::text[] @> ARRAY['search_path=pg_catalog, pg_temp'], false)
               FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace = 'commitq'::regnamespace AND p.prosecdef",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() > 20, "{} SECURITY DEFINER functions", rows.len());
    let unpinned: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) != "c" && !r.get::<_, bool>(2))
        .map(|r| r.get(0))
        .collect();
    assert!(unpinned.is_empty(), "no pinned search_path: {unpinned:?}");
    let c_functions: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) == "c")
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        c_functions,
        ["commitq.enqueue(text,text,jsonb,integer,timestamp with time zone,integer,text,text,xid8,bigint[],text)"],
        "C code reviewed for names resolved on the path"
    );
}

/// A user planted look-alikes of everything commitq's SQL uses without a
/// schema (pg_catalog functions and operators, tables by commitq's names in
/// their own schema and as temp tables) and calls every public function:
/// each does exactly what it does for anyone else.
#[tokio::test]
async fn look_alikes_on_the_path_change_nothing_in_any_function() {
    let db = TestDb::new("t_sec_hostile").await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS cq_m_mallory; CREATE ROLE cq_m_mallory LOGIN;
             GRANT commitq_operator TO cq_m_mallory;
             CREATE SCHEMA mallory AUTHORIZATION cq_m_mallory;",
        )
        .await
        .unwrap();
    let m = connect(&db.url_as("cq_m_mallory")).await;
    // pg_catalog after mallory's schema, and temp tables first: on this
    // path mallory's look-alikes win over the real ones for any name that is
    // not schema-qualified.
    let mut plant = String::from(
        "SET search_path = pg_temp, mallory, pg_catalog, public;
         CREATE TABLE mallory.log (what text);
         CREATE FUNCTION mallory.texteq_evil(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
         CREATE OPERATOR mallory.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mallory.texteq_evil);
         CREATE FUNCTION mallory.int8lt_evil(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT false $$;
         CREATE OPERATOR mallory.< (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = mallory.int8lt_evil);
         CREATE FUNCTION mallory.tsgt_evil(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
         CREATE OPERATOR mallory.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = mallory.tsgt_evil);",
    );
    // Functions commitq calls, each shadowed by one that leaves a trace.
    for (name, args, returns, value) in [
        ("now", "", "timestamptz", "'epoch'::timestamptz"),
        ("clock_timestamp", "", "timestamptz", "'epoch'::timestamptz"),
        ("random", "", "double precision", "0"),
        ("pg_notify", "text, text", "void", "NULL"),
        ("jsonb_typeof", "jsonb", "text", "'object'"),
        ("hashtext", "text", "integer", "0"),
        ("starts_with", "text, text", "boolean", "true"),
        (
            "pg_try_advisory_xact_lock",
            "integer, integer",
            "boolean",
            "true",
        ),
        ("pg_xact_status", "xid8", "text", "'committed'"),
        ("length", "text", "integer", "1"),
        ("format", "text", "text", "'x'"),
        ("nextval", "regclass", "bigint", "1"),
    ] {
        plant.push_str(&format!(
            "CREATE FUNCTION mallory.{name}({args}) RETURNS {returns} LANGUAGE sql AS $$
                 INSERT INTO mallory.log VALUES ('{name} hijacked'); SELECT {value}::{returns} $$;\n"
        ));
    }
    // Tables by commitq's names, in mallory's schema and as temp tables.
    for table in [
        "jobs",
        "finished_jobs",
        "config",
        "idempotency_keys",
        "concurrency_keys",
        "concurrency_limits",
        "job_effects",
        "named_leases",
        "waiting_workers",
    ] {
        plant.push_str(&format!(
            "CREATE TABLE mallory.{table} (x int); CREATE TEMP TABLE {table} (x int);\n"
        ));
    }
    m.batch_execute(&plant).await.unwrap();

    // Every public function, with the look-alikes on the path. Args are
    // still judged by the real jsonb_typeof, and a job of another queue is
    // not claimed through mallory's `=`.
    let err = m
        .batch_execute("SELECT * FROM commitq.enqueue('q', 'k', '[1]')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "CQ001");
    m.batch_execute(
        "SELECT * FROM commitq.enqueue('other', 'k', '{}');
         SELECT commitq.set_concurrency_limit('tenant:*', 2);
         SELECT * FROM commitq.enqueue('q', 'k', '{\"n\": 1}', idempotency_key => 'i1', concurrency_key => 'tenant:1');
         SELECT * FROM commitq.enqueue('q', 'k', '{\"n\": 1}', idempotency_key => 'i1');
         SELECT * FROM commitq.enqueue_many('q', 'k', ARRAY['{\"n\": 2}', '{\"n\": 3}']::jsonb[]);
         SELECT * FROM commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\", \"args\": {\"n\": 4}}]'::jsonb);
         SELECT commitq.try_acquire_lease('cron', 'mallory', '1 minute');",
    )
    .await
    .unwrap();
    let claimed = m
        .query(
            "SELECT job_id, lease_token, lease_expires_at > pg_catalog.now() + interval '50 seconds'
               FROM commitq.claim('q', 'w', 10, '1 minute')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        4,
        "four jobs of queue q, one of them a duplicate"
    );
    assert!(
        claimed.iter().all(|r| r.get::<_, bool>(2)),
        "leases by the server's clock"
    );
    let ids: Vec<i64> = claimed.iter().map(|r| r.get(0)).collect();
    let tokens: Vec<i64> = claimed.iter().map(|r| r.get(1)).collect();
    m.execute(
        "SELECT commitq.assert_lease($1, $2)",
        &[&ids[0], &tokens[0]],
    )
    .await
    .unwrap();
    m.execute(
        "SELECT * FROM commitq.heartbeat($1, $2)",
        &[&ids[0], &tokens[0]],
    )
    .await
    .unwrap();
    m.execute(
        "SELECT * FROM commitq.effect_begin($1, $2, 'charge')",
        &[&ids[0], &tokens[0]],
    )
    .await
    .unwrap();
    m.execute(
        "SELECT commitq.effect_done($1, $2, 'charge', '{}')",
        &[&ids[0], &tokens[0]],
    )
    .await
    .unwrap();
    m.execute("SELECT commitq.complete($1, $2)", &[&ids[0], &tokens[0]])
        .await
        .unwrap();
    m.execute(
        "SELECT * FROM commitq.fail($1, $2, 'boom')",
        &[&ids[1], &tokens[1]],
    )
    .await
    .unwrap();
    m.execute(
        "SELECT commitq.snooze($1, $2, '1 hour')",
        &[&ids[2], &tokens[2]],
    )
    .await
    .unwrap();
    m.execute(
        "SELECT * FROM commitq.complete_many($1, $2)",
        &[&vec![ids[3]], &vec![tokens[3]]],
    )
    .await
    .unwrap();
    m.batch_execute(
        "SELECT * FROM commitq.complete_and_claim('{}', '{}', 'q', 'w', 1, '1 minute');
         SELECT * FROM commitq.maintain();",
    )
    .await
    .unwrap();
    let err = m
        .execute("SELECT commitq.complete($1, $2)", &[&ids[0], &tokens[0]])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "CQ102", "a stale lease stays stale");
    m.execute("SELECT commitq.retry($1)", &[&ids[1]])
        .await
        .unwrap();
    m.execute("SELECT commitq.cancel($1)", &[&ids[2]])
        .await
        .unwrap();

    // A key's slot passed from one job straight to the next.
    m.batch_execute(
        "SELECT * FROM commitq.enqueue('q2', 'k', '{}', concurrency_key => 'solo:1');
         SELECT * FROM commitq.enqueue('q2', 'k', '{}', concurrency_key => 'solo:1');",
    )
    .await
    .unwrap();
    let first = m
        .query_one(
            "SELECT job_id, lease_token FROM commitq.claim('q2', 'w', 10)",
            &[],
        )
        .await
        .unwrap();
    let take = "SELECT completed, (next).job_id, (next).lease_token
                  FROM commitq.complete_and_take(ARRAY[$1::bigint], ARRAY[$2::bigint], 'w')";
    let row = m
        .query_one(take, &[&first.get::<_, i64>(0), &first.get::<_, i64>(1)])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let (next, token): (i64, i64) = (row.get(1), row.get(2));
    let row = m.query_one(take, &[&next, &token]).await.unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Option<i64>>(1), None, "no third job");
    // A worker waits on q3, so an enqueue there also sends its NOTIFY.
    m.batch_execute(
        "SELECT * FROM commitq.claim('q3', 'w');
         SELECT * FROM commitq.enqueue('q3', 'k', '{}');",
    )
    .await
    .unwrap();
    let state: String = admin
        .query_one(
            "SELECT state::text FROM commitq.jobs WHERE queue = 'q3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "available", "run_at compared by the real clock");
    // Nothing of mallory's ran, and commitq's tables hold what they should.
    let hijacked: Vec<String> = m
        .query("SELECT what FROM mallory.log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(hijacked.is_empty(), "hijacked: {hijacked:?}");
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM commitq.jobs),
                    (SELECT count(*) FROM commitq.jobs WHERE enqueued_at < '2000-01-01'),
                    (SELECT count(*) FROM commitq.finished_jobs WHERE state = 'cancelled'),
                    (SELECT count(*) FROM commitq.idempotency_keys),
                    (SELECT count(*) FROM commitq.concurrency_limits WHERE max_running = 2),
                    (SELECT count(*) FROM commitq.named_leases)",
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = (0..6).map(|i| row.get(i)).collect();
    // Live: the failed job, retried, q3's and other's; cancelled: the
    // snoozed one; one key, one limit, one lease.
    assert_eq!(counts, vec![3, 0, 1, 1, 1, 1]);
}
