//! Frees a key whose operation never returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::renewal::Held;
use super::watchlist::Watchlist;
use crate::store::IdempotencyStore;

/// How long a release started from a helper thread (no runtime at hand) may take.
const HELPER_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Releases the lease if dropped while armed: the attempt was dropped without being run, or
/// its future was dropped before its first poll, or the operation's future was dropped before
/// it returned (its caller went away under [`CancelPolicy::Release`]), or it panicked (drops
/// run while unwinding). Disarmed the moment the operation returns: from then on its effects
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
pub(crate) struct ReleaseOnDrop<S: IdempotencyStore> {
    pub(super) watchlist: Arc<Watchlist<S>>,
    pub(super) held: Arc<Held>,
    /// Set until the operation returns. Set through `&self`, so the attempt can disarm the
    /// guard while its place on the watchlist still borrows the guard's watchlist; atomic,
    /// so an [`Attempt`](super::Attempt), which holds the guard, stays `Sync`.
    armed: AtomicBool,
}

impl<S: IdempotencyStore> ReleaseOnDrop<S> {
    pub(crate) fn new(watchlist: Arc<Watchlist<S>>, held: Arc<Held>) -> Self {
        Self {
            watchlist,
            held,
            armed: AtomicBool::new(true),
        }
    }

    /// The operation returned: the key's fate is no longer this guard's to decide.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }
}

impl<S: IdempotencyStore> Drop for ReleaseOnDrop<S> {
    fn drop(&mut self) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let (store, held) = (Arc::clone(self.watchlist.store()), Arc::clone(&self.held));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::warn!(
                    namespace = held.lease.key.namespace(),
                    fencing = held.lease.fencing,
                    "operation cancelled or panicked before it returned; releasing its key"
                );
                // A runtime shutting down drops the task unpolled: the release then goes to
                // a helper thread, as with no runtime at all.
                let mut unstarted = Unstarted(Some((store, held)));
                runtime.spawn(async move {
                    if let Some((store, held)) = unstarted.0.take() {
                        release(store, held).await;
                    }
                });
            }
            Err(_) => release_from_helper_thread(store, held),
        }
    }
}

/// The lease of a release task not yet started: dropped with it (its runtime shut down
/// before running it), it hands the release to a helper thread.
struct Unstarted<S: IdempotencyStore>(Option<(Arc<S>, Arc<Held>)>);

impl<S: IdempotencyStore> Drop for Unstarted<S> {
    fn drop(&mut self) {
        if let Some((store, held)) = self.0.take() {
            release_from_helper_thread(store, held);
        }
    }
}

async fn release<S: IdempotencyStore>(store: Arc<S>, held: Arc<Held>) {
    let lease = &held.lease;
    if let Err(error) = store.release(lease).await {
        tracing::warn!(
            %error,
            namespace = lease.key.namespace(),
            "releasing an abandoned lease failed; the key frees itself when the lease ends"
        );
    }
}

/// No runtime on this thread: release from a thread with a runtime of its own.
fn release_from_helper_thread<S: IdempotencyStore>(store: Arc<S>, held: Arc<Held>) {
    let namespace = held.lease.key.namespace().to_owned();
    tracing::warn!(
        namespace,
        fencing = held.lease.fencing,
        "operation dropped with no runtime to release its key on; releasing it from a helper thread"
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
                    tracing::warn!(%error, "no runtime for releasing an abandoned lease; the key frees itself when the lease ends");
                    return;
                }
            };
            let lease = &held.lease;
            runtime.block_on(async {
                let released =
                    tokio::time::timeout(HELPER_RELEASE_TIMEOUT, store.release(lease)).await;
                match released {
                    Ok(Ok(())) => tracing::info!(
                        namespace = lease.key.namespace(),
                        "released the key of an operation dropped outside a runtime"
                    ),
                    Ok(Err(error)) => tracing::warn!(
                        %error,
                        namespace = lease.key.namespace(),
                        "releasing from the helper thread failed; the key frees itself when the lease ends"
                    ),
                    Err(_) => tracing::warn!(
                        namespace = lease.key.namespace(),
                        "releasing from the helper thread timed out; the key frees itself when the lease ends"
                    ),
                }
            });
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, namespace, "could not start a thread to release an abandoned lease; the key frees itself when the lease ends");
    }
}
