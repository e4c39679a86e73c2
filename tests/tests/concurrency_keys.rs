//! Concurrency keys through the worker pool: jobs that share a key never run
//! at the same time (or more than its limit), whatever the number of
//! handlers, and a control run without keys shows that the same workload
//! does overlap, so the check can fail; one key's backlog does not hold up
//! the other keys. What a slot does in SQL, job by job, is in
//! `concurrency_key_slots.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commitq::{Client, Job, Outcome, WorkerPool};
use commitq_tests::{scalar, scalar_with, start_pool, wait_until, TestDb};
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
/// handler marks its account busy for about a millisecond. With `prefetch`,
/// four claim loops take batches of 50 ahead of free handlers.
async fn run_pool(client: &Client, handlers: usize, jobs: i64, prefetch: usize) -> Arc<Observed> {
    let observed = Arc::new(Observed::default());
    let seen = observed.clone();
    let tuning = if prefetch > 0 { (50, 4) } else { (10, 1) };
    let pool = WorkerPool::builder(client.clone())
        .queue("accounts", handlers)
        .batch(tuning.0)
        .claimers(tuning.1)
        .prefetch(prefetch)
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
    let running = start_pool(pool);
    let what = format!("{jobs} jobs to complete");
    wait_until(&what, Duration::from_secs(120), async || {
        metrics.snapshot().completed as i64 >= jobs
    })
    .await;
    running.stop().await;
    observed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_handlers_two_hundred_keys_never_overlap() {
    let db = TestDb::new("t_ckeys_exclusion").await;
    let client = Client::connect(&db.url).await.unwrap();
    const JOBS: i64 = 20_000;

    // Control: the same workload without keys overlaps, so the detector works.
    enqueue_jobs(&client, 4_000, 200, false).await;
    let started = Instant::now();
    let control = run_pool(&client, 16, 4_000, 0).await;
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
    let keyed = run_pool(&client, 16, JOBS, 0).await;
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

/// Prefetched keyed jobs wait in the pool holding their keys' slots; their
/// completions pass the slots straight on (complete_and_take), and still no
/// two jobs of a key overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetching_claimers_pass_key_slots_on_without_overlap() {
    let db = TestDb::new("t_ckeys_prefetch").await;
    let client = Client::connect(&db.url).await.unwrap();
    const JOBS: i64 = 6_000;
    enqueue_jobs(&client, JOBS, 50, true).await;
    let keyed = run_pool(&client, 16, JOBS, 100).await;
    assert_eq!(keyed.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(keyed.max_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(keyed.runs.load(Ordering::SeqCst), JOBS, "each job ran once");
    for sql in [
        "SELECT count(*) FROM commitq.jobs",
        "SELECT coalesce(sum(running), 0)::bigint FROM commitq.concurrency_keys",
    ] {
        assert_eq!(scalar(&client, sql).await, 0, "{sql}");
    }
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
    let observed = run_pool(&client, 16, 300, 0).await;
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
    let observed = run_pool(&client, 16, 100, 0).await;
    assert_eq!(observed.max_at_once.load(Ordering::SeqCst), 1);
}

/// One key's backlog does not hold up other keys: while a backlog of one
/// account runs one job at a time, the jobs of other accounts, and jobs
/// without a key, enqueued after the whole backlog, all run long before the
/// backlog is through. (Put the other jobs under the backlog's key and they
/// wait for all of it: that is what this test would see if the backlog
/// starved them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_keys_backlog_does_not_hold_up_other_keys() {
    let db = TestDb::new("t_ckeys_backlog").await;
    let client = Client::connect(&db.url).await.unwrap();
    const BACKLOG: i64 = 500;
    const OTHERS: i64 = 30;
    let enqueue = "SELECT count(*) FROM commitq.enqueue_many('accounts', 'touch', $1,
                                                           concurrency_keys => $2)";
    // Account 0's backlog first, then two jobs each of ten other accounts and
    // ten jobs without a key (account -1).
    let backlog: Vec<serde_json::Value> = (0..BACKLOG)
        .map(|_| serde_json::json!({"account": 0}))
        .collect();
    let keys = vec!["account:0".to_string(); BACKLOG as usize];
    scalar_with(&client, enqueue, &[&backlog, &keys]).await;
    let accounts: Vec<i64> = (1..=10).chain(1..=10).chain([-1; 10]).collect();
    let others: Vec<serde_json::Value> = accounts
        .iter()
        .map(|a| serde_json::json!({ "account": a }))
        .collect();
    let keys: Vec<Option<String>> = accounts
        .iter()
        .map(|&a| (a >= 0).then(|| format!("account:{a}")))
        .collect();
    scalar_with(&client, enqueue, &[&others, &keys]).await;

    let backlog_done = Arc::new(AtomicI64::new(0));
    let others_done = Arc::new(AtomicI64::new(0));
    // How far the backlog had got when the last of the others finished.
    let backlog_then = Arc::new(AtomicI64::new(-1));
    let (b, o, t) = (
        backlog_done.clone(),
        others_done.clone(),
        backlog_then.clone(),
    );
    let pool = WorkerPool::builder(client.clone())
        .queue("accounts", 8)
        .poll_interval(Duration::from_millis(5))
        .handle(move |_ctx, job: Touch| {
            let (b, o, t) = (b.clone(), o.clone(), t.clone());
            async move {
                // The backlog's jobs take a few milliseconds each.
                if job.account == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    b.fetch_add(1, Ordering::SeqCst);
                } else if o.fetch_add(1, Ordering::SeqCst) + 1 == OTHERS {
                    t.store(b.load(Ordering::SeqCst), Ordering::SeqCst);
                }
                Ok(Outcome::Complete)
            }
        })
        .build();
    let running = start_pool(pool);
    wait_until(
        "the other accounts' jobs",
        Duration::from_secs(120),
        async || others_done.load(Ordering::SeqCst) == OTHERS,
    )
    .await;
    running.stop().await;
    let then = backlog_then.load(Ordering::SeqCst);
    eprintln!("the other jobs were done when {then} of the backlog's {BACKLOG} were");
    assert!(
        then < BACKLOG / 2,
        "the other keys waited for the backlog: {then} of its {BACKLOG} jobs ran first"
    );
}
