//! The service: claim, run once, store, replay.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use idem_core::attempt::{AttemptError, Engine};
use idem_core::{
    BoxError, Claim, Error, IdempotencyStore, InputField, InvalidInput, Key, Lease, MAX_KEY_LEN,
};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{BufferedResponse, RequestBodyError, ResponseBody, buffer_request};
use crate::estimate::RunTimes;
use crate::fingerprint::request_fingerprint;
use crate::handler_run::HandlerRun;
use crate::header::IDEMPOTENT_REPLAYED;
use crate::key_header::{KeyHeader, read_key};
use crate::policy::OversizedResponse;
use crate::problem::{self, in_progress, problem, store_error};
use crate::record::StoredOutcome;
use crate::scope::route;
use crate::settings::Settings;
use crate::settle::{Output, SettleResponse};

/// The service made by [`IdempotencyLayer`](crate::IdempotencyLayer): wraps `Inner` so each
/// request with an `Idempotency-Key` runs it at most once and repeats get the first
/// response back.
pub struct IdempotencyService<S, Inner> {
    shared: Shared<S>,
    inner: Inner,
}

/// What every request of a service shares: `Sync`, so a request's future can borrow it
/// across awaits while the inner service (which need not be `Sync`) is busy.
struct Shared<S> {
    engine: Engine<S>,
    settings: Arc<Settings>,
    runs: Arc<RunTimes>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            settings: Arc::clone(&self.settings),
            runs: Arc::clone(&self.runs),
        }
    }
}

impl<S, Inner> IdempotencyService<S, Inner> {
    /// Made by [`IdempotencyLayer`](crate::IdempotencyLayer), from its parts (taking them, not
    /// the layer, keeps the service module independent of the layer's).
    pub(crate) fn new(
        engine: Engine<S>,
        settings: Arc<Settings>,
        runs: Arc<RunTimes>,
        inner: Inner,
    ) -> Self {
        Self {
            shared: Shared {
                engine,
                settings,
                runs,
            },
            inner,
        }
    }
}

impl<S, Inner: Clone> Clone for IdempotencyService<S, Inner> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, Inner: fmt::Debug> fmt::Debug for IdempotencyService<S, Inner> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("engine", &self.shared.engine)
            .field("settings", &self.shared.settings)
            .field("inner", &self.inner)
            .finish()
    }
}

thread_local! {
    /// Where a request's namespace is built before it is copied into its [`Key`]: a request
    /// then allocates for its key alone, not for the namespace too.
    static NAMESPACE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The most the [`NAMESPACE`] buffer keeps between requests: longer than any valid
/// namespace.
const NAMESPACE_KEPT: usize = 2 * MAX_KEY_LEN;

/// The future of [`IdempotencyService`].
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

impl<S, Inner, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, Inner>
where
    S: IdempotencyStore,
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Inner::Error;
    type Future = ResponseFuture<ResBody, Inner::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The instance polled ready goes with this request; `self` keeps a fresh clone.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        // What needs no await is decided here, so each path's future holds only its own
        // state: a request passed on is the inner service's future, a refusal a response.
        match self.shared.admit(request) {
            Admission::PassOn(request) => Box::pin(pass_through(inner, request)),
            Admission::Refused(response) => Box::pin(std::future::ready(Ok(own(response)))),
            Admission::Keyed(parts, body, key) => {
                Box::pin(self.shared.clone().keyed(inner, parts, body, key))
            }
        }
    }
}

/// The inner service as the layer runs it: on a task of its own, to the end.
trait Handler<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Send
    + 'static
{
}

impl<T, ReqBody, ResBody> Handler<ReqBody, ResBody> for T
where
    T: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Send + 'static,
{
}

/// A request or response body the layer buffers: `Bytes` chunks, errors that box, and free
/// to move to a task.
trait BytesBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> BytesBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// The layer's own answer, as a response of the service.
fn own<B>(response: Response<Bytes>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::full)
}

/// What the handler's attempt gives: the buffered response (or the handler's error), stored
/// or not.
type Ran<B, E> = Result<Output<B, E>, AttemptError<Output<B, E>>>;

/// What a request is, before anything is awaited.
enum Admission<ReqBody> {
    /// Not the layer's: a method it leaves alone, or no key where none is required.
    PassOn(Request<ReqBody>),
    /// The layer's own answer: a key missing or invalid, a request it cannot scope.
    Refused(Response<Bytes>),
    /// A request under this key.
    Keyed(Parts, ReqBody, Key),
}

impl<S: IdempotencyStore> Shared<S> {
    /// Reads the request's method and key.
    fn admit<ReqBody>(&self, request: Request<ReqBody>) -> Admission<ReqBody> {
        let options = &self.settings.options;
        if !options.methods.contains(request.method()) {
            return Admission::PassOn(request);
        }
        let (parts, body) = request.into_parts();
        let id = match read_key(&parts.headers, &options.header, options.key_syntax) {
            KeyHeader::Valid(id) => id,
            KeyHeader::Missing if options.required => {
                let detail = format!("this request needs an {} header", options.header);
                return Admission::Refused(problem(
                    StatusCode::BAD_REQUEST,
                    problem::MISSING_KEY,
                    &detail,
                ));
            }
            KeyHeader::Missing => {
                return Admission::PassOn(Request::from_parts(parts, body));
            }
            KeyHeader::Invalid(detail) => {
                return Admission::Refused(problem(
                    StatusCode::BAD_REQUEST,
                    problem::INVALID_KEY,
                    &detail,
                ));
            }
        };
        match self.key(&parts, &id) {
            Ok(key) => Admission::Keyed(parts, body, key),
            Err(refusal) => Admission::Refused(*refusal),
        }
    }

    /// A request under `key`: claims it, then runs the inner service or answers for it.
    ///
    /// Not an `async fn`, whose arguments would be kept twice in its future: the request's
    /// future is one box per request, and under glibc's per-thread cache (1,032 bytes) its
    /// allocation takes the fast path.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    fn keyed<Inner, ReqBody, ResBody>(
        self,
        inner: Inner,
        parts: Parts,
        body: ReqBody,
        key: Key,
    ) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, Inner::Error>> + Send + 'static
    where
        Inner: Handler<ReqBody, ResBody>,
        ReqBody: BytesBody + From<Bytes>,
        ResBody: BytesBody,
    {
        async move {
            let options = &self.settings.options;
            let body = match buffer_request(body, options.max_request_body).await {
                Ok(body) => body,
                Err(refusal) => return Ok(own(self.request_body_refusal(refusal))),
            };
            let fingerprint = request_fingerprint(&parts, &body);
            match self
                .engine
                .claim_fresh(key, Some(fingerprint), options.wait)
                .await
            {
                Ok(Claim::Acquired(lease)) => {
                    let request = Request::from_parts(parts, ReqBody::from(body));
                    self.run(inner, lease, request).await
                }
                // The layer never writes failures, but a record is a record: replay it.
                Ok(Claim::Completed(stored) | Claim::Failed(stored)) => Ok(self.replay(&stored)),
                Ok(Claim::InProgress { retry_after }) => {
                    let usual = self
                        .runs
                        .method_route(&parts.method, route(&parts.extensions, &parts.uri));
                    Ok(own(in_progress(usual.retry_after(retry_after))))
                }
                Err(error) => Ok(own(store_error(&error))),
            }
        }
    }

    /// The request's key: its scope, its route and the client's key.
    /// The refusal is boxed: it is the rare path, and keeps the result small.
    fn key(&self, parts: &Parts, id: &str) -> Result<Key, Box<Response<Bytes>>> {
        NAMESPACE.with_borrow_mut(|namespace| {
            let key = self.key_in(namespace, parts, id);
            // A principal of any length may pass through: the buffer keeps no more than a
            // namespace's worth of memory (and nothing of this request's).
            namespace.clear();
            namespace.shrink_to(NAMESPACE_KEPT);
            key
        })
    }

    /// [`key`](Self::key), with `namespace` to build the namespace in.
    fn key_in(
        &self,
        namespace: &mut String,
        parts: &Parts,
        id: &str,
    ) -> Result<Key, Box<Response<Bytes>>> {
        let Ok(()) = self.settings.scope.namespace(parts, namespace) else {
            tracing::error!(
                "a request reached the idempotency layer without the principal its scope \
                 reads: run the auth layer first"
            );
            return Err(Box::new(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                problem::NO_SCOPE,
                "the request has no principal to scope its Idempotency-Key",
            )));
        };
        Key::new(&namespace[..], id).map_err(|error| {
            Box::new(match error {
                Error::InvalidInput(reason) if is_namespace_error(&reason) => {
                    tracing::error!(%reason, "the idempotency scope makes an invalid namespace");
                    problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        problem::NO_SCOPE,
                        "the request's principal is not a valid idempotency scope",
                    )
                }
                error => problem(
                    StatusCode::BAD_REQUEST,
                    problem::INVALID_KEY,
                    &format!("invalid {} header: {error}", self.settings.options.header),
                ),
            })
        })
    }

    fn request_body_refusal(&self, refusal: RequestBodyError) -> Response<Bytes> {
        match refusal {
            RequestBodyError::TooLarge => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                problem::REQUEST_TOO_LARGE,
                &format!(
                    "the request body is over the {} byte limit for idempotent requests",
                    self.settings.options.max_request_body
                ),
            ),
            RequestBodyError::OverOuterLimit => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                problem::REQUEST_TOO_LARGE,
                "the request body is over the server's size limit",
            ),
            RequestBodyError::Trailers => problem(
                StatusCode::BAD_REQUEST,
                problem::REQUEST_TRAILERS,
                "an idempotent request cannot carry trailers; send them as headers",
            ),
            RequestBodyError::Unreadable(error) => {
                tracing::debug!(%error, "reading the request body failed");
                problem(
                    StatusCode::BAD_REQUEST,
                    problem::REQUEST_UNREADABLE,
                    "the request body could not be read",
                )
            }
        }
    }

    /// Runs the inner service under the lease, through the engine: the response is read
    /// and its outcome written on a task of its own (under the default
    /// [`CancelPolicy::Detach`](idem_core::attempt::CancelPolicy::Detach)), so a client that
    /// disconnects mid-handler changes nothing: the handler finishes, its response is
    /// stored, and a retry gets 409 meanwhile and the replay after.
    ///
    /// Not an `async fn`: the attempt's future is built (in its box) here, so the request's
    /// future holds a pointer to it rather than the handler and the attempt inline.
    fn run<Inner, ReqBody, ResBody>(
        &self,
        inner: Inner,
        lease: Lease,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, Inner::Error>> + Send + '_
    where
        Inner: Handler<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: BytesBody,
    {
        let usual = self
            .runs
            .method_route(request.method(), route(request.extensions(), request.uri()));
        let limit = self.settings.options.max_response_body;
        let started = Instant::now();
        let attempt = self.engine.attempt(lease);
        let lease = attempt.lease_handle();
        // The handler can mark its point of no return with the lease's `commit`: from then
        // on nothing it answers, nor an inner service dropping it, frees the key.
        let mut request = request;
        request.extensions_mut().insert(lease.clone());
        // A panic, in the handler or its body, is caught here, where the output settles the
        // key, and resumed by `respond` once it is settled.
        let handler = HandlerRun::new(inner, request, lease, limit);
        // Only under `Refuse` does the first answer depend on whether the store took the
        // record.
        let store_refused = (self.settings.options.oversized == OversizedResponse::Refuse)
            .then(|| Arc::new(AtomicBool::new(false)));
        let settle = SettleResponse::new(Arc::clone(&self.settings), store_refused.clone());
        let ran = attempt.run(handler, settle);
        async move {
            let ran = ran.await;
            usual.record(started.elapsed());
            let store_refused = store_refused.is_some_and(|flag| flag.load(Ordering::Relaxed));
            self.respond(ran, store_refused)
        }
    }

    /// The response to a request whose handler ran under the lease (or did not, see
    /// [`run`](Self::run)).
    ///
    /// `store_refused`: the store refused the record as too large and the marker was
    /// stored instead, so under [`OversizedResponse::Refuse`] the first client gets the
    /// retries' problem.
    fn respond<ResBody, E>(
        &self,
        ran: Ran<ResBody, E>,
        store_refused: bool,
    ) -> Result<Response<ResponseBody<ResBody>>, E> {
        let output = match ran {
            Ok(output) => output,
            // The handler ran; its client gets the response even though no retry can.
            Err(AttemptError::NotRecorded { output, error }) => {
                tracing::error!(%error, "the handler ran but its response was not stored");
                output
            }
            Err(error) => {
                tracing::error!(%error, "the attempt ended without the handler's response");
                return Ok(own(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    problem::RESPONSE_FAILED,
                    "the request was interrupted",
                )));
            }
        };
        let committed = output.committed;
        match output.result? {
            BufferedResponse::Complete(parts, ..) if store_refused => {
                Ok(own(self.not_stored(parts.status)))
            }
            BufferedResponse::Complete(parts, body, trailers) => Ok(Response::from_parts(
                parts,
                ResponseBody::full_with_trailers(body, trailers),
            )),
            // A status the policy releases stored no marker: the answer goes to its client.
            BufferedResponse::TooLarge(response, _)
                if self.settings.releases(response.status(), committed) =>
            {
                Ok(response)
            }
            BufferedResponse::TooLarge(response, _) => match self.settings.options.oversized {
                OversizedResponse::PassOn => Ok(response),
                OversizedResponse::Refuse => Ok(own(self.not_stored(response.status()))),
            },
            BufferedResponse::Unreadable(status, error) => {
                tracing::warn!(%error, %status, "reading the response body failed");
                Ok(own(self.body_failed(status, committed)))
            }
            // Its key settled, the panic goes on to the caller, as without the layer.
            BufferedResponse::Panicked(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Replays a stored outcome, marked with `Idempotent-Replayed: true`: its body ends with
    /// the trailers the first response's did.
    fn replay<B>(&self, stored: &Bytes) -> Response<ResponseBody<B>> {
        let (mut response, trailers) = match StoredOutcome::decode(stored) {
            Ok(StoredOutcome::Response(record)) => record.into_response(),
            Ok(StoredOutcome::TooLarge { status, .. }) => (self.not_stored(status), None),
            // A marker is stored only for a key kept from a second run.
            Ok(StoredOutcome::BodyFailed { status }) => (self.body_failed(status, true), None),
            Err(reason) => return own(unreadable(reason)),
        };
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        response.map(|body| ResponseBody::full_with_trailers(body, trailers))
    }

    /// The answer to a request whose handler answered `status` with a body that failed
    /// mid-way: its first client and, unless the status freed the key, every retry.
    /// `committed`: the handler committed before it answered, so the key was kept.
    fn body_failed(&self, status: StatusCode, committed: bool) -> Response<Bytes> {
        let detail = if self.settings.releases(status, committed) {
            "the response could not be produced"
        } else {
            "the first request with this Idempotency-Key ran, but its response failed before \
             it was complete and cannot be replayed; it will not run again with this key"
        };
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            problem::RESPONSE_FAILED,
            detail,
        )
    }

    fn not_stored(&self, status: StatusCode) -> Response<Bytes> {
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            problem::RESPONSE_NOT_STORED,
            &format!(
                "the first request with this Idempotency-Key ran and answered {}, but its \
                 response was over the {} byte storable size and cannot be replayed; it will \
                 not run again with this key",
                status.as_u16(),
                self.settings.options.max_response_body
            ),
        )
    }
}

async fn pass_through<Inner, ReqBody, ResBody>(
    mut inner: Inner,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, Inner::Error>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = inner.call(request).await?;
    Ok(response.map(ResponseBody::inner))
}

fn is_namespace_error(reason: &InvalidInput) -> bool {
    matches!(
        reason,
        InvalidInput::Empty {
            field: InputField::Namespace
        } | InvalidInput::TooLong {
            field: InputField::Namespace,
            ..
        } | InvalidInput::ControlCharacter {
            field: InputField::Namespace,
            ..
        }
    )
}

/// The answer to a stored response that does not decode: the store holds bytes this crate
/// did not write.
fn unreadable(reason: &'static str) -> Response<Bytes> {
    tracing::error!(reason, "a stored response does not decode");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        problem::STORE_FAILED,
        "the stored response is unreadable",
    )
}

#[cfg(test)]
mod tests {
    use idem_memory::MemoryStore;
    use tower_layer::Layer;

    use super::*;
    use crate::{IdempotencyLayer, KeyScope};

    #[derive(Clone)]
    struct Principal(String);

    fn parts(principal: &str) -> Parts {
        let mut request = Request::post("/orders").body(()).expect("a valid request");
        request
            .extensions_mut()
            .insert(Principal(principal.to_owned()));
        request.into_parts().0
    }

    /// A keyed request's future, the one box every request of the layer allocates, fits
    /// glibc's per-thread cache (chunks up to 1,032 bytes): past it, every request's box took
    /// the allocator's slow paths, 8% of a replay's time at 64 connections. Built by `call`
    /// to hold a pointer to the handler's attempt, not the attempt, and no timer.
    ///
    /// The inner service is boxed, as axum's `Route` is (the service a layer on a `Router`
    /// wraps): its 16 bytes are in the future too, where a closure's are none. With a bare
    /// closure this held at 1,032 bytes while every axum request's box took 1,048.
    #[tokio::test]
    async fn a_keyed_requests_future_fits_the_allocators_per_thread_cache() {
        let layer = IdempotencyLayer::builder(MemoryStore::new(), KeyScope::global())
            .build()
            .expect("a valid layer");
        let handler = tower::service_fn(|request: Request<axum::body::Body>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(request.into_body()))
        });
        let mut service = layer.layer(tower::util::BoxCloneSyncService::new(handler));
        let request = Request::post("/orders")
            .header("idempotency-key", "\"k1\"")
            .body(axum::body::Body::from("{}"))
            .expect("a valid request");
        let future = service.call(request);
        let size = std::mem::size_of_val(&*future);
        assert!(size <= 1_032, "the request's future takes {size} bytes");
        let response = future.await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// The per-thread namespace buffer: reused from request to request, never holding on to
    /// what an oversized principal made it grow to.
    #[test]
    fn the_namespace_buffer_keeps_no_more_than_a_namespace() {
        let layer = IdempotencyLayer::builder(
            MemoryStore::new(),
            KeyScope::principal(|principal: &Principal| principal.0.clone()),
        )
        .build()
        .expect("a valid layer");
        let service = layer.layer(());
        let key = service
            .shared
            .key(&parts("alice"), "k1")
            .expect("a valid key");
        assert_eq!((key.namespace(), key.id()), ("5:alice POST /orders", "k1"));
        let refused = service.shared.key(&parts(&"p".repeat(100_000)), "k1");
        assert_eq!(
            refused
                .map(|key| key.namespace().len())
                .map_err(|r| r.status()),
            Err(StatusCode::INTERNAL_SERVER_ERROR),
            "a namespace over the limit is the scope's fault"
        );
        NAMESPACE.with_borrow(|namespace| assert!(namespace.capacity() <= NAMESPACE_KEPT));
        let key = service
            .shared
            .key(&parts("bob"), "k2")
            .expect("a valid key");
        assert_eq!((key.namespace(), key.id()), ("3:bob POST /orders", "k2"));
        // What a valid namespace took stays for the next request.
        NAMESPACE.with_borrow(|namespace| assert!(namespace.capacity() >= key.namespace().len()));
    }
}
