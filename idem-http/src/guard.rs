//! Frees a claimed key when the request never finishes.

use std::sync::Arc;

use idem_core::{IdempotencyStore, Lease};

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
