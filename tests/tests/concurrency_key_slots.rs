//! Concurrency keys in SQL, slot by slot: a key's slot is taken by the
//! claim, passed on by complete, complete_and_take, fail, snooze, cancel and
//! maintain's rescue, handed to the key's next job in claim order, and
//! counted under the limit that applies now. Each step is checked in the
//! key's row (`running`) and in the jobs' states.

use std::collections::HashMap;
use std::time::Duration;

use commitq_tests::{scalar, scalar_with, sqlstate, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_worker_holds_its_key_until_its_lease_is_rescued() {
    let db = TestDb::new("t_slots_rescue").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.enqueue('accounts', 'touch', '{}', concurrency_key => 'account:0');
         SELECT commitq.enqueue('accounts', 'touch', '{}', concurrency_key => 'account:0');",
    )
    .await
    .unwrap();
    // A worker claims the first job with a short lease and disappears.
    let rows = c
        .query(
            "SELECT job_id FROM commitq.claim('accounts', 'gone', 5, '1 second')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "only one job of the key can be claimed");
    let state: String = c
        .query_one(
            "SELECT state::text FROM commitq.jobs WHERE id <> $1",
            &[&rows[0].get::<_, i64>(0)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "blocked");
    let again = c
        .query(
            "SELECT job_id FROM commitq.claim('accounts', 'other', 5)",
            &[],
        )
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "the key is still held by the vanished worker"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rescued: i64 = c
        .query_one("SELECT rescued FROM commitq.maintain()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rescued, 1);
    let next = c
        .query(
            "SELECT job_id FROM commitq.claim('accounts', 'other', 5)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        next.len(),
        1,
        "the rescue gave the key's slot to the next job"
    );
}

/// A slot given back is handed to the next blocked job of the key, which
/// keeps it until it is claimed: a job of the key that comes earlier in claim
/// order (a higher priority) cannot take it first. Cancelling the job that
/// holds the handed-over slot passes the slot on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_slot_keeps_its_turn_and_passes_on_when_cancelled() {
    let db = TestDb::new("t_slots_handover").await;
    let c = db.connect().await;
    let enqueue = "SELECT job_id FROM commitq.enqueue('accounts', 'touch', '{}',
                                                     priority => $1, concurrency_key => 'account:1')";
    let claim = "SELECT job_id, lease_token FROM commitq.claim('accounts', $1, 5)";
    let state = "SELECT state::text || CASE WHEN slot_held THEN ' holding' ELSE '' END
                   FROM commitq.jobs WHERE id = $1";
    let running = "SELECT running::bigint FROM commitq.concurrency_keys WHERE key = 'account:1'";
    let first: i64 = c.query_one(enqueue, &[&0i32]).await.unwrap().get(0);
    let second: i64 = c.query_one(enqueue, &[&0i32]).await.unwrap().get(0);

    let rows = c.query(claim, &[&"w1"]).await.unwrap();
    assert_eq!(rows.len(), 1, "one job of the key runs");
    assert_eq!(rows[0].get::<_, i64>(0), first);
    let token: i64 = rows[0].get(1);
    c.execute("SELECT commitq.complete($1, $2)", &[&first, &token])
        .await
        .unwrap();
    let s: String = c.query_one(state, &[&second]).await.unwrap().get(0);
    assert_eq!(s, "available holding", "the completion handed its slot on");
    assert_eq!(
        scalar(&c, running).await,
        1,
        "the handed-over slot is counted"
    );

    // A job of the key that comes first in claim order arrives now.
    let urgent: i64 = c.query_one(enqueue, &[&-5i32]).await.unwrap().get(0);
    let rows = c.query(claim, &[&"w2"]).await.unwrap();
    let claimed: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        claimed,
        vec![second],
        "the job handed the slot keeps its turn"
    );
    let s: String = c.query_one(state, &[&urgent]).await.unwrap().get(0);
    assert_eq!(s, "blocked");

    let token: i64 = rows[0].get(1);
    c.execute("SELECT commitq.complete($1, $2)", &[&second, &token])
        .await
        .unwrap();
    let s: String = c.query_one(state, &[&urgent]).await.unwrap().get(0);
    assert_eq!(s, "available holding");
    c.execute("SELECT commitq.cancel($1)", &[&urgent])
        .await
        .unwrap();
    assert_eq!(
        scalar(&c, running).await,
        0,
        "cancelling it gave the slot back"
    );
    let last: i64 = c.query_one(enqueue, &[&0i32]).await.unwrap().get(0);
    let rows = c.query(claim, &[&"w3"]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), last, "the key is free again");
}

/// complete_and_take passes a key's slot from a completed job straight to
/// the key's next job: claimed for the completing worker when it is in the
/// same queue, handed over (available, holding the slot) when it is not;
/// a completion refused for its lease takes nothing; with a limit of 2 each
/// completed job gets its own successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_and_take_passes_the_slot_to_the_next_job_of_the_key() {
    let db = TestDb::new("t_slots_take").await;
    let c = db.connect().await;
    let enqueue = "SELECT job_id FROM commitq.enqueue($1, 'touch', '{}', concurrency_key => $2)";
    let claim = "SELECT job_id, lease_token FROM commitq.claim($1, $2, 10)";
    let take = "SELECT job_id, completed, (next).job_id, (next).attempt, (next).lease_token,
                       (next).queue
                  FROM commitq.complete_and_take($1, $2, 'w1', '30 seconds')";
    let state = "SELECT state::text || CASE WHEN slot_held THEN ' holding' ELSE '' END
                        || coalesce(' ' || worker, '')
                   FROM commitq.jobs WHERE id = $1";
    let running = "SELECT running::bigint FROM commitq.concurrency_keys WHERE key = $1";
    let id = |q: &'static str, key: Option<&'static str>| {
        let c = &c;
        async move {
            c.query_one(enqueue, &[&q, &key])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let a = id("accounts", Some("account:1")).await;
    let b = id("accounts", Some("account:1")).await;
    let other = id("other", Some("account:1")).await;
    let plain = id("accounts", None).await;

    // w1 runs a and the job without a key; b waits for account:1.
    let rows = c.query(claim, &[&"accounts", &"w1"]).await.unwrap();
    let claimed: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.contains_key(&a) && claimed.contains_key(&plain));
    let s: String = c.query_one(state, &[&b]).await.unwrap().get(0);
    assert_eq!(s, "blocked");

    let ids = vec![plain, a];
    let tokens = vec![claimed[&plain], claimed[&a]];
    let rows = c.query(take, &[&ids, &tokens]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, i64>(0), plain);
    assert!(rows[0].get::<_, bool>(1));
    assert_eq!(
        rows[0].get::<_, Option<i64>>(2),
        None,
        "no key, nothing taken"
    );
    assert_eq!(rows[1].get::<_, i64>(0), a);
    assert!(rows[1].get::<_, bool>(1));
    assert_eq!(
        rows[1].get::<_, Option<i64>>(2),
        Some(b),
        "a's slot went to b"
    );
    assert_eq!(
        rows[1].get::<_, Option<i32>>(3),
        Some(1),
        "b's first attempt"
    );
    let b_token: i64 = rows[1].get::<_, Option<i64>>(4).unwrap();
    assert_eq!(
        rows[1].get::<_, Option<String>>(5).as_deref(),
        Some("accounts")
    );
    let s: String = c.query_one(state, &[&b]).await.unwrap().get(0);
    assert_eq!(s, "running w1");
    let live: bool = c
        .query_one(
            "SELECT lease_expires_at > now() + interval '20 seconds' FROM commitq.jobs WHERE id = $1",
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    assert!(live, "b runs under the lease asked for");
    assert_eq!(
        c.query_one(running, &[&"account:1"])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1,
        "one slot, passed on"
    );
    // b's lease is an ordinary one: heartbeats and fencing know it.
    c.execute("SELECT commitq.assert_lease($1, $2)", &[&b, &b_token])
        .await
        .unwrap();

    // The key's next job is in another queue: w1 does not serve it, so it is
    // handed the slot and waits there for a claimer of its queue.
    let rows = c.query(claim, &[&"other", &"w2"]).await.unwrap();
    assert!(rows.is_empty(), "the key is busy");
    let rows = c
        .query(take, &[&vec![b, b], &vec![b_token + 1, b_token]])
        .await
        .unwrap();
    let outcome: Vec<(i64, bool, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        outcome,
        vec![(b, true, None), (b, true, None)],
        "a job listed twice completes once"
    );
    let s: String = c.query_one(state, &[&other]).await.unwrap().get(0);
    assert_eq!(s, "available holding");
    let rows = c.query(claim, &[&"other", &"w2"]).await.unwrap();
    assert_eq!(rows.len(), 1);
    let (o, o_token): (i64, i64) = (rows[0].get(0), rows[0].get(1));
    assert_eq!(o, other);

    // A refused completion (stale token) takes nothing and changes nothing.
    let blocked = id("other", Some("account:1")).await;
    let rows = c.query(claim, &[&"other", &"w3"]).await.unwrap();
    assert!(rows.is_empty(), "the key is busy");
    let rows = c
        .query(take, &[&vec![o], &vec![o_token + 7]])
        .await
        .unwrap();
    assert!(!rows[0].get::<_, bool>(1));
    assert_eq!(rows[0].get::<_, Option<i64>>(2), None);
    let s: String = c.query_one(state, &[&blocked]).await.unwrap().get(0);
    assert_eq!(s, "blocked", "the slot was not given up");
    let s: String = c.query_one(state, &[&o]).await.unwrap().get(0);
    assert_eq!(s, "running w2");

    // Limit 2: two jobs complete, and each gets one successor, in order.
    c.execute("SELECT commitq.set_concurrency_limit('pair:*', 2)", &[])
        .await
        .unwrap();
    let mut pair = Vec::new();
    for _ in 0..5 {
        pair.push(id("pairs", Some("pair:1")).await);
    }
    let rows = c.query(claim, &[&"pairs", &"w1"]).await.unwrap();
    let firsts: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(firsts.iter().map(|f| f.0).collect::<Vec<_>>(), pair[..2]);
    // Listed in reverse: the first listed gets the first in claim order.
    let rows = c
        .query(
            take,
            &[
                &vec![firsts[1].0, firsts[0].0],
                &vec![firsts[1].1, firsts[0].1],
            ],
        )
        .await
        .unwrap();
    let next: Vec<Option<i64>> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(next, vec![Some(pair[2]), Some(pair[3])]);
    assert_eq!(
        c.query_one(running, &[&"pair:1"])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    let s: String = c.query_one(state, &[&pair[4]]).await.unwrap().get(0);
    assert_eq!(s, "blocked", "the limit holds: the fifth still waits");

    // Bad worker names and leases are refused before anything is done.
    for (worker, lease) in [("", "30 seconds"), ("w1", "0 seconds"), ("w1", "8 days")] {
        let e = c
            .query(
                "SELECT * FROM commitq.complete_and_take($1, $2, $3, $4::text::interval)",
                &[&vec![pair[2]], &vec![0i64], &worker, &lease],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "CQ001", "{worker:?} {lease}: {e}");
    }
    let s: String = c.query_one(state, &[&pair[2]]).await.unwrap().get(0);
    assert_eq!(s, "running w1");
}

/// A claim writes the same bookkeeping on each of its three paths: a job
/// without a key (`claim`), a keyed job (`claim`, through `_claim_keyed`)
/// and a parked job taken by the completion of its key's running job
/// (`complete_and_take`). The three UPDATEs are written out separately (one
/// statement each, for speed): this test fails if one of them sets a column
/// the others do not, or sets one differently.
#[tokio::test]
async fn every_claim_path_writes_the_same_bookkeeping() {
    let db = TestDb::new("t_slots_claim_paths").await;
    let c = db.connect().await;
    c.batch_execute("CREATE TEMP TABLE snap (job bigint, phase text, row jsonb)")
        .await
        .unwrap();
    let snap = async |job: i64, phase: &str| {
        let sql = "INSERT INTO snap SELECT $1, $2, to_jsonb(j) FROM commitq.jobs j WHERE j.id = $1";
        assert_eq!(c.execute(sql, &[&job, &phase]).await.unwrap(), 1);
    };
    let enqueue = async |key: Option<&str>| -> i64 {
        let sql = "SELECT job_id FROM commitq.enqueue('q', 'k', '{}', concurrency_key => $1)";
        c.query_one(sql, &[&key]).await.unwrap().get(0)
    };
    let claim = "SELECT job_id, lease_token FROM commitq.claim('q', 'w1', 2, '40 seconds')";

    // No key.
    let plain = enqueue(None).await;
    snap(plain, "before").await;
    let rows = c.query(claim, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), plain);
    snap(plain, "after").await;

    // A key: the first job of it runs, the second is parked.
    let first = enqueue(Some("account:1")).await;
    let second = enqueue(Some("account:1")).await;
    snap(first, "before").await;
    let rows = c.query(claim, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), first);
    let token: i64 = rows[0].get(1);
    snap(first, "after").await;

    // The parked job, taken by the first one's completion.
    snap(second, "before").await;
    let take = "SELECT (next).job_id FROM commitq.complete_and_take($1, $2, 'w1', '40 seconds')";
    let next: Option<i64> = c
        .query_one(take, &[&vec![first], &vec![token]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, Some(second));
    snap(second, "after").await;

    // What each claim changed, and how.
    let changed = "SELECT array_agg(b.key ORDER BY b.key)
                     FROM snap s JOIN snap a ON a.job = s.job AND a.phase = 'after',
                          jsonb_each(s.row) b
                    WHERE s.job = $1 AND s.phase = 'before'
                      AND b.value IS DISTINCT FROM a.row -> b.key";
    let as_claimed = "SELECT a.row->>'state' = 'running'
                         AND (a.row->>'attempt')::int = (s.row->>'attempt')::int + 1
                         AND (a.row->>'lease_token')::bigint = (s.row->>'lease_token')::bigint + 1
                         AND (a.row->>'lease_interval')::interval = '40 seconds'
                         AND a.row->>'worker' = 'w1'
                         AND (a.row->>'lease_expires_at')::timestamptz
                             = (a.row->>'claimed_at')::timestamptz + interval '40 seconds'
                         AND NOT (a.row->>'slot_held')::boolean
                        FROM snap s JOIN snap a ON a.job = s.job AND a.phase = 'after'
                       WHERE s.job = $1 AND s.phase = 'before'";
    let expected = [
        "attempt",
        "claimed_at",
        "lease_expires_at",
        "lease_interval",
        "lease_token",
        "state",
        "worker",
    ];
    for (path, job) in [("plain", plain), ("keyed", first), ("taken", second)] {
        let keys: Vec<String> = c.query_one(changed, &[&job]).await.unwrap().get(0);
        assert_eq!(keys, expected, "{path} claim changed these columns");
        let ok: bool = c.query_one(as_claimed, &[&job]).await.unwrap().get(0);
        assert!(ok, "{path} claim wrote the bookkeeping of a claim");
    }
}

/// The state of a job as these tests read it: its state, " holding" when it
/// was handed its key's slot, and its worker while it runs.
const STATE: &str = "SELECT state::text || CASE WHEN slot_held THEN ' holding' ELSE '' END
                            || CASE WHEN state = 'running' THEN ' ' || worker ELSE '' END
                       FROM commitq.jobs WHERE id = $1";

/// How many jobs of the key hold a slot, by the key's row.
const RUNNING: &str = "SELECT running::bigint FROM commitq.concurrency_keys WHERE key = $1";

/// A key's slot comes back when its job fails (to be retried later) and when
/// it is snoozed, once each time: the key's next job is handed the slot, and
/// when no job of the key waits its count of running jobs is back at 0.
#[tokio::test]
async fn fail_and_snooze_give_the_keys_slot_back() {
    let db = TestDb::new("t_slots_fail_snooze").await;
    let c = db.connect().await;
    let enqueue = "SELECT job_id FROM commitq.enqueue('accounts', 'touch', '{}',
                                                     concurrency_key => 'account:1')";
    let claim = "SELECT job_id, lease_token FROM commitq.claim('accounts', 'w', 10)";
    let state = async |id: i64| -> String { c.query_one(STATE, &[&id]).await.unwrap().get(0) };
    let running = async || scalar_with(&c, RUNNING, &[&"account:1"]).await;
    let claim_one = async || -> (i64, i64) {
        let rows = c.query(claim, &[]).await.unwrap();
        assert_eq!(rows.len(), 1, "one job of the key at a time");
        (rows[0].get(0), rows[0].get(1))
    };
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(scalar(&c, enqueue).await);
    }
    let (a, b, d) = (jobs[0], jobs[1], jobs[2]);

    // a runs; b and d wait for the key.
    let (id, token) = claim_one().await;
    assert_eq!(id, a);
    assert_eq!(state(a).await, "running w");
    assert_eq!(
        (state(b).await, state(d).await),
        ("blocked".into(), "blocked".into())
    );

    // a fails and is retried in an hour: its slot goes to b, and only to b.
    let failed: String = c
        .query_one(
            "SELECT state::text FROM commitq.fail($1, $2, 'boom', retry_in => '1 hour')",
            &[&a, &token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, "scheduled");
    assert_eq!(state(b).await, "available holding");
    assert_eq!(state(d).await, "blocked");
    assert_eq!(running().await, 1, "a's slot, now b's");

    // b is snoozed for an hour: its slot goes to d.
    let (id, token) = claim_one().await;
    assert_eq!(id, b);
    c.execute("SELECT commitq.snooze($1, $2, '1 hour')", &[&b, &token])
        .await
        .unwrap();
    assert_eq!(state(b).await, "scheduled");
    assert_eq!(state(d).await, "available holding");
    assert_eq!(running().await, 1, "b's slot, now d's");

    // d fails for good; nothing of the key is due: the slot is free.
    let (id, token) = claim_one().await;
    assert_eq!(id, d);
    c.execute(
        "SELECT * FROM commitq.fail($1, $2, 'boom', discard => true)",
        &[&d, &token],
    )
    .await
    .unwrap();
    assert_eq!(running().await, 0, "every slot given back once");

    // When a and b come due they run one at a time again, and a snooze of
    // 0 makes b claimable at once without keeping its slot.
    c.execute(
        "UPDATE commitq.jobs SET run_at = now() WHERE id = ANY($1)",
        &[&vec![a, b]],
    )
    .await
    .unwrap();
    let (id, token) = claim_one().await;
    assert_eq!(id, a);
    assert_eq!(state(b).await, "blocked");
    c.execute("SELECT commitq.complete($1, $2)", &[&a, &token])
        .await
        .unwrap();
    let (id, token) = claim_one().await;
    assert_eq!(id, b);
    c.execute("SELECT commitq.snooze($1, $2, '0 seconds')", &[&b, &token])
        .await
        .unwrap();
    assert_eq!(running().await, 0);
    let (id, token) = claim_one().await;
    assert_eq!(id, b);
    c.execute("SELECT commitq.complete($1, $2)", &[&b, &token])
        .await
        .unwrap();
    assert_eq!(running().await, 0);
    assert_eq!(scalar(&c, "SELECT count(*) FROM commitq.jobs").await, 0);
}

/// Lowering a key's limit while its jobs run: the running ones keep their
/// slots (and leases) and finish, and the key's next job starts only once
/// fewer than the new limit run.
#[tokio::test]
async fn a_lowered_limit_lets_running_jobs_finish_and_holds_the_next_back() {
    let db = TestDb::new("t_slots_lowered_limit").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.set_concurrency_limit('account:*', 3);
         SELECT count(*) FROM commitq.enqueue_many('accounts', 'touch', array_fill('{}'::jsonb, ARRAY[6]),
                                                   concurrency_keys => array_fill('account:1'::text, ARRAY[6]));",
    )
    .await
    .unwrap();
    let claim = "SELECT job_id, lease_token FROM commitq.claim('accounts', 'w', 10)";
    let running = async || scalar_with(&c, RUNNING, &[&"account:1"]).await;
    let waiting = "SELECT count(*) FROM commitq.jobs WHERE state = 'blocked'";
    let rows = c.query(claim, &[]).await.unwrap();
    let first: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(first.len(), 3, "the limit of 3");
    assert_eq!(scalar(&c, waiting).await, 3);

    let changed: i32 = c
        .query_one("SELECT commitq.set_concurrency_limit('account:*', 1)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 1, "the key in use took the new limit");
    assert_eq!(running().await, 3, "the running jobs keep their slots");
    for (id, token) in &first {
        c.execute("SELECT * FROM commitq.heartbeat($1, $2)", &[id, token])
            .await
            .unwrap();
    }

    // Two finish: still one running, so nothing more may start.
    for (id, token) in &first[..2] {
        c.execute("SELECT commitq.complete($1, $2)", &[id, token])
            .await
            .unwrap();
        assert!(c.query(claim, &[]).await.unwrap().is_empty());
        assert_eq!(scalar(&c, waiting).await, 3, "no job handed a slot");
    }
    assert_eq!(running().await, 1);

    // The last of them finishes: one job, and only one, gets the slot.
    let (id, token) = first[2];
    c.execute("SELECT commitq.complete($1, $2)", &[&id, &token])
        .await
        .unwrap();
    assert_eq!(running().await, 1, "handed to the next job");
    let rows = c.query(claim, &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "the new limit of 1");
    assert!(c.query(claim, &[]).await.unwrap().is_empty());
    assert_eq!(scalar(&c, waiting).await, 2);
}
