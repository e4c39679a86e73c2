//! The engine: with `shared_preload_libraries = 'pg_commitq'` (the project
//! cluster has it, dev/cluster.sh), background workers run maintain() in
//! every database that has the extension, and no client calls it here. The
//! last test starts a second cluster without the preload line and checks
//! that nothing runs there and maintain() still does the work.
//!
//! These tests need the preload line: on a cluster started with
//! COMMITQ_PRELOAD=0 they fail and say so, rather than pass having checked
//! nothing.

use commitq_tests::side_cluster::SideCluster;
use commitq_tests::{cluster_url, connect, no_backoff, wait_until, with_dbname, Sql, TestDb};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The engine's interval on the project cluster (commitq.engine_interval's
/// default); waits below allow a few of them.
const TICK: Duration = Duration::from_secs(1);

/// Fail unless the cluster preloads the library.
async fn require_engine(admin: &Client) {
    let preload: String = admin
        .query_one("SHOW shared_preload_libraries", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        preload.split(',').any(|l| l.trim() == "pg_commitq"),
        "the engine tests need shared_preload_libraries = 'pg_commitq' (got {preload:?}): \
         the cluster was started without it (COMMITQ_PRELOAD=0?); restart it with dev/cluster.sh"
    );
    let launchers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'commitq engine launcher'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(launchers, 1, "no commitq engine launcher is running");
}

/// A test's database with the engine on (TestDb turns it off).
async fn engine_db(name: &str) -> TestDb {
    let admin = connect(&cluster_url()).await;
    require_engine(&admin).await;
    let db = TestDb::new(name).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET commitq.engine_enabled = on",
            db.name
        ))
        .await
        .unwrap();
    // A database found with the engine off is looked at again only every
    // few ticks: wait for its first tick, so that the tests time what
    // follows from a running engine.
    let c = db.connect().await;
    wait_until("the engine's first tick", 10 * TICK, async || {
        ticks(&c).await.0 >= 1
    })
    .await;
    db
}

/// The engine's counters in the database `db` is connected to.
async fn ticks(db: &impl Sql) -> (i64, i64) {
    let row = db
        .row("SELECT ticks, errors FROM commitq.engine_status", &[])
        .await;
    (row.get(0), row.get(1))
}

async fn job_state(db: &impl Sql, id: i64) -> String {
    db.row(
        "SELECT coalesce((SELECT state::text FROM commitq.jobs WHERE id = $1), \
                (SELECT state::text FROM commitq.finished_jobs WHERE id = $1), 'gone')",
        &[&id],
    )
    .await
    .get(0)
}

fn psql() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("{pg_config} --bindir: {e}"));
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("psql")
}

/// A worker process dies (SIGKILL) holding a job. Nobody calls maintain():
/// the engine rescues the job once its lease has expired, and another
/// worker claims and completes it.
#[tokio::test]
async fn a_killed_workers_job_is_rescued_and_completed_without_maintain() {
    let db = engine_db("t_engine_rescue").await;
    let c = db.connect().await;
    no_backoff(&c).await;
    let id: i64 = c
        .row(
            "SELECT job_id FROM commitq.enqueue('mail', 'send', '{}')",
            &[],
        )
        .await
        .get(0);

    // The doomed worker: a psql process that claims with a 2 s lease, then
    // works on it for longer than that.
    let mut child = Command::new(psql())
        .arg(&db.url)
        .args([
            "-X",
            "-q",
            "-c",
            "SELECT job_id FROM commitq.claim('mail', 'doomed', 1, '2 seconds')",
            "-c",
            "SELECT pg_sleep(30)",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start psql");
    wait_until("the doomed worker's claim", 10 * TICK, async || {
        job_state(&c, id).await == "running"
    })
    .await;
    child.kill().expect("SIGKILL the worker");
    child.wait().unwrap();
    let killed = Instant::now();

    // Its lease runs out after 2 s; a tick after that the job is rescued,
    // and (no backoff) promoted by the same or the next tick.
    wait_until("the engine to rescue the job", 10 * TICK, async || {
        job_state(&c, id).await == "available"
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(2) + 4 * TICK,
        "rescued after {:?}",
        killed.elapsed()
    );
    let row = c
        .row(
            "SELECT job_id, lease_token, attempt FROM commitq.claim('mail', 'survivor', 1, '1 minute')",
            &[],
        )
        .await;
    let (claimed, token, attempt): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((claimed, attempt), (id, 2));
    c.run(&format!("SELECT commitq.complete({id}, {token})"))
        .await;
    assert_eq!(job_state(&c, id).await, "gone");
    // The killed psql's backend still sleeps; end it.
    c.run(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
           WHERE datname = current_database() AND query = 'SELECT pg_sleep(30)'",
    )
    .await;
}

/// A job scheduled 2 s ahead becomes available about then, with no client
/// calling maintain.
#[tokio::test]
async fn a_scheduled_job_becomes_available_on_time() {
    let db = engine_db("t_engine_schedule").await;
    let c = db.connect().await;
    let id: i64 = c
        .row(
            "SELECT job_id FROM commitq.enqueue('mail', 'send', '{}', run_at => now() + interval '2 seconds')",
            &[],
        )
        .await
        .get(0);
    let start = Instant::now();
    wait_until("the job to become available", 10 * TICK, async || {
        job_state(&c, id).await == "available"
    })
    .await;
    let after = start.elapsed();
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(2) + 2 * TICK,
        "available after {after:?}, due after 2 s"
    );
}

/// A database that gets the extension after the engine started is picked
/// up without a restart.
#[tokio::test]
async fn the_launcher_picks_up_a_database_created_after_start() {
    let admin = connect(&cluster_url()).await;
    require_engine(&admin).await;
    let name = "t_engine_late";
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let c = connect(&with_dbname(&cluster_url(), name)).await;
    // A few ticks without the extension, then it arrives.
    tokio::time::sleep(3 * TICK).await;
    c.batch_execute("CREATE EXTENSION pg_commitq")
        .await
        .unwrap();
    wait_until(
        "the engine's first tick in the new database",
        15 * TICK,
        async || ticks(&c).await.0 > 0,
    )
    .await;
}

/// A plain DROP DATABASE (which waits for other sessions to leave, and
/// fails after 5 s) goes through while the engine ticks in that database.
#[tokio::test]
async fn a_database_can_be_dropped_while_the_engine_runs() {
    let admin = connect(&cluster_url()).await;
    for round in 0..3 {
        let db = engine_db("t_engine_drop").await;
        {
            let c = db.connect().await;
            wait_until("a tick", 10 * TICK, async || ticks(&c).await.0 >= 2).await;
        }
        // At a different moment of the tick each round.
        tokio::time::sleep(TICK * round / 3).await;
        let start = Instant::now();
        admin
            .batch_execute(&format!("DROP DATABASE \"{}\"", db.name))
            .await
            .unwrap_or_else(|e| panic!("round {round}: DROP DATABASE: {e:?}"));
        // A worker still connected would hold the drop for PostgreSQL's
        // full 5 s and then fail it; a tick's few milliseconds, plus what
        // a loaded machine adds to the drop itself, stay well below that.
        assert!(
            start.elapsed() < 4 * TICK,
            "round {round}: DROP DATABASE took {:?}",
            start.elapsed()
        );
    }
}

/// commitq.engine_enabled = off for one database stops its ticks (and a
/// due job stays scheduled); on again, they resume.
#[tokio::test]
async fn engine_enabled_off_stops_one_databases_ticks() {
    let admin = connect(&cluster_url()).await;
    let db = engine_db("t_engine_off").await;
    let c = db.connect().await;
    wait_until("a tick", 10 * TICK, async || ticks(&c).await.0 >= 1).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET commitq.engine_enabled = off",
            db.name
        ))
        .await
        .unwrap();
    // A tick that had started before may still finish.
    tokio::time::sleep(2 * TICK).await;
    let before = ticks(&c).await.0;
    let id: i64 = c
        .row(
            "SELECT job_id FROM commitq.enqueue('mail', 'send', '{}', run_at => now() + interval '1 second')",
            &[],
        )
        .await
        .get(0);
    tokio::time::sleep(4 * TICK).await;
    assert_eq!(ticks(&c).await.0, before, "ticks went on while off");
    assert_eq!(job_state(&c, id).await, "scheduled");

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET commitq.engine_enabled = on",
            db.name
        ))
        .await
        .unwrap();
    wait_until("ticks to resume", 15 * TICK, async || {
        job_state(&c, id).await == "available"
    })
    .await;
    assert!(ticks(&c).await.0 > before);
}

/// The view shows the ticks, then the error of a failing tick (maintain
/// cannot lock commitq.config within its lock_timeout), then the recovery;
/// commitq_operator may read it.
#[tokio::test]
async fn the_status_view_shows_ticks_an_error_and_the_recovery() {
    let db = engine_db("t_engine_status").await;
    let c = db.connect().await;
    wait_until("two ticks", 10 * TICK, async || ticks(&c).await.0 >= 2).await;
    let row = c
        .row(
            "SELECT engine_loaded, enabled, errors, last_tick_at > now() - interval '5 seconds', \
                    last_tick_duration < interval '1 second', last_error IS NULL \
               FROM commitq.engine_status",
            &[],
        )
        .await;
    let seen: (bool, bool, i64, bool, bool, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(seen, (true, true, 0, true, true, true));

    // Hold the config table so that maintain fails with a lock timeout.
    let blocker = db.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE commitq.config IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    wait_until("a failed tick", 10 * TICK, async || ticks(&c).await.1 >= 1).await;
    let error: String = c
        .row("SELECT last_error FROM commitq.engine_status", &[])
        .await
        .get(0);
    assert!(error.contains("lock timeout"), "last_error: {error}");
    blocker.batch_execute("COMMIT").await.unwrap();

    wait_until("a good tick after the error", 10 * TICK, async || {
        c.row(
            "SELECT last_ok_at > last_error_at FROM commitq.engine_status",
            &[],
        )
        .await
        .get::<_, bool>(0)
    })
    .await;

    // commitq_operator reads it.
    c.batch_execute("SET ROLE commitq_operator").await.unwrap();
    let (t, _) = ticks(&c).await;
    assert!(t >= 3);
}

/// Without the preload line (a second cluster, COMMITQ_PRELOAD=0) there is
/// no engine: the view says so, a due job waits, and maintain() called by a
/// client still makes it available.
#[tokio::test]
async fn without_the_preload_line_maintain_is_still_needed_and_works() {
    let cluster = SideCluster::start("pg-nopreload");
    let c = connect(&cluster.database("t_engine_nopreload")).await;

    let preload: String = c.row("SHOW shared_preload_libraries", &[]).await.get(0);
    assert_eq!(preload, "");
    let row = c
        .row(
            "SELECT engine_loaded, enabled, ticks FROM commitq.engine_status",
            &[],
        )
        .await;
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, i64>(2)
        ),
        (false, false, 0)
    );
    let id: i64 = c
        .row(
            "SELECT job_id FROM commitq.enqueue('mail', 'send', '{}', run_at => now() + interval '1 second')",
            &[],
        )
        .await
        .get(0);
    tokio::time::sleep(3 * TICK).await;
    assert_eq!(job_state(&c, id).await, "scheduled", "something maintained");
    let promoted: i64 = c
        .row("SELECT promoted FROM commitq.maintain()", &[])
        .await
        .get(0);
    assert_eq!(promoted, 1);
    assert_eq!(job_state(&c, id).await, "available");
}
