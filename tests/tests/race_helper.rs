//! The race-test helper (`commitq::testing::Race`) on two stories of the
//! demo: played naively, the invariant breaks; played with the mechanism
//! that holds it (a concurrency key per account; a row lock on the balance
//! in the job's transaction), it holds in every round, and a control run of
//! the same jobs without that mechanism breaks, so the check can fail.

use std::time::Duration;

use commitq::testing::Race;
use commitq::{Client, EnqueueOptions, HandlerResult, Job, JobContext, Outcome};
use commitq_tests::{scalar_with, setup, Sql};
use serde::{Deserialize, Serialize};

/// The application's tables of both stories.
const TABLES: &str =
    "CREATE TABLE public.accounts (id bigint PRIMARY KEY, suspended boolean NOT NULL DEFAULT false,
                                                  credits int NOT NULL DEFAULT 0);
                      CREATE TABLE public.emails (account bigint NOT NULL);
                      CREATE TABLE public.sms (account bigint NOT NULL);";

/// Story: two jobs for one account both pass `unless suspended?` and both
/// send the suspension email. The invariant: one email per account.
#[derive(Serialize, Deserialize)]
struct SuspendAccount {
    account: i64,
}

impl Job for SuspendAccount {
    const KIND: &'static str = "suspend_account";
    const QUEUE: &'static str = "billing";
}

async fn one_email(client: Client, round: usize) -> Result<(), String> {
    match scalar_with(
        &client,
        "SELECT count(*) FROM public.emails WHERE account = $1",
        &[&(round as i64)],
    )
    .await
    {
        1 => Ok(()),
        n => Err(format!("account {round} got {n} suspension emails")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_then_act_sends_two_emails_and_a_concurrency_key_sends_one() {
    let (_db, client) = setup("t_race_suspend", TABLES).await;

    // Naive: each run checks, waits for the mail server, then acts.
    let naive = Race::new(client.clone())
        .workers(8)
        .rounds(20)
        .stop_on_first_broken(true)
        .run(
            |round| {
                let client = client.clone();
                async move {
                    client
                        .run(&format!(
                            "INSERT INTO public.accounts (id) VALUES ({})",
                            round as i64
                        ))
                        .await;
                }
            },
            |run| async move {
                let account = run.round as i64;
                let conn = run.client.pool().get().await?;
                let suspended: bool = conn
                    .query_one(
                        "SELECT suspended FROM public.accounts WHERE id = $1",
                        &[&account],
                    )
                    .await?
                    .get(0);
                if !suspended {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    conn.execute("INSERT INTO public.emails VALUES ($1)", &[&account])
                        .await?;
                    conn.execute(
                        "UPDATE public.accounts SET suspended = true WHERE id = $1",
                        &[&account],
                    )
                    .await?;
                }
                Ok::<(), commitq::Error>(())
            },
            |round| one_email(client.clone(), round),
        )
        .await;
    assert!(
        !naive.broken.is_empty(),
        "the naive version should break: {naive}"
    );
    assert!(naive.errors.is_empty(), "{naive}");

    // commitq: the same check-then-act in the handler's transaction, and a
    // concurrency key per account so two jobs of it never run at once. As a
    // control, the same jobs without the key break: the helper's handlers
    // really do run together.
    for keyed in [false, true] {
        client.run("TRUNCATE public.accounts, public.emails").await;
        let report = Race::new(client.clone())
            .workers(8)
            .rounds(10)
            .stop_on_first_broken(!keyed)
            .run_jobs(
                |round| {
                    let client = client.clone();
                    async move {
                        let account = round as i64;
                        client
                            .run(&format!(
                                "INSERT INTO public.accounts (id) VALUES ({})",
                                account
                            ))
                            .await;
                        let mut options = EnqueueOptions::default();
                        if keyed {
                            options = options.concurrency_key(format!("account:{account}"));
                        }
                        for _ in 0..8 {
                            client
                                .enqueue_with(&SuspendAccount { account }, &options)
                                .await
                                .unwrap();
                        }
                    }
                },
                suspend_in_one_transaction,
                |round| one_email(client.clone(), round),
            )
            .await;
        if keyed {
            report.assert_clean();
            assert_eq!(report.rounds, 10);
        } else {
            assert!(
                !report.broken.is_empty(),
                "without the key it should break: {report}"
            );
        }
    }
}

async fn suspend_in_one_transaction(ctx: JobContext, job: SuspendAccount) -> HandlerResult {
    let mut conn = ctx.client().pool().get().await?;
    let tx = conn.transaction().await?;
    let suspended: bool = tx
        .query_one(
            "SELECT suspended FROM public.accounts WHERE id = $1",
            &[&job.account],
        )
        .await?
        .get(0);
    if !suspended {
        tokio::time::sleep(Duration::from_millis(2)).await;
        tx.execute("INSERT INTO public.emails VALUES ($1)", &[&job.account])
            .await?;
        tx.execute(
            "UPDATE public.accounts SET suspended = true WHERE id = $1",
            &[&job.account],
        )
        .await?;
    }
    ctx.complete_in(&*tx).await?;
    tx.commit().await?;
    Ok(Outcome::Complete)
}

/// Story: a job per member checks the community's credits, sends an SMS and
/// deducts a credit. The invariant: SMS sent = credits spent, and never
/// more SMS than credits.
#[derive(Serialize, Deserialize)]
struct SendSms {
    community: i64,
}

impl Job for SendSms {
    const KIND: &'static str = "send_sms";
    const QUEUE: &'static str = "sms";
}

const CREDITS: i32 = 5;

async fn credits_add_up(client: Client, round: usize) -> Result<(), String> {
    let id = round as i64;
    let sent = scalar_with(
        &client,
        "SELECT count(*) FROM public.sms WHERE account = $1",
        &[&id],
    )
    .await;
    let left = scalar_with(
        &client,
        "SELECT credits::bigint FROM public.accounts WHERE id = $1",
        &[&id],
    )
    .await;
    if sent + left != CREDITS as i64 || left < 0 || sent > CREDITS as i64 {
        return Err(format!("{sent} SMS sent, {left} credits left of {CREDITS}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_read_and_write_lose_credits_and_locking_the_balance_row_does_not() {
    let (_db, client) = setup("t_race_sms", TABLES).await;
    // Each round's community, with CREDITS credits and, for the commitq
    // side, eight jobs.
    let fill = |jobs: usize| {
        let client = client.clone();
        move |round: usize| {
            let client = client.clone();
            async move {
                client
                    .pool()
                    .get()
                    .await
                    .unwrap()
                    .execute(
                        "INSERT INTO public.accounts (id, credits) VALUES ($1, $2)",
                        &[&(round as i64), &CREDITS],
                    )
                    .await
                    .unwrap();
                for _ in 0..jobs {
                    client
                        .enqueue(&SendSms {
                            community: round as i64,
                        })
                        .await
                        .unwrap();
                }
            }
        }
    };

    // Naive: read the balance, send, write the balance back minus one.
    let naive = Race::new(client.clone())
        .workers(8)
        .rounds(20)
        .stop_on_first_broken(true)
        .run(
            fill(0),
            |run| async move {
                let id = run.round as i64;
                let conn = run.client.pool().get().await?;
                let credits: i32 = conn
                    .query_one("SELECT credits FROM public.accounts WHERE id = $1", &[&id])
                    .await?
                    .get(0);
                if credits > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    conn.execute("INSERT INTO public.sms VALUES ($1)", &[&id])
                        .await?;
                    conn.execute(
                        "UPDATE public.accounts SET credits = $2 WHERE id = $1",
                        &[&id, &(credits - 1)],
                    )
                    .await?;
                }
                Ok::<(), commitq::Error>(())
            },
            |round| credits_add_up(client.clone(), round),
        )
        .await;
    assert!(
        !naive.broken.is_empty(),
        "the naive version should break: {naive}"
    );

    // In the job's transaction: read the balance, send, deduct and complete.
    // What keeps the count right is the row lock on the balance (FOR
    // UPDATE), not the transaction: as a control, the same handler without
    // the lock sends more SMS than there are credits.
    for lock in [false, true] {
        client.run("TRUNCATE public.accounts, public.sms").await;
        let report = Race::new(client.clone())
            .workers(8)
            .rounds(if lock { 10 } else { 20 })
            .stop_on_first_broken(!lock)
            .run_jobs(
                fill(8),
                move |ctx, job: SendSms| send_sms_in_one_transaction(ctx, job, lock),
                |round| credits_add_up(client.clone(), round),
            )
            .await;
        if lock {
            report.assert_clean();
            assert_eq!(report.rounds, 10);
        } else {
            assert!(
                !report.broken.is_empty(),
                "without the row lock it should break: {report}"
            );
        }
    }
}

/// Send one SMS if the community has a credit left, and deduct it, in the
/// job's transaction; with `lock`, the balance is read FOR UPDATE.
async fn send_sms_in_one_transaction(ctx: JobContext, job: SendSms, lock: bool) -> HandlerResult {
    let mut conn = ctx.client().pool().get().await?;
    let tx = conn.transaction().await?;
    let read = if lock {
        "SELECT credits FROM public.accounts WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT credits FROM public.accounts WHERE id = $1"
    };
    let credits: i32 = tx.query_one(read, &[&job.community]).await?.get(0);
    if credits > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tx.execute("INSERT INTO public.sms VALUES ($1)", &[&job.community])
            .await?;
        tx.execute(
            "UPDATE public.accounts SET credits = credits - 1 WHERE id = $1",
            &[&job.community],
        )
        .await?;
    }
    ctx.complete_in(&*tx).await?;
    tx.commit().await?;
    Ok(Outcome::Complete)
}
