//! Frees a claimed key when the request never finishes, and keeps the lease alive while
//! the handler runs.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use idem_core::{Error, IdempotencyStore, Lease, Ttl};
use tokio::time::Instant;

/// Releases the lease if dropped armed: the response future was dropped (client gone,
/// timeout layer) or the inner service panicked. Without it the key would stay blocked
/// until its lease runs out.
pub(crate) struct ReleaseOnDrop<S: IdempotencyStore> {
    store: Arc<S>,
    lease: Option<Lease>,
}

impl<S: IdempotencyStore> ReleaseOnDrop<S> {
    pub(crate) fn new(store: Arc<S>, lease: Lease) -> Self {
        Self {
            store,
            lease: Some(lease),
        }
    }

    /// The request finished and the key's fate was decided.
    pub(crate) fn disarm(mut self) {
        self.lease = None;
    }
}

impl<S: IdempotencyStore> Drop for ReleaseOnDrop<S> {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        tracing::warn!(
            namespace = lease.key.namespace(),
            "request cancelled or panicked; releasing its idempotency key"
        );
        // Without a runtime the lease simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            runtime.spawn(async move {
                if let Err(error) = store.release(&lease).await {
                    tracing::debug!(%error, "releasing an abandoned lease failed; it will expire");
                }
            });
        }
    }
}

/// Runs `operation` while renewing its lease; renewal stops when it finishes or is
/// dropped, since both live in this one future.
pub(crate) async fn run_renewing<S: IdempotencyStore, Fut: Future>(
    store: &S,
    lease: &Lease,
    lease_ttl: Ttl,
    operation: Fut,
) -> Fut::Output {
    tokio::select! {
        biased;
        output = operation => output,
        never = keep_renewed(store, lease, lease_ttl) => match never {},
    }
}

async fn keep_renewed<S: IdempotencyStore>(store: &S, lease: &Lease, lease_ttl: Ttl) -> Infallible {
    // A third of the lease: two renewals may fail before it lapses.
    let every = lease_ttl.as_duration() / 3;
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.renew(lease, lease_ttl).await {
            Ok(()) => tracing::trace!(fencing = lease.fencing, "lease renewed"),
            Err(Error::LeaseLost) => {
                tracing::warn!(fencing = lease.fencing, "lease lost while the handler runs");
                return std::future::pending().await;
            }
            Err(error) => tracing::warn!(%error, "renewing the lease failed; retrying"),
        }
    }
}
