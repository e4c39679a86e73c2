//! Bad input through SQL and through the client: NULL in every argument of
//! every public function, payloads at and past the size limit, dates at the
//! edges of the calendar, names with quotes and look-alike letters, numbers
//! out of range, unknown jobs and stale leases, a job kind no worker knows.
//! Each case gets its documented error or behaviour, and a refused call
//! leaves everything as it was. The property test of the name rules, and
//! what the NULL defaults do, are in `argument_rules.rs`.

use std::time::Duration;

use commitq::{Client, EnqueueOptions, Error, Job, Outcome, WorkerPool};
use commitq_tests::{error_message, everything_stored, sqlstate, TestDb};

/// Every public function with a valid value for each argument (SQL literal,
/// type), and the arguments for which NULL has a documented meaning rather
/// than being an error (a default: now, no key, no gate, the claim's lease,
/// no limit).
/// (function, its arguments as (SQL value, type), arguments that may be NULL)
type Call = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [usize],
);

const CALLS: &[Call] = &[
    ("stop_waiting", &[("'q'", "text"), ("'w'", "text")], &[]),
    (
        "enqueue",
        &[
            ("'q'", "text"),
            ("'k'", "text"),
            ("'{}'", "jsonb"),
            ("0", "integer"),
            ("now()", "timestamptz"),
            ("3", "integer"),
            ("'i'", "text"),
            ("'c'", "text"),
            ("NULL", "xid8"),
            ("'{}'", "bigint[]"),
            ("'return'", "text"),
        ],
        &[4, 6, 7, 8, 9, 10],
    ),
    (
        "enqueue_many",
        &[
            ("'q'", "text"),
            ("'k'", "text"),
            ("ARRAY['{}']", "jsonb[]"),
            ("0", "integer"),
            ("now()", "timestamptz"),
            ("3", "integer"),
            ("ARRAY['i']", "text[]"),
            ("ARRAY['c']", "text[]"),
            ("'{}'", "bigint[]"),
            ("'return'", "text"),
        ],
        &[4, 6, 7, 8, 9],
    ),
    (
        "enqueue_many",
        &[("'[{\"queue\": \"q\", \"kind\": \"k\"}]'", "jsonb")],
        &[],
    ),
    (
        "claim",
        &[
            ("'q'", "text"),
            ("'w'", "text"),
            ("1", "integer"),
            ("'1 minute'", "interval"),
        ],
        &[],
    ),
    ("complete", &[("1", "bigint"), ("1", "bigint")], &[]),
    // NULL result: completed without one.
    (
        "complete",
        &[("1", "bigint"), ("1", "bigint"), ("'{}'", "jsonb")],
        &[2],
    ),
    (
        "complete_many",
        &[("ARRAY[1]", "bigint[]"), ("ARRAY[1]", "bigint[]")],
        &[],
    ),
    (
        "complete_and_claim",
        &[
            ("ARRAY[1]", "bigint[]"),
            ("ARRAY[1]", "bigint[]"),
            ("'q'", "text"),
            ("'w'", "text"),
            ("1", "integer"),
            ("'1 minute'", "interval"),
        ],
        &[],
    ),
    (
        "complete_and_take",
        &[
            ("ARRAY[1]", "bigint[]"),
            ("ARRAY[1]", "bigint[]"),
            ("'w'", "text"),
            ("'1 minute'", "interval"),
        ],
        &[],
    ),
    (
        "fail",
        &[
            ("1", "bigint"),
            ("1", "bigint"),
            ("'boom'", "text"),
            ("'1 second'", "interval"),
            ("false", "boolean"),
        ],
        &[3],
    ),
    (
        "heartbeat",
        &[("1", "bigint"), ("1", "bigint"), ("'1 minute'", "interval")],
        &[2],
    ),
    (
        "snooze",
        &[("1", "bigint"), ("1", "bigint"), ("'1 minute'", "interval")],
        &[],
    ),
    ("assert_lease", &[("1", "bigint"), ("1", "bigint")], &[]),
    (
        "effect_begin",
        &[("1", "bigint"), ("1", "bigint"), ("'charge'", "text")],
        &[],
    ),
    (
        "effect_done",
        &[
            ("1", "bigint"),
            ("1", "bigint"),
            ("'charge'", "text"),
            ("'{}'", "jsonb"),
        ],
        &[3],
    ),
    ("cancel", &[("1", "bigint")], &[]),
    ("retry", &[("1", "bigint")], &[]),
    (
        "try_acquire_lease",
        &[
            ("'cron'", "text"),
            ("'me'", "text"),
            ("'1 minute'", "interval"),
        ],
        &[],
    ),
    (
        "acquire_lease",
        &[
            ("'cron'", "text"),
            ("'me'", "text"),
            ("'1 minute'", "interval"),
            ("'1 second'", "interval"),
        ],
        // NULL wait: do not wait, as try_acquire_lease
        &[3],
    ),
    (
        "renew_lease",
        &[
            ("'cron'", "text"),
            ("1", "bigint"),
            ("'1 minute'", "interval"),
        ],
        &[],
    ),
    ("release_lease", &[("'cron'", "text"), ("1", "bigint")], &[]),
    (
        "assert_fencing_token",
        &[("'cron'", "text"), ("1", "bigint")],
        &[],
    ),
    (
        "set_concurrency_limit",
        &[("'tenant:*'", "text"), ("3", "integer")],
        &[1],
    ),
    // NULL max_jobs removes a limit (and per is then not needed); NULL
    // key_prefix makes a queue fair no more.
    (
        "set_rate_limit",
        &[
            ("'queue:q'", "text"),
            ("5", "integer"),
            ("'1 second'", "interval"),
        ],
        &[1],
    ),
    (
        "set_fairness",
        &[("'q'", "text"), ("'tenant:'", "text")],
        &[1],
    ),
];

#[tokio::test]
async fn null_in_any_argument_is_refused_or_means_its_default() {
    let db = TestDb::new("t_bad_nulls").await;
    let c = db.connect().await;
    // Some state for refused calls to leave alone.
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{\"n\": 1}', idempotency_key => 'x', concurrency_key => 'a:1');
         SELECT commitq.claim('q', 'w', 1);
         SELECT commitq.enqueue('q', 'k', '{\"n\": 2}');
         SELECT commitq.try_acquire_lease('held', 'me', '1 minute');",
    )
    .await
    .unwrap();
    let before = everything_stored(&c).await;
    let mut cases = 0;
    for (name, args, nullable) in CALLS {
        let call = |null_at: Option<usize>| {
            let list: Vec<String> = args
                .iter()
                .enumerate()
                .map(|(j, (value, ty))| match null_at {
                    Some(i) if i == j => format!("NULL::{ty}"),
                    _ => format!("{value}::{ty}"),
                })
                .collect();
            format!("SELECT * FROM commitq.{name}({})", list.join(", "))
        };
        // What the call does with valid values (it may well be "job not
        // found"): a documented default must do the same.
        let outcome = |r: Result<(), tokio_postgres::Error>| r.map_err(|e| sqlstate(&e));
        c.batch_execute("BEGIN").await.unwrap();
        let valid = outcome(c.batch_execute(&call(None)).await);
        c.batch_execute("ROLLBACK").await.unwrap();
        for i in 0..args.len() {
            let sql = call(Some(i));
            cases += 1;
            if nullable.contains(&i) {
                c.batch_execute("BEGIN").await.unwrap();
                let with_null = outcome(c.batch_execute(&sql).await);
                c.batch_execute("ROLLBACK").await.unwrap();
                assert_eq!(with_null, valid, "{sql}");
            } else {
                let e = c
                    .batch_execute(&sql)
                    .await
                    .expect_err(&format!("NULL accepted: {sql}"));
                assert_eq!(sqlstate(&e), "CQ001", "{sql}: {e}");
                let message = error_message(&e);
                assert!(
                    message.starts_with("commitq: ") && message.contains("NULL"),
                    "{sql}: {message}"
                );
                assert_eq!(
                    everything_stored(&c).await,
                    before,
                    "{sql} changed something"
                );
            }
        }
    }
    assert!(cases > 60, "{cases} cases");
}

#[tokio::test]
async fn payloads_dates_and_names_at_the_edges() {
    let db = TestDb::new("t_bad_edges").await;
    let c = db.connect().await;

    // Payloads: an empty object is fine; 10 MB is refused with CQ001 (the
    // default limit is 1 MB) and nothing is stored; JSON that is not an
    // object is refused.
    c.batch_execute("SELECT commitq.enqueue('q', 'k', '{}')")
        .await
        .unwrap();
    let before = everything_stored(&c).await;
    let huge = serde_json::json!({ "blob": "x".repeat(10 * 1024 * 1024) });
    let e = c
        .execute("SELECT commitq.enqueue('q', 'k', $1)", &[&huge])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "CQ001");
    assert!(error_message(&e).contains("args too large"), "{e}");
    for args in ["[]", "1", "\"s\"", "null", "true"] {
        let e = c
            .batch_execute(&format!("SELECT commitq.enqueue('q', 'k', '{args}')"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "CQ001", "{args}");
    }
    // Invalid UTF-8 or malformed JSON never reaches commitq: Postgres
    // refuses it while parsing the argument.
    let e = c
        .batch_execute(
            "SELECT commitq.enqueue('q', 'k', convert_from('\\xc3'::bytea, 'UTF8')::jsonb)",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22021");
    let e = c
        .batch_execute("SELECT commitq.enqueue('q', 'k', '{\"a\": ')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22P02");
    // Names with quotes, semicolons, look-alike letters, control characters.
    for queue in [
        "q'; DROP TABLE commitq.jobs; --",
        "q;q",
        "Q",
        "q\u{0430}",
        "q\u{200b}",
        "q q",
        "",
    ] {
        let e = c
            .execute("SELECT commitq.enqueue($1, 'k', '{}')", &[&queue])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "CQ001", "{queue:?}");
    }
    // Numbers out of range.
    for (priority, attempts) in [
        (-40000, 3),
        (40000, 3),
        (0, 0),
        (0, -1),
        (0, 1001),
        (0, i32::MAX),
    ] {
        let e = c
            .execute(
                "SELECT commitq.enqueue('q', 'k', '{}', priority => $1, max_attempts => $2)",
                &[&priority, &attempts],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "CQ001", "{priority} {attempts}");
    }
    assert_eq!(
        everything_stored(&c).await,
        before,
        "refused calls changed nothing"
    );

    // Dates: 9999 is a job scheduled far ahead; 1970 is due at once and
    // claimed first (it is the earliest).
    let far: i64 = c
        .query_one(
            "SELECT job_id FROM commitq.enqueue('q', 'k', '{}', run_at => '9999-12-31 23:59:59+00')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let early: i64 = c
        .query_one(
            "SELECT job_id FROM commitq.enqueue('q', 'k', '{}', run_at => '1970-01-01 00:00:00+00')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let states: Vec<(i64, String)> = c
        .query(
            "SELECT id, state::text FROM commitq.jobs WHERE id = ANY($1) ORDER BY id",
            &[&vec![far, early]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        states,
        vec![(far, "scheduled".into()), (early, "available".into())]
    );
    let first: i64 = c
        .query_one("SELECT job_id FROM commitq.claim('q', 'w', 1)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, early);
    let e = c
        .batch_execute("SELECT commitq.enqueue('q', 'k', '{}', run_at => 'infinity')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "CQ001");
}

/// Misuse other than NULLs and the edges above: lengths just past a limit,
/// malformed batches, claims and lease calls out of range, unknown jobs,
/// stale leases and operator actions on the wrong state. Each gets its
/// SQLSTATE, and nothing is written.
#[tokio::test]
async fn bad_input_gets_its_sqlstate_and_changes_nothing() {
    let db = TestDb::new("t_bad_sqlstates").await;
    let c = db.connect().await;
    // Something to protect: a running job with a key (1), a completed job
    // (2), an available job (3).
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{\"keep\": 1}', idempotency_key => 'kept');
         SELECT commitq.enqueue('q', 'k', '{\"keep\": 2}');
         SELECT commitq.enqueue('q', 'k', '{\"keep\": 3}');
         SELECT commitq.claim('q', 'w', 2);
         SELECT commitq.complete(id, lease_token) FROM commitq.jobs WHERE id = 2;",
    )
    .await
    .unwrap();
    let before = everything_stored(&c).await;

    let cases: Vec<(&str, String)> = vec![
        ("CQ001", format!("SELECT commitq.enqueue('{}', 'k', '{{}}')", "q".repeat(49))),
        ("CQ001", "SELECT commitq.enqueue('q', 'send mail', '{}')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', idempotency_key => '')".into()),
        ("CQ001", format!("SELECT commitq.enqueue('q', 'k', '{{}}', idempotency_key => '{}')", "x".repeat(256))),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', concurrency_key => E'a\\nb')".into()),
        ("CQ001", format!("SELECT commitq.enqueue('q', 'k', '{{}}', concurrency_key => '{}')", "k".repeat(256))),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}', '[]']::jsonb[])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], idempotency_keys => ARRAY['a', 'b'])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], concurrency_keys => ARRAY[E'a\\tb'])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], concurrency_keys => ARRAY['']::text[])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('{\"queue\": \"q\"}'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\"}, 7]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\", \"idempotencyKey\": \"x\"}]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\"}, {\"queue\": \"Q!\", \"kind\": \"k\"}]'::jsonb)".into()),
        // Dependencies, results, replace and debounce (dependencies.sql, replace.sql).
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', depends_on => ARRAY[3, NULL])".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', depends_on => ARRAY(SELECT generate_series(1, 10001))::bigint[])".into()),
        ("CQ101", "SELECT commitq.enqueue('q', 'k', '{}', depends_on => ARRAY[3, 999])".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', idempotency_key => 'kept', on_duplicate => 'merge')".into()),
        ("CQ001", "SELECT commitq.enqueue('q', 'k', '{}', on_duplicate => 'replace')".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], depends_on => ARRAY[NULL]::bigint[])".into()),
        ("CQ001", "SELECT commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[], on_duplicate => 'debounce')".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\", \"depends_on\": \"3\"}]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\", \"depends_on\": [3.5]}]'::jsonb)".into()),
        ("CQ101", "SELECT commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\", \"depends_on\": [999]}]'::jsonb)".into()),
        ("CQ001", "SELECT commitq.complete(1, 1, jsonb_build_object('x', repeat('x', 2000000)))".into()),
        ("CQ102", "SELECT commitq.complete(1, 999, '{\"ok\": true}')".into()),
        ("CQ001", "SELECT commitq.claim('q', 'w', 0)".into()),
        ("CQ001", "SELECT commitq.claim('q', 'w', 10001)".into()),
        ("CQ001", "SELECT commitq.claim('q', 'w', 1, '0 seconds')".into()),
        ("CQ001", "SELECT commitq.claim('bad queue', 'w', 1)".into()),
        ("CQ001", "SELECT commitq.snooze(1, 1, '-1 second')".into()),
        ("CQ001", "SELECT commitq.complete_many(ARRAY[1, 2], ARRAY[1])".into()),
        ("CQ001", "SELECT commitq.set_concurrency_limit('account:*', 0)".into()),
        ("CQ001", "SELECT commitq.set_concurrency_limit(E'a\\nb', 2)".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:q', 0, '1 second')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:q', 100001, '1 second')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:q', 5, NULL)".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:q', 5, '0 seconds')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:q', 5, '-1 second')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:q', 5, '2 days')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:Bad Queue', 5, '1 second')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('queue:*', 5, '1 second')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit(E'tenant:\\n*', 5, '1 second')".into()),
        ("CQ001", "SELECT commitq.set_rate_limit('', 5, '1 second')".into()),
        ("CQ001", "SELECT commitq.set_fairness('bad queue', 'tenant:')".into()),
        ("CQ001", format!("SELECT commitq.set_fairness('q', '{}')", "t".repeat(256))),
        ("CQ001", "SELECT commitq.set_fairness('q', E'tenant\\t')".into()),
        ("CQ101", "SELECT commitq.complete(999, 1)".into()),
        ("CQ101", "SELECT commitq.cancel(999)".into()),
        ("CQ101", "SELECT commitq.retry(999)".into()),
        ("CQ102", "SELECT commitq.complete(1, 999)".into()),
        ("CQ102", "SELECT commitq.complete(2, 1)".into()),
        ("CQ102", "SELECT commitq.complete(3, 0)".into()),
        ("CQ102", "SELECT commitq.heartbeat(3, 0)".into()),
        ("CQ104", "SELECT commitq.retry(1)".into()),
        ("CQ104", "SELECT commitq.retry(3)".into()),
    ];
    for (code, sql) in &cases {
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(&sqlstate(&err), code, "{sql}: {err:?}");
        assert_eq!(
            everything_stored(&c).await,
            before,
            "{sql} changed something"
        );
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Known {
    n: i64,
}

impl Job for Known {
    const KIND: &'static str = "known";
    const QUEUE: &'static str = "edges";
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Unknown {
    n: i64,
}

impl Job for Unknown {
    const KIND: &'static str = "nobody_handles_this";
    const QUEUE: &'static str = "edges";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_client_bad_input_is_a_typed_error_and_unknown_kinds_wait_for_a_handler() {
    let db = TestDb::new("t_bad_client").await;
    let client = Client::connect(&db.url).await.unwrap();
    let c = db.connect().await;

    for options in [
        EnqueueOptions::default().queue("Bad Queue"),
        EnqueueOptions::default().priority(70000),
        EnqueueOptions::default().max_attempts(0),
        EnqueueOptions::default().idempotency_key(""),
        EnqueueOptions::default().concurrency_key("a\u{7}b"),
    ] {
        let mut conn = client.pool().get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        match commitq::enqueue(&*tx, &Known { n: 1 }, &options).await {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains("commitq:"), "{message}")
            }
            other => panic!("{options:?}: {other:?}"),
        }
    }

    // A kind no worker of this pool handles: the job fails with a clear
    // error and is retried later (another deployment may handle it); jobs
    // of known kinds run meanwhile.
    client.enqueue(&Unknown { n: 1 }).await.unwrap();
    client.enqueue(&Known { n: 2 }).await.unwrap();
    let pool = WorkerPool::builder(client.clone())
        .queue("edges", 2)
        .poll_interval(Duration::from_millis(50))
        .handle(|_ctx, _job: Known| async { Ok(Outcome::Complete) })
        .build();
    let metrics = pool.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    let start = std::time::Instant::now();
    while metrics.snapshot().completed < 1 || metrics.snapshot().failed < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            metrics.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
    let row = c
        .query_one(
            "SELECT state::text, errors->-1->>'error' FROM commitq.jobs WHERE kind = 'nobody_handles_this'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "scheduled");
    assert!(row.get::<_, String>(1).contains("no handler for kind"));
}
