//! The four stories of `shared/design.md`, each a module with a `run` that
//! plays it naively and with commitq and returns its lines of the table.

pub mod courses;
pub mod created_then_mailed;
pub mod queue_built_twice;
pub mod sms_credits;

use std::future::Future;

use commitq::WorkerPoolBuilder;

use crate::{connect, drained, Ctx};

/// Jobs all stories run, both sides, for the progress bar.
pub const TOTAL_JOBS: u64 =
    2 * (courses::JOBS + created_then_mailed::JOBS + queue_built_twice::JOBS + sms_credits::JOBS);

/// Tables of every story, made afresh on each run.
pub const SCHEMA: &str = "
    DROP SCHEMA IF EXISTS demo CASCADE;
    CREATE SCHEMA demo;
    CREATE TABLE demo.naive_jobs (id bigserial PRIMARY KEY, story text NOT NULL, args jsonb NOT NULL);
    -- courses and suspensions
    CREATE TABLE demo.accounts (id bigint PRIMARY KEY, via text NOT NULL, card_declines boolean NOT NULL,
                                suspended boolean NOT NULL DEFAULT false);
    CREATE TABLE demo.charges (account bigint NOT NULL, via text NOT NULL, after_suspension boolean NOT NULL);
    CREATE TABLE demo.suspension_emails (account bigint NOT NULL, via text NOT NULL);
    -- created, then mailed
    CREATE TABLE demo.records (id bigint PRIMARY KEY, via text NOT NULL);
    CREATE TABLE demo.mailings (record bigint NOT NULL, via text NOT NULL, found boolean NOT NULL);
    -- the queue built twice
    CREATE TABLE demo.build_queues (build bigint NOT NULL, via text NOT NULL);
    -- SMS credits
    CREATE TABLE demo.communities (via text PRIMARY KEY, credits integer NOT NULL);
    CREATE TABLE demo.sms (via text NOT NULL, member bigint NOT NULL);
";

/// Run a commitq worker pool over `queue` while `produce` runs, then until
/// the queue is empty; then shut it down gracefully.
pub async fn with_pool(
    ctx: &Ctx,
    pool: WorkerPoolBuilder,
    queue: &str,
    produce: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        pool.poll_interval(std::time::Duration::from_millis(50))
            .build()
            .run_until(async {
                let _ = stopped.await;
            }),
    );
    produce.await;
    drained(&connect(&ctx.url).await, queue).await;
    let _ = stop.send(());
    running.await.unwrap();
}

/// A query with one parameter, the side (`via`), run for both sides:
/// (naive, commitq).
pub async fn both(c: &tokio_postgres::Client, sql: &str) -> (i64, i64) {
    let naive: i64 = c.query_one(sql, &[&"naive"]).await.unwrap().get(0);
    let commitq: i64 = c.query_one(sql, &[&"commitq"]).await.unwrap().get(0);
    (naive, commitq)
}
