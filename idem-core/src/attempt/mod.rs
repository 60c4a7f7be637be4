//! The engine: everything that happens to a key between its claim and its stored outcome.
//!
//! One [`Engine`] per store and lease TTL; for each request, [`Engine::claim`] the key and,
//! once it is acquired, run the operation as an [`Attempt`]. The attempt decides, the same way
//! for every user of idem (the [`Idempotency`](crate::Idempotency) executor, the HTTP layer,
//! message consumers):
//!
//! - **what a caller that goes away does** ([`CancelPolicy`]): by default nothing: the
//!   operation moves to a task of its own, runs to the end and its outcome is stored
//!   ([`Detach`](CancelPolicy::Detach)); a repeat meanwhile finds the key in progress, and the
//!   replay after. [`Release`](CancelPolicy::Release) frees the key at once instead;
//! - **when the key may be freed without an outcome**: only before the operation returned
//!   (a cancelled or panicking operation, under `Release`). From the moment it returns, its
//!   effects may have happened: a cancellation while the outcome is written frees nothing,
//!   and the write is finished on a task of its own;
//! - **the lease's renewal**: once the lease has run for a sixth of the TTL (counted from when
//!   its claim was sent: a slow claim already used part of it), on a task of its own, at once
//!   and then every third of the TTL, so an operation that blocks its thread for a while
//!   keeps its key (a quick operation costs no task and no timer: one supervisor per engine
//!   and runtime watches the running attempts); it stops when the attempt ends, and tells the
//!   operation when the lease is lost ([`LeaseHandle`]);
//! - **the outcome write**: retried while the store is unavailable, with jittered backoff, for
//!   as long as the lease may still be ours; a write whose reply was lost is recognised by
//!   reading the key back;
//! - **"ran but not recorded"**: when the operation ran but what it produced could not be
//!   stored, the caller gets the output back with [`Error::NotRecorded`]
//!   ([`AttemptError::NotRecorded`]).
//!
//! The engine knows nothing of encodings: a [`Settle`] step turns the operation's output into
//! a [`Settlement`] (complete with these bytes, fail with these bytes, or release).
//!
//! ```
//! use std::sync::Arc;
//! use idem_core::attempt::{Engine, Settlement};
//! use idem_core::{Bytes, Claim, ClaimRequest, Key, Ttl};
//! use idem_memory::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let engine = Engine::new(Arc::new(MemoryStore::new()), Ttl::from_secs(30)?);
//! let request = ClaimRequest::new(Key::new("jobs", "nightly-report")?, engine.lease_ttl());
//! let Claim::Acquired(lease) = engine.claim(&request).await? else {
//!     return Ok(()); // done before, or running elsewhere
//! };
//! let retention = Ttl::from_secs(3600)?;
//! let attempt = engine.attempt(lease);
//! let handle = attempt.lease_handle(); // for the operation: fencing number, lease loss
//! let report = attempt
//!     .run(
//!         async move { format!("report made under fencing number {}", handle.fencing) },
//!         move |report: &String| Settlement::Complete {
//!             payload: Bytes::from(report.clone()),
//!             retention,
//!         },
//!     )
//!     .await
//!     .expect("stored");
//! assert!(report.starts_with("report made"));
//! # Ok::<(), idem_core::Error>(())
//! # }).unwrap();
//! ```

pub(crate) mod backoff;
mod claim;
mod guard;
mod here;
mod renewal;
mod running;
mod settle;
#[cfg(test)]
mod test_store;
mod unwritten;
mod wait;
mod watchlist;
mod write;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::claim::{Claim, ClaimRequest};
use crate::error::Error;
use crate::lease::Lease;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;
use guard::ReleaseOnDrop;
use here::RunHere;
use renewal::Held;
use running::Running;
use unwritten::Unwritten;
use watchlist::Watchlist;

pub use renewal::LeaseHandle;
pub use settle::{Settle, Settlement};
pub use wait::WaitPolicy;

/// What happens to an acquired key when the caller waiting for its operation goes away (its
/// future is dropped: a client disconnected, a timeout fired) before the operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CancelPolicy {
    /// The operation, the encoding of its outcome and the outcome write run on a task of
    /// their own once the caller goes away, so that changes nothing: the operation finishes
    /// and its outcome is stored. (While the caller waits, they run in its future: no task is
    /// spawned for a caller that stays.) A repeat meanwhile finds the key in progress, and gets the replay
    /// after. The default, for operations that can be spawned (`Send + 'static`).
    #[default]
    Detach,
    /// The operation runs inside the caller's future; dropping that future drops the
    /// operation and releases the key at once, so the next request runs it again. Only for
    /// operations known to have no effect until they finish, and the policy of every
    /// operation that borrows from its caller ([`Attempt::run_scoped`]).
    Release,
}

/// Runs acquired attempts on one store, with one lease TTL and [`CancelPolicy`].
///
/// Cloning is cheap: clones share the store.
pub struct Engine<S> {
    /// The store, the lease TTL and the attempts running now.
    watchlist: Arc<Watchlist<S>>,
    cancel_policy: CancelPolicy,
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            watchlist: Arc::clone(&self.watchlist),
            cancel_policy: self.cancel_policy,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", self.watchlist.store())
            .field("lease_ttl", &self.watchlist.ttl())
            .field("cancel_policy", &self.cancel_policy)
            .finish()
    }
}

impl<S: IdempotencyStore> Engine<S> {
    /// An engine whose leases last `lease_ttl` unless renewed, with the default
    /// [`CancelPolicy::Detach`].
    pub fn new(store: Arc<S>, lease_ttl: Ttl) -> Self {
        Self {
            watchlist: Arc::new(Watchlist::new(store, lease_ttl)),
            cancel_policy: CancelPolicy::default(),
        }
    }

    /// Sets what a caller that goes away does to [`Attempt::run`]. Default:
    /// [`CancelPolicy::Detach`].
    #[must_use]
    pub fn with_cancel_policy(mut self, policy: CancelPolicy) -> Self {
        self.cancel_policy = policy;
        self
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<S> {
        self.watchlist.store()
    }

    /// The TTL of every lease, and of every renewal.
    #[must_use]
    pub fn lease_ttl(&self) -> Ttl {
        self.watchlist.ttl()
    }

    /// The policy of [`Attempt::run`].
    #[must_use]
    pub fn cancel_policy(&self) -> CancelPolicy {
        self.cancel_policy
    }

    /// Claims a key. A claim the store could not answer (`Unavailable`) is sent again a few
    /// times within a second, with the same owner token: if the first one was applied and
    /// only its reply lost, the store recognises the owner and hands back the same lease.
    ///
    /// # Errors
    ///
    /// What the store's [`claim`](IdempotencyStore::claim) returns: [`Error::FingerprintMismatch`],
    /// or [`Error::Unavailable`] once the resends are used up, or any other store error at once.
    pub fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
        claim::claim(&**self.store(), request)
    }

    /// The attempt that runs the operation under `lease`, just acquired by [`claim`](Self::claim).
    #[must_use]
    pub fn attempt(&self, lease: Lease) -> Attempt<S> {
        let held = Arc::new(Held::new(lease, self.lease_ttl()));
        Attempt {
            guard: ReleaseOnDrop::new(Arc::clone(&self.watchlist), held),
            cancel_policy: self.cancel_policy,
        }
    }
}

/// One acquired attempt: runs its operation under the lease, then carries out what the
/// settle step makes of its output. See the [module docs](self).
///
/// An attempt dropped without being run frees its key: its operation never started (say,
/// the closure that makes the operation's future panicked when called).
pub struct Attempt<S: IdempotencyStore> {
    /// The engine's watchlist and the lease, in the guard that frees the key unless the
    /// operation returns: armed from the attempt's making, so an attempt dropped unrun
    /// frees it too.
    guard: ReleaseOnDrop<S>,
    cancel_policy: CancelPolicy,
}

impl<S: IdempotencyStore> fmt::Debug for Attempt<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("lease", &self.guard.held.lease)
            .field("lease_ttl", &self.guard.watchlist.ttl())
            .field("cancel_policy", &self.cancel_policy)
            .finish_non_exhaustive()
    }
}

impl<S: IdempotencyStore> Attempt<S> {
    /// The lease the attempt runs under.
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.guard.held.lease
    }

    /// A handle for the operation: its lease, and whether it was lost while it runs.
    #[must_use]
    pub fn lease_handle(&self) -> LeaseHandle {
        LeaseHandle::new(Arc::clone(&self.guard.held))
    }

    /// Runs `operation` under the lease, as the engine's [`CancelPolicy`] says, then carries
    /// out what `settle` makes of its output, and returns the output.
    ///
    /// Under [`CancelPolicy::Detach`], dropping the returned future changes nothing: what is
    /// left of the attempt moves to a task of its own and runs to the end. If the operation
    /// panics, its key is released (a panic counts as "no effect"; use a `Result` for
    /// failures that had one) and the panic unwinds into the caller. A future dropped before
    /// it was first polled never started the operation, and releases the key, under either
    /// policy.
    ///
    /// Must be polled within a Tokio runtime with timers enabled (the renewals, the retries
    /// and the outcome write's deadline need them): on one without, it panics before the
    /// operation runs, and the key is released.
    ///
    /// # Errors
    ///
    /// [`AttemptError::NotRecorded`], with the operation's output, when the outcome could not be
    /// stored (the lease was lost, the store stayed unavailable while the lease lasted, the payload
    /// was refused).
    pub fn run<T, Fut, St>(
        self,
        operation: Fut,
        settle: St,
    ) -> impl Future<Output = Result<T, AttemptError<T>>> + Send + 'static
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        St: Settle<T> + Send + 'static,
    {
        let policy = self.cancel_policy;
        let guard = self.release_on_drop();
        let release_until_committed =
            (policy == CancelPolicy::Release).then(|| Arc::clone(&guard.held));
        // Built in its box rather than moved into it: the attempt's future is about a
        // kilobyte, and the caller's future holds only the box.
        let attempt = Box::write(Box::new_uninit(), run_here(guard, operation, settle));
        Running::new(Box::into_pin(attempt), release_until_committed)
    }

    /// Like [`run`](Self::run), for an operation that borrows from its caller, and so cannot
    /// outlive it: the policy is always [`CancelPolicy::Release`]. Dropping the returned future
    /// before the operation returned drops the operation and releases the key; dropping it
    /// later (during the outcome write) releases nothing: the write is finished on a task of
    /// its own.
    ///
    /// # Errors
    ///
    /// [`AttemptError::NotRecorded`], with the operation's output, when the outcome could not be
    /// stored, as for [`run`](Self::run).
    pub fn run_scoped<T, Fut, St>(
        self,
        operation: Fut,
        settle: St,
    ) -> impl Future<Output = Result<T, AttemptError<T>>>
    where
        Fut: Future<Output = T>,
        St: Settle<T>,
    {
        run_here(self.release_on_drop(), operation, settle)
    }

    /// The attempt as the guard that frees the key unless the operation returns: moved into
    /// the attempt's future, not taken at its first poll, so a future dropped unpolled frees
    /// the key too.
    fn release_on_drop(self) -> ReleaseOnDrop<S> {
        self.guard
    }
}

/// The attempt, from its guard: the operation under the lease, then the settlement.
fn run_here<S, T, Fut, St>(
    guard: ReleaseOnDrop<S>,
    operation: Fut,
    settle: St,
) -> impl Future<Output = Result<T, AttemptError<T>>>
where
    S: IdempotencyStore,
    Fut: Future<Output = T>,
    St: Settle<T>,
{
    RunHere::new(guard, operation, settle, finish::<S, T, St>)
}

/// What follows the operation: its outcome written as `settle` says, from the guard that
/// holds the lease.
///
/// An `async` block, not an `async fn`: an `async fn` moves each argument from where the
/// call put it into a local of its own, and the output, the settle step and the guard were
/// held twice, in every attempt's box.
#[allow(clippy::manual_async_fn)]
fn finish<S, T, St>(
    guard: ReleaseOnDrop<S>,
    output: T,
    mut settle: St,
) -> impl Future<Output = Result<T, AttemptError<T>>>
where
    S: IdempotencyStore,
    St: Settle<T>,
{
    async move {
        let (store, held) = (guard.watchlist.store(), &guard.held);
        let lease = &held.lease;

        let settlement = settle.settle(&output);
        let written = if held.is_lost() {
            match settlement {
                // Nothing to free: the key is no longer ours.
                Settlement::Release => Ok(()),
                _ => Err(Error::LeaseLost),
            }
        } else {
            // Finished on a task if this future is dropped before the write ends.
            let mut unwritten = Unwritten::new(store, &guard.held, &settlement);
            let written = write::carry_out::<_, T, _>(
                &**store,
                lease,
                &settlement,
                &mut unwritten.tracking(&mut settle),
                held.until(),
            )
            .await;
            unwritten.written();
            written
        };
        match written {
            Ok(()) => Ok(output),
            Err(cause) => {
                tracing::warn!(
                    error = %cause,
                    namespace = lease.key.namespace(),
                    fencing = lease.fencing,
                    "the operation ran but its outcome was not stored"
                );
                Err(AttemptError::NotRecorded {
                    output,
                    error: Error::not_recorded(cause),
                })
            }
        }
    }
}

/// Why an attempt did not end with its outcome stored.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttemptError<T> {
    /// The operation ran, and here is its output, but its outcome could not be stored (the
    /// lease was lost, the store stayed unavailable, the payload was refused). `error` is
    /// [`Error::NotRecorded`], whose cause says why. The key is not finished: a later
    /// request may run the operation again once the lease ends.
    NotRecorded {
        /// What the operation returned.
        output: T,
        /// [`Error::NotRecorded`], with the cause.
        error: Error,
    },
}

impl<T> AttemptError<T> {
    /// The error without the output: [`Error::NotRecorded`], with the cause.
    pub fn into_error(self) -> Error {
        match self {
            Self::NotRecorded { error, .. } => error,
        }
    }
}

impl<T> fmt::Display for AttemptError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRecorded { error, .. } => error.fmt(f),
        }
    }
}

impl<T: fmt::Debug> std::error::Error for AttemptError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotRecorded { error, .. } => Some(error),
        }
    }
}
