//! Frees a key whose operation never returned, or never started: its claim's caller went
//! away before the claim's answer came back; and finishes the outcome write of one that
//! returned, when that write was dropped.

use std::sync::Arc;
use std::time::Duration;

use super::renewal::Held;
use super::settle::{Settle, Settlement};
use super::watchlist::Watchlist;
use super::write;
use crate::claim::ClaimRequest;
use crate::error::Error;
use crate::key::Key;
use crate::record::{Record, RecordState};
use crate::store::IdempotencyStore;

/// How long a release started from a helper thread (no runtime at hand) may take.
const HELPER_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Releases the lease if dropped before the operation committed: the attempt was dropped
/// without being run, or its future was dropped before its first poll, or the operation's
/// future was dropped before it returned (its caller went away under
/// [`CancelPolicy::Release`]), or it panicked (drops run while unwinding). The operation
/// commits when it returns, or earlier by [`LeaseHandle::commit`]: from then on its effects
/// may have happened, and only a stored outcome, or the lease's end, may free the key.
///
/// Dropped inside a Tokio runtime, the release runs on a task of that runtime. Dropped outside
/// one (a future dropped after its runtime was left), or with a runtime shutting down (which
/// drops the release task unstarted), a short-lived helper thread runs the release on a
/// runtime of its own; if that fails too (a store bound to the runtime that is gone), the log
/// says so and the key frees itself when the lease ends.
///
/// It owns what the attempt runs with (the engine's watchlist, with the store, and the
/// lease), and the attempt borrows them from it: one set of handles per attempt, not a
/// second set of reference counts for the guard.
///
/// [`CancelPolicy::Release`]: super::CancelPolicy::Release
/// [`LeaseHandle::commit`]: super::LeaseHandle::commit
pub(crate) struct ReleaseOnDrop<S: IdempotencyStore> {
    pub(super) watchlist: Arc<Watchlist<S>>,
    /// The lease, and whether the operation committed (the guard's arming, kept with the
    /// lease so that the operation's [`LeaseHandle`](super::LeaseHandle) can commit early).
    pub(super) held: Arc<Held>,
}

impl<S: IdempotencyStore> ReleaseOnDrop<S> {
    pub(crate) fn new(watchlist: Arc<Watchlist<S>>, held: Arc<Held>) -> Self {
        Self { watchlist, held }
    }

    /// The operation returned: the key's fate is no longer this guard's to decide.
    pub(crate) fn disarm(&self) {
        self.held.commit();
    }
}

impl<S: IdempotencyStore> Drop for ReleaseOnDrop<S> {
    fn drop(&mut self) {
        if self.held.is_committed() {
            return;
        }
        tracing::warn!(
            namespace = self.held.lease.key.namespace(),
            fencing = self.held.lease.fencing,
            "operation cancelled or panicked before it returned; releasing its key"
        );
        let abandoned = Abandoned::Lease(Arc::clone(&self.held));
        free(Arc::clone(self.watchlist.store()), abandoned);
    }
}

/// A hold on a key whose operation will never run, to be freed in the store.
pub(crate) enum Abandoned {
    /// An acquired lease whose operation never returned.
    Lease(Arc<Held>),
    /// A claim whose caller went away before its answer came back: if the store applied it
    /// (the key shows this claim's owner), the lease it granted is released.
    Claim(ClaimRequest),
    /// The settlement of an operation that returned, whose write was dropped before it
    /// ended: it is carried out (see [`Unwritten`](super::unwritten::Unwritten)).
    Outcome(Arc<Held>, Settlement),
}

impl Abandoned {
    /// What is done with the key, for the logs.
    fn what(&self) -> &'static str {
        match self {
            Self::Lease(_) | Self::Claim(_) => "release",
            Self::Outcome(..) => "outcome write",
        }
    }

    fn key(&self) -> &Key {
        match self {
            Self::Lease(held) | Self::Outcome(held, _) => &held.lease.key,
            Self::Claim(request) => &request.key,
        }
    }

    /// Frees the key in `store` if it is still held by what was abandoned, or finishes it
    /// with the abandoned outcome.
    async fn free<S: IdempotencyStore>(&self, store: &S) -> Result<(), Error> {
        match self {
            Self::Lease(held) => store.release(&held.lease).await,
            Self::Outcome(held, settlement) => {
                let (lease, until) = (&held.lease, held.until());
                write::carry_out::<_, (), _>(store, lease, settlement, &mut NoFallback, until).await
            }
            Self::Claim(request) => match store.read(&request.key).await? {
                Some(Record {
                    state: RecordState::Claimed { owner },
                    fencing,
                    ..
                }) if owner == request.owner => store.release(&request.lease(fencing)).await,
                // Never applied, or no longer this claim's: nothing of it to free.
                _ => Ok(()),
            },
        }
    }
}

/// Frees (or finishes) what was abandoned, off the dropping thread: on a task of the current
/// runtime, or, with none or one shutting down (which drops the task unstarted), on a helper
/// thread.
pub(crate) fn free<S: IdempotencyStore>(store: Arc<S>, abandoned: Abandoned) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let mut unstarted = Unstarted(Some((store, abandoned)));
            runtime.spawn(async move {
                if let Some((store, abandoned)) = unstarted.0.take() {
                    release(store, abandoned).await;
                }
            });
        }
        Err(_) => release_from_helper_thread(store, abandoned),
    }
}

/// The hold of a release task not yet started: dropped with it (its runtime shut down
/// before running it), it hands the release to a helper thread.
struct Unstarted<S: IdempotencyStore>(Option<(Arc<S>, Abandoned)>);

impl<S: IdempotencyStore> Drop for Unstarted<S> {
    fn drop(&mut self) {
        if let Some((store, abandoned)) = self.0.take() {
            release_from_helper_thread(store, abandoned);
        }
    }
}

async fn release<S: IdempotencyStore>(store: Arc<S>, abandoned: Abandoned) {
    match (abandoned.free(&*store).await, &abandoned) {
        (Ok(()), _) => {}
        // Most claims left unanswered were never applied (the store was down): no warning
        // for each of them on top of the outage's own.
        (Err(error), Abandoned::Claim(request)) => tracing::debug!(
            %error,
            namespace = request.key.namespace(),
            "freeing the key of an unanswered claim failed; if it was applied, the key frees itself when the lease ends"
        ),
        (Err(error), Abandoned::Lease(_)) => tracing::warn!(
            %error,
            namespace = abandoned.key().namespace(),
            "releasing an abandoned lease failed; the key frees itself when the lease ends"
        ),
        // The dropped write's last try may have been applied: the key is finished.
        (Err(Error::LeaseLost), Abandoned::Outcome(..)) => tracing::debug!(
            namespace = abandoned.key().namespace(),
            "the abandoned outcome write found the key no longer held: written by the dropped write, or taken over"
        ),
        (Err(error), Abandoned::Outcome(..)) => tracing::warn!(
            %error,
            namespace = abandoned.key().namespace(),
            "the operation ran but its outcome was not stored"
        ),
    }
}

/// The settle step of an abandoned outcome write: the settlement is known already, and the
/// caller's step, with its fallback for a payload over the store's limit, went with the
/// caller.
struct NoFallback;

impl Settle<()> for NoFallback {
    fn settle(&mut self, (): &()) -> Settlement {
        Settlement::Release
    }
}

/// No runtime on this thread: free (or finish) from a thread with a runtime of its own.
fn release_from_helper_thread<S: IdempotencyStore>(store: Arc<S>, abandoned: Abandoned) {
    let namespace = abandoned.key().namespace().to_owned();
    tracing::warn!(
        namespace,
        task = abandoned.what(),
        "operation dropped with no runtime to finish with its key on; doing it from a helper thread"
    );
    let spawned = std::thread::Builder::new()
        .name("idem-release".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(%error, "no runtime for the helper thread; the key frees itself when the lease ends");
                    return;
                }
            };
            let (namespace, task) = (abandoned.key().namespace(), abandoned.what());
            runtime.block_on(async {
                let released =
                    tokio::time::timeout(HELPER_RELEASE_TIMEOUT, abandoned.free(&*store)).await;
                match released {
                    Ok(Ok(())) => tracing::info!(
                        namespace,
                        task,
                        "finished with the key of an operation dropped outside a runtime"
                    ),
                    Ok(Err(error)) => tracing::warn!(
                        %error,
                        namespace,
                        task,
                        "the helper thread's call failed; the key frees itself when the lease ends"
                    ),
                    Err(_) => tracing::warn!(
                        namespace,
                        task,
                        "the helper thread's call timed out; the key frees itself when the lease ends"
                    ),
                }
            });
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, namespace, "could not start a helper thread; the key frees itself when the lease ends");
    }
}
