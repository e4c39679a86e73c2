//! Named leases under crashes: eight contender processes
//! (`src/bin/lease_contender.rs`) compete for one name; contenders are
//! SIGKILLed at random (often while holding the lease, which then changes
//! hands only when its ttl runs out) and replaced, and the holder of the
//! moment is SIGSTOPped until another contender has taken the lease over,
//! then resumed: its next write, made with its old token, must be refused.
//! The test runs until each of these has happened enough times (not for a
//! fixed time, which a busy machine could make too short).
//!
//! What each check proves, and what holds it:
//! - Tokens never go down in commit order, and a token's writes all come
//!   before the next token's: commitq's fencing (assert_fencing_token),
//!   under kills and stops. This is the check of commitq.
//! - Stopped holders resumed after a takeover are refused (CQ102), and this
//!   happens in every run: commitq's fencing of a stale token, exercised on
//!   purpose rather than by chance.
//! - The counter: write n saw n - 1 and the token of write n - 1. This is
//!   held by the contender's own `SELECT ... FOR UPDATE` on the counter
//!   row, not by the lease; it shows that the log is complete and in commit
//!   order, which the token checks rely on.
//! - One token, one process: tokens come from one sequence (nextval), so
//!   this shows that no two acquisitions returned one token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use commitq_tests::{sqlstate, Rng, TestDb};
use tokio_postgres::Client;

const CONTENDERS: usize = 8;
/// The ttl of every lease taken here, the test's own included.
const TTL: Duration = Duration::from_secs(1);
/// What the run waits for, each at least this often.
const KILLS: u32 = 5;
const HANDS: usize = 10;
const REFUSED_AFTER_TAKEOVER: usize = 2;
/// Generous bounds: the run normally reaches its counts in 10 to 20 s.
const DEADLINE: Duration = Duration::from_secs(180);
const TAKEOVER_WAIT: Duration = Duration::from_secs(20);

/// Contender processes, resumed and killed when the test ends however it
/// ends, and the file that tells them to stop.
struct Contenders {
    children: Vec<Child>,
    stop_file: PathBuf,
}

impl Drop for Contenders {
    fn drop(&mut self) {
        for child in &mut self.children {
            signal(child, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stop_file);
    }
}

fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Contenders {
    fn spawn(&self, url: &str, holder: usize) -> Child {
        Command::new(env!("CARGO_BIN_EXE_lease_contender"))
            .args(["--url", url, "--name", "nightly-report"])
            .args(["--ttl-ms", &TTL.as_millis().to_string()])
            .args(["--holder", &holder.to_string()])
            .arg("--stop-file")
            .arg(&self.stop_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn lease_contender")
    }
}

/// The lease's current token and the pid of its holder, if it is held.
async fn holder(admin: &Client) -> Option<(i64, i32)> {
    admin
        .query_opt(
            "SELECT token, split_part(owner, '-pid-', 2)::int FROM commitq.named_leases
              WHERE name = 'nightly-report' AND expires_at > clock_timestamp()",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Wait until the lease is held with a token above `token` (taken over).
async fn taken_over(admin: &Client, token: i64) -> bool {
    let until = Instant::now() + TAKEOVER_WAIT;
    while Instant::now() < until {
        let newest: Option<i64> = admin
            .query_one(
                "SELECT max(token) FROM commitq.named_leases WHERE name = 'nightly-report'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if newest.is_some_and(|t| t > token) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
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
             CREATE TABLE public.refused (token bigint NOT NULL, holder int NOT NULL, pid int NOT NULL,
                 code text NOT NULL);",
        )
        .await
        .unwrap();

    // The test holds the lease first and stalls past its ttl while the
    // contenders start; once one has taken over, its late fenced write must
    // be refused as stale, every run.
    let stalled: i64 = admin
        .query_one(
            "SELECT commitq.try_acquire_lease('nightly-report', 'holder-test-pid-0',
                                              make_interval(secs => $1))",
            &[&TTL.as_secs_f64()],
        )
        .await
        .unwrap()
        .get(0);
    let stop_file =
        std::env::temp_dir().join(format!("commitq-lease-crashes-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop_file);
    let mut contenders = Contenders {
        children: Vec::new(),
        stop_file,
    };
    for h in 0..CONTENDERS {
        let child = contenders.spawn(&db.url, h);
        contenders.children.push(child);
    }
    assert!(
        taken_over(&admin, stalled).await,
        "no contender took the lease over"
    );
    let refusal = admin
        .execute(
            "SELECT commitq.assert_fencing_token('nightly-report', $1)",
            &[&stalled],
        )
        .await
        .expect_err("a write under a lease taken over must be refused");
    assert_eq!(sqlstate(&refusal), "CQ102", "refused with {refusal:?}");

    let start = Instant::now();
    let mut rng = Rng(0x5eed_1ea5e);
    let (mut kills, mut killed_holders) = (0u32, 0u32);
    // Stop rounds: (token stalled, whether the lease was taken over).
    let (mut stops, mut stops_without_takeover) = (0u32, 0u32);
    let mut stalled_tokens: Vec<i64> = Vec::new();
    loop {
        let hands: i64 = admin
            .query_one("SELECT count(DISTINCT token) FROM public.writes", &[])
            .await
            .unwrap()
            .get(0);
        let hands = hands as usize;
        let refused = refused_after_takeover_count(&admin, &stalled_tokens).await;
        // A token that wrote after a newer one: stop here, the checks below
        // say what went wrong.
        let out_of_order: i64 = admin
            .query_one(
                "SELECT count(*) FROM public.writes WHERE token < previous_token",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if out_of_order > 0 {
            break;
        }
        if kills >= KILLS
            && killed_holders >= 1
            && hands >= HANDS
            && refused >= REFUSED_AFTER_TAKEOVER
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "after {DEADLINE:?}: {kills} kills ({killed_holders} of the holder), {hands} tokens wrote, \
             {refused} stopped holders refused after a takeover"
        );
        tokio::time::sleep(Duration::from_millis(300 + rng.below(500))).await;
        let current = holder(&admin).await;
        let holder_index = current.and_then(|(_, pid)| {
            contenders
                .children
                .iter()
                .position(|c| c.id() as i32 == pid)
        });
        // Every third round, stop the holder of the moment until another
        // contender has taken the lease over, then resume it.
        if rng.below(3) == 0 {
            if let (Some((token, _)), Some(i)) = (current, holder_index) {
                signal(&contenders.children[i], "STOP");
                stops += 1;
                if taken_over(&admin, token).await {
                    stalled_tokens.push(token);
                } else {
                    // Stopped inside a fenced transaction: its row lock
                    // keeps the lease from changing hands.
                    stops_without_takeover += 1;
                }
                signal(&contenders.children[i], "CONT");
                continue;
            }
        }
        // Otherwise kill a contender: the holder now and then (and the first
        // time one holds it): the crash a lease must survive. Not always:
        // each such kill stalls everyone until its ttl runs out.
        let victim = match holder_index {
            Some(i) if killed_holders == 0 || rng.below(4) == 0 => {
                killed_holders += 1;
                i
            }
            _ => rng.below(CONTENDERS as u64) as usize,
        };
        let child = &mut contenders.children[victim];
        if child.try_wait().unwrap().is_none() {
            signal(child, "CONT");
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
        contenders.children[victim] = contenders.spawn(&db.url, victim);
    }
    // Every contender stops by itself once told to.
    std::fs::write(&contenders.stop_file, b"stop").unwrap();
    for child in &mut contenders.children {
        let status = child.wait().unwrap();
        assert!(
            status.success() || status.code().is_none(),
            "a contender failed: {status}"
        );
    }

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

    // The log is complete and in commit order (held by the contenders' own
    // FOR UPDATE): write n saw n - 1 and the token of write n - 1.
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
        assert_eq!(previous, last, "write {n}");
        // commitq's fencing: a token never writes after a newer one did.
        assert!(
            token >= previous,
            "write {n}: token {token} after {previous}"
        );
        // One token, one process (tokens come from one sequence).
        assert_eq!(
            *token_owner.entry(token).or_insert(pid),
            pid,
            "token {token} used by two processes"
        );
        last = token;
    }
    assert_eq!(last_token, last);

    // Every write a stopped holder tried after the takeover was refused as
    // stale: no write of its token comes after the first write of a newer
    // one (above), and every refusal it logged says CQ102.
    let codes = admin
        .query(
            "SELECT code, count(*) FROM public.refused WHERE token = ANY($1) GROUP BY code",
            &[&stalled_tokens],
        )
        .await
        .unwrap();
    for r in &codes {
        assert_eq!(r.get::<_, &str>(0), "CQ102", "a stopped holder's write");
    }
    let refused_after_takeover = refused_after_takeover_count(&admin, &stalled_tokens).await;
    let refused_all: i64 = admin
        .query_one("SELECT count(*) FROM public.refused", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "{} fenced writes under {} tokens, {kills} kills ({killed_holders} of the holder), \
         {stops} holders stopped ({stops_without_takeover} inside a fenced transaction, so not \
         taken over), {refused_after_takeover} stopped holders refused after a takeover, \
         {refused_all} refused writes in all, in {:.0} s",
        writes.len(),
        token_owner.len(),
        start.elapsed().as_secs_f64()
    );
}

/// How many of the stopped holders' tokens were refused after the takeover.
async fn refused_after_takeover_count(admin: &Client, tokens: &[i64]) -> usize {
    admin
        .query_one(
            "SELECT count(DISTINCT token) FROM public.refused WHERE token = ANY($1)",
            &[&tokens],
        )
        .await
        .unwrap()
        .get::<_, i64>(0) as usize
}
