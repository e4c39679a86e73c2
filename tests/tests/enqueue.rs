//! Enqueueing, from SQL and through the client: idempotency keys and their
//! window, bulk enqueue's order, a job enqueued in a transaction that rolls
//! back, a job gated on another transaction, and per-call options.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitq::{EnqueueOptions, Outcome, WorkerPool};
use commitq_tests::{
    record, recording_pool, scalar, setup, start_pool, wait_until, waiting_on, Record, TestDb,
    EFFECTS,
};

#[tokio::test]
async fn idempotency_key_is_reused_only_after_its_window_and_its_job_have_passed() {
    let db = TestDb::new("t_enqueue_idempotency_window").await;
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

/// enqueue_many returns one row per job, in input order, ids increasing.
#[tokio::test]
async fn bulk_enqueue_returns_jobs_in_input_order() {
    let db = TestDb::new("t_enqueue_bulk_order").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs() {
    let (_db, client) = setup("t_enqueue_rollback", EFFECTS).await;
    {
        let mut conn = client.pool().get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        commitq::enqueue(&*tx, &record(1, "ghost"), &EnqueueOptions::default())
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        commitq::enqueue(&*tx, &record(2, "real"), &EnqueueOptions::default())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let running = start_pool(recording_pool(&client));
    wait_until("the committed job", Duration::from_secs(20), async || {
        scalar(&client, "SELECT count(*) FROM public.effects").await == 1
    })
    .await;
    // The pool claimed again and found nothing: a ghost would have been
    // claimed with the real job or by this claim.
    wait_until("the pool to wait", Duration::from_secs(20), async || {
        waiting_on(&client, "effects").await == 1
    })
    .await;
    running.stop().await;
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM commitq.jobs WHERE args->>'label' = 'ghost'"
        )
        .await,
        0,
        "nothing of the rolled-back enqueue was stored"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM public.effects WHERE label = 'ghost'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM public.effects WHERE label = 'real'"
        )
        .await,
        1
    );
}

/// A job enqueued from another connection, gated on the request's
/// transaction, runs only after that transaction commits and sees its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gated_on_another_transaction_waits_for_its_commit() {
    let (db, client) = setup("t_enqueue_gated", EFFECTS).await;
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
    commitq::enqueue(&**conn, &record(5, "mail"), &opts)
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
    let running = start_pool(pool);
    // The pool looked for work and found none it may run yet.
    wait_until("the pool to wait", Duration::from_secs(20), async || {
        waiting_on(&client, "effects").await == 1
    })
    .await;
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
    running.stop().await;
    assert_eq!(
        saw_row.load(Ordering::SeqCst),
        2,
        "the job saw the request's row"
    );
}

#[tokio::test]
async fn enqueue_with_uses_the_given_options_instead_of_the_types() {
    let (_db, client) = setup("t_enqueue_with_options", EFFECTS).await;
    let options = EnqueueOptions::default()
        .queue("elsewhere")
        .priority(-5)
        .concurrency_key("account:7")
        .idempotency_key("once");
    let first = client
        .enqueue_with(&record(1, "a"), &options)
        .await
        .unwrap();
    let again = client
        .enqueue_with(&record(2, "b"), &options)
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
