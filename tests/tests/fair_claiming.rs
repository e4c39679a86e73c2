//! Fair claiming (sql/flow_control.sql, sql/flow_claim.sql): in a fair queue
//! a claim takes jobs round-robin across the concurrency keys of a prefix,
//! so one key's backlog delays another key's job by at most one claim.

use std::collections::HashSet;

use commitq_tests::{scalar, TestDb};

/// The case: tenant A has 100,000 jobs waiting, then tenant B
/// enqueues one; B's job is in the very next claim.
#[tokio::test]
async fn one_tenants_backlog_delays_another_by_at_most_one_claim() {
    let db = TestDb::new("t_fair_backlog").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_concurrency_limit('tenant:*', 100000);
         SELECT commitq.set_fairness('reports', 'tenant:');
         SELECT count(*) FROM commitq.enqueue_many('reports', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 100000) i),
             concurrency_keys => array_fill('tenant:a'::text, ARRAY[100000]));",
    )
    .await
    .unwrap();
    let claim = "SELECT job_id, concurrency_key FROM commitq.claim('reports', 'w', 10)";
    let first = c.query(claim, &[]).await.unwrap();
    assert_eq!(first.len(), 10);
    let b: i64 = c
        .query_one(
            "SELECT job_id FROM commitq.enqueue('reports', 'k', '{}', concurrency_key => 'tenant:b')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let next = c.query(claim, &[]).await.unwrap();
    let ids: Vec<i64> = next.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.len(), 10, "the claim is still full");
    assert!(
        ids.contains(&b),
        "B's job {b} was not in the next claim: {ids:?}"
    );
}

/// With more keys than a claim takes, the claims of a worker rotate through
/// the keys: 30 tenants with backlogs of 100 (enqueued one tenant after the
/// other), claims of 10, and every tenant has a job started within three
/// claims; jobs without a key of the prefix fill
/// what is left of a claim.
#[tokio::test]
async fn claims_rotate_through_more_keys_than_they_take() {
    let db = TestDb::new("t_fair_rotate").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_concurrency_limit('tenant:*', 100000);
         SELECT commitq.set_fairness('reports', 'tenant:');
         SELECT count(*) FROM commitq.enqueue_many('reports', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(0, 2999) i),
             concurrency_keys => (SELECT array_agg('tenant:' || lpad((i / 100)::text, 2, '0'))
                                    FROM generate_series(0, 2999) i));",
    )
    .await
    .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let rows = c
            .query(
                "SELECT concurrency_key FROM commitq.claim('reports', 'w', 10)",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 10);
        for r in rows {
            seen.insert(r.get::<_, String>(0));
        }
    }
    assert_eq!(seen.len(), 30, "tenants served in three claims: {seen:?}");

    // A claim larger than the keys' backlogs is filled in claim order.
    c.batch_execute(
        "DELETE FROM commitq.jobs WHERE state = 'available';
         SELECT commitq.enqueue('reports', 'k', '{}', concurrency_key => 'tenant:x');
         SELECT commitq.enqueue('reports', 'k', '{}');
         SELECT commitq.enqueue('reports', 'k', '{}', concurrency_key => 'other:1');",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.claim('reports', 'w', 10)").await,
        3
    );
}

/// Concurrency keys keep their limits in a fair queue: a key at its limit
/// runs no more jobs, and its next job is parked as in any queue.
#[tokio::test]
async fn fair_claims_keep_concurrency_limits() {
    let db = TestDb::new("t_fair_slots").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_fairness('q', 'acct:');
         SELECT count(*) FROM commitq.enqueue_many('q', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 6) i),
             concurrency_keys => ARRAY['acct:1', 'acct:1', 'acct:1', 'acct:2', 'acct:2', 'acct:3']);",
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT concurrency_key FROM commitq.claim('q', 'w', 10) ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, ["acct:1", "acct:2", "acct:3"]);
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.jobs WHERE state = 'blocked'"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(&c, "SELECT sum(running) FROM commitq.concurrency_keys").await,
        3
    );
}
