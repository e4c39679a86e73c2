//! Story 3, the queue built twice: the CI nodes of a build start at the same
//! moment and each asks for its share of test files; the first request of a
//! build must create the build's work queue. Naively each node checks "no
//! queue yet" and creates one, so some builds get two. With commitq the
//! creation is a job enqueued with the build's idempotency key: the unique
//! index lets exactly one through.

use std::sync::Arc;
use std::time::Duration;

use commitq::{EnqueueOptions, Job, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

use crate::stories::{both, with_pool};
use crate::{connect, Ctx, Row, WORKERS};

const BUILDS: i64 = 40;
const NODES: usize = 8;
pub const JOBS: u64 = BUILDS as u64 * NODES as u64;

#[derive(Serialize, Deserialize)]
struct BuildQueue {
    build: i64,
}

impl Job for BuildQueue {
    const KIND: &'static str = "build_queue";
    const QUEUE: &'static str = "builds";
}

/// The API endpoint a node calls at start: naive check-then-create.
async fn naive_request(c: &tokio_postgres::Client, build: i64) {
    let exists: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM demo.build_queues WHERE build = $1 AND via = 'naive')",
            &[&build],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        // Listing the build's test files takes a moment.
        tokio::time::sleep(Duration::from_millis(2)).await;
        c.execute(
            "INSERT INTO demo.build_queues VALUES ($1, 'naive')",
            &[&build],
        )
        .await
        .unwrap();
    }
}

/// Play every build: its nodes start together (a barrier), each calling `request`.
async fn builds<F, Fut>(ctx: &Ctx, request: F)
where
    F: Fn(String, i64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for build in 1..=BUILDS {
        let barrier = Arc::new(Barrier::new(NODES));
        let nodes: Vec<_> = (0..NODES)
            .map(|_| {
                let (barrier, request, url, bar) = (
                    barrier.clone(),
                    request.clone(),
                    ctx.url.clone(),
                    ctx.bar.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    request(url, build).await;
                    bar.inc(1);
                })
            })
            .collect();
        for n in nodes {
            n.await.unwrap();
        }
    }
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let naive_side = builds(ctx, |url, build| async move {
        naive_request(&connect(&url).await, build).await;
    });

    let pool = WorkerPool::builder(ctx.client.clone())
        .queue("builds", WORKERS)
        .handle(|job_ctx, job: BuildQueue| async move {
            let mut conn = job_ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "INSERT INTO demo.build_queues VALUES ($1, 'commitq')",
                &[&job.build],
            )
            .await?;
            job_ctx.complete_in(&*tx).await?;
            tx.commit().await?;
            Ok(Outcome::Complete)
        });
    let client = ctx.client.clone();
    let commitq_side = with_pool(
        ctx,
        pool,
        "builds",
        builds(ctx, move |_url, build| {
            let client = client.clone();
            async move {
                let conn = client.pool().get().await.unwrap();
                let opts = EnqueueOptions::default().idempotency_key(format!("build-{build}"));
                commitq::enqueue(&**conn, &BuildQueue { build }, &opts)
                    .await
                    .unwrap();
            }
        }),
    );
    tokio::join!(naive_side, commitq_side);

    let c = connect(&ctx.url).await;
    let (n_queues, c_queues) =
        both(&c, "SELECT count(*) FROM demo.build_queues WHERE via = $1").await;
    let (n_twice, c_twice) = both(
        &c,
        "SELECT count(*) FROM (SELECT build FROM demo.build_queues WHERE via = $1
                                GROUP BY build HAVING count(*) > 1) d",
    )
    .await;
    let story = "3. the queue built twice";
    vec![
        Row {
            story,
            metric: "queues created for 40 builds",
            naive: n_queues,
            commitq: c_queues,
            expected: "40",
        },
        Row {
            story,
            metric: "builds with more than one queue",
            naive: n_twice,
            commitq: c_twice,
            expected: "0",
        },
    ]
}
