//! An outcome write whose attempt was dropped before it ended, finished elsewhere.

use std::sync::Arc;

use super::guard::{self, Abandoned};
use super::renewal::Held;
use super::settle::Settlement;
use crate::store::IdempotencyStore;

/// Armed while the settlement of an operation that returned is carried out. Dropped armed (the
/// attempt ran in its caller's future, and the caller went away: [`run_scoped`], or
/// [`CancelPolicy::Release`]; or its runtime shut down), it writes the settlement again, on a
/// task of the current runtime or on a helper thread, as the release guard frees a key: the
/// operation's effects happened, and an outcome left unstored would let the key run it a
/// second time once the lease ends. A try the dropped write made may have been applied
/// already: the new write then finds the key finished, which changes nothing.
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
    settlement: Option<&'a Settlement>,
}

impl<'a, S: IdempotencyStore> Unwritten<'a, S> {
    pub(crate) fn new(store: &'a Arc<S>, held: &'a Arc<Held>, settlement: &'a Settlement) -> Self {
        Self {
            store,
            held,
            settlement: Some(settlement),
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
        tracing::debug!(
            namespace = self.held.lease.key.namespace(),
            fencing = self.held.lease.fencing,
            "the outcome write was dropped before it ended; finishing it elsewhere"
        );
        let abandoned = Abandoned::Outcome(Arc::clone(self.held), settlement.clone());
        guard::free(Arc::clone(self.store), abandoned);
    }
}
