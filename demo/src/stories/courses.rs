//! Story 1, courses and suspensions: a user buys several courses at once;
//! if the card is declined the account is suspended and one suspension
//! email is sent. Naively, two jobs of one account both see "not
//! suspended", both charge, both send the email. With commitq the jobs of
//! one account share a concurrency key, so they never run at the same time:
//! each starts after the previous one committed, and sees the suspension,
//! without holding a row lock across the call to the payment provider.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitq::{EnqueueOptions, Job, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::stories::{both, with_pool};
use crate::{connect, naive, Ctx, Row, WORKERS};

const ACCOUNTS: i64 = 150;
const PURCHASES: i64 = 4;
pub const JOBS: u64 = (ACCOUNTS * PURCHASES) as u64;

#[derive(Serialize, Deserialize)]
struct ChargeAndDeliver {
    account: i64,
}

impl Job for ChargeAndDeliver {
    const KIND: &'static str = "charge_and_deliver";
    const QUEUE: &'static str = "billing";

    /// One job of an account at a time.
    fn options(&self) -> EnqueueOptions {
        EnqueueOptions::default().concurrency_key(format!("account:{}", self.account))
    }
}

/// The payment provider: slow, and it declines every card of one account in three.
async fn charge_card(account: i64) -> bool {
    tokio::time::sleep(Duration::from_millis(2)).await;
    account % 3 != 0
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let c = connect(&ctx.url).await;
    for (via, offset) in [("naive", 0i64), ("commitq", 1_000_000i64)] {
        c.execute(
            "INSERT INTO demo.accounts (id, via, card_declines)
             SELECT $1 + i, $2, i % 3 = 0 FROM generate_series(1, $3::bigint) i",
            &[&offset, &via, &ACCOUNTS],
        )
        .await
        .unwrap();
    }

    // Naive: enqueue everything, then workers check, charge and suspend in
    // separate statements.
    let naive_side = async {
        let producing = Arc::new(AtomicBool::new(true));
        let queue = connect(&ctx.url).await;
        // A user buys several courses at once: their jobs are queued together.
        for a in 1..=ACCOUNTS {
            for _ in 0..PURCHASES {
                naive::enqueue(&queue, "courses", json!({ "account": a })).await;
            }
        }
        producing.store(false, Ordering::SeqCst);
        let bar = ctx.bar.clone();
        naive::work(&ctx.url, "courses", producing, move |c, args| {
            let bar = bar.clone();
            async move {
                let account = args["account"].as_i64().unwrap();
                let suspended: bool = c
                    .query_one("SELECT suspended FROM demo.accounts WHERE id = $1", &[&account])
                    .await
                    .unwrap()
                    .get(0);
                if !suspended {
                    let ok = charge_card(account).await;
                    c.execute(
                        "INSERT INTO demo.charges SELECT $1, 'naive', suspended FROM demo.accounts WHERE id = $1",
                        &[&account],
                    )
                    .await
                    .unwrap();
                    if !ok {
                        c.execute("UPDATE demo.accounts SET suspended = true WHERE id = $1", &[&account])
                            .await
                            .unwrap();
                        c.execute("INSERT INTO demo.suspension_emails VALUES ($1, 'naive')", &[&account])
                            .await
                            .unwrap();
                    }
                }
                bar.inc(1);
            }
        })
        .await;
    };

    // commitq: the same jobs, one at a time per account (concurrency key);
    // the handler checks, charges, suspends and completes the job in one
    // transaction.
    let bar = ctx.bar.clone();
    let pool = WorkerPool::builder(ctx.client.clone()).queue("billing", WORKERS).handle(
        move |job_ctx, job: ChargeAndDeliver| {
            let bar = bar.clone();
            async move {
                let account = 1_000_000 + job.account;
                let mut conn = job_ctx.client().pool().get().await?;
                let tx = conn.transaction().await?;
                let suspended: bool = tx
                    .query_one("SELECT suspended FROM demo.accounts WHERE id = $1", &[&account])
                    .await?
                    .get(0);
                if !suspended {
                    let ok = charge_card(job.account).await;
                    tx.execute(
                        "INSERT INTO demo.charges SELECT $1, 'commitq', suspended FROM demo.accounts WHERE id = $1",
                        &[&account],
                    )
                    .await?;
                    if !ok {
                        tx.execute("UPDATE demo.accounts SET suspended = true WHERE id = $1", &[&account]).await?;
                        tx.execute("INSERT INTO demo.suspension_emails VALUES ($1, 'commitq')", &[&account]).await?;
                    }
                }
                job_ctx.complete_in(&*tx).await?;
                tx.commit().await?;
                bar.inc(1);
                Ok(Outcome::Complete)
            }
        },
    );
    let commitq_side = with_pool(ctx, pool, "billing", async {
        let jobs: Vec<ChargeAndDeliver> = (1..=ACCOUNTS)
            .flat_map(|account| (0..PURCHASES).map(move |_| ChargeAndDeliver { account }))
            .collect();
        ctx.client.enqueue_many(&jobs).await.unwrap();
    });
    tokio::join!(naive_side, commitq_side);

    let (n_susp, c_susp) = both(
        &c,
        "SELECT count(*) FROM demo.accounts WHERE via = $1 AND suspended",
    )
    .await;
    let (n_mail, c_mail) = both(
        &c,
        "SELECT count(*) FROM demo.suspension_emails WHERE via = $1",
    )
    .await;
    let (n_dup, c_dup) = both(
        &c,
        "SELECT count(*) FROM (SELECT account FROM demo.suspension_emails WHERE via = $1
                                GROUP BY account HAVING count(*) > 1) d",
    )
    .await;
    let (n_after, c_after) = both(
        &c,
        "SELECT count(*) FROM (SELECT account, count(*) FROM demo.charges c
                                 JOIN demo.accounts a ON a.id = c.account
                                WHERE c.via = $1 AND a.card_declines GROUP BY account) d
          CROSS JOIN LATERAL (SELECT generate_series(2, d.count)) extra",
    )
    .await;
    let (n_charges, c_charges) = both(&c, "SELECT count(*) FROM demo.charges WHERE via = $1").await;
    let story = "1. courses and suspensions";
    vec![
        Row {
            story,
            metric: "purchases",
            naive: JOBS as i64,
            commitq: JOBS as i64,
            expected: "600",
        },
        Row {
            story,
            metric: "charges attempted",
            naive: n_charges,
            commitq: c_charges,
            expected: "450",
        },
        Row {
            story,
            metric: "accounts suspended",
            naive: n_susp,
            commitq: c_susp,
            expected: "50",
        },
        Row {
            story,
            metric: "suspension emails sent",
            naive: n_mail,
            commitq: c_mail,
            expected: "50, one each",
        },
        Row {
            story,
            metric: "accounts emailed more than once",
            naive: n_dup,
            commitq: c_dup,
            expected: "0",
        },
        Row {
            story,
            metric: "charges tried on a suspended account",
            naive: n_after,
            commitq: c_after,
            expected: "0",
        },
    ]
}
