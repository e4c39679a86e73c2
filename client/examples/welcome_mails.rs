//! A producer and a worker pool in one program.
//!
//!     eval "$(dev/cluster.sh env)"      # the project-local cluster
//!     cargo run -p commitq --example welcome_mails
//!
//! Creates users and enqueues their welcome mail in the same transaction,
//! then runs a worker pool until every mail is sent (or Ctrl-C).

use std::time::Duration;

use commitq::{Client, EnqueueOptions, Job, Outcome, WorkerPool};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct SendWelcome {
    user_id: i64,
}

impl Job for SendWelcome {
    const KIND: &'static str = "send_welcome";
    const QUEUE: &'static str = "mail";
}

#[tokio::main]
async fn main() -> Result<(), commitq::Error> {
    let url = std::env::var("COMMITQ_DATABASE_URL").expect("set COMMITQ_DATABASE_URL");
    let client = Client::connect(&url).await?;

    {
        let mut conn = client.pool().get().await?;
        conn.batch_execute("CREATE TABLE IF NOT EXISTS public.users (id bigint PRIMARY KEY, welcomed boolean NOT NULL DEFAULT false)")
            .await?;
        let tx = conn.transaction().await?;
        for id in 1..=10_i64 {
            tx.execute(
                "INSERT INTO public.users (id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await?;
            // Same transaction: no job without its user, no user without its job.
            let key = EnqueueOptions::default().idempotency_key(format!("welcome-{id}"));
            commitq::enqueue(&*tx, &SendWelcome { user_id: id }, &key).await?;
        }
        tx.commit().await?;
    }

    let pool = WorkerPool::builder(client.clone())
        .queue("mail", 4)
        .handle(|ctx, job: SendWelcome| async move {
            // The mail provider would be called here. The user's row and the
            // job's completion commit together.
            let mut conn = ctx.client().pool().get().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "UPDATE public.users SET welcomed = true WHERE id = $1",
                &[&job.user_id],
            )
            .await?;
            ctx.complete_in(&*tx).await?;
            tx.commit().await?;
            println!("welcomed user {} (attempt {})", job.user_id, ctx.attempt);
            Ok(Outcome::Complete)
        })
        .build();
    let metrics = pool.metrics();
    let all_sent = async {
        loop {
            let conn = client.pool().get().await.expect("connection");
            let left: i64 = conn
                .query_one("SELECT count(*) FROM public.users WHERE NOT welcomed", &[])
                .await
                .expect("count")
                .get(0);
            if left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    pool.run_until(async {
        tokio::select! {
            _ = all_sent => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
    .await;
    println!("{:?}", metrics.snapshot());
    Ok(())
}
