//! What the suite enqueues: a mix of the three kinds of job the fault
//! workers handle, some set to fail their first attempt on purpose, each
//! written down in the suite's own ledger in the transaction that enqueues
//! it; one transaction in ten rolls back.

use commitq_tests::Rng;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// Keys of limit 2 (the rest have the default limit of 1).
const WIDE: &str = "wide:";

/// One job to enqueue: queue, kind, args, concurrency key.
struct Spec {
    queue: &'static str,
    kind: &'static str,
    args: Value,
    key: Option<String>,
    external: bool,
    child: bool,
    slow: bool,
}

/// Job n: every third has a concurrency key (`k0`..`k8`, or `wide:0`..`2`
/// of limit 2); half make an outside call; one plain job in five enqueues a
/// child; one in about a hundred works longer than its lease. First attempts that fail on purpose: one outside call in seven
/// loses its reply, every other child is enqueued by an attempt that then
/// fails, and a few jobs fail at once.
fn spec(n: i64) -> Spec {
    if n % 3 == 0 {
        let m = n / 3;
        let key = if m % 4 == 0 {
            format!("{WIDE}{}", (m / 4) % 3)
        } else {
            format!("k{}", m % 9)
        };
        let external = m % 2 == 0;
        let slow = m % 97 == 1;
        let fail_first = if m % 11 == 0 {
            Some("at_start")
        } else if external && m % 7 == 0 {
            Some("after_call")
        } else {
            None
        };
        Spec {
            queue: "faults_keyed",
            kind: "fault_keyed",
            args: json!({ "n": n, "key": key, "external": external, "slow": slow,
                          "fail_first": fail_first }),
            key: Some(key),
            external,
            child: false,
            slow,
        }
    } else {
        let external = n % 2 == 0;
        let child = n % 5 == 1;
        let slow = n % 101 == 2;
        let fail_first = if external && n % 7 == 0 {
            Some("after_call")
        } else if child && n % 10 == 1 {
            Some("after_child")
        } else if n % 13 == 0 {
            Some("at_start")
        } else {
            None
        };
        Spec {
            queue: "faults",
            kind: "fault_job",
            args: json!({ "n": n, "external": external, "child": child, "slow": slow,
                          "fail_first": fail_first }),
            key: None,
            external,
            child,
            slow,
        }
    }
}

/// What was enqueued.
pub struct Enqueued {
    pub committed: usize,
    pub rolled_back: Vec<i64>,
    /// Committed jobs plus the one child each committed parent makes.
    pub expected_completed: i64,
}

/// Enqueue `jobs` jobs by committed transactions of ten (and the rolled-back
/// ones), set the limits of the wide keys, and cancel a few jobs of the
/// suite's own that wait a day ahead (the only cancellations allowed).
pub async fn enqueue(db: &Client, jobs: usize, rng: &mut Rng) -> Enqueued {
    db.batch_execute(&format!(
        "SELECT commitq.set_concurrency_limit('{WIDE}*', 2);
         INSERT INTO public.key_limits SELECT '{WIDE}' || i, 2 FROM generate_series(0, 2) i;"
    ))
    .await
    .unwrap();
    let mut out = Enqueued {
        committed: 0,
        rolled_back: Vec::new(),
        expected_completed: 0,
    };
    let mut n = 0i64;
    while out.committed < jobs {
        db.batch_execute("BEGIN").await.unwrap();
        let mut ids = Vec::new();
        let mut children = 0;
        for _ in 0..10 {
            n += 1;
            let s = spec(n);
            let id: i64 = db
                .query_one(
                    "SELECT job_id FROM commitq.enqueue($1, $2, $3, concurrency_key => $4)",
                    &[&s.queue, &s.kind, &s.args, &s.key],
                )
                .await
                .unwrap()
                .get(0);
            db.execute(
                "INSERT INTO public.ledger VALUES ($1, $2, $3, $4, $5, $6)",
                &[&id, &s.kind, &s.key, &s.external, &s.child, &s.slow],
            )
            .await
            .unwrap();
            ids.push(id);
            children += s.child as i64;
        }
        if rng.below(10) == 0 {
            db.batch_execute("ROLLBACK").await.unwrap();
            out.rolled_back.extend(ids);
        } else {
            db.batch_execute("COMMIT").await.unwrap();
            out.committed += ids.len();
            out.expected_completed += ids.len() as i64 + children;
        }
    }
    db.batch_execute(
        "INSERT INTO public.cancelled_by_checker
         SELECT job_id FROM generate_series(1, 5) i,
                commitq.enqueue('faults', 'fault_job', jsonb_build_object('n', -i),
                                run_at => now() + interval '1 day');
         SELECT commitq.cancel(job_id) FROM public.cancelled_by_checker;",
    )
    .await
    .unwrap();
    out
}
