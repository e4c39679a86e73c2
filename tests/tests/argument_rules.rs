//! The argument rules as the docs state them (README, "Input rules and
//! edges" in docs/sql-reference.md), checked against the code: a property
//! test on random names, keys and numbers against a model written from the
//! docs alone, every character the docs' "printable text" rules out, and
//! what each documented NULL default does.
//!
//! The model does not reuse the code's tests (`char::is_control`, byte
//! counts of the alphabets): it spells out the documented alphabets and a
//! table of characters that are not printable, so a rule the code gets
//! wrong shows up as a disagreement.

use commitq_tests::{scalar, sqlstate, TestDb};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// "a queue is 1 to 48 of `a-z 0-9 _ . -` starting with a letter or digit"
const QUEUE_CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789_.-";
const QUEUE_FIRST: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
/// "a kind is 1 to 128 of `A-Z a-z 0-9 _ . : / -`"; the first character
/// is a letter, digit or `_` by the error message ("starting with a letter,
/// digit or _"), which the README and the SQL reference leave out.
const KIND_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/-";
const KIND_FIRST: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";

/// Characters that are not "printable text" (keys and lease names), as
/// ranges of code points: controls, and the invisible characters that make
/// two keys that look the same differ (zero-width characters, bidirectional
/// controls, separators, the soft hyphen and the byte order mark).
const UNPRINTABLE: &[(u32, u32, &str)] = &[
    (0x01, 0x1f, "C0 controls"),
    (0x7f, 0x9f, "DEL and C1 controls"),
    (0xad, 0xad, "soft hyphen"),
    (0x61c, 0x61c, "Arabic letter mark"),
    (0x200b, 0x200d, "zero-width space, non-joiner and joiner"),
    (0x200e, 0x200f, "left-to-right and right-to-left marks"),
    (0x2028, 0x2029, "line and paragraph separators"),
    (0x202a, 0x202e, "bidirectional embeddings and overrides"),
    (0x2060, 0x2064, "word joiner and invisible operators"),
    (0x2066, 0x2069, "bidirectional isolates"),
    (
        0xfeff,
        0xfeff,
        "zero-width no-break space (byte order mark)",
    ),
];

fn in_ranges(c: char, ranges: impl IntoIterator<Item = (u32, u32)>) -> bool {
    ranges
        .into_iter()
        .any(|(from, to)| (from..=to).contains(&(c as u32)))
}

fn unprintable(c: char) -> bool {
    in_ranges(c, UNPRINTABLE.iter().map(|&(from, to, _)| (from, to)))
}

/// "`n` to `m` of <alphabet>, starting with <first>", counted in characters.
fn spelled_from(text: &str, len: std::ops::RangeInclusive<usize>, all: &str, first: &str) -> bool {
    len.contains(&text.chars().count())
        && text.chars().next().is_some_and(|c| first.contains(c))
        && text.chars().all(|c| all.contains(c))
}

/// The documented rules for one enqueue: keys are "1 to 255 bytes of
/// printable text"; priority a smallint (-32768..32767); max_attempts
/// 1..1000.
fn model_accepts(queue: &str, kind: &str, key: &str, priority: i32, attempts: i32) -> bool {
    let key_ok = (1..=255).contains(&key.len()) && !key.chars().any(unprintable);
    spelled_from(queue, 1..=48, QUEUE_CHARS, QUEUE_FIRST)
        && spelled_from(kind, 1..=128, KIND_CHARS, KIND_FIRST)
        && key_ok
        && (-32768..=32767).contains(&priority)
        && (1..=1000).contains(&attempts)
}

/// Strings near the rules' edges: the allowed alphabets, upper case,
/// look-alikes, punctuation, unprintable characters, letters of two, three
/// and four bytes, at lengths around the limits.
fn name() -> impl Strategy<Value = String> {
    let unprintable: Vec<char> = UNPRINTABLE
        .iter()
        .flat_map(|&(from, to, _)| (from..=to).filter_map(char::from_u32))
        .collect();
    let pieces = prop_oneof![
        "[a-z0-9_.-]{1,10}",
        "[A-Za-z0-9_.:/-]{1,10}",
        "[ ;'\"\\\\%]{1,2}",
        Just("\u{0430}".to_string()),
        Just("é".to_string()),
        Just("漢".to_string()),
        Just("🙂".to_string()),
        prop::sample::select(unprintable).prop_map(String::from),
        "[a-z]{40,60}",
        "[a-z]{120,140}",
        "[a-z]{250,260}",
        "é{120,130}",
    ];
    prop::collection::vec(pieces, 0..4).prop_map(|v| v.concat())
}

/// One enqueue: (queue, kind, priority, max_attempts, idempotency key,
/// concurrency key).
type Enqueue<'a> = (&'a str, &'a str, i32, i32, &'a str, &'a str);

/// Each random case is tried as seven enqueues: each argument alone with
/// the others valid (so a rule the code gets wrong is not hidden behind
/// another argument that is refused anyway), and all of them at once.
#[test]
fn enqueue_validation_matches_the_documented_rules() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (db, c) = rt.block_on(async {
        let db = TestDb::new("t_rules_property").await;
        let c = db.connect().await;
        (db, c)
    });
    let mut runner = TestRunner::new(Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    });
    let inputs = (name(), name(), name(), -40000i32..40000, -5i32..1100);
    let result = runner.run(&inputs, |(queue, kind, key, priority, attempts)| {
        let (q, k, i) = (queue.as_str(), kind.as_str(), key.as_str());
        let tries: [Enqueue; 7] = [
            (q, "k", 0, 3, "i", "c"),
            ("q", k, 0, 3, "i", "c"),
            ("q", "k", priority, 3, "i", "c"),
            ("q", "k", 0, attempts, "i", "c"),
            ("q", "k", 0, 3, i, "c"),
            ("q", "k", 0, 3, "i", i),
            (q, k, priority, attempts, i, i),
        ];
        for args @ (queue, kind, priority, attempts, idempotency, concurrency) in tries {
            let expected = model_accepts(queue, kind, idempotency, priority, attempts)
                && model_accepts("q", "k", concurrency, 0, 3);
            let outcome =
                rt.block_on(async {
                    c.batch_execute("BEGIN").await.unwrap();
                    let r = c
                    .execute(
                        "SELECT commitq.enqueue($1, $2, '{}', priority => $3, max_attempts => $4,
                                                idempotency_key => $5, concurrency_key => $6)",
                        &[&queue, &kind, &priority, &attempts, &idempotency, &concurrency],
                    )
                    .await;
                    c.batch_execute("ROLLBACK").await.unwrap();
                    r
                });
            match outcome {
                Ok(_) => prop_assert!(expected, "accepted {args:?}"),
                Err(e) => {
                    prop_assert!(!expected, "refused {args:?}: {e}");
                    prop_assert_eq!(sqlstate(&e), "CQ001");
                }
            }
        }
        Ok(())
    });
    drop(db);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Each character of the table, inside an otherwise good key, idempotency
/// key, concurrency key and lease name: refused with CQ001.
#[tokio::test]
async fn every_unprintable_character_is_refused_in_keys_and_lease_names() {
    let db = TestDb::new("t_rules_unprintable").await;
    let c = db.connect().await;
    let calls = [
        "SELECT commitq.enqueue('q', 'k', '{}', idempotency_key => $1)",
        "SELECT commitq.enqueue('q', 'k', '{}', concurrency_key => $1)",
        "SELECT commitq.try_acquire_lease($1, 'me', '1 minute')",
        "SELECT commitq.set_concurrency_limit($1, 2)",
    ];
    let mut checked = 0;
    for &(from, to, what) in UNPRINTABLE {
        for c_point in (from..=to).filter_map(char::from_u32) {
            let key = format!("a{c_point}b");
            for sql in calls {
                c.batch_execute("BEGIN").await.unwrap();
                let result = c.execute(sql, &[&key]).await;
                c.batch_execute("ROLLBACK").await.unwrap();
                checked += 1;
                let label = format!("U+{:04X} ({what}) in {sql}", c_point as u32);
                let e = result.expect_err(&label);
                assert_eq!(sqlstate(&e), "CQ001", "{label}: {e}");
            }
        }
    }
    assert!(checked > 4 * 60, "{checked} cases");
}

/// The NULLs that mean a default, and what each does: `run_at` now, no
/// idempotency or concurrency key, no gate, `retry_in` the backoff,
/// `extend` the claim's lease, `wait` none, `max_running` back to 1, an
/// effect's `result` none.
#[tokio::test]
async fn null_defaults_do_what_the_docs_say() {
    let db = TestDb::new("t_rules_null_defaults").await;
    let c = db.connect().await;
    c.batch_execute(
        "UPDATE commitq.config SET backoff_base = '10 seconds', backoff_cap = '25 seconds'",
    )
    .await
    .unwrap();

    // enqueue and enqueue_many: due now, no keys, no gate.
    c.batch_execute(
        "SELECT commitq.enqueue('q', 'k', '{}', 0, NULL, 3, NULL, NULL, NULL);
         SELECT commitq.enqueue('q', 'k', '{}', 0, NULL, 3, NULL, NULL, NULL);
         SELECT count(*) FROM commitq.enqueue_many('q', 'k', ARRAY['{}', '{}']::jsonb[], 0, NULL, 3,
                                                   NULL, NULL);",
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE state = 'available' AND run_at <= now()
                                       AND run_at > now() - interval '1 minute'),
                    count(*) FILTER (WHERE idempotency_key IS NULL AND concurrency_key IS NULL
                                       AND after_xact IS NULL),
                    (SELECT count(*) FROM commitq.idempotency_keys)
               FROM commitq.jobs",
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert_eq!(
        counts,
        [4, 4, 4, 0],
        "four jobs, due now, without keys or gate"
    );
    // No key and no gate: all four are claimed at once.
    let claimed = c
        .query(
            "SELECT job_id, lease_token FROM commitq.claim('q', 'w', 10, '7 minutes')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let (id, token): (i64, i64) = (claimed[0].get(0), claimed[0].get(1));

    // heartbeat: extended by the claim's lease.
    let extended: f64 = c
        .query_one(
            "SELECT extract(epoch FROM lease_expires_at - clock_timestamp())::float8
               FROM commitq.heartbeat($1, $2, NULL)",
            &[&id, &token],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (410.0..=420.0).contains(&extended),
        "extended by {extended} s"
    );

    // effect_done: done, with no result.
    c.execute(
        "SELECT commitq.effect_begin($1, $2, 'charge')",
        &[&id, &token],
    )
    .await
    .unwrap();
    c.execute(
        "SELECT commitq.effect_done($1, $2, 'charge', NULL)",
        &[&id, &token],
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT done, result IS NULL FROM commitq.effect_begin($1, $2, 'charge')",
            &[&id, &token],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));

    // fail: retried after the backoff, 5..10 s for a first attempt with a
    // base of 10 s and equal jitter.
    let delay: f64 = c
        .query_one(
            "SELECT extract(epoch FROM run_at - now())::float8
               FROM commitq.fail($1, $2, 'boom', NULL)",
            &[&id, &token],
        )
        .await
        .unwrap()
        .get(0);
    assert!((5.0..=10.0).contains(&delay), "retried in {delay} s");

    // acquire_lease: no wait, so a held lease gives NULL at once.
    c.batch_execute("SELECT commitq.try_acquire_lease('cron', 'other', '1 minute')")
        .await
        .unwrap();
    c.batch_execute("SET statement_timeout = '5s'")
        .await
        .unwrap();
    let token: Option<i64> = c
        .query_one(
            "SELECT commitq.acquire_lease('cron', 'me', '1 minute', NULL)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(token, None, "held by another, and not waited for");
    c.batch_execute("RESET statement_timeout").await.unwrap();

    // set_concurrency_limit: back to 1.
    c.batch_execute(
        "SELECT commitq.set_concurrency_limit('account:*', 3);
         SELECT commitq.set_concurrency_limit('account:*', NULL);
         SELECT commitq.enqueue('keyed', 'k', '{}', concurrency_key => 'account:1');
         SELECT commitq.enqueue('keyed', 'k', '{}', concurrency_key => 'account:1');",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.concurrency_limits").await,
        0
    );
    let keyed = c
        .query("SELECT 1 FROM commitq.claim('keyed', 'w', 10)", &[])
        .await
        .unwrap();
    assert_eq!(keyed.len(), 1, "one at a time, the default limit");
}
