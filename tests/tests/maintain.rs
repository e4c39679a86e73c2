//! maintain(): rescuing the jobs of workers that vanished, once each, however
//! many calls run at the same time.

use commitq_tests::{connect, no_backoff, TestDb};

#[tokio::test]
async fn maintain_rescues_a_job_whose_worker_vanished() {
    let db = TestDb::new("t_maintain_rescue").await;
    let c = db.connect().await;
    no_backoff(&c).await;
    let id: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'k')", &[])
        .await
        .unwrap()
        .get(0);

    // A worker claims with a one-minute lease, then its connection goes away.
    let old_token: i64 = {
        let doomed = db.connect().await;
        doomed
            .query_one(
                "SELECT lease_token FROM commitq.claim('q', 'doomed', 1, '1 minute')",
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

    // The minute passes (moved in time rather than waited for).
    c.execute(
        "UPDATE commitq.jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
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
    let db = TestDb::new("t_maintain_concurrent").await;
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
