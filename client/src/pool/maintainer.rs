//! The maintainer: runs `commitq.maintain()` periodically.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::driver;

use super::Shared;

/// Run `commitq.maintain()` every `every`: rescues jobs of dead workers.
pub(super) async fn maintain(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.stopping.cancelled() => return,
        }
        let result = async {
            let conn = shared.cfg.own_conn(shared.cfg.lease).await?;
            driver::maintain(&**conn).await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "maintain failed");
        }
    }
}
