//! Finishing a job: completing what is still held and claiming more in one
//! call.

use commitq_tests::TestDb;

/// complete_and_claim completes what it still holds under a live lease,
/// skips (with a warning) what it lost, and claims the next batch.
#[tokio::test]
async fn complete_and_claim_completes_live_leases_and_claims_more() {
    let db = TestDb::new("t_finish_complete_and_claim").await;
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
