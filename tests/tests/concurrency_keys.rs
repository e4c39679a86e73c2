//! Per-key mutual exclusion through the worker pool: jobs that share a
//! concurrency key never run at the same time, whatever the number of
//! handlers, and a control run without keys shows that the same workload
//! does overlap, so the check below can fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commitq::{Client, Job, Outcome, WorkerPool};
use commitq_tests::TestDb;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Touch {
    account: i64,
}

impl Job for Touch {
    const KIND: &'static str = "touch";
    const QUEUE: &'static str = "accounts";
}

/// What the handlers saw: for each account, how many of its jobs run right
/// now, the most that ever ran at once, and how many jobs ran in all.
#[derive(Default)]
struct Observed {
    running: Mutex<HashMap<i64, Arc<AtomicU32>>>,
    max_at_once: AtomicU32,
    overlaps: AtomicU32,
    runs: AtomicI64,
}

impl Observed {
    fn counter(&self, account: i64) -> Arc<AtomicU32> {
        self.running
            .lock()
            .unwrap()
            .entry(account)
            .or_default()
            .clone()
    }
}

/// The account of job `n`: pseudo-random (splitmix64), so jobs of one
/// account often sit close together in the queue, as they do in real life.
fn account_of(n: i64, accounts: i64) -> i64 {
    let mut z = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % accounts as u64) as i64
}

async fn enqueue_jobs(client: &Client, jobs: i64, accounts: i64, keyed: bool) {
    let accounts: Vec<i64> = (0..jobs).map(|n| account_of(n, accounts)).collect();
    let args: Vec<serde_json::Value> = accounts
        .iter()
        .map(|&account| serde_json::to_value(Touch { account }).unwrap())
        .collect();
    let keys: Option<Vec<String>> =
        keyed.then(|| accounts.iter().map(|a| format!("account:{a}")).collect());
    let n: i64 = scalar_with(
        client,
        "SELECT count(*) FROM commitq.enqueue_many('accounts', 'touch', $1, concurrency_keys => $2)",
        &[&args, &keys],
    )
    .await;
    assert_eq!(n, jobs);
}

/// Run the queue with `handlers` handlers until `jobs` jobs completed; each
/// handler marks its account busy for about a millisecond.
async fn run_pool(client: &Client, handlers: usize, jobs: i64) -> Arc<Observed> {
    let observed = Arc::new(Observed::default());
    let seen = observed.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("accounts", handlers)
        .poll_interval(Duration::from_millis(5))
        .handle(move |_ctx, job: Touch| {
            let seen = seen.clone();
            async move {
                let counter = seen.counter(job.account);
                let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if now > 1 {
                    seen.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                seen.max_at_once.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(700)).await;
                counter.fetch_sub(1, Ordering::SeqCst);
                seen.runs.fetch_add(1, Ordering::SeqCst);
                Ok(Outcome::Complete)
            }
        })
        .build();
    let metrics = pool.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(pool.run_until(async {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    while (metrics.snapshot().completed as i64) < jobs {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {} of {jobs} jobs completed",
            metrics.snapshot().completed
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
    observed
}

async fn scalar(client: &Client, sql: &str) -> i64 {
    scalar_with(client, sql, &[]).await
}

async fn scalar_with(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client
        .pool()
        .get()
        .await
        .unwrap()
        .query_one(sql, params)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_handlers_two_hundred_keys_never_overlap() {
    let db = TestDb::new("t_ckeys_exclusion").await;
    let client = Client::connect(&db.url).await.unwrap();
    const JOBS: i64 = 20_000;

    // Control: the same workload without keys overlaps, so the detector works.
    enqueue_jobs(&client, 4_000, 200, false).await;
    let started = Instant::now();
    let control = run_pool(&client, 16, 4_000).await;
    eprintln!(
        "4000 jobs without keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        control.overlaps.load(Ordering::SeqCst) > 0,
        "without keys, jobs of one account ran at the same time"
    );

    enqueue_jobs(&client, JOBS, 200, true).await;
    let started = Instant::now();
    let keyed = run_pool(&client, 16, JOBS).await;
    let elapsed = started.elapsed();
    assert_eq!(
        keyed.overlaps.load(Ordering::SeqCst),
        0,
        "two jobs of one account ran at once (most at once: {})",
        keyed.max_at_once.load(Ordering::SeqCst)
    );
    assert_eq!(keyed.max_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(keyed.runs.load(Ordering::SeqCst), JOBS, "each job ran once");
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await,
        0
    );
    // Every slot was given back.
    assert_eq!(
        scalar(
            &client,
            "SELECT coalesce(sum(running), 0)::bigint FROM commitq.concurrency_keys"
        )
        .await,
        0
    );
    eprintln!(
        "{JOBS} keyed jobs in {:.1} s ({:.0} jobs/s)",
        elapsed.as_secs_f64(),
        JOBS as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_limit_lets_that_many_run_at_once() {
    let db = TestDb::new("t_ckeys_limit").await;
    let client = Client::connect(&db.url).await.unwrap();
    let admin = db.connect().await;
    let changed: i32 = admin
        .query_one("SELECT commitq.set_concurrency_limit('account:*', 3)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 0, "no key in use yet");
    // 300 jobs of two accounts: at most 3 of each at once, and the pool has
    // the handlers to run more.
    enqueue_jobs(&client, 300, 2, true).await;
    let observed = run_pool(&client, 16, 300).await;
    let most = observed.max_at_once.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} jobs of one account ran at once");
    assert!(most >= 2, "the limit of 3 was used ({most} at most)");
    assert_eq!(observed.runs.load(Ordering::SeqCst), 300);

    // Lowered back to 1: running keys take the new limit at once.
    admin
        .execute(
            "SELECT commitq.set_concurrency_limit('account:*', NULL)",
            &[],
        )
        .await
        .unwrap();
    enqueue_jobs(&client, 100, 2, true).await;
    let observed = run_pool(&client, 16, 100).await;
    assert_eq!(observed.max_at_once.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_worker_holds_its_key_until_its_lease_is_rescued() {
    let db = TestDb::new("t_ckeys_rescue").await;
    let client = Client::connect(&db.url).await.unwrap();
    let c = db.connect().await;
    enqueue_jobs(&client, 2, 1, true).await;
    // A worker claims the first job with a short lease and disappears.
    let rows = c
        .query(
            "SELECT job_id FROM commitq.claim('accounts', 'gone', 5, '1 second')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "only one job of the key can be claimed");
    let state: String = c
        .query_one(
            "SELECT state::text FROM commitq.jobs WHERE id <> $1",
            &[&rows[0].get::<_, i64>(0)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "blocked");
    let again = c
        .query(
            "SELECT job_id FROM commitq.claim('accounts', 'other', 5)",
            &[],
        )
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "the key is still held by the vanished worker"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rescued: i64 = c
        .query_one("SELECT rescued FROM commitq.maintain()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rescued, 1);
    let next = c
        .query(
            "SELECT job_id FROM commitq.claim('accounts', 'other', 5)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        next.len(),
        1,
        "the rescue gave the key's slot to the next job"
    );
}

/// A slot given back is handed to the next blocked job of the key, which
/// keeps it until it is claimed: a job of the key that comes earlier in claim
/// order (a higher priority) cannot take it first. Cancelling the job that
/// holds the handed-over slot passes the slot on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_slot_keeps_its_turn_and_passes_on_when_cancelled() {
    let db = TestDb::new("t_ckeys_handover").await;
    let client = Client::connect(&db.url).await.unwrap();
    let c = db.connect().await;
    let enqueue = "SELECT job_id FROM commitq.enqueue('accounts', 'touch', '{}',
                                                     priority => $1, concurrency_key => 'account:1')";
    let claim = "SELECT job_id, lease_token FROM commitq.claim('accounts', $1, 5)";
    let state = "SELECT state::text || CASE WHEN slot_held THEN ' holding' ELSE '' END
                   FROM commitq.jobs WHERE id = $1";
    let running = "SELECT running::bigint FROM commitq.concurrency_keys WHERE key = 'account:1'";
    let first: i64 = c.query_one(enqueue, &[&0i32]).await.unwrap().get(0);
    let second: i64 = c.query_one(enqueue, &[&0i32]).await.unwrap().get(0);

    let rows = c.query(claim, &[&"w1"]).await.unwrap();
    assert_eq!(rows.len(), 1, "one job of the key runs");
    assert_eq!(rows[0].get::<_, i64>(0), first);
    let token: i64 = rows[0].get(1);
    c.execute("SELECT commitq.complete($1, $2)", &[&first, &token])
        .await
        .unwrap();
    let s: String = c.query_one(state, &[&second]).await.unwrap().get(0);
    assert_eq!(s, "available holding", "the completion handed its slot on");
    assert_eq!(
        scalar(&client, running).await,
        1,
        "the handed-over slot is counted"
    );

    // A job of the key that comes first in claim order arrives now.
    let urgent: i64 = c.query_one(enqueue, &[&-5i32]).await.unwrap().get(0);
    let rows = c.query(claim, &[&"w2"]).await.unwrap();
    let claimed: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        claimed,
        vec![second],
        "the job handed the slot keeps its turn"
    );
    let s: String = c.query_one(state, &[&urgent]).await.unwrap().get(0);
    assert_eq!(s, "blocked");

    let token: i64 = rows[0].get(1);
    c.execute("SELECT commitq.complete($1, $2)", &[&second, &token])
        .await
        .unwrap();
    let s: String = c.query_one(state, &[&urgent]).await.unwrap().get(0);
    assert_eq!(s, "available holding");
    c.execute("SELECT commitq.cancel($1)", &[&urgent])
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, running).await,
        0,
        "cancelling it gave the slot back"
    );
    let last: i64 = c.query_one(enqueue, &[&0i32]).await.unwrap().get(0);
    let rows = c.query(claim, &[&"w3"]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), last, "the key is free again");
}
