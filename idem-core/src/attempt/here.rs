//! The attempt's own future, polled in its caller's task: the operation under the lease,
//! then what the settle step makes of its output.
//!
//! Written by hand rather than as an `async fn`: an `async fn` keeps its arguments for its
//! whole life and moves the operation into a second place to await it, so the operation's
//! future was held twice, and the outcome write's state came on top. For the HTTP layer
//! behind axum that made each request's attempt box 2,280 bytes, past the allocator's
//! per-thread cache (1,032 bytes): every new key paid the allocator's slow path. Here the
//! operation is polled where it lies, and the outcome write takes its place once it
//! returned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::runtime::Handle;

use super::guard::ReleaseOnDrop;
use super::watchlist::Watched;
use crate::store::IdempotencyStore;

pin_project! {
    /// Where the attempt is.
    #[project = PhaseProj]
    #[project_replace = PhaseOwned]
    enum Phase<S: IdempotencyStore, Fut, St, W> {
        /// The operation runs (or was not polled yet: `watched` is `None` until the first
        /// poll, so an attempt never polled never listed itself).
        Operating {
            // First: dropped before the guard frees the key.
            #[pin]
            operation: Fut,
            watched: Option<Watched<S>>,
            guard: ReleaseOnDrop<S>,
            settle: St,
        },
        /// The operation returned: its outcome is written.
        Writing {
            #[pin]
            write: W,
        },
        /// Finished, or between the two.
        Done,
    }
}

pin_project! {
    /// An attempt run in its caller's task: `operation`, then `finish` with its output.
    pub(super) struct RunHere<S: IdempotencyStore, Fut, St, F, W> {
        #[pin]
        phase: Phase<S, Fut, St, W>,
        // Makes the outcome write (a function item: it takes no room).
        finish: F,
    }
}

impl<S, Fut, St, F, W> RunHere<S, Fut, St, F, W>
where
    S: IdempotencyStore,
    Fut: Future,
    F: Fn(ReleaseOnDrop<S>, Fut::Output, St) -> W,
{
    /// The attempt, armed: `guard` frees the key if it is dropped before `operation`
    /// returned, even unpolled.
    pub(super) fn new(guard: ReleaseOnDrop<S>, operation: Fut, settle: St, finish: F) -> Self {
        Self {
            phase: Phase::Operating {
                operation,
                watched: None,
                guard,
                settle,
            },
            finish,
        }
    }
}

impl<S, Fut, St, F, W> Future for RunHere<S, Fut, St, F, W>
where
    S: IdempotencyStore,
    Fut: Future,
    F: Fn(ReleaseOnDrop<S>, Fut::Output, St) -> W,
    W: Future,
{
    type Output = W::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<W::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.phase.as_mut().project() {
                PhaseProj::Operating {
                    operation,
                    watched,
                    guard,
                    ..
                } => {
                    if watched.is_none() {
                        let (place, spawned) = guard
                            .watchlist
                            .enter(Arc::clone(&guard.held), &Handle::current());
                        *watched = Some(place);
                        if spawned {
                            // Let the new task (the supervisor, or an overdue lease's
                            // renewal) start: it would otherwise wait in this worker's
                            // next-task slot, which other workers do not steal from, behind
                            // an operation that may block the thread.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                    let output = ready!(operation.poll(cx));
                    guard.disarm();
                    // The operation's place, freed, takes the write.
                    if let PhaseOwned::Operating {
                        watched,
                        guard,
                        settle,
                        ..
                    } = this.phase.as_mut().project_replace(Phase::Done)
                    {
                        // Off the watchlist (its renewal stopped) before the write.
                        drop(watched);
                        let write = (this.finish)(guard, output, settle);
                        this.phase.set(Phase::Writing { write });
                    }
                }
                PhaseProj::Writing { write } => {
                    let written = ready!(write.poll(cx));
                    this.phase.set(Phase::Done);
                    return Poll::Ready(written);
                }
                // Polled again after it finished: there is nothing more to give.
                PhaseProj::Done => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Future, poll_fn};
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use bytes::Bytes;

    use crate::attempt::test_store::TestStore;
    use crate::attempt::{Engine, Settle, Settlement};
    use crate::key::Key;
    use crate::lease::{Lease, OwnerToken};
    use crate::ttl::Ttl;

    /// The room an operation's future or its output takes in the tests below.
    const ROOM: usize = 4096;

    /// The attempt's future holds its operation once, and its output once: an `async fn`
    /// held each twice (the operation as its argument and where it was awaited, the output
    /// as the write's argument and its local), so a kilobyte-sized operation (a handler
    /// behind axum) made a box past the allocator's per-thread cache.
    #[tokio::test]
    async fn the_attempts_future_holds_its_operation_and_its_output_once() {
        let engine = Engine::new(
            Arc::new(TestStore::new()),
            Ttl::from_secs(30).expect("a valid TTL"),
        );
        let lease = Lease::new(
            Key::new("here", "k").expect("a valid key"),
            OwnerToken::random(),
            1,
        );
        let held = [7_u8; ROOM];
        let operation = async move {
            tokio::task::yield_now().await;
            held
        };
        assert!(std::mem::size_of_val(&operation) >= ROOM);
        let attempt = engine
            .attempt(lease)
            .run_scoped(operation, |output: &[u8; ROOM]| Settlement::Complete {
                payload: bytes::Bytes::copy_from_slice(&output[..4]),
                retention: Ttl::from_secs(60).expect("a valid TTL"),
            });
        let size = std::mem::size_of_val(&attempt);
        assert!(size < 2 * ROOM, "the attempt's future takes {size} bytes");
        let output = attempt.await.expect("stored");
        assert_eq!(output, [7_u8; ROOM]);
    }

    /// The lease TTL of the tests below: the supervisor looks every 5 s.
    const TTL_SECS: u64 = 30;

    /// The attempt of an operation that returns 7, under a fresh lease of an engine on
    /// `store`, settled by `settle`.
    fn attempt_on(
        store: Arc<TestStore>,
        settle: impl Settle<u32>,
    ) -> impl Future<Output = Result<u32, crate::attempt::AttemptError<u32>>> {
        let engine = Engine::new(store, Ttl::from_secs(TTL_SECS).expect("a valid TTL"));
        let lease = Lease::new(
            Key::new("here", "k").expect("a valid key"),
            OwnerToken::random(),
            1,
        );
        engine.attempt(lease).run_scoped(async { 7_u32 }, settle)
    }

    /// An attempt on an engine whose store's outcome writes take `write`.
    fn slow_write_attempt(
        write: Duration,
    ) -> (
        Arc<TestStore>,
        impl Future<Output = Result<u32, crate::attempt::AttemptError<u32>>>,
    ) {
        let store = Arc::new(TestStore::new().writes_take(write));
        let attempt = attempt_on(Arc::clone(&store), |_: &u32| Settlement::Complete {
            payload: Bytes::from_static(b"seven"),
            retention: Ttl::from_secs(60).expect("a valid TTL"),
        });
        (store, attempt)
    }

    /// An attempt leaves the watchlist once its operation returned, before its outcome is
    /// written: a write slower than the supervisor's look gets no renewal, and once the
    /// attempt ended no supervisor is left looking.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_leaves_the_watchlist_before_its_outcome_write() {
        // Four of the supervisor's looks (every sixth of the TTL) pass during the write.
        let (store, attempt) = slow_write_attempt(Duration::from_secs(TTL_SECS * 2 / 3));
        assert_eq!(attempt.await.expect("stored"), 7);
        assert_eq!(
            store.renewals.lock().expect("not poisoned").len(),
            0,
            "the lease was renewed during the outcome write"
        );
        tokio::time::sleep(Duration::from_secs(TTL_SECS * 2)).await;
        assert_eq!(store.renewals.lock().expect("not poisoned").len(), 0);
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0,
            "a task outlived the attempt"
        );
    }

    /// An attempt polled again after it returned its output is pending, not a panic: there
    /// is nothing more to give, and nothing of the finished write is polled again.
    #[tokio::test]
    async fn an_attempt_polled_after_it_finished_is_pending() {
        let (_store, attempt) = slow_write_attempt(Duration::ZERO);
        let mut attempt = std::pin::pin!(attempt);
        assert_eq!(attempt.as_mut().await.expect("stored"), 7);
        let again = poll_fn(|cx| Poll::Ready(attempt.as_mut().poll(cx))).await;
        assert!(again.is_pending());
    }

    /// A settle step whose outcome is too large for the store, with a small marker to
    /// write instead.
    struct TooLargeToStore;

    impl Settle<u32> for TooLargeToStore {
        fn settle(&mut self, _: &u32) -> Settlement {
            Settlement::Complete {
                payload: Bytes::from(vec![b'x'; 64]),
                retention: Ttl::from_secs(60).expect("a valid TTL"),
            }
        }

        fn too_large(&mut self, _: usize, _: usize) -> Option<Settlement> {
            Some(Settlement::Fail {
                payload: Bytes::from_static(b"too large"),
                retention: Ttl::from_secs(60).expect("a valid TTL"),
            })
        }
    }

    /// An attempt dropped while it writes what its settle step gave instead of a payload the
    /// store refused as too large has that fallback finished elsewhere. Finished with the
    /// refused settlement again, the write was refused again and stored nothing: the key,
    /// whose operation ran, was left to run it a second time once the lease ended.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_write_of_a_too_large_outcomes_fallback_is_finished_with_the_fallback() {
        let store = Arc::new(
            TestStore::new()
                .writes_take(Duration::from_secs(1))
                .limit(16),
        );
        let mut attempt = Box::pin(attempt_on(Arc::clone(&store), TooLargeToStore));
        // The operation returns, its outcome is refused at once, and the fallback's write
        // waits on the store: the caller goes away then.
        while store.tries.lock().expect("not poisoned").len() < 2 {
            let polled = poll_fn(|cx| Poll::Ready(attempt.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the fallback's write takes a second");
            tokio::task::yield_now().await;
        }
        drop(attempt);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            *store.stored.lock().expect("not poisoned"),
            vec![Bytes::from_static(b"too large")],
            "the fallback is stored"
        );
    }
}
