//! The crate's `enqueue_many` takes `commitq.enqueue_many`'s arrays form (one
//! INSERT, no PL/pgSQL call per job) for a batch whose jobs share their
//! options, and stores and rejects exactly what the JSON form does.

use std::time::Duration;

use commitq::{EnqueueOptions, Error, Job};
use commitq_tests::{scalar, wait_until, TestDb};
use serde_json::{json, Value};

/// A job whose options come from its fields.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Payment {
    n: i64,
    #[serde(skip)]
    account: Option<String>,
    #[serde(skip)]
    order: Option<String>,
    #[serde(skip)]
    max_attempts: i32,
}

impl Job for Payment {
    const KIND: &'static str = "payment";
    const QUEUE: &'static str = "payments";
    fn options(&self) -> EnqueueOptions {
        let mut o = EnqueueOptions::default()
            .priority(5)
            .max_attempts(self.max_attempts)
            .delay(Duration::from_secs(60));
        if let Some(a) = &self.account {
            o = o.concurrency_key(a.clone());
        }
        if let Some(k) = &self.order {
            o = o.idempotency_key(k.clone());
        }
        o
    }
}

/// Jobs 1..=6: keys on some, an idempotency key repeated (the second is
/// deduplicated), and `bad_key` as job 4's concurrency key.
fn batch(max_attempts: i32, bad_key: Option<&str>) -> Vec<Payment> {
    (1..=6)
        .map(|n| Payment {
            n,
            account: match n {
                2 | 3 => Some(format!("account:{}", n % 2)),
                4 => bad_key.map(str::to_string),
                _ => None,
            },
            order: match n {
                5 | 6 => Some("order:56".into()),
                _ => None,
            },
            max_attempts,
        })
        .collect()
}

/// The same jobs for the JSON form, as the crate sent them before.
fn as_json(jobs: &[Payment]) -> Value {
    Value::Array(
        jobs.iter()
            .map(|j| {
                let o = j.options();
                json!({"queue": Payment::QUEUE, "kind": Payment::KIND, "args": {"n": j.n},
                       "priority": o.priority, "max_attempts": o.max_attempts,
                       "idempotency_key": o.idempotency_key, "concurrency_key": o.concurrency_key})
            })
            .collect(),
    )
}

const JSON_FORM: &str = "SELECT job_id, inserted FROM commitq.enqueue_many((
     SELECT coalesce(jsonb_agg(j || jsonb_build_object('run_at', now() + interval '60 seconds')
                               ORDER BY i), '[]')
       FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(j, i)))";

/// Every stored job as text, without what differs between two databases
/// (ids, the clock).
const STORED: &str = "SELECT coalesce(jsonb_agg(jsonb_build_object(
         'queue', queue, 'kind', kind, 'args', args, 'state', state, 'priority', priority,
         'max_attempts', max_attempts, 'ikey', idempotency_key, 'ckey', concurrency_key,
         'delay', round(extract(epoch FROM run_at - enqueued_at))) ORDER BY id), '[]')::text
       FROM commitq.jobs";

/// Calls of the JSON form and of the arrays form, once the backends have
/// flushed their function statistics.
async fn form_calls(db: &TestDb) -> (i64, i64) {
    let c = db.connect().await;
    let row = c
        .query_one(
            "SELECT coalesce(sum(calls) FILTER (WHERE args = 'jobs jsonb'), 0)::int8,
                    coalesce(sum(calls) FILTER (WHERE args <> 'jobs jsonb'), 0)::int8
               FROM (SELECT calls, pg_get_function_identity_arguments(funcid) AS args
                       FROM pg_stat_user_functions
                      WHERE schemaname = 'commitq' AND funcname = 'enqueue_many') s",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_what_the_json_form_stores_through_the_arrays_form() {
    let fast = TestDb::new("t_crate_enqueue_many_arrays").await;
    fast.connect()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET track_functions = 'pl'",
            fast.name
        ))
        .await
        .unwrap();
    let json_db = TestDb::new("t_crate_enqueue_many_json").await;
    let client = fast.client().await;
    let jobs = batch(3, Some("account:4"));

    let got = client.enqueue_many(&jobs).await.unwrap();
    let reference = json_db.connect().await;
    let want = reference
        .query(JSON_FORM, &[&as_json(&jobs)])
        .await
        .unwrap();
    let inserted = |flags: Vec<bool>| flags;
    assert_eq!(
        inserted(got.iter().map(|e| e.inserted).collect()),
        inserted(want.iter().map(|r| r.get::<_, bool>(1)).collect()),
        "the same jobs inserted, the repeated idempotency key deduplicated"
    );
    assert_eq!(got.len(), 6);
    assert_eq!(
        got[5].job_id, got[4].job_id,
        "the duplicate names the first"
    );
    let stored_fast: String = fast
        .connect()
        .await
        .query_one(STORED, &[])
        .await
        .unwrap()
        .get(0);
    let stored_json: String = reference.query_one(STORED, &[]).await.unwrap().get(0);
    assert_eq!(stored_fast, stored_json);
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
        5
    );

    // The arrays form did it, not the JSON form.
    wait_until("function statistics", Duration::from_secs(20), async || {
        form_calls(&fast).await.1 >= 1
    })
    .await;
    assert_eq!(form_calls(&fast).await.0, 0, "the JSON form was not called");
}

/// The SQLSTATE's variant and the problem, without the "job N of the
/// batch" that the JSON form puts before a problem common to all jobs.
fn problem(e: &Error) -> String {
    match e {
        Error::InvalidArgument(m) => {
            let m = m.strip_prefix("commitq: ").unwrap_or(m);
            match m.split_once(" of the batch: ") {
                Some((_, p)) if m.starts_with("job 1 ") => p.to_string(),
                _ => m.to_string(),
            }
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_what_the_json_form_rejects() {
    let (db, client) = commitq_tests::setup("t_crate_enqueue_many_errors", "").await;
    let reference = db.connect().await;
    for (what, jobs) in [
        ("a bad key in one job", batch(3, Some("tab\there"))),
        ("a bad option of every job", batch(0, None)),
    ] {
        let got = client.enqueue_many(&jobs).await.unwrap_err();
        let want = reference
            .query(JSON_FORM, &[&as_json(&jobs)])
            .await
            .unwrap_err();
        let want = Error::from(want);
        assert_eq!(problem(&got), problem(&want), "{what}");
        assert_eq!(
            scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
            0,
            "{what}: nothing enqueued"
        );
    }
}
