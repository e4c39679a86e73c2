//! Dependencies and results (sql/dependencies.sql), replace and debounce
//! (sql/replace.sql), through SQL: fan-in, results handed to dependents,
//! cancellation passed down a graph, dependencies that finished before
//! their dependent came, the batch forms. The races are isolation specs
//! (dependency-race, replace-race); many graphs under crashes are the fault
//! suite's `graphs` scenario.

use commitq_tests::{sqlstate, TestDb};
use serde_json::{json, Value};
use tokio_postgres::Client;

async fn ids(c: &Client, sql: &str) -> Vec<i64> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn state(c: &Client, id: i64) -> String {
    c.query_one(
        "SELECT state::text FROM commitq.jobs WHERE id = $1
         UNION ALL SELECT state::text FROM commitq.finished_jobs WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Claim everything of queue `q` and complete it, each with {"n": id} as
/// result; returns the ids in claim order.
async fn run_all(c: &Client, q: &str) -> Vec<i64> {
    let rows = c
        .query(
            "SELECT job_id, lease_token FROM commitq.claim($1, 'w', 100)",
            &[&q],
        )
        .await
        .unwrap();
    for r in &rows {
        let (id, token): (i64, i64) = (r.get(0), r.get(1));
        c.execute(
            "SELECT commitq.complete($1, $2, jsonb_build_object('n', $1::bigint))",
            &[&id, &token],
        )
        .await
        .unwrap();
    }
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn fan_in_runs_once_after_the_last_dependency_and_reads_their_results() {
    let db = TestDb::new("t_deps_fan_in").await;
    let c = db.connect().await;
    let batch = ids(
        &c,
        "SELECT job_id FROM commitq.enqueue_many('q', 'part', array_fill('{}'::jsonb, ARRAY[5]))",
    )
    .await;
    let join: i64 = c
        .query_one(
            "SELECT job_id FROM commitq.enqueue('q', 'join', depends_on => $1)",
            &[&batch],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state(&c, join).await, "waiting");

    let claimed = c
        .query(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 100)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5, "the join job is not claimable yet");
    for (i, r) in claimed.iter().enumerate() {
        let (id, token): (i64, i64) = (r.get(0), r.get(1));
        // The fourth completes without a result.
        let result = (i != 3).then(|| json!({ "part": id }));
        c.execute(
            "SELECT commitq.complete($1, $2, $3)",
            &[&id, &token, &result],
        )
        .await
        .unwrap();
        let expected = if i < 4 { "waiting" } else { "available" };
        assert_eq!(state(&c, join).await, expected, "after {} of 5", i + 1);
    }
    let row = c
        .query_one(
            "SELECT job_id, dependency_results FROM commitq.claim('q', 'w', 100)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), join);
    let results: Value = row.get(1);
    let mut expected = serde_json::Map::new();
    for (i, r) in claimed.iter().enumerate() {
        let id: i64 = r.get(0);
        let v = if i == 3 {
            Value::Null
        } else {
            json!({ "part": id })
        };
        expected.insert(id.to_string(), v);
    }
    assert_eq!(results, Value::Object(expected));
}

#[tokio::test]
async fn a_failed_dependency_cancels_the_graph_below_it_with_the_reason() {
    let db = TestDb::new("t_deps_cancel").await;
    let c = db.connect().await;
    // a <- b <- c, and a <- d; e waits for b and for an unrelated job f.
    let a: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'a')", &[])
        .await
        .unwrap()
        .get(0);
    let f: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('other', 'f')", &[])
        .await
        .unwrap()
        .get(0);
    let one = |kind: &'static str, deps: Vec<i64>| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT job_id FROM commitq.enqueue('q', $1, depends_on => $2)",
                &[&kind, &deps],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let b = one("b", vec![a]).await;
    let cc = one("c", vec![b]).await;
    let d = one("d", vec![a]).await;
    let e = one("e", vec![b, f]).await;

    let row = c
        .query_one(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 10)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), a, "only a is claimable");
    c.execute(
        "SELECT commitq.fail($1, $2, 'card declined', discard => true)",
        &[&a, &row.get::<_, i64>(1)],
    )
    .await
    .unwrap();

    for (id, reason) in [
        (b, format!("dependency {a} was discarded")),
        (d, format!("dependency {a} was discarded")),
        (cc, format!("dependency {b} was cancelled")),
        (e, format!("dependency {b} was cancelled")),
    ] {
        let r = c
            .query_one(
                "SELECT state::text, errors->-1->>'error' FROM commitq.finished_jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), "cancelled", "job {id}");
        assert_eq!(r.get::<_, String>(1), reason, "job {id}");
    }
    assert_eq!(state(&c, f).await, "available", "f is not part of it");
    let edges: i64 = c
        .query_one("SELECT count(*) FROM commitq.job_dependencies", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(edges, 1, "only e's edge to f is left, for f's completion");

    // An operator cancelling a waiting job cancels its dependents too.
    let g = one("g", vec![f]).await;
    let h = one("h", vec![g]).await;
    c.execute("SELECT commitq.cancel($1)", &[&g]).await.unwrap();
    assert_eq!(state(&c, h).await, "cancelled");
}

#[tokio::test]
async fn a_dependency_that_finished_first_counts_while_it_is_remembered() {
    let db = TestDb::new("t_deps_before").await;
    let c = db.connect().await;
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'with_result');
         SELECT commitq.enqueue('q', 'plain');
         SELECT commitq.enqueue('q', 'cancelled');",
    )
    .await
    .unwrap();
    let all = ids(&c, "SELECT id FROM commitq.jobs ORDER BY id").await;
    let (with_result, plain, cancelled) = (all[0], all[1], all[2]);
    c.execute("SELECT commitq.cancel($1)", &[&cancelled])
        .await
        .unwrap();
    let claimed = c
        .query(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 10) ORDER BY job_id",
            &[],
        )
        .await
        .unwrap();
    c.execute(
        "SELECT commitq.complete($1, $2, '{\"total\": 3}')",
        &[&with_result, &claimed[0].get::<_, i64>(1)],
    )
    .await
    .unwrap();
    c.execute(
        "SELECT commitq.complete($1, $2)",
        &[&plain, &claimed[1].get::<_, i64>(1)],
    )
    .await
    .unwrap();

    let enqueue = |deps: Vec<i64>| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT job_id FROM commitq.enqueue('later', 'k', depends_on => $1)",
                &[&deps],
            )
            .await
        }
    };
    // Completed with a result: remembered (job_results).
    let j = enqueue(vec![with_result]).await.unwrap().get::<_, i64>(0);
    assert_eq!(state(&c, j).await, "available");
    // Cancelled: finished_jobs always keeps it; the new job is cancelled.
    let j = enqueue(vec![cancelled]).await.unwrap().get::<_, i64>(0);
    assert_eq!(state(&c, j).await, "cancelled");
    // Completed without a result while keep_completed was off: forgotten.
    let e = enqueue(vec![plain]).await.expect_err("forgotten");
    assert_eq!(sqlstate(&e), "CQ101");

    // With keep_completed on, every completion is remembered.
    c.batch_execute("UPDATE commitq.config SET keep_completed = true")
        .await
        .unwrap();
    let k: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'kept')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(run_all(&c, "q").await, vec![k]);
    let j = enqueue(vec![k]).await.unwrap().get::<_, i64>(0);
    assert_eq!(state(&c, j).await, "available");

    // Results are forgotten after the longer of the idempotency window and
    // finished_retention: then the dependency is unknown.
    c.batch_execute(
        "UPDATE commitq.job_results SET completed_at = now() - interval '8 days';
         SELECT commitq.maintain();",
    )
    .await
    .unwrap();
    let left: i64 = c
        .query_one("SELECT count(*) FROM commitq.job_results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "pruned");
    let e = enqueue(vec![with_result]).await.expect_err("pruned");
    assert_eq!(sqlstate(&e), "CQ101");
}

#[tokio::test]
async fn the_batch_forms_take_dependencies() {
    let db = TestDb::new("t_deps_batch").await;
    let c = db.connect().await;
    let root: i64 = c
        .query_one("SELECT job_id FROM commitq.enqueue('q', 'root')", &[])
        .await
        .unwrap()
        .get(0);
    // Arrays form: every job of the batch waits for the same jobs (fan-out).
    let fan = ids(
        &c,
        &format!(
            "SELECT job_id FROM commitq.enqueue_many('q', 'leaf', array_fill('{{}}'::jsonb, ARRAY[3]),
                                                     depends_on => ARRAY[{root}]::bigint[])"
        ),
    )
    .await;
    assert_eq!(fan.len(), 3);
    // JSON form: each job its own list; a job may wait for an earlier one
    // of the same batch only by id, so here they wait for the leaves.
    let json_batch = json!([
        { "queue": "q", "kind": "sum", "depends_on": fan },
        { "queue": "q", "kind": "free" },
        { "queue": "q", "kind": "one", "depends_on": [fan[0]] },
    ]);
    let batch = c
        .query(
            "SELECT job_id FROM commitq.enqueue_many($1::jsonb)",
            &[&json_batch],
        )
        .await
        .unwrap();
    let (sum, free, one): (i64, i64, i64) = (batch[0].get(0), batch[1].get(0), batch[2].get(0));
    assert_eq!(state(&c, free).await, "available");

    // Waves: root and free; then the leaves; then sum and one.
    let mut first = run_all(&c, "q").await;
    first.sort();
    assert_eq!(first, vec![root, free]);
    let mut second = run_all(&c, "q").await;
    second.sort();
    assert_eq!(second, fan);
    let mut third = run_all(&c, "q").await;
    third.sort();
    assert_eq!(third, vec![sum, one]);
}

#[tokio::test]
async fn replace_and_debounce_change_only_a_waiting_job() {
    let db = TestDb::new("t_deps_replace").await;
    let c = db.connect().await;
    let enqueue = |args: Value, mode: &'static str, delay_s: f64| {
        let c = &c;
        async move {
            let r = c
                .query_one(
                    "SELECT job_id, inserted FROM commitq.enqueue('q', 'sync', $1,
                         run_at => now() + make_interval(secs => $3), priority => 0,
                         idempotency_key => 'acct-1', on_duplicate => $2)",
                    &[&args, &mode, &delay_s],
                )
                .await
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, bool>(1))
        }
    };
    let run_at = |id: i64| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT extract(epoch FROM run_at - now())::float8, args FROM commitq.jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
        }
    };
    let (job, inserted) = enqueue(json!({"v": 1}), "debounce", 60.0).await;
    assert!(inserted);
    // Debounce: later run_at wins, args stay; an earlier one changes nothing.
    assert_eq!(
        enqueue(json!({"v": 2}), "debounce", 120.0).await,
        (job, false)
    );
    let r = run_at(job).await;
    assert!(r.get::<_, f64>(0) > 100.0);
    assert_eq!(r.get::<_, Value>(1), json!({"v": 1}));
    assert_eq!(
        enqueue(json!({"v": 3}), "debounce", 0.0).await,
        (job, false)
    );
    assert!(run_at(job).await.get::<_, f64>(0) > 100.0);
    // Return (the default) leaves it alone.
    assert_eq!(enqueue(json!({"v": 4}), "return", 0.0).await, (job, false));
    assert_eq!(run_at(job).await.get::<_, Value>(1), json!({"v": 1}));
    // Replace: the new values, due now.
    assert_eq!(enqueue(json!({"v": 5}), "replace", 0.0).await, (job, false));
    let r = run_at(job).await;
    assert!(r.get::<_, f64>(0) <= 0.0);
    assert_eq!(r.get::<_, Value>(1), json!({"v": 5}));
    assert_eq!(state(&c, job).await, "available");

    // Running: never changed; one follow-up that waits for it.
    let lease: i64 = c
        .query_one("SELECT lease_token FROM commitq.claim('q', 'w', 1)", &[])
        .await
        .unwrap()
        .get(0);
    let (follow, inserted) = enqueue(json!({"v": 6}), "replace", 0.0).await;
    assert!(inserted && follow != job);
    assert_eq!(
        enqueue(json!({"v": 7}), "debounce", 0.0).await,
        (follow, false)
    );
    assert_eq!(
        enqueue(json!({"v": 8}), "replace", 0.0).await,
        (follow, false)
    );
    assert_eq!(run_at(job).await.get::<_, Value>(1), json!({"v": 5}));
    assert_eq!(state(&c, follow).await, "waiting");
    // The running job fails for good: the follow-up runs anyway.
    c.execute(
        "SELECT commitq.fail($1, $2, 'gone', discard => true)",
        &[&job, &lease],
    )
    .await
    .unwrap();
    assert_eq!(state(&c, follow).await, "available");
    let r = c
        .query_one("SELECT job_id, args FROM commitq.claim('q', 'w', 10)", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), follow);
    assert_eq!(r.get::<_, Value>(1), json!({"v": 8}));
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Part {
    rows: i64,
}

impl commitq::Job for Part {
    const KIND: &'static str = "part";
    const QUEUE: &'static str = "etl";
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Report {}

impl commitq::Job for Report {
    const KIND: &'static str = "report";
    const QUEUE: &'static str = "etl";
}

/// Through the Rust client: a report enqueued with `depends_on` its parts
/// runs after them and reads their results in `ctx.dependency_results`;
/// bad options come back as typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_client_a_report_reads_its_parts_results() {
    use commitq::{EnqueueOptions, Error, OnDuplicate, Outcome, WorkerPool};
    use commitq_tests::{start_pool, wait_until};
    use std::time::Duration;

    let db = TestDb::new("t_deps_client").await;
    let c = db.connect().await;
    c.batch_execute("CREATE TABLE public.reports (results jsonb)")
        .await
        .unwrap();
    let client = db.client().await;
    let parts = client
        .enqueue_many(&[Part { rows: 3 }, Part { rows: 4 }])
        .await
        .unwrap();
    let ids: Vec<i64> = parts.iter().map(|e| e.job_id).collect();
    client
        .enqueue_with(
            &Report {},
            &EnqueueOptions::default().depends_on(ids.iter().copied()),
        )
        .await
        .unwrap();

    let missing = client
        .enqueue_with(
            &Report {},
            &EnqueueOptions::default().depends_on([i64::MAX]),
        )
        .await
        .expect_err("unknown dependency");
    assert!(matches!(missing, Error::JobNotFound(_)), "{missing:?}");
    let keyless = client
        .enqueue_with(
            &Report {},
            &EnqueueOptions::default().on_duplicate(OnDuplicate::Replace),
        )
        .await
        .expect_err("replace without a key");
    assert!(matches!(keyless, Error::InvalidArgument(_)), "{keyless:?}");

    let pool = WorkerPool::builder(client.clone())
        .queue("etl", 2)
        .poll_interval(Duration::from_millis(100))
        .handle(|ctx, part: Part| async move {
            let mut conn = ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            ctx.complete_in_with_result(&*tx, &json!({ "rows": part.rows }))
                .await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        })
        .handle(|ctx, _: Report| async move {
            let conn = ctx.client().pool().get().await?;
            conn.execute(
                "INSERT INTO public.reports VALUES ($1)",
                &[&ctx.dependency_results],
            )
            .await?;
            Ok(Outcome::Complete)
        })
        .build();
    let running = start_pool(pool);
    wait_until("the report ran", Duration::from_secs(30), async || {
        c.query_one("SELECT count(*) FROM public.reports", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    running.stop().await;
    let results: Value = c
        .query_one("SELECT results FROM public.reports", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        results,
        json!({ ids[0].to_string(): { "rows": 3 }, ids[1].to_string(): { "rows": 4 } })
    );
}
