//! Grants per database. Roles are cluster-wide, so a role granted
//! commitq_producer may enqueue in every database that installs commitq;
//! commitq.grant_producer and friends give the same privileges inside one
//! database only. The role matrix of security.rs, over two databases: a role
//! granted in database A uses commitq there and is refused (42501) in B, the
//! cluster roles still work in both, each per-database kind has exactly the
//! privileges of its cluster role, only the database's owner or a superuser
//! may grant, and a revoke takes the privileges back.

use commitq_tests::{connect, enqueue_claim_complete_as, sqlstate, TestDb};
use tokio_postgres::Client;

const KINDS: [&str; 4] = ["producer", "worker", "operator", "reader"];

/// Login roles of one test, created once and kept (roles are cluster-wide;
/// a role's privileges go with the databases each test re-creates).
async fn ensure_roles(admin: &Client, roles: &[String]) {
    for role in roles {
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN
                     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                         CREATE ROLE {role} LOGIN;
                     END IF;
                 END $$"
            ))
            .await
            .unwrap();
    }
}

/// The statement's outcome: Ok, or the SQLSTATE it failed with. Run in a
/// transaction rolled back, so that only being let in matters.
async fn attempt(c: &Client, sql: &str) -> Result<(), String> {
    c.batch_execute("BEGIN").await.unwrap();
    let result = c.batch_execute(sql).await.map_err(|e| sqlstate(&e));
    c.batch_execute("ROLLBACK").await.unwrap();
    result
}

const ENQUEUE: &str = "SELECT * FROM commitq.enqueue('q', 'k', '{}')";
const CLAIM: &str = "SELECT * FROM commitq.claim('q', 'w', 1)";
const CANCEL: &str = "SELECT commitq.cancel(1)";
const READ: &str = "SELECT * FROM commitq.queue_stats";

/// Every privilege on the commitq schema and its objects where the two roles
/// differ, as "privilege object: first second".
async fn privileges_differing(c: &Client, first: &str, second: &str) -> Vec<String> {
    c.query(
        "SELECT what || ': ' || a || ' ' || b FROM (
             SELECT 'EXECUTE ' || p.oid::regprocedure AS what,
                    has_function_privilege($1, p.oid, 'EXECUTE') AS a,
                    has_function_privilege($2, p.oid, 'EXECUTE') AS b
               FROM pg_proc p WHERE p.pronamespace = 'commitq'::regnamespace
             UNION ALL
             SELECT priv || ' ' || c.oid::regclass, has_table_privilege($1, c.oid, priv),
                    has_table_privilege($2, c.oid, priv)
               FROM pg_class c,
                    unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) priv
              WHERE c.relnamespace = 'commitq'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S')
             UNION ALL
             SELECT 'USAGE ' || t.oid::regtype, has_type_privilege($1, t.oid, 'USAGE'),
                    has_type_privilege($2, t.oid, 'USAGE')
               FROM pg_type t WHERE t.typnamespace = 'commitq'::regnamespace AND t.typcategory <> 'A'
             UNION ALL
             SELECT 'USAGE schema commitq', has_schema_privilege($1, 'commitq', 'USAGE'),
                    has_schema_privilege($2, 'commitq', 'USAGE')) x
          WHERE a IS DISTINCT FROM b ORDER BY 1",
        &[&first, &second],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn a_role_granted_in_one_database_uses_commitq_there_only() {
    let a = TestDb::new("t_dbg_a").await;
    let b = TestDb::new("t_dbg_b").await;
    let admin_a = a.connect().await;
    let admin_b = b.connect().await;
    // Per kind: dbg_db_<kind> granted in A with commitq.grant_<kind>, and
    // dbg_cl_<kind> granted the cluster role commitq_<kind>.
    let per_db = |kind: &str| format!("cq_dbg_db_{kind}");
    let cluster = |kind: &str| format!("cq_dbg_cl_{kind}");
    let owner = "cq_dbg_owner".to_string();
    let mut roles: Vec<String> = KINDS.iter().flat_map(|k| [per_db(k), cluster(k)]).collect();
    roles.push(owner.clone());
    ensure_roles(&admin_a, &roles).await;
    for kind in KINDS {
        // The per-database roles are members of no cluster role (not even
        // left over from an earlier run).
        admin_a
            .batch_execute(&format!(
                "GRANT commitq_{kind} TO {};
                 SET client_min_messages = error;
                 REVOKE commitq_producer, commitq_worker, commitq_operator, commitq_reader FROM {};",
                cluster(kind),
                per_db(kind)
            ))
            .await
            .unwrap();
    }
    admin_a
        .batch_execute(&format!("ALTER DATABASE \"{}\" OWNER TO {owner}", a.name))
        .await
        .unwrap();

    // The owner of A grants, in A.
    let owner_a = connect(&a.url_as(&owner)).await;
    for kind in KINDS {
        owner_a
            .execute(
                &format!("SELECT commitq.grant_{kind}($1::text::regrole)"),
                &[&per_db(kind)],
            )
            .await
            .unwrap_or_else(|e| panic!("grant_{kind} by the owner of A: {e}"));
    }

    // In A each per-database kind has exactly its cluster role's privileges.
    for kind in KINDS {
        let differ = privileges_differing(&admin_a, &per_db(kind), &cluster(kind)).await;
        assert!(
            differ.is_empty(),
            "in A, {kind} granted with grant_{kind} (first) and commitq_{kind} (second) differ: {differ:#?}"
        );
    }
    // In B the per-database roles have nothing, the cluster roles all of it.
    for kind in KINDS {
        let differ = privileges_differing(&admin_b, &per_db(kind), &cluster(kind)).await;
        assert!(
            !differ.is_empty() && differ.iter().all(|d| d.ends_with(": false true")),
            "in B, {kind} granted in A only (first) should have none of commitq_{kind}'s (second): {differ:#?}"
        );
    }

    // By calling: the producer granted in A enqueues in A, is refused in B;
    // the cluster producer enqueues in both. Likewise for the others.
    for (kind, sql) in [
        ("producer", ENQUEUE),
        ("worker", CLAIM),
        ("operator", CANCEL),
        ("reader", READ),
    ] {
        let in_a = connect(&a.url_as(&per_db(kind))).await;
        let in_b = connect(&b.url_as(&per_db(kind))).await;
        let result = attempt(&in_a, sql).await;
        assert!(
            kind == "operator" && result == Err("CQ101".into()) || result.is_ok(),
            "{kind} granted in A, in A: {sql}: {result:?}"
        );
        assert_eq!(
            attempt(&in_b, sql).await,
            Err("42501".into()),
            "{kind} granted in A, in B: {sql}"
        );
        for db in [&a, &b] {
            let c = connect(&db.url_as(&cluster(kind))).await;
            let result = attempt(&c, sql).await;
            assert!(
                kind == "operator" && result == Err("CQ101".into()) || result.is_ok(),
                "commitq_{kind} in {}: {sql}: {result:?}",
                db.name
            );
        }
    }

    // A job's whole life in A by the per-database roles.
    let producer = connect(&a.url_as(&per_db("producer"))).await;
    let worker = connect(&a.url_as(&per_db("worker"))).await;
    enqueue_claim_complete_as(&producer, &worker).await;

    // A revoke takes it back: the producer is refused in A too, the
    // cluster producer still works.
    owner_a
        .execute(
            "SELECT commitq.revoke_producer($1::text::regrole)",
            &[&per_db("producer")],
        )
        .await
        .unwrap();
    assert_eq!(attempt(&producer, ENQUEUE).await, Err("42501".into()));
    let differ = privileges_differing(&admin_a, &per_db("producer"), &cluster("producer")).await;
    assert!(
        differ.iter().all(|d| d.ends_with(": false true")) && !differ.is_empty(),
        "after revoke_producer: {differ:#?}"
    );
    let cluster_producer = connect(&a.url_as(&cluster("producer"))).await;
    assert_eq!(attempt(&cluster_producer, ENQUEUE).await, Ok(()));
}

#[tokio::test]
async fn only_the_owner_of_the_database_or_a_superuser_may_grant() {
    let a = TestDb::new("t_dbg_owner_a").await;
    let b = TestDb::new("t_dbg_owner_b").await;
    let admin = a.connect().await;
    let (owner, app, stranger, operator) = (
        "cq_dbgo_owner",
        "cq_dbgo_app",
        "cq_dbgo_stranger",
        "cq_dbgo_operator",
    );
    let roles: Vec<String> = [owner, app, stranger, operator]
        .iter()
        .map(|r| r.to_string())
        .collect();
    ensure_roles(&admin, &roles).await;
    admin
        .batch_execute(&format!(
            "GRANT commitq_operator TO {operator};
             ALTER DATABASE \"{}\" OWNER TO {owner};",
            a.name
        ))
        .await
        .unwrap();
    let grant = format!("SELECT commitq.grant_producer('{app}')");

    // Not the owner: refused, commitq's own operators included.
    for role in [stranger, operator, app] {
        let c = connect(&a.url_as(role)).await;
        for f in [
            "grant_producer",
            "grant_worker",
            "grant_operator",
            "revoke_producer",
            "revoke_worker",
            "revoke_operator",
            "grant_reader",
            "revoke_reader",
        ] {
            let sql = format!("SELECT commitq.{f}('{app}')");
            assert_eq!(
                attempt(&c, &sql).await,
                Err("42501".into()),
                "{role} in a database it does not own: {sql}"
            );
        }
    }
    // The owner of A owns nothing in B.
    let owner_in_b = connect(&b.url_as(owner)).await;
    assert_eq!(attempt(&owner_in_b, &grant).await, Err("42501".into()));

    // A function of the owner's, running as the owner, called by a
    // stranger: the grant functions see the stranger, and refuse.
    let owner_a = connect(&a.url_as(owner)).await;
    owner_a
        .batch_execute(&format!(
            "CREATE FUNCTION public.provision() RETURNS void LANGUAGE sql SECURITY DEFINER
                 SET search_path = pg_catalog, pg_temp
                 AS $$ SELECT commitq.grant_producer('{app}') $$;
             GRANT EXECUTE ON FUNCTION public.provision() TO {stranger};"
        ))
        .await
        .unwrap();
    let stranger_a = connect(&a.url_as(stranger)).await;
    assert_eq!(
        attempt(&stranger_a, "SELECT public.provision()").await,
        Err("42501".into()),
        "a stranger through a SECURITY DEFINER function of the owner's"
    );
    assert_eq!(attempt(&owner_a, "SELECT public.provision()").await, Ok(()));

    // The owner, a member of the owner (SET ROLE) and a superuser may.
    assert_eq!(attempt(&owner_a, &grant).await, Ok(()));
    admin
        .batch_execute(&format!("GRANT {owner} TO {stranger}"))
        .await
        .unwrap();
    assert_eq!(
        attempt(&stranger_a, &format!("SET ROLE {owner}; {grant}")).await,
        Ok(())
    );
    admin
        .batch_execute(&format!("REVOKE {owner} FROM {stranger}"))
        .await
        .unwrap();
    assert_eq!(attempt(&admin, &grant).await, Ok(()));

    // Bad input: NULL, a role that does not exist, the cluster roles (a
    // revoke would strip their install grants), predefined roles.
    for (sql, state) in [
        ("SELECT commitq.grant_producer(NULL)", "CQ001"),
        ("SELECT commitq.grant_producer('cq_dbgo_nobody')", "42704"),
        ("SELECT commitq.revoke_worker('commitq_worker')", "CQ001"),
        ("SELECT commitq.grant_operator('pg_monitor')", "CQ001"),
    ] {
        assert_eq!(attempt(&owner_a, sql).await, Err(state.into()), "{sql}");
    }
}
