//! Named leases under contention: eight holders compete for one name, some
//! stall past their ttl (as a process paused by SIGSTOP would) and then try
//! to write; every write is fenced. The log of writes proves at most one
//! holder at a time and tokens that only grow.

use std::time::{Duration, Instant};

use commitq::{Client, Error};
use commitq_tests::TestDb;

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
    let until = Instant::now() + Duration::from_secs(6);

    let mut holders = Vec::new();
    // One stall that surely happens, whatever the scheduling of the others:
    // the lease is taken before anyone competes, and written with past its ttl.
    let first = client
        .try_acquire_lease("cron", "staller", ttl)
        .await
        .unwrap()
        .expect("nobody holds the lease yet");
    {
        let client = client.clone();
        holders.push(tokio::spawn(async move {
            tokio::time::sleep(ttl + Duration::from_millis(300)).await;
            match write(&client, first, 8).await {
                Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => (0u32, 1u32),
                Err(e) => panic!("unexpected error {e}"),
                Ok(()) => panic!("a stalled holder wrote after its ttl"),
            }
        }));
    }
    for holder in 0..8i32 {
        let client = client.clone();
        holders.push(tokio::spawn(async move {
            let (mut runs, mut fenced) = (0u32, 0u32);
            let mut round = 0u32;
            while Instant::now() < until {
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
                        Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => fenced += 1,
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
                                write(&c, lease.token, holder).await.unwrap();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        },
                    )
                    .await
                    .unwrap();
                if done.is_some() {
                    runs += 1;
                }
            }
            (runs, fenced)
        }));
    }
    let (mut runs, mut fenced) = (0, 0);
    for h in holders {
        let (r, f) = h.await.unwrap();
        runs += r;
        fenced += f;
    }
    assert!(runs >= 5, "the lease changed hands ({runs} runs)");
    assert!(
        fenced >= 1,
        "stalled holders tried to write and were fenced ({fenced})"
    );

    // In commit order, tokens never go down, and one token is one holder.
    let rows = admin
        .query("SELECT token, holder FROM public.cron_log ORDER BY id", &[])
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let mut last = (0i64, -1i32);
    let mut distinct = 0;
    for r in &rows {
        let (token, holder): (i64, i32) = (r.get(0), r.get(1));
        assert!(token >= last.0, "token {token} after {}", last.0);
        if token == last.0 {
            assert_eq!(holder, last.1, "token {token} used by two holders");
        } else {
            distinct += 1;
        }
        last = (token, holder);
    }
    assert!(distinct >= 5, "{distinct} holders wrote");
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
