//! The engine's server-wide settings, each on a cluster of its own (they
//! would disturb the tests sharing the project cluster): a reload (SIGHUP)
//! reaches the running launcher, and a server with too few background
//! worker slots says so in its log instead of failing silently.

use std::time::Duration;

use commitq_tests::side_cluster::SideCluster;
use commitq_tests::{connect, wait_until, Sql};
use tokio_postgres::Client;

async fn ticks(db: &Client) -> i64 {
    db.row("SELECT ticks FROM commitq.engine_status", &[])
        .await
        .get(0)
}

/// ALTER SYSTEM plus pg_reload_conf(), as a DBA changes a setting.
async fn reload_with(db: &Client, setting: &str, value: &str) {
    // Two statements: ALTER SYSTEM refuses a transaction block, which a
    // multi-statement string is.
    db.batch_execute(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

/// How many ticks the engine makes in `window`, after `settle` for the
/// tick in flight at a change to end.
async fn ticks_during(db: &Client, settle: Duration, window: Duration) -> i64 {
    tokio::time::sleep(settle).await;
    let before = ticks(db).await;
    tokio::time::sleep(window).await;
    ticks(db).await - before
}

/// The launcher reads commitq.engine_interval and commitq.engine_enabled
/// again at a reload: a long interval stops the ticks, a short one takes
/// effect at once (not after the long one has run out), and
/// engine_enabled = off for the server stops them.
#[tokio::test]
async fn a_reload_changes_the_running_engines_interval_and_switch() {
    let cluster = SideCluster::start_with("pg-engine-reload", true);
    let db = connect(&cluster.database("t_engine_reload")).await;
    wait_until(
        "the engine's first tick",
        Duration::from_secs(20),
        async || ticks(&db).await >= 1,
    )
    .await;

    // At the default 1 s a 3 s window holds about 3 ticks.
    reload_with(&db, "commitq.engine_interval", "1h").await;
    let at_one_hour = ticks_during(&db, Duration::from_millis(1500), Duration::from_secs(3)).await;
    assert_eq!(at_one_hour, 0, "ticks went on after the interval became 1h");

    // At 100 ms a 4 s window holds about 40; at 1 s or 1 h, at most 5.
    reload_with(&db, "commitq.engine_interval", "100ms").await;
    let fast = ticks_during(&db, Duration::from_millis(500), Duration::from_secs(4)).await;
    assert!(fast >= 10, "{fast} ticks in 4 s at a 100 ms interval");

    reload_with(&db, "commitq.engine_enabled", "off").await;
    let off = ticks_during(&db, Duration::from_millis(1500), Duration::from_secs(2)).await;
    assert_eq!(off, 0, "ticks went on with commitq.engine_enabled = off");
    let enabled: bool = db
        .row("SELECT enabled FROM commitq.engine_status", &[])
        .await
        .get(0);
    assert!(!enabled, "engine_status says the engine is enabled");
}

/// max_worker_processes = 2 holds only the engine's launcher and the
/// logical replication launcher: no database gets a tick. The log says
/// which setting to raise (once at start, and when a tick finds no slot),
/// and maintain() called by a client still does the work.
#[tokio::test]
async fn too_few_worker_slots_are_logged_and_maintain_still_works() {
    let cluster = SideCluster::start_with("pg-engine-slots", true);
    {
        let admin = connect(&cluster.url("postgres")).await;
        admin
            .batch_execute("ALTER SYSTEM SET max_worker_processes = 2")
            .await
            .unwrap();
    }
    cluster.restart();
    let db = connect(&cluster.database("t_engine_slots")).await;
    wait_until(
        "the log line of a tick without a slot",
        Duration::from_secs(30),
        async || cluster.log().contains("no free background worker slot"),
    )
    .await;
    let log = cluster.log();
    assert!(
        log.contains("max_worker_processes = 2 leaves too few slots"),
        "the launcher did not warn at start; log:\n{log}"
    );
    assert_eq!(ticks(&db).await, 0, "a tick ran without a worker slot");

    let id: i64 = db
        .row(
            "SELECT job_id FROM commitq.enqueue('mail', 'send', '{}', run_at => now())",
            &[],
        )
        .await
        .get(0);
    let claimed = db
        .query(
            "SELECT job_id FROM commitq.claim('mail', 'w', 1, '1 second')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The lease (1 s) runs out; nobody but this client rescues it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rescued: i64 = db
        .row("SELECT rescued FROM commitq.maintain()", &[])
        .await
        .get(0);
    assert_eq!(rescued, 1, "maintain() did not rescue job {id}");
}
