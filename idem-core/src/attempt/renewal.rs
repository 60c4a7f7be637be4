//! Keeping a lease alive while its operation runs, on a task of its own, and what the
//! operation sees of it.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::write::{FIRST_PAUSE, MAX_PAUSE};

use crate::error::Error;
use crate::lease::Lease;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// An acquired lease and what its attempt knows about it, shared by the attempt, the
/// operation's [`LeaseHandle`]s and the renewal task (if one starts): one allocation per
/// attempt, the lease included. Plain atomics rather than a channel, because almost no
/// attempt lives long enough to be renewed, and a channel per attempt cost more than the
/// rest of the engine's bookkeeping together.
pub(crate) struct Held {
    pub(crate) lease: Lease,
    /// When the lease began, as far as this process knows: when its claim was sent, or
    /// else when the attempt began. `until` counts from here.
    began: Instant,
    /// The latest the lease is known to last, in nanoseconds after `began`: when the last
    /// renewal that succeeded was sent (or the attempt began), plus the TTL.
    until: AtomicU64,
    /// The store said the lease no longer holds the key.
    lost: AtomicBool,
    /// Wakes [`LeaseHandle::lost`] once `lost` is set.
    lost_notify: Notify,
    /// The operation's effects may have happened: it returned, or said so
    /// ([`LeaseHandle::commit`]). From then on nothing may free the key but a stored outcome
    /// or the lease's end.
    committed: AtomicBool,
}

impl Held {
    /// A lease lasting `ttl` from when its claim was sent (if known, else from now) unless
    /// renewed.
    pub(crate) fn new(lease: Lease, ttl: Ttl) -> Self {
        Self {
            began: lease.claim_sent().unwrap_or_else(Instant::now),
            lease,
            until: AtomicU64::new(nanos(ttl.as_duration())),
            lost: AtomicBool::new(false),
            lost_notify: Notify::new(),
            committed: AtomicBool::new(false),
        }
    }

    /// When the lease began (see [`Held::new`]).
    pub(crate) fn began(&self) -> Instant {
        self.began
    }

    /// The latest the lease is known to last.
    pub(crate) fn until(&self) -> Instant {
        self.began + Duration::from_nanos(self.until.load(Ordering::Acquire))
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The operation's effects may have happened (see `committed`).
    pub(crate) fn commit(&self) {
        self.committed.store(true, Ordering::Release);
    }

    pub(crate) fn is_committed(&self) -> bool {
        self.committed.load(Ordering::Acquire)
    }

    /// A renewal sent at `sent` succeeded: the lease lasts `ttl` from then.
    fn renewed(&self, sent: Instant, ttl: Ttl) {
        let until = (sent + ttl.as_duration()).saturating_duration_since(self.began);
        self.until.fetch_max(nanos(until), Ordering::AcqRel);
    }

    fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
        self.lost_notify.notify_waiters();
    }
}

/// A duration in nanoseconds, saturating (a lease would have to last 584 years to).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// How often a lease of `ttl` is renewed: every third of it, so the lease outlasts a
/// store away for two thirds of it (a failed renewal is sent again sooner, see
/// [`keep_renewed`]).
pub(crate) fn renew_interval(ttl: Ttl) -> Duration {
    ttl.as_duration() / 3
}

/// Why a renewal left unanswered for a renewal interval is sent again.
const UNANSWERED: &str = "the store did not answer the renewal within a renewal interval";

/// Keeps `held`'s lease renewed: at once (the supervisor starts this once the attempt has
/// run a while, see [`watchlist`](super::watchlist)), then every third of the TTL, until
/// aborted or the lease is found lost.
///
/// A renewal the store could not answer, or left unanswered for an interval, is sent again
/// after the outcome write's short pauses (at most [`MAX_PAUSE`] apart) while the lease is
/// known to last, not a third of the TTL later: a store that fails a renewal now and then
/// but answers in between (a query cancelled while it waits on a row lock, a connection
/// terminated) must not cost the lease. Two such failures at the regular pace let a live
/// lease lapse under a running operation, which the key's next caller then ran a second
/// time (idem-chaos `postgres-kill`). Past the lease's known end the regular pace resumes:
/// the key may have been taken over, and a renewal then only finds out.
pub(crate) async fn keep_renewed<S: IdempotencyStore>(store: Arc<S>, held: Arc<Held>, ttl: Ttl) {
    let every = renew_interval(ttl);
    let lease = &held.lease;
    let mut next = Instant::now();
    let mut backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        // A renewal unanswered for a whole interval (its reply lost, a connection that
        // hangs) is given up on and sent again: awaited, it held back every renewal after it,
        // and the lease lapsed under the running operation.
        let renewed = tokio::time::timeout(every, store.renew(lease, ttl))
            .await
            .unwrap_or_else(|_| Err(Error::unavailable(UNANSWERED)));
        match renewed {
            Ok(()) => {
                held.renewed(sent, ttl);
                backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
                next = sent + every;
                tracing::trace!(fencing = lease.fencing, "lease renewed");
            }
            Err(Error::LeaseLost) => {
                tracing::warn!(
                    namespace = lease.key.namespace(),
                    fencing = lease.fencing,
                    "lease lost while the operation runs; its outcome will not be stored"
                );
                held.mark_lost();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "renewing the lease failed; retrying");
                let regular = sent + every;
                next = if Instant::now() < held.until() {
                    (Instant::now() + backoff.pause()).min(regular)
                } else {
                    regular
                };
            }
        }
    }
}

/// The lease of a running attempt, as its operation sees it: the [`Lease`] (it derefs to
/// one, for the fencing number), and whether the lease was lost while the operation runs.
///
/// The lease is lost when its renewal finds another owner holding the key (it lapsed and was
/// taken over, or the key was removed). The operation's outcome can then no longer be
/// stored, and a second owner may be running the same operation: a long job should check
/// [`is_lost`](Self::is_lost) between steps, or race its work against
/// [`lost`](Self::lost), and stop.
#[derive(Clone)]
pub struct LeaseHandle {
    held: Arc<Held>,
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("lease", &self.held.lease)
            .field("lost", &self.held.is_lost())
            .finish()
    }
}

impl LeaseHandle {
    pub(crate) fn new(held: Arc<Held>) -> Self {
        Self { held }
    }

    /// The lease.
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.held.lease
    }

    /// Whether the lease was found lost.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Marks the point past which the operation's effects may have happened (a payment sent, a
    /// row written), for an operation that goes on after it: an HTTP handler's response body
    /// still to read, say. From here on a caller going away never frees the key: under
    /// [`CancelPolicy::Release`](super::CancelPolicy::Release), what is left of an attempt
    /// started with [`Attempt::run`](super::Attempt::run) moves to a task of its own and runs
    /// to the end, its outcome stored, as under `Detach`; an operation that panics after it,
    /// or one run with [`run_scoped`](super::Attempt::run_scoped) whose caller goes away,
    /// leaves the key held until its lease ends. Before it, `Release` drops the operation and
    /// frees the key at once. An operation's return is its last such point, whether it marked
    /// one or not.
    pub fn commit(&self) {
        self.held.commit();
    }

    /// Whether [`commit`](Self::commit) was called: for a layer that runs an operation it
    /// did not write (an HTTP handler) and must keep the key for whatever the operation
    /// answers once it committed.
    #[must_use]
    pub fn is_committed(&self) -> bool {
        self.held.is_committed()
    }

    /// Resolves once the lease is found lost. Never resolves if the attempt ends with the
    /// lease held.
    pub async fn lost(&self) {
        loop {
            // Registered before the flag is read: a loss marked in between still wakes it.
            let notified = self.held.lost_notify.notified();
            if self.held.is_lost() {
                return;
            }
            notified.await;
        }
    }
}

impl Deref for LeaseHandle {
    type Target = Lease;

    fn deref(&self) -> &Lease {
        &self.held.lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::test_store::TestStore;
    use crate::key::Key;
    use crate::lease::OwnerToken;

    const TTL_SECS: u64 = 3;

    fn ttl() -> Ttl {
        Ttl::from_secs(TTL_SECS).expect("a valid TTL")
    }

    /// A lease of [`TTL_SECS`] with fencing number `fencing`, acquired just now.
    fn held(fencing: u64) -> Arc<Held> {
        let lease = Lease::new(
            Key::new("renewal", "k").expect("a valid key"),
            OwnerToken::random(),
            fencing,
        );
        Arc::new(Held::new(lease, ttl()))
    }

    /// Renews a lease on `store` for `run`; the lease as it is then known, and the store.
    async fn renew_on(store: TestStore, run: Duration) -> (Arc<Held>, Arc<TestStore>) {
        let (store, held) = (Arc::new(store), held(1));
        let task = tokio::spawn(keep_renewed(Arc::clone(&store), Arc::clone(&held), ttl()));
        tokio::time::sleep(run).await;
        task.abort();
        (held, store)
    }

    /// Renews a lease on a store back after `back`, for `run`.
    async fn renew_for(back: Duration, run: Duration) -> (Arc<Held>, Arc<TestStore>) {
        renew_on(TestStore::new().back_at(Instant::now() + back), run).await
    }

    /// Renewals that fail at their regular times (0, 1 and 2 s of a 3 s lease) while the
    /// store answers in between still keep the lease: the failed one is sent again at the
    /// write's pace, and the store, back at 2.1 s, renews it before it lapses at 3 s. (At
    /// the regular pace the next renewal went at 3 s, as the lease ended.)
    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_sent_again_before_the_lease_lapses() {
        let back = Duration::from_millis(2100);
        let (held, store) = renew_for(back, Duration::from_millis(2500)).await;
        let lapse = held.began() + Duration::from_secs(TTL_SECS);
        assert!(
            held.until() > lapse,
            "not renewed by 2.5 s; renewals sent at {:?}",
            store.tries.lock().expect("not poisoned")
        );
        let sent = store.tries.lock().expect("not poisoned");
        let renewed = sent.iter().find(|at| **at >= store.back).expect("renewed");
        assert!(*renewed <= store.back + MAX_PAUSE, "{sent:?}");
    }

    /// A renewal that finds the key taken over marks the lease lost and stops: no renewal
    /// is sent after it.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_finds_the_lease_lost_marks_it_and_stops() {
        let taken = TestStore::new()
            .back_at(Instant::now() + Duration::from_millis(1500))
            .taken_over();
        let (held, store) = renew_on(taken, Duration::from_secs(10)).await;
        assert!(held.is_lost());
        let sent = store.tries.lock().expect("not poisoned");
        let after = sent.iter().filter(|at| **at >= store.back).count();
        assert_eq!(after, 1, "renewals sent once the lease was lost: {sent:?}");
    }

    /// `lost` waits while the lease holds, and resolves once it is marked lost; `is_lost`
    /// says so from then on.
    #[tokio::test(start_paused = true)]
    async fn lost_resolves_once_the_lease_is_marked_lost() {
        let held = held(1);
        let handle = LeaseHandle::new(Arc::clone(&held));
        assert!(!handle.is_lost());
        let waiting = tokio::spawn({
            let handle = handle.clone();
            async move { handle.lost().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "lost() resolved for a lease held");
        held.mark_lost();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("lost() resolves once the lease is lost")
            .expect("no panic");
        assert!(handle.is_lost());
    }

    /// A layer running an operation it did not write (an HTTP handler) learns from its own
    /// clone of the handle whether the operation said its effects may have happened: not
    /// before the operation commits, so the key may still be freed, and from then on, so
    /// that whatever the operation answers keeps it.
    #[test]
    fn a_handle_says_the_operation_committed_only_once_it_did() {
        let handle = LeaseHandle::new(held(1));
        let layers = handle.clone();
        assert!(
            !layers.is_committed(),
            "committed before the operation said so"
        );
        handle.commit();
        assert!(layers.is_committed(), "the operation's commit is not seen");
    }

    /// What a long job logs of its handle: the lease, and whether it was lost.
    #[tokio::test]
    async fn a_lease_handle_shows_its_lease_and_whether_it_was_lost() {
        let held = held(7);
        let handle = LeaseHandle::new(Arc::clone(&held));
        let shown = format!("{handle:?}");
        assert!(
            shown.starts_with("LeaseHandle {")
                && shown.contains("fencing: 7")
                && shown.contains("lost: false"),
            "{shown}"
        );
        held.mark_lost();
        let shown = format!("{handle:?}");
        assert!(shown.contains("lost: true"), "{shown}");
    }

    /// Past the lease's known end a store that stays away is asked at the regular pace
    /// again, not ten times a second for as long as the operation runs.
    #[tokio::test(start_paused = true)]
    async fn past_the_lease_renewals_go_at_the_regular_pace() {
        let (held, store) = renew_for(Duration::from_secs(60), Duration::from_secs(10)).await;
        let end = held.until();
        let sent = store.tries.lock().expect("not poisoned");
        let dense = sent.iter().filter(|at| **at < end).count();
        let late = sent.iter().filter(|at| **at >= end).count();
        assert!(dense > 10, "{sent:?}");
        // 3 s to 10 s, every second: at most 8.
        assert!(late <= 8, "{late} renewals past the lease's end: {sent:?}");
    }
}
