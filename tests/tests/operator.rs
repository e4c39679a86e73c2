//! An operator's actions on one job (`commitq.cancel`, `commitq.retry`),
//! followed through the job's states.

use commitq_tests::TestDb;

#[tokio::test]
async fn cancel_and_retry_follow_the_job_through_its_states() {
    let db = TestDb::new("t_operator_cancel_retry").await;
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
