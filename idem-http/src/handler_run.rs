//! The operation the layer runs under a key's lease: the inner service called, its response
//! read whole, a panic in either caught so that the key is settled before it goes on.
//!
//! A future written by hand, not an `async` block: it is the operation the engine polls in
//! the attempt's box, and an `async` block kept the inner service and the request for its
//! whole life beside the call they made, and the response beside the reading of its body
//! (992 bytes behind axum, where each step's state alone is at most 320). One step's state
//! at a time keeps the box in the allocator's per-thread cache.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use idem_core::BoxError;
use idem_core::attempt::LeaseHandle;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{BufferResponse, BufferedResponse};
use crate::settle::Output;
use crate::unwind::caught;

pin_project! {
    #[project = StepProj]
    #[project_replace = StepOwned]
    enum Step<Inner, ReqBody, Call, ResBody> {
        /// Not polled yet: the inner service is called at the first poll, once the attempt
        /// runs, not when it is made.
        Unstarted { inner: Inner, request: Request<ReqBody> },
        /// The inner service's future.
        Calling { #[pin] call: Call },
        /// The response's body, read.
        Reading { body: BufferResponse<ResBody> },
        /// Finished, or between two steps.
        Done,
    }
}

pin_project! {
    /// The inner service run on `request`, as the engine's operation: its output is the
    /// buffered response (or the service's error, or a panic), and whether the handler
    /// committed before it answered.
    pub(crate) struct HandlerRun<Inner, ReqBody, ResBody>
    where
        Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        #[pin]
        step: Step<Inner, ReqBody, Inner::Future, ResBody>,
        lease: LeaseHandle,
        // The most of the response's body that is read.
        limit: usize,
        // The handler's own mark, read when it answered, before the layer's.
        committed: bool,
    }
}

impl<Inner, ReqBody, ResBody> HandlerRun<Inner, ReqBody, ResBody>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    /// `inner` called on `request` under `lease`, its response's body read up to `limit`.
    pub(crate) fn new(
        inner: Inner,
        request: Request<ReqBody>,
        lease: LeaseHandle,
        limit: usize,
    ) -> Self {
        Self {
            step: Step::Unstarted { inner, request },
            lease,
            limit,
            committed: false,
        }
    }
}

impl<Inner, ReqBody, ResBody> Future for HandlerRun<Inner, ReqBody, ResBody>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = bytes::Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Output = Output<ResBody, Inner::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Unstarted { .. } => {
                    let StepOwned::Unstarted { mut inner, request } =
                        this.step.as_mut().project_replace(Step::Done)
                    else {
                        return Poll::Pending;
                    };
                    match caught(|| inner.call(request)) {
                        Ok(call) => this.step.set(Step::Calling { call }),
                        Err(panic) => {
                            let panicked = Ok(BufferedResponse::Panicked(panic));
                            return Poll::Ready(Output::new(this.lease.is_committed(), panicked));
                        }
                    }
                }
                StepProj::Calling { call } => {
                    let called = match caught(|| call.poll(cx)) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(called)) => Ok(called),
                        Err(panic) => Err(panic),
                    };
                    *this.committed = this.lease.is_committed();
                    let response = match called {
                        Ok(Ok(response)) => response,
                        Ok(Err(error)) => {
                            this.step.set(Step::Done);
                            return Poll::Ready(Output::new(*this.committed, Err(error)));
                        }
                        Err(panic) => {
                            this.step.set(Step::Done);
                            let panicked = Ok(BufferedResponse::Panicked(panic));
                            return Poll::Ready(Output::new(*this.committed, panicked));
                        }
                    };
                    // The handler returned: whatever it did is done, even if its body, read
                    // next, is still streaming. A client gone from here on (under `Release`
                    // too) never frees the key for a second run.
                    this.lease.commit();
                    let body = BufferResponse::new(response, *this.limit);
                    this.step.set(Step::Reading { body });
                }
                StepProj::Reading { body } => {
                    let buffered = match caught(|| Pin::new(body).poll(cx)) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(buffered)) => buffered,
                        Err(panic) => BufferedResponse::Panicked(panic),
                    };
                    this.step.set(Step::Done);
                    return Poll::Ready(Output::new(*this.committed, Ok(buffered)));
                }
                // Polled again after it finished: there is nothing more to give.
                StepProj::Done => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use idem_core::attempt::Engine;
    use idem_core::{Key, Lease, OwnerToken, Ttl};
    use idem_memory::MemoryStore;

    use super::*;

    /// The handler's future holds one step's state at a time: an `async` block held the
    /// request for its whole life beside the call made from it (and the response beside the
    /// reading of its body), which with the engine's own copy made each new key's box too
    /// big for the allocator's per-thread cache.
    #[tokio::test]
    async fn a_handler_run_holds_one_steps_state_at_a_time() {
        let room = [7_u8; 2048];
        let mut inner = tower::service_fn(move |request: Request<Full<Bytes>>| async move {
            tokio::task::yield_now().await;
            std::hint::black_box(&room);
            Ok::<_, Infallible>(Response::new(request.into_body()))
        });
        let request = || Request::new(Full::new(Bytes::from_static(b"{}")));
        let call = inner.call(request());
        let (call_size, request_size) = (size_of_val(&call), size_of_val(&request()));
        drop(call);
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            Ttl::from_secs(30).expect("a TTL"),
        );
        let lease = Lease::new(
            Key::new("run", "k").expect("a key"),
            OwnerToken::random(),
            1,
        );
        let lease = engine.attempt(lease).lease_handle();
        let run = HandlerRun::new(inner, request(), lease, 1024);
        let size = size_of_val(&run);
        assert!(
            size < call_size + request_size,
            "{size} bytes, for a call of {call_size} and a request of {request_size}"
        );
        let output = run.await;
        let Ok(BufferedResponse::Complete(parts, body, None)) = output.result else {
            panic!("the response is read whole");
        };
        assert_eq!(
            (parts.status, &body[..]),
            (http::StatusCode::OK, &b"{}"[..])
        );
    }
}
