//! The engine's watchlist: the attempts running now, and one supervisor task per runtime that
//! starts renewing the leases of those that run long.
//!
//! Most operations return long before their lease needs renewing. A renewal task and a timer
//! for every attempt cost two task switches, a spawn and a timer per request, for renewals
//! that almost never happen. So an attempt only takes a slot on the engine's watchlist (a
//! vector under a mutex), and a supervisor task, one per engine and runtime, looks at the list
//! every sixth of the lease TTL: an attempt found running for a sixth of the TTL or more gets
//! its renewal task then, and that task renews at once, then every third of the TTL.
//!
//! The first renewal therefore comes at most a third of the TTL after the attempt began (as
//! when every attempt had its own task), and renewals run on tasks of their own: an operation
//! that blocks its thread keeps its key as long as another worker thread is free. The
//! supervisor exits when no attempt of its runtime is on the list, and the next attempt starts
//! a new one. Supervisors are per runtime so that one shutting down stops only its own
//! attempts' renewals, as their own tasks would have stopped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::runtime::{self, Handle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::renewal::{self, LeaseStatus};
use crate::lease::Lease;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// The running attempts of one engine, and the supervisors watching them.
pub(crate) struct Watchlist<S> {
    store: Arc<S>,
    ttl: Ttl,
    state: Mutex<State>,
}

struct State {
    /// Running attempts; `None` is a free slot, listed in `free`.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// The supervisors running, by runtime, each with a number of its own (so one that
    /// stops cannot take a successor's entry away).
    supervisors: Vec<(runtime::Id, u64)>,
    next_supervisor: u64,
}

/// One running attempt.
struct Slot {
    lease: Arc<Lease>,
    since: Instant,
    runtime: runtime::Id,
    status: watch::Sender<LeaseStatus>,
    renewal: Option<JoinHandle<()>>,
}

impl<S> Watchlist<S> {
    pub(crate) fn new(store: Arc<S>, ttl: Ttl) -> Self {
        Self {
            store,
            ttl,
            state: Mutex::new(State {
                slots: Vec::new(),
                free: Vec::new(),
                supervisors: Vec::new(),
                next_supervisor: 0,
            }),
        }
    }

    pub(crate) fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub(crate) fn ttl(&self) -> Ttl {
        self.ttl
    }
}

impl<S: IdempotencyStore> Watchlist<S> {
    /// How long an attempt runs before its lease is renewed, and how often the supervisor
    /// looks: a sixth of the TTL, so the first renewal comes within a third of it.
    fn patience(&self) -> Duration {
        renewal::renew_interval(self.ttl) / 2
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned list is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts an attempt running on `runtime` on the list until the returned place is dropped.
    /// The flag says a supervisor was just spawned for it: the caller should yield once, so
    /// that the new task is not left in this worker's next-task slot (which other workers do
    /// not steal from) behind an operation that may block the thread.
    pub(crate) fn enter(
        self: &Arc<Self>,
        lease: Arc<Lease>,
        status: watch::Sender<LeaseStatus>,
        runtime: &Handle,
    ) -> (Watched<S>, bool) {
        let id = runtime.id();
        let slot = Slot {
            lease,
            since: Instant::now(),
            runtime: id,
            status,
            renewal: None,
        };
        let mut state = self.lock();
        let index = match state.free.pop() {
            Some(index) => {
                if let Some(free) = state.slots.get_mut(index) {
                    *free = Some(slot);
                }
                index
            }
            None => {
                state.slots.push(Some(slot));
                state.slots.len() - 1
            }
        };
        let supervisor = if state.supervisors.iter().any(|&(runtime, _)| runtime == id) {
            None
        } else {
            state.next_supervisor += 1;
            let number = state.next_supervisor;
            state.supervisors.push((id, number));
            Some(number)
        };
        drop(state);
        if let Some(number) = supervisor {
            runtime.spawn(supervise(Arc::downgrade(self), id, number));
        }
        let watched = Watched {
            list: Arc::clone(self),
            index,
        };
        (watched, supervisor.is_some())
    }

    /// One look by the supervisor `number` of `runtime`: starts the renewal of every attempt
    /// of that runtime running for `age` or more. Returns `false`, and strikes the supervisor
    /// off, when no attempt of its runtime is left.
    fn renew_long_runners(&self, runtime: runtime::Id, number: u64, age: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let mut any = false;
        for slot in state.slots.iter_mut().flatten() {
            if slot.runtime != runtime {
                continue;
            }
            any = true;
            if slot.renewal.is_none() && now.saturating_duration_since(slot.since) >= age {
                slot.renewal = Some(tokio::spawn(renewal::keep_renewed(
                    Arc::clone(&self.store),
                    Arc::clone(&slot.lease),
                    self.ttl,
                    slot.status.clone(),
                )));
            }
        }
        if !any {
            state.supervisors.retain(|&(_, n)| n != number);
        }
        any
    }

    fn strike_off(&self, number: u64) {
        self.lock().supervisors.retain(|&(_, n)| n != number);
    }
}

/// An attempt's place on the watchlist. Dropping it takes the attempt off the list and stops
/// its renewal, if one started.
pub(crate) struct Watched<S: IdempotencyStore> {
    list: Arc<Watchlist<S>>,
    index: usize,
}

impl<S: IdempotencyStore> Drop for Watched<S> {
    fn drop(&mut self) {
        let slot = {
            let mut state = self.list.lock();
            let slot = state.slots.get_mut(self.index).and_then(Option::take);
            state.free.push(self.index);
            slot
        };
        // Outside the lock: aborting wakes the task, dropping the slot drops its sender.
        if let Some(renewal) = slot.and_then(|slot| slot.renewal) {
            renewal.abort();
        }
    }
}

/// The supervisor of one runtime's attempts on `list`; see the module docs.
async fn supervise<S: IdempotencyStore>(
    list: Weak<Watchlist<S>>,
    runtime: runtime::Id,
    number: u64,
) {
    // Stopped from outside (its runtime shut down), it still strikes itself off, so the next
    // attempt starts another.
    let _off_duty = OffDuty {
        list: list.clone(),
        number,
    };
    let Some(patience) = list.upgrade().map(|list| list.patience()) else {
        return;
    };
    loop {
        tokio::time::sleep(patience).await;
        let Some(list) = list.upgrade() else {
            return; // the engine and all its attempts are gone
        };
        if !list.renew_long_runners(runtime, number, patience) {
            return;
        }
    }
}

struct OffDuty<S: IdempotencyStore> {
    list: Weak<Watchlist<S>>,
    number: u64,
}

impl<S: IdempotencyStore> Drop for OffDuty<S> {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            list.strike_off(self.number);
        }
    }
}
