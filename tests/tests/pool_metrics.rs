//! The worker pool's metrics in the Prometheus text format: a scrape after
//! real jobs ran (completed, snoozed, failed for good, of a kind without a
//! handler) shows each counter under its Prometheus name, labelled by queue
//! and kind, with the counts the database agrees with, and the duration
//! histogram by outcome.

use std::time::Duration;

use commitq::prometheus_client;
use commitq::{Outcome, WorkerPool};
use commitq_tests::{scalar, setup, start_pool, wait_until, Record, Sql};

/// The value of the sample `name{labels}` in `text`, if any.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_each_outcome_by_queue_and_kind() {
    let (_db, client) = setup("t_pool_prometheus", "").await;
    client
        .run(
            "SELECT commitq.enqueue('effects', 'record', jsonb_build_object('n', i, 'label', 'ok'))
               FROM generate_series(1, 5) i;
             SELECT commitq.enqueue('effects', 'record', '{\"n\": 6, \"label\": \"later\"}');
             SELECT commitq.enqueue('effects', 'record', '{\"n\": 7, \"label\": \"bad\"}', max_attempts => 1);
             SELECT commitq.enqueue('effects', 'stray', '{}', max_attempts => 1);",
        )
        .await;
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 4)
        .poll_interval(Duration::from_millis(100))
        .handle(|_ctx, job: Record| async move {
            match job.label.as_str() {
                "ok" => Ok(Outcome::Complete),
                "later" => Ok(Outcome::Snooze(Duration::from_secs(3600))),
                _ => Err("bad input".into()),
            }
        })
        .build();
    let metrics = pool.metrics();
    let running = start_pool(pool);
    wait_until("every job reported", Duration::from_secs(30), async || {
        let m = metrics.snapshot();
        m.completed == 5 && m.snoozed == 1 && m.discarded == 2
    })
    .await;
    running.stop().await;
    // The database agrees: 5 gone, 2 discarded, 1 waiting for later.
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM commitq.finished_jobs WHERE state = 'discarded'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM commitq.jobs WHERE state = 'scheduled'"
        )
        .await,
        1
    );

    let text = metrics.encode_prometheus();
    let rec = r#"{queue="effects",kind="record"}"#;
    let stray = r#"{queue="effects",kind="stray"}"#;
    for (name, want) in [
        (format!("commitq_jobs_claimed_total{rec}"), 7.0),
        (format!("commitq_jobs_claimed_total{stray}"), 1.0),
        (format!("commitq_jobs_completed_total{rec}"), 5.0),
        (format!("commitq_jobs_snoozed_total{rec}"), 1.0),
        (format!("commitq_jobs_failed_total{rec}"), 1.0),
        (format!("commitq_jobs_discarded_total{rec}"), 1.0),
        (format!("commitq_jobs_failed_total{stray}"), 1.0),
        (format!("commitq_jobs_discarded_total{stray}"), 1.0),
        (
            r#"commitq_job_duration_seconds_count{queue="effects",kind="record",outcome="completed"}"#
                .to_string(),
            5.0,
        ),
        (
            r#"commitq_job_duration_seconds_count{queue="effects",kind="record",outcome="snoozed"}"#
                .to_string(),
            1.0,
        ),
        (
            r#"commitq_job_duration_seconds_count{queue="effects",kind="record",outcome="failed"}"#
                .to_string(),
            1.0,
        ),
        (
            r#"commitq_job_duration_seconds_bucket{le="+Inf",queue="effects",kind="record",outcome="completed"}"#
                .to_string(),
            5.0,
        ),
        (
            format!("commitq_job_claim_to_start_seconds_count{rec}"),
            7.0,
        ),
    ] {
        assert_eq!(sample(&text, &name), Some(want), "{name} in:\n{text}");
    }
    // Prometheus conventions: counters typed and suffixed _total, the
    // histogram in seconds, labels queue/kind/outcome only.
    for line in [
        "# TYPE commitq_jobs_completed counter",
        "# TYPE commitq_job_duration_seconds histogram",
        "# UNIT commitq_job_duration_seconds seconds",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(l.starts_with("commitq_"), "{l}");
        let labels = l.split_once('{').map_or("", |(_, rest)| rest);
        for pair in labels.split(['{', '}', ',']).filter(|p| p.contains('=')) {
            let key = pair.split('=').next().unwrap();
            assert!(
                ["queue", "kind", "outcome", "le"].contains(&key),
                "label {key} in {l}"
            );
        }
    }
    // Registered into an application's registry, the same live values.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register_prometheus(&mut registry);
    let mut own = String::new();
    prometheus_client::encoding::text::encode(&mut own, &registry).unwrap();
    assert_eq!(own, text);
}
