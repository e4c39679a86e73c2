//! The claim floor (sql/claim.sql): while a transaction held open keeps
//! vacuum from removing the claim-index entries of claimed jobs, a session's
//! claims start where its previous claim started instead of crossing all of
//! them; a job that becomes available below the floor (a higher priority,
//! an older run_at) is still claimed first by the next claim from the start,
//! at most a second later; and claims that cross few dead entries set no
//! floor, so the order stays exact.

use commitq_tests::{scalar, TestDb};
use tokio_postgres::Client;

/// Claim-index entries the claims of `sql` crossed (read by this
/// transaction's statistics), and the jobs they claimed.
async fn crossed(c: &Client, sql: &str) -> (i64, i64) {
    c.batch_execute("BEGIN").await.unwrap();
    let before = scalar(
        c,
        "SELECT pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass)",
    )
    .await;
    let claimed = scalar(c, sql).await;
    let after = scalar(
        c,
        "SELECT pg_stat_get_xact_tuples_returned('commitq.jobs_claim_idx'::regclass)",
    )
    .await;
    c.batch_execute("COMMIT").await.unwrap();
    (after - before, claimed)
}

/// Claim and complete `rounds` batches of 100 of queue q, a transaction each.
async fn drain(c: &Client, rounds: i32) {
    for _ in 0..rounds {
        let rows = c
            .query(
                "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 100, '1 minute')",
                &[],
            )
            .await
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        c.execute("SELECT commitq.complete_many($1, $2)", &[&ids, &tokens])
            .await
            .unwrap();
    }
}

async fn floor(c: &Client) -> String {
    c.query_one(
        "SELECT coalesce(current_setting('commitq.claim_floor', true), '')",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A transaction with a transaction id, held open: vacuum may remove no row
/// version deleted after it began.
async fn hold_vacuum(db: &TestDb) -> Client {
    let holder = db.connect().await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pg_current_xact_id();")
        .await
        .unwrap();
    holder
}

#[tokio::test]
async fn with_vacuum_held_back_a_claim_starts_at_the_floor_and_crosses_few_entries() {
    let db = TestDb::new("t_claim_floor_crosses_few").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT count(*) FROM commitq.enqueue_many('q', 'k', array_fill('{}'::jsonb, ARRAY[30000]))",
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM ANALYZE commitq.jobs")
        .await
        .unwrap();
    let _holder = hold_vacuum(&db).await;
    drain(&c, 150).await;
    assert!(!floor(&c).await.is_empty(), "a floor is set");
    // From the start of the queue a claim crosses the 15,000 claimed jobs'
    // entries; from the floor, the last claim's 100 and its own 100. A floor
    // lasts a second, and a claim after it has expired crosses them all once
    // and sets a new one: of three claims in a row one is from a floor unless
    // the machine stalls for a second before each of them.
    let mut least = i64::MAX;
    for _ in 0..3 {
        let (entries, claimed) = crossed(
            &c,
            "SELECT count(*) FROM commitq.claim('q', 'w', 100, '1 minute')",
        )
        .await;
        assert_eq!(claimed, 100);
        least = least.min(entries);
    }
    assert!(least < 1000, "crossed at least {least} claim-index entries");
}

#[tokio::test]
async fn claims_that_cross_few_dead_entries_set_no_floor_and_keep_the_order_exact() {
    let db = TestDb::new("t_claim_floor_none").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT count(*) FROM commitq.enqueue_many('q', 'k', array_fill('{}'::jsonb, ARRAY[20000]));",
    )
    .await
    .unwrap();
    drain(&c, 50).await;
    assert_eq!(floor(&c).await, "", "no floor");
    let first = scalar(
        &c,
        "SELECT job_id FROM commitq.enqueue('q', 'urgent', priority => -1)",
    )
    .await;
    let got = scalar(
        &c,
        "SELECT job_id FROM commitq.claim('q', 'w', 1, '1 minute')",
    )
    .await;
    assert_eq!(got, first, "the higher priority job comes first");
}

/// Jobs that become available below a floor: a higher priority one and one
/// with an older run_at. The floor is written as a claim would write it.
#[tokio::test]
async fn jobs_below_the_floor_are_claimed_first_once_the_floor_expires_or_runs_short() {
    let db = TestDb::new("t_claim_floor_below").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT count(*) FROM commitq.enqueue_many('q', 'k', array_fill('{}'::jsonb, ARRAY[100]));",
    )
    .await
    .unwrap();
    let urgent = scalar(
        &c,
        "SELECT job_id FROM commitq.enqueue('q', 'urgent', priority => -1)",
    )
    .await;
    let late = scalar(
        &c,
        "SELECT job_id FROM commitq.enqueue('q', 'late', run_at => now() - interval '1 hour')",
    )
    .await;
    // A floor at the 51st job, valid for `secs` more seconds.
    let set_floor = |secs: f64| {
        format!(
            "SELECT set_config('commitq.claim_floor', format('%s|q|%s|%s|%s',
                    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + ({secs} * 1000000)::bigint,
                    priority, (extract(epoch FROM run_at) * 1000000)::bigint, id), false)
               FROM commitq.jobs WHERE kind = 'k' ORDER BY id OFFSET 50 LIMIT 1"
        )
    };
    // While the floor holds, claims start at it.
    c.batch_execute(&set_floor(0.95)).await.unwrap();
    let skipped = scalar(
        &c,
        "SELECT count(*) FROM commitq.claim('q', 'w', 10, '1 minute') WHERE kind <> 'k'",
    )
    .await;
    assert_eq!(skipped, 0, "the floor skips the jobs below it");
    // Once it has expired, the next claim starts from the queue's start.
    c.batch_execute(&set_floor(-0.001)).await.unwrap();
    let rows = c
        .query(
            "SELECT job_id FROM commitq.claim('q', 'w', 3, '1 minute')",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    // (A claim returns its jobs in no particular order.)
    assert!(
        ids.contains(&urgent) && ids.contains(&late),
        "the higher priority and the older run_at are claimed: {ids:?}"
    );

    // A floor pick that comes back short picks from the start in the same
    // call: a floor above every job, and one job below it.
    let again = scalar(
        &c,
        "SELECT job_id FROM commitq.enqueue('q', 'urgent', priority => -1)",
    )
    .await;
    c.batch_execute(&set_floor(0.9)).await.unwrap();
    c.batch_execute(
        "SELECT set_config('commitq.claim_floor',
                regexp_replace(current_setting('commitq.claim_floor'), '\\|q\\|-?[0-9]+\\|', '|q|32767|'), false)",
    )
    .await
    .unwrap();
    let got = scalar(
        &c,
        "SELECT job_id FROM commitq.claim('q', 'w', 1, '1 minute')",
    )
    .await;
    assert_eq!(got, again);
}

/// A forged floor would make the session skip jobs; one that does not
/// parse, or that claims to hold for more than a second, is ignored: the
/// claim returns the first job, not the one at the forged floor.
#[tokio::test]
async fn a_floor_that_does_not_parse_or_lies_ahead_is_ignored() {
    let db = TestDb::new("t_claim_floor_forged").await;
    let c = db.connect().await;
    let first = scalar(&c, "SELECT job_id FROM commitq.enqueue('q', 'k')").await;
    let at_floor = scalar(
        &c,
        "SELECT job_id FROM commitq.enqueue('q', 'k', priority => 5)",
    )
    .await;
    let ahead = "SELECT format('%s|q|5|0|0', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + 60000000)";
    let ahead: String = c.query_one(ahead, &[]).await.unwrap().get(0);
    for forged in ["garbage", "1|q|0|0|0|extra", ahead.as_str()] {
        c.execute(
            "SELECT set_config('commitq.claim_floor', $1, false)",
            &[&forged],
        )
        .await
        .unwrap();
        let got = scalar(
            &c,
            "SELECT job_id FROM commitq.claim('q', 'w', 1, '1 minute')",
        )
        .await;
        assert_eq!(
            got, first,
            "{forged}: not the job at the floor ({at_floor})"
        );
        c.batch_execute("UPDATE commitq.jobs SET state = 'available'")
            .await
            .unwrap();
    }
}
