//! The `commitq` command line, run as a binary against the project cluster:
//! tables and JSON, filters and paging, bulk actions with their count and
//! confirmation, roles, and the exit codes and hints of docs/cli.md.

mod support;

use serde_json::Value;
use support::*;

#[tokio::test]
async fn status_shows_each_queue_as_a_table_and_as_json() {
    let db = db("cli_status").await;
    let c = db.connect().await;
    for _ in 0..3 {
        enqueue(&c, "mail", "welcome", "{}").await;
    }
    enqueue(&c, "billing", "charge", "{}").await;

    let table = run_ok(&db.url, &["status"], 0);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("QUEUE"), "{table}");
    let mail = table.lines().find(|l| l.starts_with("mail")).unwrap();
    assert_eq!(mail.split_whitespace().nth(1), Some("3"), "{table}");

    let json: Value = serde_json::from_str(&run_ok(&db.url, &["status", "--json"], 0)).unwrap();
    let queues: Vec<(&str, i64)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["queue"].as_str().unwrap(),
                q["available"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(queues, [("billing", 1), ("mail", 3)]);
}

#[tokio::test]
async fn jobs_list_filters_by_queue_state_and_kind_and_pages_by_id() {
    let db = db("cli_jobs_list").await;
    let c = db.connect().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(enqueue(&c, "mail", if i % 2 == 0 { "even" } else { "odd" }, "{}").await);
    }
    enqueue(&c, "other", "even", "{}").await;
    let list = |args: &[&str]| -> Value {
        let mut all = vec!["jobs", "list", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&run_ok(&db.url, &all, 0)).unwrap()
    };
    let page_ids = |v: &Value| -> Vec<i64> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };

    let first = list(&["--queue", "mail", "--limit", "2"]);
    assert_eq!(page_ids(&first), [ids[4], ids[3]]);
    let before = first["next_before"].as_i64().unwrap().to_string();
    let second = list(&["--queue", "mail", "--limit", "2", "--before", &before]);
    assert_eq!(page_ids(&second), [ids[2], ids[1]]);

    let even = list(&["--queue", "mail", "--kind", "even", "--state", "available"]);
    assert_eq!(page_ids(&even), [ids[4], ids[2], ids[0]]);
    assert!(even["next_before"].is_null());
    assert!(page_ids(&list(&["--state", "running"])).is_empty());

    let table = run_ok(
        &db.url,
        &["jobs", "list", "--queue", "mail", "--limit", "2"],
        0,
    );
    assert!(
        table.contains(&format!("next page: --before {}", ids[3])),
        "{table}"
    );
    // An unknown state is a usage error, caught before connecting.
    run_ok(&db.url, &["jobs", "list", "--state", "lost"], 2);
}

#[tokio::test]
async fn jobs_show_prints_args_attempts_and_error_history() {
    let db = db("cli_jobs_show").await;
    let c = db.connect().await;
    enqueue(&c, "mail", "welcome", r#"{"user": 42}"#).await;
    let id = claim_and_fail(&c, "mail", "smtp said no").await;

    let text = run_ok(&db.url, &["jobs", "show", &id.to_string()], 0);
    assert!(text.contains("discarded"), "{text}");
    assert!(text.contains("\"user\": 42"), "{text}");
    assert!(text.contains("smtp said no"), "{text}");
    assert!(text.contains("test-worker"), "{text}");

    let json: Value = serde_json::from_str(&run_ok(
        &db.url,
        &["jobs", "show", &id.to_string(), "--json"],
        0,
    ))
    .unwrap();
    assert_eq!(json["errors"][0]["error"], "smtp said no");
    assert_eq!(json["attempt"], 1);

    let o = run(&db.url, &["jobs", "show", "999999"], "");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("job 999999 not found"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn bulk_retry_counts_asks_and_acts_only_when_confirmed() {
    let db = db("cli_bulk_retry").await;
    let c = db.connect().await;
    let mut discarded = Vec::new();
    for _ in 0..3 {
        enqueue(&c, "mail", "welcome", "{}").await;
        discarded.push(claim_and_fail(&c, "mail", "boom").await);
    }
    enqueue(&c, "other", "welcome", "{}").await;
    let other = claim_and_fail(&c, "other", "boom").await;

    // No id and no filter: refused, whatever the answer would be.
    let o = run(&db.url, &["retry"], "y\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--all"), "{}", stderr(&o));

    // Counted, asked, declined: nothing changes.
    let o = run(&db.url, &["retry", "--queue", "mail"], "n\n");
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 jobs match"), "{}", stderr(&o));
    for id in &discarded {
        assert_eq!(job_state(&c, *id).await, "discarded");
    }

    // Confirmed: the three of queue mail run again, the other stays.
    let o = run(&db.url, &["retry", "--queue", "mail"], "y\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("retried 3 of 3"), "{}", stdout(&o));
    for id in &discarded {
        assert_eq!(job_state(&c, *id).await, "available");
    }
    assert_eq!(job_state(&c, other).await, "discarded");

    // A state the action does not apply to is a usage error.
    run_ok(&db.url, &["retry", "--state", "running", "--yes"], 2);
}

#[tokio::test]
async fn cancel_one_job_and_every_job_of_a_kind() {
    let db = db("cli_cancel").await;
    let c = db.connect().await;
    let one = enqueue(&c, "mail", "a", "{}").await;
    let b1 = enqueue(&c, "mail", "b", "{}").await;
    let b2 = enqueue(&c, "mail", "b", "{}").await;

    assert_eq!(
        run_ok(&db.url, &["cancel", &one.to_string()], 0).trim(),
        format!("job {one}: cancelled")
    );
    let json: Value = serde_json::from_str(&run_ok(
        &db.url,
        &["cancel", "--kind", "b", "--yes", "--json"],
        0,
    ))
    .unwrap();
    assert_eq!(json["done"], 2);
    assert_eq!(job_state(&c, b1).await, "cancelled");
    assert_eq!(job_state(&c, b2).await, "cancelled");
    // Retrying an available job is the wrong state: exit 7.
    let again = enqueue(&c, "mail", "a", "{}").await;
    run_ok(&db.url, &["retry", &again.to_string()], 7);
}

#[tokio::test]
async fn enqueue_takes_args_from_the_argument_or_stdin() {
    let db = db("cli_enqueue").await;
    let c = db.connect().await;
    let out = run_ok(
        &db.url,
        &["enqueue", "mail", "welcome", r#"{"user": 1}"#, "--json"],
        0,
    );
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_i64()
        .unwrap();
    let o = run(
        &db.url,
        &["enqueue", "mail", "welcome", "-", "--priority", "3"],
        r#"{"user": 2}"#,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let args: Vec<Value> = c
        .query("SELECT args FROM commitq.jobs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        args,
        [
            serde_json::json!({"user": 1}),
            serde_json::json!({"user": 2})
        ]
    );
    assert!(id > 0);

    let o = run(&db.url, &["enqueue", "mail", "welcome", "{not json"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("args are not JSON"), "{}", stderr(&o));
    // The database's own validation (CQ001) is a usage error too.
    run_ok(&db.url, &["enqueue", "", "welcome"], 2);
}

#[tokio::test]
async fn pause_resume_schedules_and_maintain() {
    let db = db("cli_pause").await;
    let c = db.connect().await;
    enqueue(&c, "mail", "welcome", "{}").await;
    assert_eq!(
        run_ok(&db.url, &["pause", "mail"], 0).trim(),
        "queue mail paused"
    );
    assert_eq!(
        run_ok(&db.url, &["pause", "mail"], 0).trim(),
        "queue mail was already paused"
    );
    let status = run_ok(&db.url, &["status"], 0);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("mail") && l.contains("paused")),
        "{status}"
    );
    assert_eq!(
        run_ok(&db.url, &["resume", "mail"], 0).trim(),
        "queue mail resumed"
    );

    c.batch_execute(
        "SELECT commitq.schedule(name => 'nightly', cron => '0 3 * * *', queue => 'mail', kind => 'digest')",
    )
    .await
    .unwrap();
    let schedules = run_ok(&db.url, &["schedules"], 0);
    assert!(
        schedules
            .lines()
            .any(|l| l.starts_with("nightly") && l.contains("0 3 * * *")),
        "{schedules}"
    );

    let m: Value = serde_json::from_str(&run_ok(&db.url, &["maintain", "--json"], 0)).unwrap();
    assert!(m["rescued"].is_i64(), "{m}");
}

#[tokio::test]
async fn a_reader_reads_and_is_refused_actions_with_exit_code_4() {
    let db = db("cli_reader").await;
    let c = db.connect().await;
    enqueue(&c, "mail", "welcome", "{}").await;
    let id = claim_and_fail(&c, "mail", "boom").await;
    let reader = login_role(&db, "cli_test_reader", "commitq_reader").await;

    run_ok(&reader, &["status"], 0);
    run_ok(&reader, &["jobs", "show", &id.to_string()], 0);
    for args in [vec!["retry", &id.to_string()[..]], vec!["pause", "mail"]] {
        let o = run(&reader, &args, "");
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("GRANT commitq_operator"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(job_state(&c, id).await, "discarded");
}

#[tokio::test]
async fn connection_problems_have_their_exit_codes_and_say_what_to_do() {
    let db = db("cli_connection").await;
    // No server on this port.
    let o = run(
        "host=127.0.0.1 port=1 dbname=x connect_timeout=5",
        &["status"],
        "",
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is PostgreSQL running"),
        "{}",
        stderr(&o)
    );
    // A database that does not exist.
    let missing = commitq_tests::with_dbname(&db.url, "cli_no_such_database");
    let o = run(&missing, &["status"], "");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // A database without commitq.
    let bare = commitq_tests::with_dbname(&db.url, "postgres");
    let o = run(&bare, &["status"], "");
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("CREATE EXTENSION pg_commitq"),
        "{}",
        stderr(&o)
    );
    // A role that does not exist.
    let o = run(&db.url_as("cli_no_such_role"), &["status"], "");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("user="), "{}", stderr(&o));
    // No URL at all.
    let o = std::process::Command::new(BIN)
        .arg("status")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("DATABASE_URL"), "{}", stderr(&o));
}
