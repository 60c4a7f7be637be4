//! A handler's panic, caught where the layer can still settle its key.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// What a panic unwinds with, to resume it once the key is settled.
pub(crate) type Panic = Box<dyn Any + Send>;

pin_project! {
    /// `future`'s output, or the panic it unwound with.
    ///
    /// The future is not used after a panic, so whatever state the panic left it in is never
    /// observed: asserting unwind safety is sound.
    pub(crate) struct CatchPanic<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchPanic<F> {
    pub(crate) fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
