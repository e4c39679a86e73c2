//! Named leases for code outside jobs: "one node builds the queue of build
//! 42", "one cron runner at a time". The database decides who holds a lease
//! and hands out fencing tokens that only grow; this module renews a held
//! lease in the background and gives it back when the work is done. The
//! SQL side is `sql/named_lease.sql`.

use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;

use crate::{driver, Client, Error};

/// A held lease: its name and fencing token.
#[derive(Clone, Debug)]
pub struct Lease {
    pub name: String,
    pub token: i64,
    lost: CancellationToken,
}

impl Lease {
    /// Raise `Error::StaleLease`/`Error::LeaseExpired` unless this lease is
    /// still held, and keep it from changing hands until `tx` ends: call it
    /// before writes made under the lease.
    pub async fn assert_in<C: GenericClient>(&self, tx: &C) -> Result<(), Error> {
        driver::assert_fencing_token(tx, &self.name, self.token).await
    }

    /// True once a renewal was refused: another holder may act now.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }
}

/// Releases the lease when dropped, even if the work panicked or its future
/// was dropped.
struct Release {
    client: Client,
    name: String,
    token: i64,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.renewer.abort();
        let (client, name, token) = (self.client.clone(), self.name.clone(), self.token);
        tokio::spawn(async move {
            if let Ok(conn) = client.pool().get().await {
                // A stale token means someone took over: nothing to give back.
                let _ = driver::release_lease(&**conn, &name, token).await;
            }
        });
    }
}

impl Client {
    /// Take lease `name` for `ttl` if nobody holds it; `None` if held.
    pub async fn try_acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, Error> {
        let conn = self.pool().get().await?;
        driver::try_acquire_lease(&**conn, name, owner, ttl).await
    }

    /// Run `work` while holding lease `name`: wait up to `wait` for it (each
    /// try its own short transaction, so waiting holds nothing open), renew
    /// it every third of `ttl`, and release it when `work` ends, fails or is
    /// dropped. `Ok(None)` when the lease could not be had in time. `work`
    /// gets the [`Lease`]: fence its writes with [`Lease::assert_in`] and
    /// stop if [`Lease::is_lost`].
    pub async fn with_lease<F, Fut, T>(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
        work: F,
    ) -> Result<Option<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let owner = format!("pid{}", std::process::id());
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        let token = loop {
            if let Some(token) = self.try_acquire_lease(name, &owner, ttl).await? {
                break token;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        };
        let lease = Lease {
            name: name.to_string(),
            token,
            lost: CancellationToken::new(),
        };
        let renewer = tokio::spawn(renew(self.clone(), lease.clone(), ttl));
        let _release = Release {
            client: self.clone(),
            name: name.to_string(),
            token,
            renewer,
        };
        Ok(Some(work(lease).await))
    }
}

async fn renew(client: Client, lease: Lease, ttl: Duration) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let result = async {
            let conn = client.pool().get().await?;
            driver::renew_lease(&**conn, &lease.name, lease.token, ttl).await?;
            Ok::<(), Error>(())
        }
        .await;
        match result {
            Ok(()) => {}
            Err(Error::StaleLease(_) | Error::LeaseExpired(_)) => {
                lease.lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(lease = %lease.name, error = %e, "renewing failed; will retry")
            }
        }
    }
}
