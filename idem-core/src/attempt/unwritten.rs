//! An outcome write whose attempt was dropped before it ended, finished elsewhere.

use std::sync::Arc;

use super::guard::{self, Abandoned};
use super::renewal::Held;
use super::settle::{Settle, Settlement};
use crate::store::IdempotencyStore;

/// Armed while the settlement of an operation that returned is carried out. Dropped armed (the
/// attempt ran in its caller's future, and the caller went away: [`run_scoped`], or
/// [`CancelPolicy::Release`]; or its runtime shut down), it writes again what the dropped write
/// was storing (the settlement, or what the settle step gave instead of a payload the store
/// refused: [`tracking`](Self::tracking)), on a task of the current runtime or on a helper
/// thread, as the release guard frees a key: the operation's effects happened, and an outcome
/// left unstored would let the key run it a second time once the lease ends. A try the
/// dropped write made may have been applied already: the new write then finds the key
/// finished, which changes nothing.
///
/// Holds what it needs by reference, and copies it only when dropped armed: nearly every
/// write ends in its caller's future.
///
/// [`run_scoped`]: super::Attempt::run_scoped
/// [`CancelPolicy::Release`]: super::CancelPolicy::Release
pub(crate) struct Unwritten<'a, S: IdempotencyStore> {
    store: &'a Arc<S>,
    held: &'a Arc<Held>,
    /// What the write stores now; `None` once it ended.
    writing: Option<Writing<'a>>,
}

/// What an outcome write stores.
enum Writing<'a> {
    /// The settlement the settle step made of the operation's output.
    Given(&'a Settlement),
    /// What the settle step gave instead, once the store refused the settlement's payload
    /// as too large: the write stores this now, and so must a write finished elsewhere
    /// (the settlement again would be refused again, and the key left to run once more).
    Instead(Settlement),
}

impl<'a, S: IdempotencyStore> Unwritten<'a, S> {
    pub(crate) fn new(store: &'a Arc<S>, held: &'a Arc<Held>, settlement: &'a Settlement) -> Self {
        Self {
            store,
            held,
            writing: Some(Writing::Given(settlement)),
        }
    }

    /// The caller's settle step, reporting to this guard what it gives instead of a payload
    /// the store refused.
    pub(crate) fn tracking<'u, St>(&'u mut self, settle: &'u mut St) -> Tracked<'u, 'a, St, S> {
        Tracked {
            settle,
            unwritten: self,
        }
    }

    /// The write ended, in its caller's future.
    pub(crate) fn written(mut self) {
        self.writing = None;
    }
}

/// The settle step of a write under an [`Unwritten`]: the caller's, whose fallback for a
/// payload the store refused as too large becomes what the guard finishes.
pub(crate) struct Tracked<'u, 'a, St, S: IdempotencyStore> {
    settle: &'u mut St,
    unwritten: &'u mut Unwritten<'a, S>,
}

impl<T, St: Settle<T>, S: IdempotencyStore> Settle<T> for Tracked<'_, '_, St, S> {
    fn settle(&mut self, output: &T) -> Settlement {
        self.settle.settle(output)
    }

    fn too_large(&mut self, size: usize, limit: usize) -> Option<Settlement> {
        let instead = self.settle.too_large(size, limit)?;
        // Still armed: `written` takes the guard, and this step borrows it.
        self.unwritten.writing = Some(Writing::Instead(instead.clone()));
        Some(instead)
    }
}

impl<S: IdempotencyStore> Drop for Unwritten<'_, S> {
    fn drop(&mut self) {
        let settlement = match self.writing.take() {
            None => return,
            Some(Writing::Given(settlement)) => settlement.clone(),
            Some(Writing::Instead(instead)) => instead,
        };
        tracing::debug!(
            namespace = self.held.lease.key.namespace(),
            fencing = self.held.lease.fencing,
            "the outcome write was dropped before it ended; finishing it elsewhere"
        );
        let abandoned = Abandoned::Outcome(Arc::clone(self.held), settlement);
        guard::free(Arc::clone(self.store), abandoned);
    }
}
