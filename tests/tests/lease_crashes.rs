//! Named leases under crashes: eight contender processes
//! (`src/bin/lease_contender.rs`) compete for one name for ten seconds;
//! contenders are SIGKILLed at random (often while holding the lease, which
//! then changes hands only when its ttl runs out) and replaced, and some
//! stall past their ttl and then try to write (the test itself does once
//! at the start, and must be refused). The log of fenced writes to a
//! protected counter proves at most one holder at any time and tokens that
//! only grow.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use commitq_tests::{sqlstate, Rng, TestDb};

const CONTENDERS: usize = 8;
const RUN: Duration = Duration::from_secs(10);
/// The ttl of every lease taken here, the test's own included.
const TTL: Duration = Duration::from_secs(1);

/// Contender processes, killed when the test ends however it ends.
struct Contenders(Vec<Child>);

impl Drop for Contenders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(url: &str, holder: usize, run_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lease_contender"))
        .args(["--url", url, "--name", "nightly-report"])
        .args([
            "--ttl-ms",
            &TTL.as_millis().to_string(),
            "--holder",
            &holder.to_string(),
            "--run-ms",
            &run_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn lease_contender")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_contenders_never_hold_one_lease_at_once() {
    let db = TestDb::new("t_lease_crashes").await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE public.protected (value bigint NOT NULL, last_token bigint NOT NULL);
             INSERT INTO public.protected VALUES (0, 0);
             CREATE TABLE public.writes (id bigserial PRIMARY KEY, token bigint NOT NULL,
                 previous_token bigint NOT NULL, value bigint NOT NULL, holder int NOT NULL, pid int NOT NULL);
             CREATE TABLE public.refused (token bigint NOT NULL, holder int NOT NULL, pid int NOT NULL);",
        )
        .await
        .unwrap();

    // The test holds the lease first and stalls past its ttl while the
    // contenders start: its late fenced write must be refused, every run.
    // (The contenders' own stalls are counted too, but one may end in a
    // kill instead, so they cannot be relied on to happen.)
    let stalled: i64 = admin
        .query_one(
            "SELECT commitq.try_acquire_lease('nightly-report', 'holder-test-pid-0',
                                              make_interval(secs => $1))",
            &[&TTL.as_secs_f64()],
        )
        .await
        .unwrap()
        .get(0);
    let start = Instant::now();
    let until = start + RUN;
    let mut contenders = Contenders(
        (0..CONTENDERS)
            .map(|h| spawn(&db.url, h, RUN.as_millis() as u64))
            .collect(),
    );
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let refusal = admin
        .execute(
            "SELECT commitq.assert_fencing_token('nightly-report', $1)",
            &[&stalled],
        )
        .await
        .expect_err("a write under a lease that ran out must be refused");
    assert!(
        matches!(sqlstate(&refusal).as_str(), "CQ102" | "CQ103"),
        "refused with {refusal:?}"
    );
    let mut rng = Rng(0x5eed_1ea5e);
    let mut kills = 0;
    let mut killed_holders = 0;
    while Instant::now() + Duration::from_millis(1500) < until {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(500))).await;
        // Now and then (and the first time one holds it) kill the process
        // holding the lease right now: the crash a lease must survive. Not
        // always: each such kill stalls everyone until its ttl runs out.
        let holder_pid: Option<i32> = admin
            .query_opt(
                "SELECT split_part(owner, '-pid-', 2)::int FROM commitq.named_leases
                  WHERE name = 'nightly-report' AND expires_at > clock_timestamp()",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        let victim = match holder_pid
            .and_then(|pid| contenders.0.iter().position(|c| c.id() as i32 == pid))
        {
            Some(i) if killed_holders == 0 || rng.below(4) == 0 => {
                killed_holders += 1;
                i
            }
            _ => rng.below(CONTENDERS as u64) as usize,
        };
        let child = &mut contenders.0[victim];
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
        let left = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        contenders.0[victim] = spawn(&db.url, victim, left);
    }
    // Every contender stops by itself at the deadline.
    for child in &mut contenders.0 {
        let status = child.wait().unwrap();
        assert!(
            status.success() || status.code().is_none(),
            "a contender failed: {status}"
        );
    }
    assert!(start.elapsed() < RUN + Duration::from_secs(10));

    let writes = admin
        .query(
            "SELECT token, previous_token, value, pid FROM public.writes ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let (value, last_token): (i64, i64) = {
        let r = admin
            .query_one("SELECT value, last_token FROM public.protected", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let refused: i64 = admin
        .query_one("SELECT count(*) FROM public.refused", &[])
        .await
        .unwrap()
        .get(0);

    // No increment lost or doubled: write n saw n - 1 and left n.
    assert_eq!(value, writes.len() as i64);
    let mut token_owner: HashMap<i64, i32> = HashMap::new();
    let mut last = 0i64;
    for (n, w) in writes.iter().enumerate() {
        let (token, previous, seen, pid): (i64, i64, i64, i32) =
            (w.get(0), w.get(1), w.get(2), w.get(3));
        assert_eq!(
            seen,
            n as i64 + 1,
            "write {n} saw the counter at {}",
            seen - 1
        );
        // Each write saw the token of the write before it, and its own is
        // never smaller: a holder whose lease moved on never wrote again.
        assert_eq!(previous, last, "write {n}");
        assert!(
            token >= previous,
            "write {n}: token {token} after {previous}"
        );
        // One token, one process.
        assert_eq!(
            *token_owner.entry(token).or_insert(pid),
            pid,
            "token {token} used by two processes"
        );
        last = token;
    }
    assert_eq!(last_token, last);
    let distinct = token_owner.len();
    eprintln!(
        "{} fenced writes under {distinct} tokens, {kills} kills ({killed_holders} of the holder), {refused} stalled writes of contenders refused",
        writes.len()
    );
    assert!(kills >= 5, "{kills} kills");
    assert!(killed_holders >= 1, "no holder was killed while holding");
    assert!(distinct >= 10, "the lease changed hands {distinct} times");
}
