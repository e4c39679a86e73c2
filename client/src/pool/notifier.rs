//! The notifier: one LISTEN connection that wakes a queue's claim loops
//! when jobs are enqueued to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{driver, tls};

/// Keep a LISTEN connection for the pool's queues, reconnecting when it
/// drops; after every (re)connect all queues are woken, since notifications
/// sent while disconnected are lost. The connection's TLS is the pool's:
/// the same connection string.
pub(super) async fn listen(
    url: String,
    queues: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    let (config, tls) = match tls::configure(&url) {
        Ok(settings) => settings,
        Err(e) => {
            warn!(error = %e, "LISTEN connection string unusable; polling only");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            let _ = tx.send(n);
                        }
                    }
                });
                let mut ok = true;
                for queue in queues.keys() {
                    if let Err(e) = driver::listen(&client, queue).await {
                        warn!(error = %e, "LISTEN failed");
                        ok = false;
                        break;
                    }
                }
                if ok {
                    backoff = Duration::from_millis(100);
                    queues.values().for_each(|n| n.notify_one());
                    loop {
                        tokio::select! {
                            n = rx.recv() => match n {
                                Some(n) => {
                                    if let Some(notify) = driver::channel_queue(n.channel()).and_then(|q| queues.get(q)) {
                                        notify.notify_one();
                                    }
                                }
                                None => break,
                            },
                            _ = stop.cancelled() => return,
                        }
                    }
                    warn!("LISTEN connection lost; reconnecting");
                }
            }
            Err(e) => warn!(error = %e, "LISTEN connection failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
