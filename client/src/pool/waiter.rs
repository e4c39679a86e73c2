//! How a claim loop waits once its queue is empty.
//!
//! With pg_commitq preloaded (`commitq.wait_supported()`), it waits in the
//! database: `CALL commitq.claim_wait` claims the first jobs committed to
//! the queue, woken at their commit through shared memory, with no LISTEN
//! connection, no NOTIFY cost for producers, and no snapshot held while it
//! waits. Each call waits at most the pool's poll interval, so scheduled
//! jobs whose time came without a wake-up are still found, and a stopping
//! pool cancels the call.
//!
//! The pool asks once at start, and opens its LISTEN connection only when
//! the server cannot wait so. Otherwise that connection (notifier.rs) wakes
//! the loop. That
//! connection is not the one claims run on, and a claim registers its worker
//! for NOTIFYs only in a session that LISTENs itself: so the loop registers
//! with `commitq.start_waiting` and claims once more, since a job committed
//! between the empty claim and the registration sent no NOTIFY.

use std::time::Duration;

use tokio::time::Instant;

use tracing::warn;

use crate::{driver, tls, Error};

use super::{Claimed, Shared, WorkerPoolBuilder};

/// How long a stopping pool waits for its cancelled wait to end before
/// cancelling again.
const CANCEL_AGAIN: Duration = Duration::from_millis(200);

/// How long the pool's start waits to learn whether the server has the
/// waiting claim.
const ASK_WITHIN: Duration = Duration::from_secs(5);

/// What the wait brought.
pub(super) enum Waited {
    /// Jobs claimed during the wait.
    Claimed(Vec<Claimed>),
    /// The wait ran its full length in the database and found nothing:
    /// claim again at once.
    Nothing,
    /// No waiting claim here (or it failed): wait for a NOTIFY or the poll
    /// interval, as before.
    Listen,
}

/// Whether the server has the waiting claim; `None` when the question
/// failed (no connection yet), to be asked again by each claim loop.
pub(super) async fn wait_supported(cfg: &WorkerPoolBuilder) -> Option<bool> {
    let ask = async {
        let conn = cfg.client.pool().get().await.ok()?;
        driver::wait_supported(&**conn).await.ok()
    };
    // A server that does not answer soon must not hold up the pool's start.
    tokio::time::timeout(ASK_WITHIN, ask).await.ok().flatten()
}

/// One per claim loop: whether the server has the waiting claim, asked once.
pub(super) struct Waiter {
    supported: Option<bool>,
}

impl Waiter {
    /// `supported` as the pool found it at start, if it could ask.
    pub(super) fn new(supported: Option<bool>) -> Waiter {
        Waiter { supported }
    }

    /// After an empty claim of `n` jobs of `queue`.
    pub(super) async fn wait(&mut self, shared: &Shared, queue: &str, n: usize) -> Waited {
        match self.try_wait(shared, queue, n).await {
            Ok(w) => w,
            Err(e) => {
                warn!(queue = %queue, error = %e, "waiting claim failed; polling");
                Waited::Listen
            }
        }
    }

    async fn try_wait(&mut self, shared: &Shared, queue: &str, n: usize) -> Result<Waited, Error> {
        let cfg = &shared.cfg;
        let conn = cfg.client.pool().get().await?;
        let supported = match self.supported {
            Some(s) => s,
            None => *self
                .supported
                .insert(driver::wait_supported(&**conn).await?),
        };
        if !supported {
            driver::start_waiting(&**conn, queue, &cfg.worker_id).await?;
            let rows = driver::claim(&conn, queue, &cfg.worker_id, n, cfg.lease).await?;
            return Ok(claimed(rows).map_or(Waited::Listen, Waited::Claimed));
        }
        if shared.stopping.is_cancelled() {
            return Ok(Waited::Nothing);
        }
        let mut cancel_sent = false;
        let rows = {
            let call = driver::claim_wait(
                &**conn,
                queue,
                &cfg.worker_id,
                n,
                cfg.lease,
                // The procedure's limit.
                cfg.poll_interval.min(Duration::from_secs(86_400)),
            );
            tokio::pin!(call);
            tokio::select! {
                biased;
                r = &mut call => r,
                _ = shared.stopping.cancelled() => loop {
                    // Cancel the wait, then take its answer: jobs it claimed
                    // just before are run, not left to their lease. Again
                    // until it ends: a cancel that reaches the server before
                    // the CALL does cancels nothing.
                    cancel_sent = true;
                    let cancel = conn.cancel_token();
                    // The pool's TLS settings when its URL is known, else
                    // none (a server that insists on TLS then lets the wait
                    // run out).
                    match cfg.client.url().and_then(|u| tls::configure(u).ok()) {
                        Some((_, tls)) => drop(cancel.cancel_query(tls).await),
                        None => drop(cancel.cancel_query(tokio_postgres::NoTls).await),
                    }
                    if let Ok(r) = tokio::time::timeout(CANCEL_AGAIN, &mut call).await {
                        break r;
                    }
                }
            }
        };
        if cancel_sent {
            // A cancel request travels apart from the connection and may
            // land after the CALL has ended, on whatever statement the
            // connection runs next (an application's enqueue, once the
            // connection is back in the client's pool): close it instead.
            drop(deadpool_postgres::Object::take(conn));
        }
        match rows {
            Ok(rows) => Ok(claimed(rows).map_or(Waited::Nothing, Waited::Claimed)),
            Err(_) if shared.stopping.is_cancelled() => Ok(Waited::Nothing),
            Err(e) => Err(e),
        }
    }
}

fn claimed(rows: Vec<driver::ClaimedRow>) -> Option<Vec<Claimed>> {
    let at = Instant::now();
    (!rows.is_empty()).then(|| rows.into_iter().map(|r| Claimed::new(r, at)).collect())
}
