//! Claiming: many claimers drain a queue with each job handed out once, and
//! jobs come out in the documented order.

use std::collections::HashMap;

use commitq_tests::{connect, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_drain_ten_thousand_jobs_each_completed_once() {
    let db = TestDb::new("t_claim_drain").await;
    let setup = db.connect().await;
    // Keep completed jobs, to check each one's bookkeeping afterwards.
    setup
        .batch_execute("UPDATE commitq.config SET keep_completed = true")
        .await
        .unwrap();
    setup
        .execute(
            "SELECT count(*) FROM commitq.enqueue_many('drain', 'noop',
                 (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 10000) i))",
            &[],
        )
        .await
        .unwrap();

    let mut workers = Vec::new();
    for w in 0..8 {
        let url = db.url.clone();
        workers.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let mut seen = Vec::new();
            loop {
                let rows = c
                    .query(
                        "SELECT job_id, lease_token FROM commitq.claim('drain', $1, 25, '1 minute')",
                        &[&format!("w{w}")],
                    )
                    .await
                    .unwrap();
                if rows.is_empty() {
                    break;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
                let done = c
                    .query("SELECT completed FROM commitq.complete_many($1, $2)", &[&ids, &tokens])
                    .await
                    .unwrap();
                assert!(done.iter().all(|r| r.get::<_, bool>(0)), "a fresh lease was refused");
                seen.extend(ids);
            }
            seen
        }));
    }
    let mut counts: HashMap<i64, u32> = HashMap::new();
    for w in workers {
        for id in w.await.unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 10_000, "every job claimed");
    assert!(counts.values().all(|&n| n == 1), "no job claimed twice");
    let row = setup
        .query_one(
            "SELECT (SELECT count(*) FROM commitq.jobs),
                    (SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed' AND attempt = 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "nothing left in the queue");
    assert_eq!(
        row.get::<_, i64>(1),
        10_000,
        "each completed on its first attempt"
    );
}

/// Jobs without a key are claimed by priority (lower first), then run_at,
/// then id (the order they were enqueued in); a job not yet due is not
/// claimed, whatever its priority. One at a time, and as a batch: a claim
/// of three takes the first three.
#[tokio::test]
async fn jobs_are_claimed_by_priority_then_run_at_then_id() {
    let db = TestDb::new("t_claim_priority").await;
    let c = db.connect().await;
    // (name, priority, run_at), enqueued in this order.
    let jobs = [
        ("a", 0, "2020-01-01 00:00:03+00"),
        ("b", 5, "2020-01-01 00:00:00+00"),
        ("c", -3, "2020-01-01 00:00:05+00"),
        ("d", 0, "2020-01-01 00:00:01+00"),
        ("e", 32767, "2020-01-01 00:00:00+00"),
        ("f", -32768, "2020-01-01 00:00:09+00"),
        ("g", 0, "2020-01-01 00:00:01+00"),
        ("later", -32768, "9999-01-01 00:00:00+00"),
    ];
    let expected = ["f", "c", "d", "g", "a", "b", "e"];
    for queue in ["one_by_one", "batch"] {
        for (name, priority, run_at) in jobs {
            c.execute(
                "SELECT commitq.enqueue($1, 'k', jsonb_build_object('name', $2::text),
                                        priority => $3, run_at => $4::text::timestamptz)",
                &[&queue, &name, &priority, &run_at],
            )
            .await
            .unwrap();
        }
    }
    let claim = "SELECT args->>'name' FROM commitq.claim($1, 'w', $2)";
    let mut order = Vec::new();
    loop {
        let rows = c.query(claim, &[&"one_by_one", &1i32]).await.unwrap();
        match rows.first() {
            Some(row) => order.push(row.get::<_, String>(0)),
            None => break,
        }
    }
    assert_eq!(order, expected, "claimed one at a time");
    let mut batch: Vec<String> = c
        .query(claim, &[&"batch", &3i32])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    batch.sort();
    assert_eq!(batch, ["c", "d", "f"], "a claim of three");
}
