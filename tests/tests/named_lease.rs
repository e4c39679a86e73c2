//! Named leases under contention: eight holders compete for one name, some
//! stall past their ttl (as a process paused by SIGSTOP would) and then try
//! to write; every write is fenced. The log of writes proves at most one
//! holder at a time and tokens that only grow. The holders compete until
//! the lease has changed hands enough times (not for a fixed time, which a
//! busy machine could make too short).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitq::{Client, Error};
use commitq_tests::TestDb;

/// What the run waits for: runs that held the lease, and holders that wrote.
const RUNS: u32 = 5;
const WRITERS: i64 = 5;
/// Generous: the counts are normally reached within a few seconds.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_holders_never_overlap_and_stalled_ones_are_fenced() {
    let db = TestDb::new("t_lease_contention").await;
    let admin = db.connect().await;
    admin
        .batch_execute("CREATE TABLE public.cron_log (id bigserial PRIMARY KEY, token bigint NOT NULL, holder int NOT NULL)")
        .await
        .unwrap();
    let client = Client::connect(&db.url).await.unwrap();
    let ttl = Duration::from_millis(1500);
    let stop = Arc::new(AtomicBool::new(false));
    let (runs, fenced) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));

    let mut holders = Vec::new();
    // One stall that surely happens, whatever the scheduling of the others:
    // the lease is taken before anyone competes, and written with past its
    // ttl (measured from after the acquire returned, so past it by the
    // server's clock too).
    let first = client
        .try_acquire_lease("cron", "staller", ttl)
        .await
        .unwrap()
        .expect("nobody holds the lease yet");
    {
        let (client, fenced) = (client.clone(), fenced.clone());
        holders.push(tokio::spawn(async move {
            tokio::time::sleep(ttl + Duration::from_millis(300)).await;
            match write(&client, first, 8).await {
                Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => {
                    fenced.fetch_add(1, Ordering::SeqCst)
                }
                Err(e) => panic!("unexpected error {e}"),
                Ok(()) => panic!("a stalled holder wrote after its ttl"),
            };
        }));
    }
    for holder in 0..8i32 {
        let (client, stop) = (client.clone(), stop.clone());
        let (runs, fenced) = (runs.clone(), fenced.clone());
        holders.push(tokio::spawn(async move {
            let mut round = 0u32;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                // One run in four, this holder stalls past its ttl while
                // holding, without renewing, then tries to write.
                let stall = (holder as u32 + round).is_multiple_of(4);
                if stall {
                    let Some(token) = client
                        .try_acquire_lease("cron", "staller", ttl)
                        .await
                        .unwrap()
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
                    match write(&client, token, holder).await {
                        Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => {
                            fenced.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("unexpected error {e}"),
                        Ok(()) => panic!("a stalled holder wrote after its ttl"),
                    }
                    continue;
                }
                let c = client.clone();
                let done = client
                    .with_lease(
                        "cron",
                        ttl,
                        Duration::from_millis(500),
                        |lease| async move {
                            for _ in 0..5 {
                                if lease.is_lost() {
                                    break;
                                }
                                // A renewal late on a busy machine can lose
                                // the lease between the check above and the
                                // write: the fence refuses it, and the run
                                // ends there.
                                match write(&c, lease.token, holder).await {
                                    Ok(()) => {}
                                    Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => break,
                                    Err(e) => panic!("unexpected error {e}"),
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        },
                    )
                    .await
                    .unwrap();
                if done.is_some() {
                    runs.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    // Let them compete until the lease has changed hands enough times.
    let start = Instant::now();
    loop {
        let writers: i64 = admin
            .query_one("SELECT count(DISTINCT token) FROM public.cron_log", &[])
            .await
            .unwrap()
            .get(0);
        let (r, f) = (runs.load(Ordering::SeqCst), fenced.load(Ordering::SeqCst));
        // The competing holders end only by panicking before the stop:
        // report that now.
        if (r >= RUNS && f >= 1 && writers >= WRITERS)
            || holders[1..].iter().any(|h| h.is_finished())
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "after {DEADLINE:?}: {r} runs, {f} stalled holders fenced, {writers} tokens wrote"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for h in holders {
        h.await.unwrap();
    }

    // In commit order, tokens never go down, and one token is one holder.
    let rows = admin
        .query("SELECT token, holder FROM public.cron_log ORDER BY id", &[])
        .await
        .unwrap();
    let mut last = (0i64, -1i32);
    for r in &rows {
        let (token, holder): (i64, i32) = (r.get(0), r.get(1));
        assert!(token >= last.0, "token {token} after {}", last.0);
        if token == last.0 {
            assert_eq!(holder, last.1, "token {token} used by two holders");
        }
        last = (token, holder);
    }
}

/// A fenced write: the lease check and the insert in one transaction.
async fn write(client: &Client, token: i64, holder: i32) -> Result<(), Error> {
    let mut conn = client.pool().get().await?;
    let tx = conn.transaction().await?;
    tx.execute("SELECT commitq.assert_fencing_token('cron', $1)", &[&token])
        .await?;
    tx.execute(
        "INSERT INTO public.cron_log (token, holder) VALUES ($1, $2)",
        &[&token, &holder],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
