//! Security as a matrix: every function and table of the commitq schema,
//! against every kind of role (owner, producer, worker, operator, a role with
//! no grant, PUBLIC), checked both in the catalog and by calling. (What a
//! caller's search_path can do is in search_path.rs.)

use commitq_tests::{connect, enqueue_claim_complete_as, sqlstate, TestDb};
use tokio_postgres::Client;

/// Who may call what. A function of the schema that is not listed here fails
/// the matrix test, so a new function cannot ship without a decision.
/// (function name, roles granted EXECUTE, a call that is valid SQL for it)
const FUNCTIONS: &[(&str, &[&str], &str)] = &[
    (
        "enqueue",
        &["producer"],
        "SELECT * FROM commitq.enqueue('q', 'k', '{}')",
    ),
    (
        "enqueue_many",
        &["producer"],
        "SELECT * FROM commitq.enqueue_many('q', 'k', ARRAY['{}']::jsonb[])",
    ),
    (
        "enqueue_many(jsonb)",
        &["producer"],
        "SELECT * FROM commitq.enqueue_many('[{\"queue\": \"q\", \"kind\": \"k\"}]'::jsonb)",
    ),
    (
        "claim",
        &["worker"],
        "SELECT * FROM commitq.claim('q', 'w', 1)",
    ),
    ("complete", &["worker"], "SELECT commitq.complete(1, 1)"),
    (
        "complete_many",
        &["worker"],
        "SELECT * FROM commitq.complete_many(ARRAY[1]::bigint[], ARRAY[1]::bigint[])",
    ),
    (
        "complete_and_claim",
        &["worker"],
        "SELECT * FROM commitq.complete_and_claim('{}', '{}', 'q', 'w', 1, '1 minute')",
    ),
    (
        "complete_and_take",
        &["worker"],
        "SELECT * FROM commitq.complete_and_take('{}', '{}', 'w')",
    ),
    (
        "stop_waiting",
        &["worker"],
        "SELECT commitq.stop_waiting('q', 'w')",
    ),
    (
        "start_waiting",
        &["worker"],
        "SELECT commitq.start_waiting('q', 'w')",
    ),
    // The waiting claim, a procedure (sql/claim_wait.sql).
    (
        "claim_wait",
        &["worker"],
        "CALL commitq.claim_wait('q', 'w', 1, '1 minute', '0 seconds')",
    ),
    (
        "wait_supported",
        &["worker"],
        "SELECT commitq.wait_supported()",
    ),
    (
        "fail",
        &["worker"],
        "SELECT * FROM commitq.fail(1, 1, 'boom')",
    ),
    (
        "heartbeat",
        &["worker"],
        "SELECT * FROM commitq.heartbeat(1, 1)",
    ),
    (
        "snooze",
        &["worker"],
        "SELECT commitq.snooze(1, 1, '1 minute')",
    ),
    (
        "assert_lease",
        &["worker"],
        "SELECT commitq.assert_lease(1, 1)",
    ),
    (
        "effect_begin",
        &["worker"],
        "SELECT * FROM commitq.effect_begin(1, 1, 'charge')",
    ),
    (
        "effect_done",
        &["worker"],
        "SELECT commitq.effect_done(1, 1, 'charge', '{}')",
    ),
    ("maintain", &["worker"], "SELECT * FROM commitq.maintain()"),
    (
        "try_acquire_lease",
        &["producer", "worker"],
        "SELECT commitq.try_acquire_lease('cron', 'me', '1 minute')",
    ),
    (
        "acquire_lease",
        &["producer", "worker"],
        "SELECT commitq.acquire_lease('cron2', 'me', '1 minute', '1 second')",
    ),
    (
        "renew_lease",
        &["producer", "worker"],
        "SELECT commitq.renew_lease('cron', 1, '1 minute')",
    ),
    (
        "release_lease",
        &["producer", "worker"],
        "SELECT commitq.release_lease('cron', 1)",
    ),
    (
        "assert_fencing_token",
        &["producer", "worker"],
        "SELECT commitq.assert_fencing_token('cron', 1)",
    ),
    ("cancel", &["operator"], "SELECT commitq.cancel(1)"),
    // Internal, but the view commitq.engine_status calls it with the
    // reader's privileges.
    (
        "_engine_status",
        &["operator", "reader"],
        "SELECT * FROM commitq._engine_status()",
    ),
    // Internal; the view commitq.queue_stats calls it as its reader.
    (
        "_available_by_queue",
        &["operator", "reader"],
        "SELECT * FROM commitq._available_by_queue()",
    ),
    ("retry", &["operator"], "SELECT commitq.retry(1)"),
    (
        "set_concurrency_limit",
        &["operator"],
        "SELECT commitq.set_concurrency_limit('tenant:*', 3)",
    ),
    (
        "schedule",
        &["operator"],
        "SELECT commitq.schedule('nightly', '0 3 * * *', 'q', 'k')",
    ),
    (
        "unschedule",
        &["operator"],
        "SELECT commitq.unschedule('nightly')",
    ),
    ("pause", &["operator"], "SELECT commitq.pause('q')"),
    (
        "set_rate_limit",
        &["operator"],
        "SELECT commitq.set_rate_limit('queue:q', 10, '1 second')",
    ),
    (
        "set_fairness",
        &["operator"],
        "SELECT commitq.set_fairness('q', 'tenant:')",
    ),
    ("resume", &["operator"], "SELECT commitq.resume('q')"),
    // For the database's owner only (pg_database_owner), none of the roles
    // here: tests/database_grants.rs.
    (
        "grant_producer",
        &[],
        "SELECT commitq.grant_producer(current_user::regrole)",
    ),
    (
        "grant_worker",
        &[],
        "SELECT commitq.grant_worker(current_user::regrole)",
    ),
    (
        "grant_operator",
        &[],
        "SELECT commitq.grant_operator(current_user::regrole)",
    ),
    (
        "grant_reader",
        &[],
        "SELECT commitq.grant_reader(current_user::regrole)",
    ),
    (
        "revoke_reader",
        &[],
        "SELECT commitq.revoke_reader(current_user::regrole)",
    ),
    (
        "revoke_producer",
        &[],
        "SELECT commitq.revoke_producer(current_user::regrole)",
    ),
    (
        "revoke_worker",
        &[],
        "SELECT commitq.revoke_worker(current_user::regrole)",
    ),
    (
        "revoke_operator",
        &[],
        "SELECT commitq.revoke_operator(current_user::regrole)",
    ),
];

/// Roles of the matrix: (name in the matrix, granted role). Each test logs
/// in as roles of its own (roles are cluster-wide, tests run at once).
const ROLES: &[(&str, Option<&str>)] = &[
    ("producer", Some("commitq_producer")),
    ("worker", Some("commitq_worker")),
    ("operator", Some("commitq_operator")),
    ("reader", Some("commitq_reader")),
    ("stranger", None),
];

fn login(test: &str, role: &str) -> String {
    format!("cq_{test}_{role}")
}

/// The operator role is granted producer and worker too, and reads
/// whatever the reader reads.
fn may_execute(role: &str, granted: &[&str]) -> bool {
    granted.contains(&role) || (role == "operator" && !granted.is_empty())
}

/// What commitq_reader may SELECT: the monitoring views, and nothing else
/// of the schema (no table, so no column a view leaves out).
const READER_VIEWS: &[&str] = &[
    "concurrency_key_stats",
    "engine_status",
    "flow_control",
    "job_list",
    "named_lease_holders",
    "queue_stats",
    "schedules",
    "throughput",
];

async fn setup_roles(db: &TestDb, test: &str) -> Client {
    let admin = db.connect().await;
    for (role, grant) in ROLES {
        let login = login(test, role);
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {login}; CREATE ROLE {login} LOGIN;"
            ))
            .await
            .unwrap();
        if let Some(grant) = grant {
            admin
                .batch_execute(&format!("GRANT {grant} TO {login}"))
                .await
                .unwrap();
        }
    }
    admin
}

#[tokio::test]
async fn every_function_and_table_has_exactly_the_grants_of_the_matrix() {
    let db = TestDb::new("t_sec_matrix").await;
    let admin = setup_roles(&db, "matrix").await;

    // The catalog: each function of the schema is listed, internal ones
    // (named _...) are executable by nobody but the owner unless the matrix
    // lists them, and no function,
    // table, sequence or type is granted to PUBLIC.
    let functions = admin
        .query(
            "SELECT p.proname::text, p.oid::regprocedure::text, p.oid::oid
               FROM pg_proc p WHERE p.pronamespace = 'commitq'::regnamespace ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    assert!(functions.len() > 30, "{} functions", functions.len());
    for f in &functions {
        let (name, signature, oid): (String, String, u32) = (f.get(0), f.get(1), f.get(2));
        let listed = FUNCTIONS.iter().find(|(n, _, _)| *n == name);
        let granted: &[&str] =
            if let Some((_, granted, _)) = listed.filter(|_| name.starts_with('_')) {
                granted
            } else if name.starts_with('_') {
                &[]
            } else {
                let key = if signature == "commitq.enqueue_many(jsonb)" {
                    "enqueue_many(jsonb)".to_string()
                } else {
                    name.clone()
                };
                FUNCTIONS
                    .iter()
                    .find(|(n, _, _)| *n == key)
                    .unwrap_or_else(|| panic!("{signature} is not in the grant matrix"))
                    .1
            };
        for (role, _) in ROLES {
            let can: bool = admin
                .query_one(
                    "SELECT has_function_privilege($1, $2::oid, 'EXECUTE')",
                    &[&login("matrix", role), &oid],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                can,
                may_execute(role, granted),
                "{role} EXECUTE on {signature}"
            );
        }
    }

    // Tables (and views): operators read everything and change only config;
    // readers read the monitoring views; nobody else touches a table
    // directly (everything goes through the functions).
    let tables = admin
        .query(
            "SELECT c.relname::text FROM pg_class c
              WHERE c.relnamespace = 'commitq'::regnamespace AND c.relkind IN ('r', 'S', 'v') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert!(tables.len() >= 10);
    for t in &tables {
        let table: String = t.get(0);
        for (role, _) in ROLES {
            let login = login("matrix", role);
            for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
                let can: bool = admin
                    .query_one(
                        "SELECT CASE WHEN c.relkind = 'S'
                                     THEN has_sequence_privilege($1, c.oid, CASE $3 WHEN 'INSERT' THEN 'USAGE' WHEN 'DELETE' THEN 'USAGE' ELSE $3 END)
                                     ELSE has_table_privilege($1, c.oid, $3) END
                           FROM pg_class c WHERE c.relnamespace = 'commitq'::regnamespace AND c.relname = $2",
                        &[&login, &table, &privilege],
                    )
                    .await
                    .unwrap()
                    .get(0);
                let expected = *role == "operator"
                    && (privilege == "SELECT" || (privilege == "UPDATE" && table == "config"));
                let expected = expected && !table.ends_with("_seq")
                    || (*role == "reader"
                        && privilege == "SELECT"
                        && READER_VIEWS.contains(&table.as_str()));
                assert_eq!(can, expected, "{role} {privilege} on commitq.{table}");
            }
        }
    }

    let public: i64 = admin
        .query_one(
            "SELECT count(*) FROM (
                 SELECT 1 FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                  WHERE p.pronamespace = 'commitq'::regnamespace AND a.grantee = 0
                 UNION ALL
                 SELECT 1 FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                  WHERE c.relnamespace = 'commitq'::regnamespace AND a.grantee = 0
                 UNION ALL
                 SELECT 1 FROM pg_type t, aclexplode(coalesce(t.typacl, acldefault('T', t.typowner))) a
                  -- array types have no privileges of their own
                  WHERE t.typnamespace = 'commitq'::regnamespace AND t.typcategory <> 'A'
                    AND a.grantee = 0
                 UNION ALL
                 SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                  WHERE n.nspname = 'commitq' AND a.grantee = 0) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        public, 0,
        "something in the commitq schema is granted to PUBLIC"
    );
}

#[tokio::test]
async fn calling_every_function_as_every_role_matches_the_matrix() {
    let db = TestDb::new("t_sec_calls").await;
    setup_roles(&db, "calls").await;
    for (role, _) in ROLES {
        let c = connect(&db.url_as(&login("calls", role))).await;
        for (name, granted, sql) in FUNCTIONS {
            // In a transaction that is rolled back: the call's own outcome
            // (not found, stale lease, ...) does not matter, only whether
            // the role was let in.
            c.batch_execute("BEGIN").await.unwrap();
            let result = c.batch_execute(sql).await;
            c.batch_execute("ROLLBACK").await.unwrap();
            let refused = matches!(&result, Err(e) if sqlstate(e) == "42501");
            assert_eq!(
                !refused,
                may_execute(role, granted),
                "{role} calling {name}: {result:?}"
            );
        }
        for sql in [
            "SELECT count(*) FROM commitq.jobs",
            "DELETE FROM commitq.jobs",
            "UPDATE commitq.config SET keep_completed = true",
        ] {
            c.batch_execute("BEGIN").await.unwrap();
            let result = c.batch_execute(sql).await;
            c.batch_execute("ROLLBACK").await.unwrap();
            let refused = matches!(&result, Err(e) if sqlstate(e) == "42501");
            let allowed = *role == "operator" && !sql.starts_with("DELETE");
            assert_eq!(!refused, allowed, "{role}: {sql}: {result:?}");
        }
        // Reading every view, for real (a view whose function or type the
        // reader may not use fails here, not in the catalog).
        for view in READER_VIEWS {
            let sql = format!("SELECT * FROM commitq.{view} LIMIT 1");
            let result = c.batch_execute(&sql).await;
            let refused = matches!(&result, Err(e) if sqlstate(e) == "42501");
            let allowed = *role == "operator" || *role == "reader";
            assert_eq!(!refused, allowed, "{role}: {sql}: {result:?}");
            if allowed {
                result.unwrap();
            }
        }
    }
    // The granted roles do their whole part, not only get past the grant
    // check: a producer's job is claimed and completed by a worker.
    let producer = connect(&db.url_as(&login("calls", "producer"))).await;
    let worker = connect(&db.url_as(&login("calls", "worker"))).await;
    enqueue_claim_complete_as(&producer, &worker).await;
}
