//! The naive queue the stories compare commitq with: a job table written on
//! its own connection, outside the request's transaction (as a Redis-backed
//! queue would be), drained by workers that act in separate statements.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::{connect, WORKERS};

/// Push a job: visible to workers at once, whatever the caller's
/// transaction does later.
pub async fn enqueue(queue_conn: &Client, story: &str, args: Value) {
    queue_conn
        .execute(
            "INSERT INTO demo.naive_jobs (story, args) VALUES ($1, $2)",
            &[&story, &args],
        )
        .await
        .unwrap();
}

/// Run `handler` on `story`'s naive jobs with [`WORKERS`] workers until
/// `producing` is false and the table has none left.
pub async fn work<F, Fut>(url: &str, story: &'static str, producing: Arc<AtomicBool>, handler: F)
where
    F: Fn(Arc<Client>, Value) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (url, producing, handler) = (url.to_string(), producing.clone(), handler.clone());
        tasks.push(tokio::spawn(async move {
            let c = Arc::new(connect(&url).await);
            loop {
                let row = c
                    .query_opt(
                        "DELETE FROM demo.naive_jobs WHERE id = (
                             SELECT id FROM demo.naive_jobs WHERE story = $1
                              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                         RETURNING args",
                        &[&story],
                    )
                    .await
                    .unwrap();
                match row {
                    Some(row) => handler(c.clone(), row.get(0)).await,
                    None if producing.load(Ordering::SeqCst) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    None => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
