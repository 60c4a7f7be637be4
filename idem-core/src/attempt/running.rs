//! The future of [`Attempt::run`](super::Attempt::run): the attempt in a box of its own, polled
//! in its caller's task, and what happens to it when its caller goes away.
//!
//! Under [`CancelPolicy::Detach`](super::CancelPolicy::Detach) the attempt runs inside its caller's future, like any other;
//! only if the caller drops that future before the attempt finished is the attempt handed to a
//! task of its own, where it runs to the end. Spawning every attempt up front would cost a
//! spawn and two cross-task wake-ups per request, for the rare caller that goes away. Under
//! [`CancelPolicy::Release`](super::CancelPolicy::Release) the unfinished attempt is dropped with its caller's future, and
//! its guard frees the key, unless the operation committed (returned, or said its effects may
//! have happened: [`LeaseHandle::commit`](super::LeaseHandle::commit)): what is left of it then
//! moves to a task as under `Detach`, so that its outcome is stored.
//!
//! The box is made when the attempt is, so the caller's future holds a pointer, not the
//! attempt: an attempt's future is about a kilobyte, and the futures that await it (the
//! executor's, the HTTP layer's) would otherwise carry it inline, copied with them and too
//! big for the allocator's per-thread cache.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tracing::{Instrument, Span};

use super::renewal::Held;

/// A boxed attempt, polled in its caller's task. Under [`CancelPolicy::Detach`](super::CancelPolicy::Detach) it moves to
/// a task on the runtime it was first polled on when dropped unfinished.
pub(crate) struct Running<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    /// `None` once finished.
    attempt: Option<Pin<Box<F>>>,
    /// Under [`CancelPolicy::Release`](super::CancelPolicy::Release), the lease, which says whether the operation
    /// committed; `None` under `Detach`, which moves every unfinished attempt.
    release_until_committed: Option<Arc<Held>>,
    /// The runtime of the first poll (a caller may be dropped on a thread outside it);
    /// `None` before it. An attempt never polled never started its operation: dropping it
    /// drops it, and its guard frees the key.
    runtime: Option<Handle>,
    /// The caller's span at the first poll, for the attempt's task if it detaches (inline,
    /// the attempt is polled inside it already).
    span: Span,
    /// Set while the attempt is polled: if it is still set when this is dropped, the attempt
    /// panicked, and what is left of it is dropped, not run on (its key was released while
    /// the panic unwound through it).
    polling: bool,
}

impl<F: Future + Send + 'static> Running<F>
where
    F::Output: Send + 'static,
{
    /// Under [`CancelPolicy::Detach`](super::CancelPolicy::Detach), `release_until_committed` is `None`; under `Release`,
    /// it is the attempt's lease, and the attempt detaches only once its operation committed.
    pub(crate) fn new(attempt: Pin<Box<F>>, release_until_committed: Option<Arc<Held>>) -> Self {
        Self {
            attempt: Some(attempt),
            release_until_committed,
            runtime: None,
            span: Span::none(),
            polling: false,
        }
    }
}

/// The caller's span, kept for a detached attempt's task. When no subscriber listens at any
/// level, no span is open, and looking it up would only cost the lookup.
fn caller_span() -> Span {
    if tracing::level_enabled!(tracing::Level::ERROR) {
        Span::current()
    } else {
        Span::none()
    }
}

impl<F: Future + Send + 'static> Future for Running<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if this.runtime.is_none() {
            // Where the caller runs now: the attempt's task goes there if it detaches.
            this.runtime = Some(Handle::current());
            this.span = caller_span();
        }
        let Some(attempt) = this.attempt.as_mut() else {
            // Polled again after it finished: there is nothing more to give.
            return Poll::Pending;
        };
        this.polling = true;
        let polled = attempt.as_mut().poll(cx);
        this.polling = false;
        if polled.is_ready() {
            this.attempt = None;
        }
        polled
    }
}

impl<F: Future + Send + 'static> Drop for Running<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        let Some(attempt) = self.attempt.take() else {
            return;
        };
        // Never polled, panicked, or under `Release` before its operation committed: dropped
        // here, with what is left of it (its guard frees the key unless it committed).
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if self.polling {
            return;
        }
        if let Some(held) = &self.release_until_committed
            && !held.is_committed()
        {
            return;
        }
        // The caller went away: the attempt runs on to the end, and its outcome is stored.
        // If the runtime is shutting down, the task is dropped at once, as a spawned attempt
        // would have been.
        let span = std::mem::replace(&mut self.span, Span::none());
        drop(runtime.spawn(attempt.instrument(span)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::attempt::CancelPolicy;
    use crate::key::Key;
    use crate::lease::{Lease, OwnerToken};
    use crate::ttl::Ttl;

    /// The lease of the attempt under test.
    fn held() -> Arc<Held> {
        let key = Key::new("running", "k").expect("a valid key");
        let lease = Lease::new(key, OwnerToken::random(), 1);
        Arc::new(Held::new(lease, Ttl::from_secs(30).expect("a valid TTL")))
    }

    /// An attempt that is done at its first poll, and counts its polls.
    struct CountsPolls(Arc<AtomicUsize>);

    impl Future for CountsPolls {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(())
        }
    }

    /// An attempt whose caller goes away before it finished runs to the end on a task of
    /// its own.
    #[tokio::test]
    async fn an_unfinished_attempt_runs_on_once_its_caller_is_dropped() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        let attempt = async move {
            let _ = wait.await;
            let _ = finished.send(());
        };
        let mut caller = Box::pin(Running::new(Box::pin(attempt), None));
        assert!(pending(caller.as_mut()).await, "the attempt waits for `go`");
        drop(caller);
        go.send(()).expect("the attempt still waits");
        done.await.expect("the attempt ran to the end");
    }

    /// Under `Release`, an unfinished attempt goes with its caller: nothing runs it on.
    #[tokio::test]
    async fn under_release_an_unfinished_attempt_is_dropped_with_its_caller() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let attempt = async move {
            let _ = wait.await;
        };
        let mut caller = Box::pin(Running::new(Box::pin(attempt), Some(held())));
        assert!(pending(caller.as_mut()).await, "the attempt waits for `go`");
        drop(caller);
        assert!(go.send(()).is_err(), "the attempt was dropped");
    }

    /// Under `Release`, an attempt whose operation committed is not dropped with its caller:
    /// its effects may have happened, so it runs to the end on a task, as under `Detach`.
    #[tokio::test]
    async fn under_release_a_committed_attempt_runs_on_once_its_caller_is_dropped() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        let attempt = async move {
            let _ = wait.await;
            let _ = finished.send(());
        };
        let held = held();
        let mut caller = Box::pin(Running::new(Box::pin(attempt), Some(Arc::clone(&held))));
        assert!(pending(caller.as_mut()).await, "the attempt waits for `go`");
        held.commit();
        drop(caller);
        go.send(()).expect("the attempt still waits");
        done.await.expect("the attempt ran to the end");
    }

    /// An attempt never polled never started: dropping its caller drops it, under either
    /// policy, without a task to run it on.
    #[tokio::test]
    async fn an_attempt_never_polled_is_not_started_once_dropped() {
        for policy in [CancelPolicy::Detach, CancelPolicy::Release] {
            let polls = Arc::new(AtomicUsize::new(0));
            drop(Running::new(
                Box::pin(CountsPolls(Arc::clone(&polls))),
                (policy == CancelPolicy::Release).then(held),
            ));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(polls.load(Ordering::SeqCst), 0, "{policy:?}");
        }
    }

    /// Polls `caller` once: whether it is still pending.
    async fn pending<F: Future + Send + 'static>(caller: Pin<&mut Running<F>>) -> bool
    where
        F::Output: Send + 'static,
    {
        let mut caller = caller;
        std::future::poll_fn(|cx| Poll::Ready(caller.as_mut().poll(cx).is_pending())).await
    }

    /// A detached attempt's task runs in its caller's span, so what it logs (a renewal that
    /// failed, the outcome it stores) is still told apart by the request it belongs to.
    #[tokio::test]
    async fn a_detached_attempt_runs_on_in_its_callers_span() {
        // The test's runtime runs every task on this thread, the one the subscriber is on.
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        let attempt = async move {
            let _ = wait.await;
            let _ = finished.send(Span::current().metadata().map(|m| m.name()));
        };
        let mut caller = Box::pin(Running::new(Box::pin(attempt), None));
        let request = tracing::error_span!("request");
        let first_poll = pending(caller.as_mut()).instrument(request).await;
        assert!(first_poll, "the attempt waits for `go`");
        drop(caller);
        go.send(()).expect("the attempt still waits");
        assert_eq!(
            done.await.expect("the attempt ran to the end"),
            Some("request")
        );
    }

    /// An attempt that finished in its caller's future is not handed to a task when the
    /// caller's future is dropped: that task would poll a finished future (an `async` block
    /// panics then, silently, on a task nobody joins).
    #[tokio::test]
    async fn a_finished_attempt_is_not_polled_again_once_dropped() {
        let polls = Arc::new(AtomicUsize::new(0));
        Running::new(Box::pin(CountsPolls(Arc::clone(&polls))), None).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }
}
