//! The dashboard in a real browser: Debian's chromium driven through
//! chromedriver (WebDriver) against `commitq web` on the project cluster.
//! Screenshots go to target/screenshots/ (docs/images/dashboard.png is one).

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free port of loopback; killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: install chromium and chromium-driver (make setup)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                // As root chromium runs only without its sandbox.
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshots().join(name), png).unwrap();
}

async fn text_of(b: &Client, id: &str) -> String {
    b.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

/// Poll until the element `id` reads `want` (a page load after a click
/// finishes on the browser's time, not the test's).
async fn wait_for_text(b: &Client, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = b.find(Locator::Id(id)).await {
            if e.text().await.is_ok_and(|t| t == want) {
                return;
            }
        }
        if Instant::now() > deadline {
            screenshot(b, "failed.png").await;
            let page = b.source().await.unwrap_or_default();
            panic!(
                "#{id} never read {want:?} on {:?}: {page}",
                b.current_url().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn claimable(c: &tokio_postgres::Client, queue: &str) -> i64 {
    // Claim and roll back: counts what a worker would get, changes nothing.
    c.batch_execute("BEGIN").await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM commitq.claim($1, 'probe', 100, '1 minute')",
            &[&queue],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute("ROLLBACK").await.unwrap();
    n
}

#[tokio::test]
async fn in_chromium_an_operator_retries_a_discarded_job_and_pauses_a_queue() {
    let db = db("web_browser").await;
    let c = db.connect().await;
    // Some history for the chart: completed and failed jobs this minute.
    for i in 0..40 {
        enqueue(&c, "mail", "welcome", &format!(r#"{{"user": {i}}}"#)).await;
    }
    c.batch_execute(
        "SELECT commitq.complete(job_id, lease_token) FROM commitq.claim('mail', 'w1', 25, '1 minute')",
    )
    .await
    .unwrap();
    for i in 0..3 {
        enqueue(&c, "billing", "charge", &format!(r#"{{"invoice": {i}}}"#)).await;
        claim_and_fail(&c, "billing", "card declined: insufficient funds").await;
    }
    let discarded = enqueue(&c, "billing", "charge", r#"{"invoice": 99}"#).await;
    assert_eq!(
        claim_and_fail(&c, "billing", "card declined").await,
        discarded
    );

    let web = Web::start(&db.url);
    let driver = Driver::start();
    let b = driver.browser().await;

    // The overview: live counts and the chart.
    b.goto(&web.url("/")).await.unwrap();
    assert_eq!(text_of(&b, "count-available").await, "15");
    assert!(b.find(Locator::Css("svg.chart rect.done")).await.is_ok());
    screenshot(&b, "overview.png").await;

    // A discarded job, opened from the list, retried with its button.
    b.goto(&web.url("/jobs?state=discarded&queue=billing"))
        .await
        .unwrap();
    b.find(Locator::LinkText(&discarded.to_string()))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&b, "job-state", "discarded").await;
    assert!(text_of(&b, "errors").await.contains("card declined"));
    screenshot(&b, "job-discarded.png").await;
    b.find(Locator::Id("retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&b, "job-state", "available").await;
    assert_eq!(job_state(&c, discarded).await, "available");
    screenshot(&b, "job-retried.png").await;

    // Pause queue mail from its page: claims hand out nothing; resume.
    assert_eq!(claimable(&c, "mail").await, 15);
    b.goto(&web.url("/queues")).await.unwrap();
    b.find(Locator::Css("tr[data-queue='mail'] button.pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        &b,
        "flash",
        "queue paused: it hands out no jobs until resumed",
    )
    .await;
    assert!(b
        .find(Locator::Css("tr[data-queue='mail'] .tag.paused"))
        .await
        .is_ok());
    assert_eq!(claimable(&c, "mail").await, 0);
    screenshot(&b, "queues-paused.png").await;
    b.find(Locator::Css("tr[data-queue='mail'] button.resume"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&b, "flash", "queue resumed").await;
    assert_eq!(claimable(&c, "mail").await, 15);

    // The same pages as a reader: no action anywhere.
    let reader = Web::start(&login_role(&db, "browser_test_reader", "commitq_reader").await);
    for path in [
        format!("/jobs/{discarded}"),
        "/queues".into(),
        "/jobs?state=available".into(),
    ] {
        b.goto(&reader.url(&path)).await.unwrap();
        let posts = b
            .find_all(Locator::Css("form[method='post']"))
            .await
            .unwrap();
        assert!(posts.is_empty(), "{path}: {} forms that post", posts.len());
    }
    b.goto(&reader.url(&format!("/jobs/{discarded}")))
        .await
        .unwrap();
    wait_for_text(&b, "job-state", "available").await;
    screenshot(&b, "job-as-reader.png").await;

    b.close().await.unwrap();
}
