//! The monitoring interface (sql/monitoring.sql, sql/pause.sql): pausing a
//! queue on every claim path, the outcome counters behind the throughput
//! figures, and what each view shows. The race of a pause against a claim
//! in flight is an isolation spec (tests/isolation/specs/pause-queue.spec).

use commitq_tests::{no_backoff, scalar, sqlstate, TestDb};
use tokio_postgres::Client;

/// Claims up to `n` jobs of `queue` for `worker`: (id, lease token) pairs.
async fn claim(c: &Client, queue: &str, worker: &str, n: i32) -> Vec<(i64, i64)> {
    c.query(
        "SELECT job_id, lease_token FROM commitq.claim($1, $2, $3, '1 minute')",
        &[&queue, &worker, &n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// queue_stats' counts of one queue, in the view's column order from
/// `available` to `cancelled_last_hour` (latency left out).
async fn stats(c: &Client, queue: &str) -> (bool, Vec<i64>) {
    let row = c
        .query_opt(
            "SELECT paused, ARRAY[available, scheduled, running, blocked, completed_last_minute,
                    completed_last_hour, failed_last_hour, discarded_last_hour, cancelled_last_hour]
               FROM commitq.queue_stats WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("queue {queue} has no row in queue_stats"));
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_paused_queue_hands_out_nothing_until_resumed() {
    let db = TestDb::new("t_mon_pause").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{}') FROM generate_series(1, 3);
         SELECT commitq.enqueue('other', 'k', '{}');",
    )
    .await
    .unwrap();
    let running = claim(&c, "q", "w", 1).await;
    assert_eq!(running.len(), 1);

    let paused: bool = c
        .query_one("SELECT commitq.pause('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(paused);
    let again: bool = c
        .query_one("SELECT commitq.pause('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!again, "pausing a paused queue reports no change");

    // Nothing from the paused queue, by claim or complete_and_claim; other
    // queues go on; enqueues go on.
    assert!(claim(&c, "q", "w", 10).await.is_empty());
    let via_loop = scalar(
        &c,
        "SELECT count(*) FROM commitq.complete_and_claim('{}', '{}', 'q', 'w', 10)",
    )
    .await;
    assert_eq!(via_loop, 0);
    assert_eq!(claim(&c, "other", "w", 10).await.len(), 1);
    c.batch_execute("SELECT commitq.enqueue('q', 'k', '{}')")
        .await
        .unwrap();
    // The running job finishes while its queue is paused.
    let (id, token) = running[0];
    c.execute("SELECT commitq.complete($1, $2)", &[&id, &token])
        .await
        .unwrap();
    let (is_paused, counts) = stats(&c, "q").await;
    assert!(is_paused);
    assert_eq!(counts[0], 3, "available while paused: {counts:?}");

    let resumed: bool = c
        .query_one("SELECT commitq.resume('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(resumed);
    assert_eq!(claim(&c, "q", "w", 10).await.len(), 3);
    let not_paused: bool = c
        .query_one("SELECT commitq.resume('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!not_paused);

    for sql in ["SELECT commitq.pause(NULL)", "SELECT commitq.resume('')"] {
        let e = c.execute(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "CQ001", "{sql}: {e}");
    }
}

#[tokio::test]
async fn resume_wakes_the_workers_that_found_the_queue_paused() {
    let db = TestDb::new("t_mon_pause_wake").await;
    let c = db.connect().await;
    // The worker claims on the connection that listens, as the pool's does.
    let (worker, mut notes) = commitq_tests::connect_listening(&db.url_as("postgres")).await;
    worker.batch_execute("LISTEN \"commitq:q\"").await.unwrap();
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{}');
         SELECT commitq.pause('q');",
    )
    .await
    .unwrap();
    assert!(claim(&worker, "q", "w", 1).await.is_empty());
    c.batch_execute("SELECT commitq.enqueue('q', 'k', '{}')")
        .await
        .unwrap();
    c.batch_execute("SELECT commitq.resume('q')").await.unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), notes.recv())
        .await
        .expect("resume sends a NOTIFY to the waiting worker");
    assert!(note.is_some());
}

#[tokio::test]
async fn outcomes_are_counted_per_queue_and_minute() {
    let db = TestDb::new("t_mon_counters").await;
    let c = db.connect().await;
    no_backoff(&c).await;
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{}', max_attempts => 2) FROM generate_series(1, 6);
         SELECT commitq.enqueue('r', 'k', '{}') FROM generate_series(1, 2);",
    )
    .await
    .unwrap();
    // Three completed, one in a batch of two queues.
    let jobs = claim(&c, "q", "w", 3).await;
    let r = claim(&c, "r", "w", 1).await;
    c.execute(
        "SELECT * FROM commitq.complete_many($1, $2)",
        &[
            &vec![jobs[0].0, jobs[1].0, r[0].0],
            &vec![jobs[0].1, jobs[1].1, r[0].1],
        ],
    )
    .await
    .unwrap();
    c.execute("SELECT commitq.complete($1, $2)", &[&jobs[2].0, &jobs[2].1])
        .await
        .unwrap();
    // One failed attempt that is retried, then discarded on its last one;
    // one discarded at once; one cancelled. (A retried job is due at once
    // but after the others in claim order.)
    let (id, token) = claim(&c, "q", "w", 1).await[0];
    c.execute("SELECT * FROM commitq.fail($1, $2, 'boom')", &[&id, &token])
        .await
        .unwrap();
    let last: i64 = scalar(
        &c,
        "SELECT max(id) FROM commitq.jobs WHERE queue = 'q' AND state = 'available'",
    )
    .await;
    c.execute("SELECT commitq.cancel($1)", &[&last])
        .await
        .unwrap();
    let (id3, token3) = claim(&c, "q", "w", 1).await[0];
    c.execute(
        "SELECT * FROM commitq.fail($1, $2, 'bad input', discard => true)",
        &[&id3, &token3],
    )
    .await
    .unwrap();
    let (id2, token2) = claim(&c, "q", "w", 1).await[0];
    assert_eq!(id2, id);
    c.execute(
        "SELECT * FROM commitq.fail($1, $2, 'boom')",
        &[&id2, &token2],
    )
    .await
    .unwrap();

    let (paused, counts) = stats(&c, "q").await;
    assert!(!paused);
    // available, scheduled, running, blocked, completed last minute (none:
    // this minute is not over), completed, failed, discarded, cancelled
    assert_eq!(counts, vec![0, 0, 0, 0, 0, 3, 1, 2, 1], "queue q");
    let (_, counts) = stats(&c, "r").await;
    assert_eq!(counts, vec![1, 0, 0, 0, 0, 1, 0, 0, 0], "queue r");

    let minute: Vec<(String, i64, i64, i64, i64)> = c
        .query(
            "SELECT queue, completed, failed, discarded, cancelled FROM commitq.throughput
              WHERE minute = date_trunc('minute', now()) ORDER BY queue",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        minute,
        vec![("q".to_string(), 3, 1, 2, 1), ("r".to_string(), 1, 0, 0, 0)]
    );

    // The last complete minute, and maintain's pruning: rows are moved back
    // in time, as the clock would.
    c.batch_execute("UPDATE commitq.queue_counters SET minute = minute - interval '1 minute'")
        .await
        .unwrap();
    let (_, counts) = stats(&c, "q").await;
    assert_eq!(counts[4], 3, "completed in the last complete minute");
    c.batch_execute(
        "UPDATE commitq.queue_counters SET minute = minute - interval '61 minutes' WHERE queue = 'r'",
    )
    .await
    .unwrap();
    let (_, counts) = stats(&c, "r").await;
    assert_eq!(counts[5], 0, "older than an hour is out of the view");
    c.batch_execute(
        "UPDATE commitq.queue_counters SET minute = minute - interval '2 hours' WHERE queue = 'r';
         SELECT commitq.maintain();",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.queue_counters WHERE queue = 'r'"
        )
        .await,
        0,
        "maintain prunes counters past two hours"
    );
    assert!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.queue_counters WHERE queue = 'q'"
        )
        .await
            > 0
    );
}

#[tokio::test]
async fn the_views_show_states_latency_jobs_keys_and_leases() {
    let db = TestDb::new("t_mon_views").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{}', run_at => now() - interval '30 seconds');
         SELECT commitq.enqueue('q', 'k', '{}') FROM generate_series(1, 2);
         SELECT commitq.enqueue('q', 'k', '{}', run_at => now() + interval '1 hour');
         SELECT commitq.enqueue('q', 'mail', '{\"to\": 1}', concurrency_key => 'acct')
           FROM generate_series(1, 2);
         SELECT commitq.try_acquire_lease('cron', 'me', '1 minute');
         SELECT commitq.pause('idle');",
    )
    .await
    .unwrap();
    // Claim all five due jobs: one of key acct runs, the other is blocked.
    assert_eq!(claim(&c, "q", "w", 10).await.len(), 4);
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{}', run_at => now() - interval '20 seconds')",
    )
    .await
    .unwrap();
    let (paused, counts) = stats(&c, "q").await;
    assert!(!paused);
    assert_eq!(
        &counts[..4],
        &[1, 1, 4, 1],
        "available, scheduled, running, blocked"
    );
    let latency: f64 = c
        .query_one(
            "SELECT latency_seconds FROM commitq.queue_stats WHERE queue = 'q'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((19.0..60.0).contains(&latency), "latency {latency}");
    // A paused queue without jobs has a row.
    let (idle_paused, idle) = stats(&c, "idle").await;
    assert!(idle_paused && idle.iter().all(|n| *n == 0), "{idle:?}");

    let key: (i32, i32, i32, bool) = {
        let r = c
            .query_one(
                "SELECT running, blocked, max_running, at_limit FROM commitq.concurrency_key_stats WHERE key = 'acct'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(key, (1, 1, 1, true));
    let lease: (String, bool) = {
        let r = c
            .query_one(
                "SELECT owner, held FROM commitq.named_lease_holders WHERE name = 'cron'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(lease, ("me".to_string(), true));

    // job_list: live and finished jobs, filtered and paged by id.
    let finished: i64 = scalar(
        &c,
        "SELECT max(id) FROM commitq.jobs WHERE state = 'scheduled'",
    )
    .await;
    c.execute("SELECT commitq.cancel($1)", &[&finished])
        .await
        .unwrap();
    let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();
    let all = ids(c
        .query("SELECT id FROM commitq.job_list ORDER BY id DESC", &[])
        .await
        .unwrap());
    assert_eq!(all, (1..=7).rev().collect::<Vec<i64>>());
    let page2 = ids(c
        .query(
            "SELECT id FROM commitq.job_list WHERE id < $1 ORDER BY id DESC LIMIT 2",
            &[&5i64],
        )
        .await
        .unwrap());
    assert_eq!(page2, vec![4, 3]);
    let cancelled: (i64, String, Option<String>) = {
        let r = c
            .query_one(
                "SELECT id, state::text, finished_at::text FROM commitq.job_list
                  WHERE finished AND state = 'cancelled'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((cancelled.0, cancelled.1.as_str()), (finished, "cancelled"));
    assert!(cancelled.2.is_some());
    let mail = ids(c
        .query(
            "SELECT id FROM commitq.job_list WHERE queue = 'q' AND kind = 'mail' AND state = 'blocked'",
            &[],
        )
        .await
        .unwrap());
    assert_eq!(mail, vec![6]);
    let live = ids(c
        .query(
            "SELECT id FROM commitq.job_list WHERE NOT finished ORDER BY id DESC",
            &[],
        )
        .await
        .unwrap());
    assert_eq!(live.len(), 6);
    assert!(!live.contains(&finished));
}

#[tokio::test]
async fn a_big_backlog_is_estimated_and_says_so() {
    let db = TestDb::new("t_mon_estimate").await;
    let c = db.connect().await;
    // Past the 10,000 counted one by one, in one queue; a few in another.
    c.batch_execute(
        "SELECT count(*) FROM commitq.enqueue_many('big', 'k',
             array_fill('{}'::jsonb, ARRAY[15000]));
         SELECT count(*) FROM commitq.enqueue_many('small', 'k',
             array_fill('{}'::jsonb, ARRAY[30]));
         ANALYZE commitq.jobs;",
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT queue, available, available_exact FROM commitq.queue_stats ORDER BY queue",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got[1], ("small".to_string(), 30, true));
    let (queue, estimate, exact) = &got[0];
    assert_eq!((queue.as_str(), *exact), ("big", false));
    assert!(
        (13_500..=16_500).contains(estimate),
        "estimate {estimate} of 15000"
    );
}
