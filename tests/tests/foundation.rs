//! The integration layer is wired up: a real server, the extension from this
//! checkout, and several connections.

use commitq_tests::TestDb;

#[tokio::test]
async fn installed_extension_matches_the_client_version() {
    let db = TestDb::new("t_foundation_version").await;
    let client = db.connect().await;
    commitq::check_extension(&client)
        .await
        .expect("version check");
}

#[tokio::test]
async fn a_job_committed_on_one_connection_is_claimed_on_another() {
    let db = TestDb::new("t_foundation_two_connections").await;
    let producer = db.connect().await;
    let worker = db.connect().await;
    let row = producer
        .query_one(
            "SELECT job_id FROM commitq.enqueue('mail', 'welcome', '{\"user\": 7}')",
            &[],
        )
        .await
        .unwrap();
    let id: i64 = row.get(0);
    let claimed = worker
        .query(
            "SELECT job_id, args FROM commitq.claim('mail', 'w1', 5, '1 minute')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].get::<_, i64>(0), id);
    assert_eq!(
        claimed[0].get::<_, serde_json::Value>(1),
        serde_json::json!({"user": 7})
    );
}

/// Installing the extension in several databases at once must not fail on
/// the roles they share. On a fresh cluster (as in CI) this races to create
/// the roles; `sql/security.sql` makes the loser look again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_installs_share_the_cluster_roles() {
    let installs: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move { TestDb::new(&format!("t_foundation_install_{i}")).await })
        })
        .collect();
    for install in installs {
        install.await.expect("install succeeded");
    }
}
