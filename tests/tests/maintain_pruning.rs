//! maintain()'s pruning: every table it keeps small loses exactly the rows
//! past their retention, and a call takes at most
//! commitq.config.maintain_batch rows of each, the next calls the rest.
//! (That concurrent calls share the work without waiting on each other is
//! the isolation spec maintain-shared.)

use commitq_tests::{scalar, TestDb};
use tokio_postgres::Client;

/// Rows of every prunable table, each group named by its `tag`: `old` ones
/// past their retention and free to go, and rows that must stay (recent, or
/// old but still needed). `n` old ones of each table.
async fn fill(c: &Client, n: i32) {
    c.batch_execute(&format!(
        "-- A live job: its old idempotency key and its old effect stay.
         SELECT job_id FROM commitq.enqueue('q', 'k', idempotency_key => 'live');
         UPDATE commitq.idempotency_keys SET created_at = now() - interval '2 days';
         INSERT INTO commitq.job_effects (job_id, effect, idempotency_key, begun_attempt, created_at)
         SELECT id, 'live', 'x', 1, now() - interval '8 days' FROM commitq.jobs;

         -- Finished jobs: old ones go, a recent one stays; the effect of a
         -- finished job kept for its retention stays with it.
         INSERT INTO commitq.finished_jobs (id, queue, kind, args, state, priority, run_at, attempt,
                                            max_attempts, lease_token, errors, enqueued_at, finished_at)
         SELECT 100000 + i, 'q', 'old', '{{}}'::jsonb, 'discarded'::commitq.job_state, 0, now(), 1, 1, 1, '[]'::jsonb, now(),
                now() - interval '8 days' - i * interval '1 minute'
           FROM generate_series(1, {n}) i
         UNION ALL
         SELECT 200000, 'q', 'recent', '{{}}'::jsonb, 'discarded'::commitq.job_state, 0, now(), 1, 1, 1, '[]'::jsonb, now(), now() - interval '6 days';
         INSERT INTO commitq.job_effects (job_id, effect, idempotency_key, begun_attempt, created_at)
         VALUES (200000, 'kept', 'x', 1, now() - interval '8 days');

         -- Idempotency keys of jobs that are gone: old ones go, a recent one stays.
         INSERT INTO commitq.idempotency_keys (queue, key, job_id, created_at)
         SELECT 'q', 'old' || i, 300000 + i, now() - interval '2 days' - i * interval '1 minute'
           FROM generate_series(1, {n}) i
         UNION ALL SELECT 'q', 'recent', 400000, now() - interval '23 hours';

         -- Effects of jobs that are gone: old ones go, a recent one stays.
         INSERT INTO commitq.job_effects (job_id, effect, idempotency_key, begun_attempt, created_at)
         SELECT 500000 + i, 'old', 'x', 1, now() - interval '8 days' - i * interval '1 minute'
           FROM generate_series(1, {n}) i
         UNION ALL SELECT 600000, 'recent', 'x', 1, now() - interval '6 days';

         -- Workers registered as waiting: long ago ones go, a recent one stays.
         INSERT INTO commitq.waiting_workers (queue, worker, since)
         SELECT 'q', 'old' || i, now() - interval '11 minutes' FROM generate_series(1, {n}) i
         UNION ALL SELECT 'q', 'recent', now() - interval '9 minutes';

         -- Idle concurrency keys go; a key with a running job stays.
         INSERT INTO commitq.concurrency_keys (key, running, blocked, max_running)
         SELECT 'old' || i, 0, 0, 1 FROM generate_series(1, {n}) i
         UNION ALL SELECT 'busy', 1, 0, 1;

         -- Tick rows of a schedule: old ones go, a recent one stays, and the
         -- latest one stays however old (the view and skip_while_running read it).
         SELECT commitq.schedule('nightly', '0 3 * * *', 'q', 'report', paused => true);
         INSERT INTO commitq.schedule_ticks (schedule, tick, backfilled, outcome, fired_at)
         SELECT 'nightly', now() - interval '30 days' - i * interval '1 day', false, 'enqueued',
                now() - interval '8 days' - i * interval '1 minute'
           FROM generate_series(1, {n}) i
         UNION ALL SELECT 'nightly', now() - interval '20 days', false, 'enqueued', now() - interval '6 days'
         UNION ALL SELECT 'nightly', now() - interval '10 days', false, 'enqueued', now() - interval '9 days';"
    ))
    .await
    .unwrap();
}

/// How many rows of each table are left, as one line.
async fn left(c: &Client) -> String {
    let mut out = Vec::new();
    for (name, sql) in [
        ("finished", "SELECT count(*) FROM commitq.finished_jobs"),
        ("ikeys", "SELECT count(*) FROM commitq.idempotency_keys"),
        ("effects", "SELECT count(*) FROM commitq.job_effects"),
        ("waiting", "SELECT count(*) FROM commitq.waiting_workers"),
        ("ckeys", "SELECT count(*) FROM commitq.concurrency_keys"),
        ("ticks", "SELECT count(*) FROM commitq.schedule_ticks"),
    ] {
        out.push(format!("{name}={}", scalar(c, sql).await));
    }
    out.join(" ")
}

#[tokio::test]
async fn maintain_prunes_every_table_past_its_retention_and_keeps_the_rest() {
    let db = TestDb::new("t_maintain_prunes_each_table").await;
    let c = db.connect().await;
    fill(&c, 3).await;
    assert_eq!(
        left(&c).await,
        "finished=4 ikeys=5 effects=6 waiting=4 ckeys=4 ticks=5"
    );
    c.batch_execute("SELECT * FROM commitq.maintain()")
        .await
        .unwrap();
    // Left: the recent finished job; the live job's key and the recent key;
    // the live job's effect, the retained finished job's and the recent
    // one; the recent waiting worker; the busy key; the recent tick and the
    // latest one.
    assert_eq!(
        left(&c).await,
        "finished=1 ikeys=2 effects=3 waiting=1 ckeys=1 ticks=2"
    );
    let kept: String = c
        .query_one(
            "SELECT string_agg(effect, ',' ORDER BY effect) FROM commitq.job_effects",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "kept,live,recent");
    let ticks: String = c
        .query_one(
            "SELECT string_agg(extract(day FROM now() - tick)::text, ',' ORDER BY tick)
               FROM commitq.schedule_ticks",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ticks, "20,10", "the recent tick and the latest one");
}

#[tokio::test]
async fn one_maintain_call_prunes_at_most_a_batch_of_each_table_oldest_first() {
    let db = TestDb::new("t_maintain_prunes_in_batches").await;
    let c = db.connect().await;
    fill(&c, 5).await;
    c.batch_execute("UPDATE commitq.config SET maintain_batch = 2")
        .await
        .unwrap();
    let before = "finished=6 ikeys=7 effects=8 waiting=6 ckeys=6 ticks=7";
    let after = [
        "finished=4 ikeys=5 effects=6 waiting=4 ckeys=4 ticks=5",
        "finished=2 ikeys=3 effects=4 waiting=2 ckeys=2 ticks=3",
        "finished=1 ikeys=2 effects=3 waiting=1 ckeys=1 ticks=2",
        "finished=1 ikeys=2 effects=3 waiting=1 ckeys=1 ticks=2",
    ];
    assert_eq!(left(&c).await, before);
    for expected in after {
        c.batch_execute("SELECT * FROM commitq.maintain()")
            .await
            .unwrap();
        assert_eq!(left(&c).await, expected);
    }
    // Oldest first: after the first call the two oldest of each are gone.
    c.batch_execute("DELETE FROM commitq.finished_jobs; DELETE FROM commitq.job_effects;")
        .await
        .unwrap();
    fill_order_probe(&c).await;
}

/// Finished jobs and effects are taken oldest first: with a batch of 2 and
/// three old rows, the youngest of them is the one left.
async fn fill_order_probe(c: &Client) {
    c.batch_execute(
        "INSERT INTO commitq.finished_jobs (id, queue, kind, args, state, priority, run_at, attempt,
                                            max_attempts, lease_token, errors, enqueued_at, finished_at)
         SELECT 700000 + i, 'q', 'k', '{}', 'discarded', 0, now(), 1, 1, 1, '[]', now(),
                now() - interval '8 days' - i * interval '1 hour'
           FROM generate_series(1, 3) i;
         INSERT INTO commitq.job_effects (job_id, effect, idempotency_key, begun_attempt, created_at)
         SELECT 800000 + i, 'e', 'x', 1, now() - interval '8 days' - i * interval '1 hour'
           FROM generate_series(1, 3) i;
         SELECT * FROM commitq.maintain();",
    )
    .await
    .unwrap();
    let finished = scalar(c, "SELECT min(id) FROM commitq.finished_jobs").await;
    let effect = scalar(c, "SELECT min(job_id) FROM commitq.job_effects").await;
    assert_eq!(
        (finished, effect),
        (700001, 800001),
        "the youngest old row is left"
    );
}
