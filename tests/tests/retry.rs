//! Retries: failures back off and are discarded after max_attempts with
//! every error kept; a handler that panics is retried; args that no longer
//! deserialize are discarded at once, since no retry can fix them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitq::{Outcome, WorkerPool};
use commitq_tests::{
    no_backoff, record, recording_pool, scalar, setup, start_pool, wait_until, Record, TestDb,
    EFFECTS, INSERT_EFFECT,
};

#[tokio::test]
async fn failures_back_off_then_discard_keeping_every_error() {
    let db = TestDb::new("t_retry_backoff").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_the_worker_survives() {
    let (db, client) = setup("t_retry_panic", EFFECTS).await;
    no_backoff(&db.connect().await).await;
    client.enqueue(&record(7, "flaky")).await.unwrap();
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
                conn.execute(INSERT_EFFECT, &[&job.n, &job.label, &ctx.attempt])
                    .await?;
                Ok(Outcome::Complete)
            }
        })
        .build();
    let metrics = pool.metrics();
    let running = start_pool(pool);
    wait_until(
        "the retry to succeed",
        Duration::from_secs(20),
        async || {
            scalar(&client, "SELECT count(*) FROM public.effects").await == 1
                && scalar(&client, "SELECT count(*) FROM commitq.jobs").await == 0
        },
    )
    .await;
    running.stop().await;
    assert_eq!(
        scalar(&client, "SELECT attempt::bigint FROM public.effects").await,
        2
    );
    let m = metrics.snapshot();
    assert_eq!((m.failed, m.retried, m.completed), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_that_no_longer_deserialize_are_discarded_not_retried() {
    let (db, client) = setup("t_retry_bad_args", EFFECTS).await;
    db.connect()
        .await
        .batch_execute("SELECT commitq.enqueue('effects', 'record', '{\"n\": \"not a number\"}')")
        .await
        .unwrap();
    let running = start_pool(recording_pool(&client));
    wait_until("the discard", Duration::from_secs(20), async || {
        scalar(
            &client,
            "SELECT count(*) FROM commitq.finished_jobs WHERE state = 'discarded'",
        )
        .await
            == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        scalar(&client, "SELECT attempt::bigint FROM commitq.finished_jobs").await,
        1,
        "no retry loop"
    );
}
