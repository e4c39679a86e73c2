//! Cron schedules (sql/schedule.sql): one job per tick, whoever evaluates;
//! missed ticks caught up by the documented rules; daylight-saving days;
//! overlap skipping; bad input. Ticks are evaluated at instants the tests
//! choose (commitq._run_schedules(now), the part of maintain() that fires
//! schedules), so no test waits for real minutes or days.

use commitq_tests::{error_message, scalar, sql_only, sqlstate, TestDb};
use tokio_postgres::Client;

/// The sql-only install has no cron parser (dev/sql-only.sh, UNAVAILABLE):
/// there every test below but the last is skipped, and the last checks the
/// error schedules get instead.
fn skipped_in_sql_only() -> bool {
    let skip = sql_only::enabled();
    if skip {
        eprintln!(
            "skipped: cron schedules need the pg_commitq extension, not in the sql-only install"
        );
    }
    skip
}

/// Create a schedule (`options`: extra named arguments of commitq.schedule)
/// whose ticks up to `from` count as handled.
async fn schedule_from(c: &Client, name: &str, cron: &str, options: &str, from: &str) {
    c.batch_execute(&format!(
        "SELECT commitq.schedule('{name}', '{cron}', 'q', 'tick'{options});
         UPDATE commitq.cron_schedules SET evaluated_until = '{from}' WHERE name = '{name}';"
    ))
    .await
    .unwrap();
}

/// Fire the schedules as of `now`; returns how many jobs were enqueued.
async fn run_at(c: &Client, now: &str) -> i64 {
    scalar(c, &format!("SELECT commitq._run_schedules('{now}')")).await
}

/// The (tick, backfilled) of every job a schedule enqueued, in tick order.
async fn fired(c: &Client, name: &str) -> Vec<(String, bool)> {
    c.query(
        "SELECT args->'_schedule'->>'tick', (args->'_schedule'->>'backfilled')::boolean
           FROM commitq.jobs WHERE args->'_schedule'->>'name' = $1 ORDER BY 1, id",
        &[&name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn ticks(expected: &[(&str, bool)]) -> Vec<(String, bool)> {
    expected.iter().map(|(t, b)| (t.to_string(), *b)).collect()
}

#[tokio::test]
async fn by_default_only_the_latest_missed_tick_runs() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_catch_up").await;
    let c = db.connect().await;
    schedule_from(&c, "minutely", "* * * * *", "", "2026-01-01 00:00Z").await;
    // Evaluation was off for an hour: sixty ticks passed, one runs.
    assert_eq!(run_at(&c, "2026-01-01 01:00:30Z").await, 1);
    assert_eq!(
        fired(&c, "minutely").await,
        ticks(&[("2026-01-01T01:00:00Z", false)])
    );
    // Evaluating again at the same instant, or before the next tick, fires nothing.
    assert_eq!(run_at(&c, "2026-01-01 01:00:30Z").await, 0);
    assert_eq!(run_at(&c, "2026-01-01 01:00:59Z").await, 0);
    assert_eq!(run_at(&c, "2026-01-01 01:01:00Z").await, 1);
    assert_eq!(fired(&c, "minutely").await.len(), 2);
    // The job keeps the schedule's own args beside _schedule.
    let row = c
        .query_one(
            "SELECT queue, kind, priority, max_attempts FROM commitq.jobs LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("q".into(), "tick".into())
    );
}

#[tokio::test]
async fn a_backfill_window_runs_every_missed_tick_inside_it_once() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_backfill").await;
    let c = db.connect().await;
    schedule_from(
        &c,
        "ten-min",
        "*/10 * * * *",
        ", args => '{\"report\": 7}', backfill => '1 hour'",
        "2026-01-01 00:00Z",
    )
    .await;
    // Off from midnight to 03:05: the ticks of the last hour run, the
    // latest on time, the others marked backfilled; older ones are missed.
    assert_eq!(run_at(&c, "2026-01-01 03:05Z").await, 6);
    assert_eq!(
        fired(&c, "ten-min").await,
        ticks(&[
            ("2026-01-01T02:10:00Z", true),
            ("2026-01-01T02:20:00Z", true),
            ("2026-01-01T02:30:00Z", true),
            ("2026-01-01T02:40:00Z", true),
            ("2026-01-01T02:50:00Z", true),
            ("2026-01-01T03:00:00Z", false),
        ])
    );
    let report: i64 = scalar(
        &c,
        "SELECT count(*) FROM commitq.jobs WHERE (args->>'report')::int = 7",
    )
    .await;
    assert_eq!(report, 6);
    assert_eq!(run_at(&c, "2026-01-01 03:09Z").await, 0);
    assert_eq!(run_at(&c, "2026-01-01 03:10Z").await, 1);
}

/// Europe/Berlin: 2026-03-29 has no 02:00-03:00 (CET to CEST at 01:00 UTC),
/// 2026-10-25 has it twice (CEST to CET at 01:00 UTC). America/New_York:
/// 2026-03-08 has no 02:00-03:00, 2026-11-01 has 01:00-02:00 twice.
#[tokio::test]
async fn daylight_saving_days_follow_the_documented_rules() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_dst").await;
    let c = db.connect().await;
    // (cron, time zone, cursor, evaluated at, the ticks that fire)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [(&'a str, bool)]);
    let cases: &[Case] = &[
        // 02:30 does not exist on the spring-forward day: it runs at 03:00
        // CEST, the first valid time after the gap.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-27 12:00Z",
            "2026-03-30 12:00Z",
            &[
                ("2026-03-28T01:30:00Z", true),
                ("2026-03-29T01:00:00Z", true),
                ("2026-03-30T00:30:00Z", false),
            ],
        ),
        // 02:30 exists twice on the fall-back day: it runs once, at the
        // first (02:30 CEST, 00:30 UTC).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24 12:00Z",
            "2026-10-26 12:00Z",
            &[
                ("2026-10-25T00:30:00Z", true),
                ("2026-10-26T01:30:00Z", false),
            ],
        ),
        // A step schedule runs in each half of the repeated hour: every
        // 30 minutes of real time, 02:00 and 02:30 twice.
        (
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-10-24 23:59Z",
            "2026-10-25 02:00Z",
            &[
                ("2026-10-25T00:00:00Z", true),
                ("2026-10-25T00:30:00Z", true),
                ("2026-10-25T01:00:00Z", true),
                ("2026-10-25T01:30:00Z", true),
                ("2026-10-25T02:00:00Z", false),
            ],
        ),
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07 12:00Z",
            "2026-03-08 12:00Z",
            &[("2026-03-08T07:00:00Z", false)],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31 12:00Z",
            "2026-11-01 12:00Z",
            &[("2026-11-01T05:30:00Z", false)],
        ),
    ];
    for (i, (cron, zone, from, until, expected)) in cases.iter().enumerate() {
        let name = format!("dst-{i}");
        schedule_from(
            &c,
            &name,
            cron,
            &format!(", timezone => '{zone}', backfill => '7 days'"),
            from,
        )
        .await;
        run_at(&c, until).await;
        assert_eq!(
            fired(&c, &name).await,
            ticks(expected),
            "{cron} in {zone} from {from} to {until}"
        );
        c.batch_execute(&format!("SELECT commitq.unschedule('{name}')"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_tick_is_skipped_while_the_previous_job_waits_or_runs() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_overlap").await;
    let c = db.connect().await;
    schedule_from(
        &c,
        "single",
        "* * * * *",
        ", skip_while_running => true",
        "2026-01-01 00:00Z",
    )
    .await;
    schedule_from(&c, "every", "* * * * *", "", "2026-01-01 00:00Z").await;
    assert_eq!(run_at(&c, "2026-01-01 00:01Z").await, 2);
    // The first job waits: the next tick of "single" is skipped, and
    // recorded as such; "every" runs regardless.
    assert_eq!(run_at(&c, "2026-01-01 00:02Z").await, 1);
    // Its worker takes it (with the jobs of "every", which do not matter).
    let rows = c
        .query(
            "SELECT job_id, lease_token, args FROM commitq.claim('q', 'w', 10, '1 minute')",
            &[],
        )
        .await
        .unwrap();
    let job = rows
        .iter()
        .find(|r| r.get::<_, serde_json::Value>(2)["_schedule"]["name"] == "single")
        .expect("the job of single");
    let (id, token): (i64, i64) = (job.get(0), job.get(1));
    // Running: skipped too.
    assert_eq!(run_at(&c, "2026-01-01 00:03Z").await, 1);
    let outcomes: Vec<String> = c
        .query(
            "SELECT outcome FROM commitq.schedule_ticks WHERE schedule = 'single' ORDER BY tick",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes, ["enqueued", "skipped_running", "skipped_running"]);
    c.batch_execute(&format!("SELECT commitq.complete({id}, {token})"))
        .await
        .unwrap();
    // Finished: the next tick runs.
    assert_eq!(run_at(&c, "2026-01-01 00:04Z").await, 2);
    assert_eq!(fired(&c, "every").await.len(), 4);
    let single: i64 = scalar(
        &c,
        "SELECT count(*) FROM commitq.schedule_ticks WHERE schedule = 'single' AND job_id IS NOT NULL",
    )
    .await;
    assert_eq!(single, 2);
}

/// Four sessions evaluate the same hour of a schedule every second at the
/// same instant: each of the 3600 ticks fires once.
#[tokio::test]
async fn concurrent_evaluators_fire_each_tick_once() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_concurrent").await;
    let c = db.connect().await;
    schedule_from(
        &c,
        "every-second",
        "* * * * * *",
        ", backfill => '1 hour'",
        "2026-01-01 00:00Z",
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = db.connect().await;
        tasks.push(tokio::spawn(async move {
            run_at(&s, "2026-01-01 01:00Z").await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT args->'_schedule'->>'tick') FROM commitq.jobs",
            &[],
        )
        .await
        .unwrap();
    let (jobs, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(distinct, 3600);
    assert_eq!(jobs, 3600, "{} ticks fired more than once", jobs - distinct);
    assert_eq!(total, 3600);
}

#[tokio::test]
async fn maintain_fires_due_ticks_and_the_view_shows_them() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_maintain").await;
    let c = db.connect().await;
    schedule_from(&c, "hourly", "@hourly", "", "2000-01-01 00:00Z").await;
    let scheduled: i64 = scalar(&c, "SELECT scheduled FROM commitq.maintain()").await;
    assert_eq!(scheduled, 1);
    let row = c
        .query_one(
            "SELECT last_tick = date_trunc('hour', now()), next_tick = date_trunc('hour', now()) + interval '1 hour',
                    last_outcome, last_job_id IS NOT NULL
               FROM commitq.schedules WHERE name = 'hourly'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "last tick");
    assert!(row.get::<_, bool>(1), "next tick");
    assert_eq!(row.get::<_, String>(2), "enqueued");
    assert!(row.get::<_, bool>(3));
    assert_eq!(
        scalar(&c, "SELECT scheduled FROM commitq.maintain()").await,
        0
    );
    // A paused schedule fires nothing, and resuming it does not catch up
    // the ticks that passed while it was paused.
    c.batch_execute(
        "SELECT commitq.schedule('hourly', '@hourly', 'q', 'tick', paused => true);
         UPDATE commitq.cron_schedules SET evaluated_until = now() - interval '3 hours';",
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(&c, "SELECT scheduled FROM commitq.maintain()").await,
        0
    );
    assert_eq!(
        scalar(
            &c,
            "SELECT count(*) FROM commitq.schedules WHERE next_tick IS NULL AND paused"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn unschedule_stops_a_schedule_and_keeps_its_jobs() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_unschedule").await;
    let c = db.connect().await;
    schedule_from(&c, "gone", "* * * * *", "", "2026-01-01 00:00Z").await;
    assert_eq!(run_at(&c, "2026-01-01 00:01Z").await, 1);
    let existed: bool = c
        .query_one("SELECT commitq.unschedule('gone')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(existed);
    let again: bool = c
        .query_one("SELECT commitq.unschedule('gone')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!again);
    assert_eq!(run_at(&c, "2026-01-01 00:05Z").await, 0);
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.schedules").await,
        0
    );
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.schedule_ticks").await,
        0
    );
    assert_eq!(scalar(&c, "SELECT count(*) FROM commitq.jobs").await, 1);
}

#[tokio::test]
async fn bad_schedules_are_refused_with_cq001() {
    if skipped_in_sql_only() {
        return;
    }
    let db = TestDb::new("t_schedule_bad").await;
    let c = db.connect().await;
    let cases = [
        (
            "'s', '61 * * * *', 'q', 'k'",
            "invalid cron expression \"61 * * * *\"",
        ),
        (
            "'s', '* * *', 'q', 'k'",
            "invalid cron expression \"* * *\": use 5 fields",
        ),
        (
            "'s', '0 0 0 1 1 * 2030', 'q', 'k'",
            "invalid cron expression",
        ),
        (
            "'s', '@fortnightly', 'q', 'k'",
            "invalid cron expression \"@fortnightly\"",
        ),
        (
            "'s', '0 0 30 2 *', 'q', 'k'",
            "cron expression \"0 0 30 2 *\" never matches",
        ),
        ("'s', NULL, 'q', 'k'", "cron must not be NULL"),
        (
            "'s', '* * * * *', 'q', 'k', timezone => 'Mars/Olympus'",
            "unknown timezone \"Mars/Olympus\"",
        ),
        (
            "'s', '* * * * *', 'q', 'k', timezone => NULL",
            "timezone must not be NULL",
        ),
        (
            "NULL, '* * * * *', 'q', 'k'",
            "schedule name must not be NULL",
        ),
        (
            "'bad name', '* * * * *', 'q', 'k'",
            "invalid schedule name 'bad name'",
        ),
        ("'', '* * * * *', 'q', 'k'", "invalid schedule name ''"),
        ("'s', '* * * * *', 'Bad Queue', 'k'", "invalid queue name"),
        ("'s', '* * * * *', 'q', NULL", "kind must not be NULL"),
        (
            "'s', '* * * * *', 'q', 'k', args => '[]'",
            "args must be a JSON object",
        ),
        (
            "'s', '* * * * *', 'q', 'k', args => '{\"_schedule\": 1}'",
            "args must not have the key _schedule",
        ),
        (
            "'s', '* * * * *', 'q', 'k', priority => 40000",
            "priority 40000 out of range",
        ),
        (
            "'s', '* * * * *', 'q', 'k', max_attempts => 0",
            "max_attempts 0 out of range",
        ),
        (
            "'s', '* * * * *', 'q', 'k', backfill => '-1 hour'",
            "backfill -01:00:00 out of range",
        ),
        (
            "'s', '* * * * *', 'q', 'k', backfill => '2 years'",
            "backfill 2 years out of range",
        ),
        (
            "'s', '* * * * *', 'q', 'k', paused => NULL",
            "paused must not be NULL",
        ),
    ];
    for (args, expected) in cases {
        let e = c
            .query_one(&format!("SELECT commitq.schedule({args})"), &[])
            .await
            .expect_err(args);
        assert_eq!(sqlstate(&e), "CQ001", "{args}: {e}");
        let message = error_message(&e);
        assert!(
            message.starts_with(&format!("commitq: {expected}")),
            "{args}: {message:?}, expected {expected:?}"
        );
    }
    let e = c
        .query_one("SELECT commitq.unschedule(NULL)", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "CQ001");
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.cron_schedules").await,
        0
    );
    // The accepted forms: 5 fields, 6 with seconds, the aliases.
    for cron in [
        "*/5 * * * *",
        "30 */5 * * * *",
        "@yearly",
        "@monthly",
        "@weekly",
        "@daily",
        "@hourly",
    ] {
        c.query_one(
            &format!("SELECT commitq.schedule('ok', '{cron}', 'q', 'k')"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{cron}: {e}"));
    }
}

#[tokio::test]
async fn schedules_are_refused_in_the_sql_only_install() {
    if !sql_only::enabled() {
        return;
    }
    let db = TestDb::new("t_schedule_sql_only").await;
    let c = db.connect().await;
    let e = c
        .query_one("SELECT commitq.schedule('s', '* * * * *', 'q', 'k')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    assert!(
        error_message(&e).contains("cron schedules need the pg_commitq extension"),
        "{e}"
    );
    // Everything else of maintain() works, and the view is there, empty.
    assert_eq!(
        scalar(&c, "SELECT scheduled FROM commitq.maintain()").await,
        0
    );
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM commitq.schedules").await,
        0
    );
}
