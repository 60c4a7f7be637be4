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
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::renewal::{self, Held};
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// The running attempts of one engine, and the supervisors watching them.
pub(crate) struct Watchlist<S> {
    store: Arc<S>,
    ttl: Ttl,
    /// See [`patience`](Self::patience); every attempt asks, so it is worked out once.
    patience: Duration,
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
    held: Arc<Held>,
    runtime: runtime::Id,
    renewal: Option<JoinHandle<()>>,
}

impl<S> Watchlist<S> {
    pub(crate) fn new(store: Arc<S>, ttl: Ttl) -> Self {
        Self {
            store,
            ttl,
            patience: renewal::renew_interval(ttl) / 2,
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
        self.patience
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only the first supervisor's timer panics while the lock is held (a runtime built
        // without timers), before the list changes: a poisoned list is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts an attempt running on `runtime` on the list until the returned place is dropped.
    /// The flag says a task was just spawned for it (a supervisor, or the renewal of a lease
    /// already overdue): the caller should yield once, so that the new task is not left in
    /// this worker's next-task slot (which other workers do not steal from) behind an
    /// operation that may block the thread.
    pub(crate) fn enter(self: &Arc<Self>, held: Arc<Held>, runtime: &Handle) -> (Watched<S>, bool) {
        let id = runtime.id();
        // A lease whose claim was slow to answer has already run a while: renewed from now,
        // not from the supervisor's next look (up to a sixth of the TTL later).
        let overdue = Instant::now().saturating_duration_since(held.began()) >= self.patience();
        let renewal = overdue.then(|| {
            runtime.spawn(renewal::keep_renewed(
                Arc::clone(&self.store),
                Arc::clone(&held),
                self.ttl,
            ))
        });
        let slot_renewed = renewal.is_some();
        let slot = Slot {
            held,
            runtime: id,
            renewal,
        };
        let mut state = self.lock();
        let supervisor = if state.supervisors.iter().any(|&(runtime, _)| runtime == id) {
            None
        } else {
            // The supervisor's first look, timed here, in the caller, before anything is
            // listed: a runtime built without timers (which the renewals, the retries and
            // the outcome write all need) panics now, before the operation runs, and the
            // attempt's guard frees the key. Timed in the supervisor's own task, the panic
            // stayed there, and the caller's came from the outcome write, after the
            // operation ran, leaving its key to run it again once the lease ended.
            let first_look = tokio::time::sleep(self.patience());
            state.next_supervisor += 1;
            let number = state.next_supervisor;
            state.supervisors.push((id, number));
            Some((number, first_look))
        };
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
        drop(state);
        let spawned = supervisor.is_some() || slot_renewed;
        if let Some((number, first_look)) = supervisor {
            runtime.spawn(supervise(Arc::downgrade(self), id, number, first_look));
        }
        let watched = Watched {
            list: Arc::clone(self),
            index,
        };
        (watched, spawned)
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
            if slot.renewal.is_none() && now.saturating_duration_since(slot.held.began()) >= age {
                slot.renewal = Some(tokio::spawn(renewal::keep_renewed(
                    Arc::clone(&self.store),
                    Arc::clone(&slot.held),
                    self.ttl,
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
    /// Shared, not borrowed: the attempt's future holds its place beside the guard that
    /// holds the list, and a future cannot borrow from itself.
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
    first_look: Sleep,
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
    let mut look = std::pin::pin!(first_look);
    loop {
        look.as_mut().await;
        look.as_mut().reset(Instant::now() + patience);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::test_store::TestStore;
    use crate::key::Key;
    use crate::lease::{Lease, OwnerToken};

    const TTL_SECS: u64 = 60;

    fn list() -> Arc<Watchlist<TestStore>> {
        let ttl = Ttl::from_secs(TTL_SECS).expect("a valid TTL");
        Arc::new(Watchlist::new(Arc::new(TestStore::new()), ttl))
    }

    /// Puts an attempt holding fencing number `fencing` on `list`.
    fn enter(list: &Arc<Watchlist<TestStore>>, fencing: u64) -> (Watched<TestStore>, bool) {
        let lease = Lease::new(
            Key::new("watchlist", "k").expect("a valid key"),
            OwnerToken::random(),
            fencing,
        );
        let held = Held::new(lease, list.ttl());
        list.enter(Arc::new(held), &Handle::current())
    }

    fn supervisors(list: &Watchlist<TestStore>) -> Vec<(runtime::Id, u64)> {
        list.lock().supervisors.clone()
    }

    /// Lets spawned tasks run, on a current-thread runtime with paused time.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn the_supervisor_looks_every_sixth_of_the_ttl() {
        assert_eq!(list().patience(), Duration::from_secs(TTL_SECS / 6));
    }

    #[tokio::test]
    async fn each_supervisor_gets_a_number_of_its_own_and_is_struck_off_by_it() {
        let list = list();
        let (_first, spawned) = enter(&list, 1);
        assert!(
            spawned,
            "the first attempt of a runtime starts its supervisor"
        );
        let (_second, spawned) = enter(&list, 2);
        assert!(!spawned, "one supervisor per runtime");
        let [(runtime, first)] = supervisors(&list)[..] else {
            panic!("one supervisor: {:?}", supervisors(&list));
        };
        list.strike_off(first);
        assert!(supervisors(&list).is_empty(), "struck off by its number");
        let (_third, spawned) = enter(&list, 3);
        assert!(spawned, "the next attempt starts a successor");
        let [(again, second)] = supervisors(&list)[..] else {
            panic!("one supervisor: {:?}", supervisors(&list));
        };
        assert_eq!(again, runtime);
        assert_ne!(
            second, first,
            "a successor must not share its predecessor's number"
        );
        list.strike_off(first);
        assert_eq!(
            supervisors(&list),
            vec![(runtime, second)],
            "a stopped supervisor must not strike its successor off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_look_renews_only_attempts_that_ran_long_and_only_once() {
        let list = list();
        let (_watched, _) = enter(&list, 1);
        let [(runtime, number)] = supervisors(&list)[..] else {
            panic!("one supervisor: {:?}", supervisors(&list));
        };

        assert!(list.renew_long_runners(runtime, number, Duration::from_secs(3600)));
        settle().await;
        assert_eq!(
            list.store().renewals_of(1),
            0,
            "a young attempt is not renewed"
        );
        assert_eq!(
            supervisors(&list),
            vec![(runtime, number)],
            "a supervisor with attempts left stays on duty"
        );

        assert!(list.renew_long_runners(runtime, number, Duration::ZERO));
        settle().await;
        assert_eq!(
            list.store().renewals_of(1),
            1,
            "an old attempt is renewed at once"
        );
        assert!(list.renew_long_runners(runtime, number, Duration::ZERO));
        settle().await;
        assert_eq!(
            list.store().renewals_of(1),
            1,
            "an attempt already being renewed gets no second renewal task"
        );
    }

    #[test]
    fn a_look_on_a_runtime_without_attempts_strikes_only_its_own_supervisor_off() {
        let runtimes: Vec<_> = (0..2)
            .map(|_| {
                runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime")
            })
            .collect();
        let (idle, busy) = (runtimes[0].handle().id(), runtimes[1].handle().id());
        let list = list();
        list.lock().supervisors.extend([(idle, 1), (busy, 2)]);
        assert!(!list.renew_long_runners(idle, 1, Duration::ZERO));
        assert_eq!(supervisors(&list), vec![(busy, 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_frees_the_place_and_stops_the_renewal() {
        let list = list();
        let (watched, _) = enter(&list, 1);
        let [(runtime, number)] = supervisors(&list)[..] else {
            panic!("one supervisor: {:?}", supervisors(&list));
        };
        assert!(list.renew_long_runners(runtime, number, Duration::ZERO));
        settle().await;
        assert_eq!(list.store().renewals_of(1), 1);

        drop(watched);
        {
            let state = list.lock();
            assert!(
                state.slots.iter().all(Option::is_none),
                "the place is empty"
            );
            assert_eq!(state.free, vec![0], "and free for the next attempt");
        }
        tokio::time::advance(Duration::from_secs(TTL_SECS * 2)).await;
        settle().await;
        assert_eq!(
            list.store().renewals_of(1),
            1,
            "no renewal after the attempt left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_supervisor_keeps_looking_while_attempts_remain() {
        let list = list();
        let patience = list.patience();
        let (_early, spawned) = enter(&list, 1);
        assert!(spawned);
        settle().await;
        tokio::time::advance(patience / 2).await;
        let (_late, spawned) = enter(&list, 2);
        assert!(!spawned);
        settle().await;

        // The first look renews the early attempt; the late one is too young yet.
        tokio::time::advance(patience / 2).await;
        settle().await;
        assert_eq!(
            (list.store().renewals_of(1), list.store().renewals_of(2)),
            (1, 0)
        );

        // The next look must still come, and renew the late one.
        tokio::time::advance(patience).await;
        settle().await;
        assert_eq!(
            list.store().renewals_of(2),
            1,
            "the late attempt was never renewed"
        );
    }

    #[test]
    fn a_supervisor_stopped_with_its_runtime_strikes_itself_off() {
        let list = list();
        let rt = runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let watched = rt.block_on(async {
            let (watched, spawned) = enter(&list, 1);
            assert!(spawned);
            settle().await; // the supervisor starts and sleeps
            watched
        });
        assert_eq!(supervisors(&list).len(), 1);
        drop(rt);
        assert!(
            supervisors(&list).is_empty(),
            "the next attempt on another runtime would find a dead supervisor listed"
        );
        drop(watched);
    }
}
