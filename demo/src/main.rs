//! The commitq demo: the stories that motivated commitq, each played twice
//! on the same database with the same number of workers: once the naive way
//! (a queue outside the caller's transaction, check-then-act in separate
//! statements) and once with commitq. It prints what a user would see.
//!
//! Run it with `make demo`, which starts the project-local cluster.

mod naive;
mod stories;

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::{Client, NoTls};

/// Workers on each side, naive and commitq.
pub const WORKERS: usize = 16;

/// One line of the result table.
pub struct Row {
    pub story: &'static str,
    pub metric: &'static str,
    pub naive: i64,
    pub commitq: i64,
    pub expected: &'static str,
}

/// What every story gets.
pub struct Ctx {
    pub url: String,
    pub client: commitq::Client,
    pub bar: ProgressBar,
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A small deterministic pseudo-random sequence (xorshift), so every run
/// plays the same requests.
pub fn pseudo_random(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Wait until commitq's queue has no job left.
pub async fn drained(c: &Client, queue: &str) {
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM commitq.jobs WHERE queue = $1",
                &[&queue],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("COMMITQ_DATABASE_URL")
        .expect("COMMITQ_DATABASE_URL is not set: run the demo with `make demo`");
    let admin = connect(&url).await;
    admin
        .batch_execute(stories::SCHEMA)
        .await
        .expect("demo schema");
    let client = commitq::Client::connect(&url)
        .await
        .expect("commitq client");

    let bar = ProgressBar::new(stories::TOTAL_JOBS);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:32} [{bar:40}] {pos}/{len} jobs")
            .unwrap()
            .progress_chars("=> "),
    );
    let ctx = Ctx {
        url: url.clone(),
        client,
        bar,
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    // Ctrl-C or SIGTERM stops the demo; each story's worker pool shuts down
    // gracefully when its story is done.
    tokio::select! {
        _ = async {
            ctx.bar.set_message("courses and suspensions");
            rows.extend(stories::courses::run(&ctx).await);
            ctx.bar.set_message("created, then mailed");
            rows.extend(stories::created_then_mailed::run(&ctx).await);
            ctx.bar.set_message("the queue built twice");
            rows.extend(stories::queue_built_twice::run(&ctx).await);
            ctx.bar.set_message("SMS credits");
            rows.extend(stories::sms_credits::run(&ctx).await);
        } => {}
        _ = interrupted() => {
            ctx.bar.abandon_with_message("interrupted");
            return;
        }
    }
    ctx.bar
        .finish_with_message(format!("done in {:.1} s", started.elapsed().as_secs_f64()));

    println!("\n{WORKERS} workers on each side, same database, same requests.\n");
    println!("| story | what a user sees | naive | commitq | should be |");
    println!("|---|---|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.story, r.metric, r.naive, r.commitq, r.expected
        );
    }
}
