//! Rate limits (sql/flow_control.sql): a sliding window, checked on the
//! jobs' own claimed_at, which is the start time the window counts. Ten
//! claimers on their own connections against a limit of 50 a second; the
//! window's exact shape (no refill before a start is `per` old); limits on
//! keys; and the paths that hand out jobs besides claim.

use std::time::Duration;

use commitq_tests::{scalar, wait_until, TestDb};
use tokio_postgres::Client;

/// Claimed_at of every job of `queue` that was claimed, in order, as
/// microseconds since the epoch.
async fn starts(c: &Client, queue: &str) -> Vec<i64> {
    c.query(
        "SELECT (extract(epoch FROM claimed_at) * 1000000)::bigint FROM commitq.jobs
          WHERE queue = $1 AND claimed_at IS NOT NULL ORDER BY claimed_at",
        &[&queue],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The most starts in any window [t, t + per) of the sorted `starts`.
fn busiest_window(starts: &[i64], per_us: i64) -> usize {
    let mut most = 0;
    let mut j = 0;
    for i in 0..starts.len() {
        if j < i {
            j = i;
        }
        while j < starts.len() && starts[j] < starts[i] + per_us {
            j += 1;
        }
        most = most.max(j - i);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_claimers_never_start_more_than_the_limit_in_any_window() {
    let db = TestDb::new("t_rate_ten_claimers").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_rate_limit('queue:rl', 50, '1 second');
         SELECT count(*) FROM commitq.enqueue_many('rl', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 2000) i));",
    )
    .await
    .unwrap();
    // Connected first, then all claim until one deadline: the run is 5 s of
    // claiming, in which the window allows 5 x 50 starts.
    let run = Duration::from_secs(5);
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(db.connect().await);
    }
    let deadline = std::time::Instant::now() + run;
    let mut tasks = Vec::new();
    for (w, c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while std::time::Instant::now() < deadline {
                // Batches of 1 to 10: claims of every size meet at the edge.
                let size = 1 + (n + w) % 10;
                let sql = format!("SELECT job_id FROM commitq.claim('rl', 'w{w}', {size})");
                c.query(&sql, &[]).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let s = starts(&c, "rl").await;
    let most = busiest_window(&s, 1_000_000);
    assert!(most <= 50, "{most} jobs started within one second");
    // What the limit allows over the run: 50 in each of its 5 seconds.
    let allowed = 250;
    assert!(
        s.len() * 10 >= allowed * 9,
        "{} jobs started of the {allowed} the limit allowed",
        s.len()
    );
    // Jobs held back spent no attempt; those handed out, one each.
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.jobs WHERE state = 'available' AND attempt <> 0"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.jobs WHERE state = 'running' AND attempt <> 1"
        )
        .await,
        0
    );
}

/// A sliding window, not a token bucket: a start counts for exactly `per`
/// after it, so nothing trickles back before that, and the window frees the
/// room of each claim separately, when that claim's starts are `per` old.
#[tokio::test]
async fn the_window_frees_each_start_exactly_per_after_it() {
    let db = TestDb::new("t_rate_sliding").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_rate_limit('queue:sw', 3, '2 seconds');
         SELECT count(*) FROM commitq.enqueue_many('sw', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 20) i));",
    )
    .await
    .unwrap();
    let claim = |n: i32| format!("SELECT count(*) FROM commitq.claim('sw', 'w', {n})");
    assert_eq!(scalar(&c, &claim(2)).await, 2);
    assert_eq!(scalar(&c, &claim(10)).await, 1, "the window holds 3");
    assert_eq!(scalar(&c, &claim(10)).await, 0);
    // A token bucket of 3 per 2 s would have refilled 1.5 by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        scalar(&c, &claim(10)).await,
        0,
        "nothing comes back before per"
    );
    // The first claim's two starts leave the window first, the third later.
    let mut got = 0;
    wait_until(
        "the first starts leave the window",
        Duration::from_secs(10),
        async || {
            got = scalar(&c, &claim(10)).await;
            got > 0
        },
    )
    .await;
    assert!(got <= 3);
    let s = starts(&c, "sw").await;
    assert!(busiest_window(&s, 2_000_000) <= 3, "{s:?}");
    // Every start after the first three is at least 2 s after one of them.
    assert!(s[3] - s[0] >= 2_000_000, "{s:?}");
    // Jobs over the limit are still waiting, with no attempt spent.
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.jobs WHERE state = 'available' AND attempt = 0"
        )
        .await,
        20 - s.len() as i64
    );
}

/// A pattern on keys gives each key its own window; jobs of a full key stay
/// waiting while other keys' jobs are handed out, through claim and through
/// complete_and_take (which leaves the next job of a key to a claim).
#[tokio::test]
async fn each_key_of_a_pattern_has_its_own_window() {
    let db = TestDb::new("t_rate_keys").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_concurrency_limit('tenant:*', 100);
         SELECT commitq.set_rate_limit('tenant:*', 2, '1 hour');
         SELECT count(*) FROM commitq.enqueue_many('kq', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 12) i),
             concurrency_keys => (SELECT array_agg(CASE WHEN i <= 8 THEN 'tenant:a' ELSE 'tenant:b' END)
                                    FROM generate_series(1, 12) i));
         SELECT count(*) FROM commitq.enqueue('kq', 'k', '{}');",
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT concurrency_key FROM commitq.claim('kq', 'w', 10) ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let keys: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        keys,
        [
            Some("tenant:a".to_string()),
            Some("tenant:a".into()),
            Some("tenant:b".into()),
            Some("tenant:b".into()),
            None
        ]
    );
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.claim('kq', 'w', 10)").await,
        0
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.jobs WHERE state = 'available' AND attempt > 0"
        )
        .await,
        0,
        "jobs over the limit spent no attempt"
    );
    // Without the limit the rest is handed out.
    c.batch_execute("SELECT commitq.set_rate_limit('tenant:*', NULL)")
        .await
        .unwrap();
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.claim('kq', 'w', 100)").await,
        8
    );
}

/// complete_and_take hands the next job of a key straight to the worker;
/// under a rate limit it leaves it to a claim, which counts it.
#[tokio::test]
async fn complete_and_take_leaves_a_limited_key_to_the_claim() {
    let db = TestDb::new("t_rate_take").await;
    let c = db.connect().await;
    // Two jobs of one key (one at a time): the second is parked behind the first.
    c.batch_execute(
        "SELECT commitq.enqueue('tq', 'k', '{}', concurrency_key => 'solo:x');
         SELECT commitq.enqueue('tq', 'k', '{}', concurrency_key => 'solo:x');
         SELECT count(*) FROM commitq.claim('tq', 'w', 10);
         SELECT commitq.set_rate_limit('solo:*', 1, '1 hour');",
    )
    .await
    .unwrap();
    // The first job started before the limit was set; the window counts
    // what claims start from now on: room for one.
    let taken: i64 = scalar(
        &c,
        "SELECT count(t.next) FROM (SELECT array_agg(id) AS ids, array_agg(lease_token) AS tokens
                                     FROM commitq.jobs WHERE state = 'running') r,
                commitq.complete_and_take(r.ids, r.tokens, 'w', '1 minute') t",
    )
    .await;
    assert_eq!(taken, 0, "the take path handed out a limited key's job");
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.claim('tq', 'w', 10)").await,
        1
    );
    c.batch_execute(
        "SELECT commitq.enqueue('tq', 'k', '{}', concurrency_key => 'solo:x');
         SELECT commitq.complete(id, lease_token) FROM commitq.jobs WHERE state = 'running';",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.claim('tq', 'w', 10)").await,
        0,
        "one start per hour"
    );
}

/// The monitoring view shows each rule and how full its window is.
#[tokio::test]
async fn flow_control_view_shows_limits_and_their_windows() {
    let db = TestDb::new("t_rate_view").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_rate_limit('queue:v', 5, '1 hour');
         SELECT commitq.set_fairness('f', 'tenant:');
         SELECT count(*) FROM commitq.enqueue_many('v', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 9) i));
         SELECT count(*) FROM commitq.claim('v', 'w', 3);",
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT rule, target, max_jobs, started_in_window, key_prefix
               FROM commitq.flow_control ORDER BY rule",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), "fairness");
    assert_eq!(rows[0].get::<_, String>(1), "queue:f");
    assert_eq!(
        rows[0].get::<_, Option<String>>(4).as_deref(),
        Some("tenant:")
    );
    assert_eq!(rows[1].get::<_, String>(1), "queue:v");
    assert_eq!(rows[1].get::<_, Option<i32>>(2), Some(5));
    assert_eq!(rows[1].get::<_, Option<i64>>(3), Some(3));
}

/// The waiting claim sleeps until a commit makes a job available; no commit
/// marks a full window's room coming back, so the claim tells it when, and
/// it claims again then instead of sleeping out its whole wait.
#[tokio::test]
async fn claim_wait_claims_again_when_the_window_has_room() {
    let db = TestDb::new("t_rate_claim_wait").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_rate_limit('queue:cw', 2, '1 second');
         SELECT count(*) FROM commitq.enqueue_many('cw', 'k',
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 4) i));",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.claim('cw', 'w', 2)").await,
        2
    );
    // Nothing is committed for the queue during the wait.
    let jobs: serde_json::Value = c
        .query_one(
            "CALL commitq.claim_wait('cw', 'w', 2, '1 minute', '20 seconds', NULL)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        jobs.as_array().map(Vec::len),
        Some(2),
        "the waiting claim got {jobs}"
    );
    let s = starts(&c, "cw").await;
    assert!(busiest_window(&s, 1_000_000) <= 2, "{s:?}");
}
