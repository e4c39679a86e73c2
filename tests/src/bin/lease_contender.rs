//! One contender for a named lease, run as its own process by
//! `tests/tests/lease_crashes.rs` (which SIGKILLs contenders at random, and
//! SIGSTOPs the holder until another has taken the lease over). While it
//! holds the lease it makes fenced increments of a protected counter and
//! logs each with the token it held. It is careless on purpose: it does not
//! look at whether its renewals succeeded, so a holder that was stopped and
//! resumed writes with its old token, and only the fence can refuse it;
//! every refusal is logged with its SQLSTATE. Now and then it also stalls
//! past its ttl without renewing and then tries to write.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use commitq::{Client, Error};

#[derive(Parser)]
struct Args {
    /// Connection string of the test's database.
    #[arg(long)]
    url: String,
    /// The lease's name.
    #[arg(long)]
    name: String,
    /// This contender's number, for the log.
    #[arg(long)]
    holder: i32,
    /// Lease ttl in milliseconds (commitq allows 1 second and up).
    #[arg(long, default_value_t = 1000)]
    ttl_ms: u64,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Stop after this many milliseconds in any case.
    #[arg(long, default_value_t = 300_000)]
    run_ms: u64,
}

/// Fenced writes per turn at holding the lease.
const WRITES_PER_RUN: usize = 8;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let client = Client::connect(&args.url).await.expect("connect");
    let ttl = Duration::from_millis(args.ttl_ms);
    let until = Instant::now() + Duration::from_millis(args.run_ms);
    let owner = format!("holder-{}-pid-{}", args.holder, std::process::id());
    let mut runs = 0u32;
    while Instant::now() < until && !args.stop_file.exists() {
        let Some(token) = client
            .try_acquire_lease(&args.name, &owner, ttl)
            .await
            .expect("try_acquire_lease")
        else {
            tokio::time::sleep(Duration::from_millis(15)).await;
            continue;
        };
        runs += 1;
        // The second run of every other contender stalls, as a paused
        // process or a long GC would, and writes after its ttl ran out.
        if runs == 2 && args.holder % 2 == 0 {
            tokio::time::sleep(ttl + Duration::from_millis(200)).await;
            // Refused (and logged), or not an error here: nobody took the
            // lease over while it stalled, so the token is still the newest
            // and the write is in order. The checker verifies order and
            // uniqueness of tokens either way.
            let _ = fenced_increment(&client, &args, token).await;
            continue;
        }
        // A normal run: fenced increments, renewing as it goes without
        // looking at whether the renewal worked.
        for i in 0..WRITES_PER_RUN {
            if fenced_increment(&client, &args, token).await.is_err() {
                break;
            }
            if i + 1 == WRITES_PER_RUN {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = client
                .pool()
                .get()
                .await
                .expect("pool")
                .execute(
                    "SELECT commitq.renew_lease($1, $2, make_interval(secs => $3))",
                    &[&args.name, &token, &ttl.as_secs_f64()],
                )
                .await;
        }
        // Give it back (a killed contender cannot: its lease runs out).
        let _ = client
            .pool()
            .get()
            .await
            .expect("pool")
            .execute(
                "SELECT commitq.release_lease($1, $2)",
                &[&args.name, &token],
            )
            .await;
    }
}

/// A fenced increment; a refusal by the fence is logged with its SQLSTATE
/// and returned, any other error ends the process.
async fn fenced_increment(client: &Client, args: &Args, token: i64) -> Result<(), ()> {
    let code = match try_increment(client, &args.name, token, args.holder).await {
        Ok(()) => return Ok(()),
        Err(Error::StaleLease(_)) => "CQ102",
        Err(Error::LeaseExpired(_)) => "CQ103",
        Err(e) => panic!("unexpected error: {e}"),
    };
    let conn = client.pool().get().await.expect("pool");
    conn.execute(
        "INSERT INTO public.refused (token, holder, pid, code) VALUES ($1, $2, $3, $4)",
        &[&token, &args.holder, &(std::process::id() as i32), &code],
    )
    .await
    .expect("log refusal");
    Err(())
}

/// In one transaction: check the fencing token (holding the lease until
/// commit), read the counter and the last token that wrote it, add one, and
/// log the write with what it saw.
async fn try_increment(client: &Client, name: &str, token: i64, holder: i32) -> Result<(), Error> {
    let mut conn = client.pool().get().await?;
    let tx = conn.transaction().await?;
    tx.execute(
        "SELECT commitq.assert_fencing_token($1, $2)",
        &[&name, &token],
    )
    .await?;
    // FOR UPDATE returns the latest committed row, after any writer ahead.
    let row = tx
        .query_one(
            "SELECT value, last_token FROM public.protected FOR UPDATE",
            &[],
        )
        .await?;
    let (value, previous): (i64, i64) = (row.get::<_, i64>(0) + 1, row.get(1));
    tx.execute(
        "UPDATE public.protected SET value = $1, last_token = $2",
        &[&value, &token],
    )
    .await?;
    tx.execute(
        "INSERT INTO public.writes (token, previous_token, value, holder, pid) VALUES ($1, $2, $3, $4, $5)",
        &[&token, &previous, &value, &holder, &(std::process::id() as i32)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
