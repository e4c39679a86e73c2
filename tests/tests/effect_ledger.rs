//! The effect ledger: an outside call recorded by one attempt is not made
//! again by a retry.

use std::sync::Arc;
use std::time::Duration;

use commitq::{Outcome, WorkerPool};
use commitq_tests::{no_backoff, record, scalar, setup, start_pool, wait_until, Record, EFFECTS};

/// A retried job does not repeat an effect an earlier attempt recorded:
/// "charge the card" runs once although the receipt step fails once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_skips_effects_already_done() {
    let (db, client) = setup("t_effect_retry", EFFECTS).await;
    no_backoff(&db.connect().await).await;
    let job = client.enqueue(&record(9, "order")).await.unwrap();
    let charges: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let calls = charges.clone();
    let pool = WorkerPool::builder(client.clone())
        .queue("effects", 1)
        .poll_interval(Duration::from_millis(100))
        .handle(move |ctx, _job: Record| {
            let calls = calls.clone();
            async move {
                let charge_id: String = ctx
                    .effect("charge_card", |key| async move {
                        // The payment API, called with a key stable across attempts.
                        calls.lock().unwrap().push(key.clone());
                        Ok(format!("ch_{key}"))
                    })
                    .await?;
                if ctx.attempt == 1 {
                    return Err(format!("receipt for {charge_id} bounced").into());
                }
                Ok(Outcome::Complete)
            }
        })
        .build();
    let running = start_pool(pool);
    wait_until("the job to complete", Duration::from_secs(20), async || {
        scalar(&client, "SELECT count(*) FROM commitq.jobs").await == 0
    })
    .await;
    running.stop().await;
    let calls = charges.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![format!("commitq-{}-charge_card", job.job_id)],
        "charged exactly once"
    );
}
