//! An outcome write whose attempt was dropped before it ended, finished on a task of its own.

use std::sync::Arc;

use super::renewal::Held;
use super::settle::{Settle, Settlement};
use super::write;
use crate::error::Error;
use crate::store::IdempotencyStore;

/// Armed while the settlement of an operation that returned is carried out. Dropped armed (the
/// attempt ran in its caller's future, and the caller went away: [`run_scoped`], or
/// [`CancelPolicy::Release`]), it writes the settlement again on a task of the current
/// runtime: the operation's effects happened, and an outcome left unstored would let the key
/// run it a second time once the lease ends. A try the dropped write made may have been
/// applied already: the task's write then finds the key finished, which changes nothing.
///
/// Holds what it needs by reference, and copies it only when dropped armed: nearly every
/// write ends in its caller's future.
///
/// [`run_scoped`]: super::Attempt::run_scoped
/// [`CancelPolicy::Release`]: super::CancelPolicy::Release
pub(crate) struct Unwritten<'a, S: IdempotencyStore> {
    store: &'a Arc<S>,
    held: &'a Arc<Held>,
    /// `None` once the write ended.
    settlement: Option<Settlement>,
}

impl<'a, S: IdempotencyStore> Unwritten<'a, S> {
    pub(crate) fn new(store: &'a Arc<S>, held: &'a Arc<Held>, settlement: &Settlement) -> Self {
        Self {
            store,
            held,
            settlement: Some(settlement.clone()),
        }
    }

    /// The write ended, in its caller's future.
    pub(crate) fn written(mut self) {
        self.settlement = None;
    }
}

impl<S: IdempotencyStore> Drop for Unwritten<'_, S> {
    fn drop(&mut self) {
        let Some(settlement) = self.settlement.take() else {
            return;
        };
        let lease = &self.held.lease;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                namespace = lease.key.namespace(),
                fencing = lease.fencing,
                "outcome write dropped with no runtime to finish it on; the key frees itself when the lease ends"
            );
            return;
        };
        tracing::debug!(
            namespace = lease.key.namespace(),
            fencing = lease.fencing,
            "caller went away while the outcome was written; finishing the write on a task"
        );
        let (store, held) = (Arc::clone(self.store), Arc::clone(self.held));
        runtime.spawn(async move {
            let lease = &held.lease;
            let until = held.until();
            let written =
                write::carry_out::<_, (), _>(&*store, lease, settlement, &mut NoFallback, until)
                    .await;
            match written {
                Ok(()) => {}
                // The dropped write's last try may have been applied: the key is finished.
                Err(Error::LeaseLost) => tracing::debug!(
                    namespace = lease.key.namespace(),
                    fencing = lease.fencing,
                    "the outcome write finished on a task found the key no longer held: written by the dropped write, or taken over"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    namespace = lease.key.namespace(),
                    fencing = lease.fencing,
                    "the operation ran but its outcome was not stored"
                ),
            }
        });
    }
}

/// The settle step of a write finished on a task: the settlement is known already, and the
/// caller's step, with its fallback for a payload over the store's limit, went with the
/// caller.
struct NoFallback;

impl Settle<()> for NoFallback {
    fn settle(&mut self, (): &()) -> Settlement {
        Settlement::Release
    }
}
