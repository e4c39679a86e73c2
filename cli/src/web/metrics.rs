//! `/metrics`: queue-level gauges from commitq.queue_stats and
//! commitq.concurrency_key_stats, for a Prometheus scrape, encoded by the
//! Prometheus project's own Rust client (prometheus-client) in the
//! OpenMetrics text format. A fresh registry per scrape: the values are the
//! database's now, nothing is accumulated in the process.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use super::{Shared, WebError};
use crate::queries;

type Labels = Vec<(&'static str, String)>;

pub async fn metrics(State(state): State<Shared>) -> Result<impl IntoResponse, WebError> {
    let db = state.pool.get().await?;
    let stats = queries::queue_stats(&**db).await?;
    let keys_at_limit: i64 = db
        .query_one(
            "SELECT count(*) FROM commitq.concurrency_key_stats WHERE at_limit",
            &[],
        )
        .await?
        .get(0);

    let mut registry = Registry::with_prefix("commitq");
    let jobs = Family::<Labels, Gauge>::default();
    let paused = Family::<Labels, Gauge>::default();
    let latency = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let done_minute = Family::<Labels, Gauge>::default();
    let outcomes_hour = Family::<Labels, Gauge>::default();
    for s in &stats {
        let q = || vec![("queue", s.queue.clone())];
        for (name, n) in [
            ("available", s.available),
            ("scheduled", s.scheduled),
            ("running", s.running),
            ("blocked", s.blocked),
        ] {
            let mut l = q();
            l.push(("state", name.to_string()));
            jobs.get_or_create(&l).set(n);
        }
        paused.get_or_create(&q()).set(s.paused as i64);
        latency.get_or_create(&q()).set(s.latency_seconds);
        done_minute.get_or_create(&q()).set(s.completed_last_minute);
        for (outcome, n) in [
            ("completed", s.completed_last_hour),
            ("failed", s.failed_last_hour),
            ("discarded", s.discarded_last_hour),
            ("cancelled", s.cancelled_last_hour),
        ] {
            let mut l = q();
            l.push(("outcome", outcome.to_string()));
            outcomes_hour.get_or_create(&l).set(n);
        }
    }
    registry.register("queue_jobs", "Live jobs per queue and state", jobs);
    registry.register("queue_paused", "1 when the queue is paused", paused);
    registry.register_with_unit(
        "queue_latency",
        "Age of the oldest due available job of the queue",
        Unit::Seconds,
        latency,
    );
    registry.register(
        "queue_completed_last_minute",
        "Jobs completed in the last minute",
        done_minute,
    );
    registry.register(
        "queue_outcomes_last_hour",
        "Attempts that completed, failed, were discarded or cancelled in the last hour",
        outcomes_hour,
    );
    let at_limit = Gauge::<i64>::default();
    at_limit.set(keys_at_limit);
    registry.register(
        "concurrency_keys_at_limit",
        "Concurrency keys running as many jobs as their limit allows",
        at_limit,
    );

    let mut body = String::new();
    encode(&mut body, &registry)
        .map_err(|e| WebError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
