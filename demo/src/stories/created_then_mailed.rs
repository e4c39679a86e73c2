//! Story 2, created, then mailed: a request creates a record and enqueues
//! "mail the subscribers about record N" before its transaction commits;
//! one request in ten fails and rolls back. Naively the job is visible at
//! once, so a fast worker finds no record (too early, or never: rolled
//! back). With commitq the job is part of the request's transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commitq::{EnqueueOptions, Job, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::stories::{both, with_pool};
use crate::{connect, naive, pseudo_random, Ctx, Row, WORKERS};

const PRODUCERS: i64 = 8;
const REQUESTS: i64 = 100;
pub const JOBS: u64 = (PRODUCERS * REQUESTS) as u64;

#[derive(Serialize, Deserialize)]
struct MailSubscribers {
    record: i64,
}

impl Job for MailSubscribers {
    const KIND: &'static str = "mail_subscribers";
    const QUEUE: &'static str = "mail";
}

/// One request: create the record, enqueue its mailing, finish the rest of
/// the request (a few milliseconds), then commit, or roll back one time in ten.
async fn request(url: &str, via: &str, producer: i64) {
    let mut c = connect(url).await;
    let queue = connect(url).await;
    for r in 0..REQUESTS {
        let id = producer * REQUESTS + r + if via == "naive" { 0 } else { 1_000_000 };
        let luck = pseudo_random(id as u64);
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO demo.records VALUES ($1, $2)", &[&id, &via])
            .await
            .unwrap();
        if via == "naive" {
            naive::enqueue(&queue, "mail", json!({ "record": id })).await;
        } else {
            commitq::enqueue(
                &tx,
                &MailSubscribers { record: id },
                &EnqueueOptions::default(),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_micros(500 + luck % 3000)).await;
        if luck.is_multiple_of(10) {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
}

async fn mail(c: &tokio_postgres::Client, via: &str, record: i64) {
    c.execute(
        "INSERT INTO demo.mailings SELECT $1, $2, EXISTS (SELECT 1 FROM demo.records WHERE id = $1)",
        &[&record, &via],
    )
    .await
    .unwrap();
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let naive_side = async {
        let producing = Arc::new(AtomicBool::new(true));
        let flag = producing.clone();
        let produce = async {
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    tokio::spawn({
                        let url = ctx.url.clone();
                        async move { request(&url, "naive", p).await }
                    })
                })
                .collect();
            for p in producers {
                p.await.unwrap();
            }
            flag.store(false, Ordering::SeqCst);
        };
        let bar = ctx.bar.clone();
        let work = naive::work(&ctx.url, "mail", producing, move |c, args| {
            let bar = bar.clone();
            async move {
                mail(&c, "naive", args["record"].as_i64().unwrap()).await;
                bar.inc(1);
            }
        });
        tokio::join!(produce, work);
    };

    let bar = ctx.bar.clone();
    let pool = WorkerPool::builder(ctx.client.clone())
        .queue("mail", WORKERS)
        .handle(move |job_ctx, job: MailSubscribers| {
            let bar = bar.clone();
            async move {
                let conn = job_ctx.client().pool().get().await?;
                mail(&conn, "commitq", job.record).await;
                bar.inc(1);
                Ok(Outcome::Complete)
            }
        });
    let commitq_side = with_pool(ctx, pool, "mail", async {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                tokio::spawn({
                    let url = ctx.url.clone();
                    async move { request(&url, "commitq", p).await }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
    });
    tokio::join!(naive_side, commitq_side);

    let c = connect(&ctx.url).await;
    let (n_records, c_records) = both(&c, "SELECT count(*) FROM demo.records WHERE via = $1").await;
    let (n_jobs, c_jobs) = both(&c, "SELECT count(*) FROM demo.mailings WHERE via = $1").await;
    let (n_missing, c_missing) = both(
        &c,
        "SELECT count(*) FROM demo.mailings m WHERE via = $1 AND NOT found
            AND EXISTS (SELECT 1 FROM demo.records r WHERE r.id = m.record)",
    )
    .await;
    let (n_ghost, c_ghost) = both(
        &c,
        "SELECT count(*) FROM demo.mailings m WHERE via = $1
            AND NOT EXISTS (SELECT 1 FROM demo.records r WHERE r.id = m.record)",
    )
    .await;
    let story = "2. created, then mailed";
    vec![
        Row {
            story,
            metric: "records committed",
            naive: n_records,
            commitq: c_records,
            expected: "about 720",
        },
        Row {
            story,
            metric: "mailing jobs run",
            naive: n_jobs,
            commitq: c_jobs,
            expected: "= records committed",
        },
        Row {
            story,
            metric: "jobs that found their record missing",
            naive: n_missing,
            commitq: c_missing,
            expected: "0",
        },
        Row {
            story,
            metric: "jobs run for a rolled-back request",
            naive: n_ghost,
            commitq: c_ghost,
            expected: "0",
        },
    ]
}
