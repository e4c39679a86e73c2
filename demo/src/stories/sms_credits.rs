//! Story 4, SMS credits: a community has 100 prepaid credits; a job per
//! member checks the balance, sends the SMS and deducts one credit. Naively
//! the check and the deduction are separate statements and the balance ends
//! wrong. With commitq the handler locks the balance, sends, deducts and
//! completes the job in one transaction.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use commitq::{Job, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::stories::{both, with_pool};
use crate::{connect, naive, Ctx, Row, WORKERS};

const CREDITS: i32 = 100;
const MEMBERS: i64 = 150;
pub const JOBS: u64 = MEMBERS as u64;

#[derive(Serialize, Deserialize)]
struct SendSms {
    member: i64,
}

impl Job for SendSms {
    const KIND: &'static str = "send_sms";
    const QUEUE: &'static str = "sms";
}

/// The SMS gateway is slow.
async fn gateway() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let c = connect(&ctx.url).await;
    c.execute(
        "INSERT INTO demo.communities VALUES ('naive', $1), ('commitq', $1)",
        &[&CREDITS],
    )
    .await
    .unwrap();

    let naive_side = async {
        let queue = connect(&ctx.url).await;
        for member in 1..=MEMBERS {
            naive::enqueue(&queue, "sms", json!({ "member": member })).await;
        }
        let bar = ctx.bar.clone();
        naive::work(
            &ctx.url,
            "sms",
            Arc::new(AtomicBool::new(false)),
            move |c, args| {
                let bar = bar.clone();
                async move {
                    let credits: i32 = c
                        .query_one(
                            "SELECT credits FROM demo.communities WHERE via = 'naive'",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if credits > 0 {
                        gateway().await;
                        c.execute(
                            "INSERT INTO demo.sms VALUES ('naive', $1)",
                            &[&args["member"].as_i64()],
                        )
                        .await
                        .unwrap();
                        c.execute(
                            "UPDATE demo.communities SET credits = $1 WHERE via = 'naive'",
                            &[&(credits - 1)],
                        )
                        .await
                        .unwrap();
                    }
                    bar.inc(1);
                }
            },
        )
        .await;
    };

    let bar = ctx.bar.clone();
    let pool = WorkerPool::builder(ctx.client.clone())
        .queue("sms", WORKERS)
        .handle(move |job_ctx, job: SendSms| {
            let bar = bar.clone();
            async move {
                let mut conn = job_ctx.client().pool().get().await?;
                let tx = conn.transaction().await?;
                let credits: i32 = tx
                    .query_one(
                        "SELECT credits FROM demo.communities WHERE via = 'commitq' FOR UPDATE",
                        &[],
                    )
                    .await?
                    .get(0);
                if credits > 0 {
                    gateway().await;
                    tx.execute(
                        "INSERT INTO demo.sms VALUES ('commitq', $1)",
                        &[&job.member],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE demo.communities SET credits = credits - 1 WHERE via = 'commitq'",
                        &[],
                    )
                    .await?;
                }
                job_ctx.complete_in(&*tx).await?;
                tx.commit().await?;
                bar.inc(1);
                Ok(Outcome::Complete)
            }
        });
    let commitq_side = with_pool(ctx, pool, "sms", async {
        let jobs: Vec<SendSms> = (1..=MEMBERS).map(|member| SendSms { member }).collect();
        ctx.client.enqueue_many(&jobs).await.unwrap();
    });
    tokio::join!(naive_side, commitq_side);

    let (n_sent, c_sent) = both(&c, "SELECT count(*) FROM demo.sms WHERE via = $1").await;
    let (n_left, c_left) = both(
        &c,
        "SELECT credits::bigint FROM demo.communities WHERE via = $1",
    )
    .await;
    let story = "4. SMS credits";
    vec![
        Row {
            story,
            metric: "SMS sent (150 members, 100 credits)",
            naive: n_sent,
            commitq: c_sent,
            expected: "100",
        },
        Row {
            story,
            metric: "credits deducted",
            naive: CREDITS as i64 - n_left,
            commitq: CREDITS as i64 - c_left,
            expected: "= SMS sent",
        },
        Row {
            story,
            metric: "SMS sent without a credit",
            naive: n_sent - (CREDITS as i64 - n_left),
            commitq: c_sent - (CREDITS as i64 - c_left),
            expected: "0",
        },
    ]
}
