//! The service: claim, run once, store, replay.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use idem_core::{BoxError, Claim, ClaimRequest, Error, IdempotencyStore, InvalidInput, Key, Lease};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{BufferedResponse, RequestBodyError, buffer_request, buffer_response};
use crate::fingerprint::request_fingerprint;
use crate::guard::ReleaseOnDrop;
use crate::layer::{IDEMPOTENT_REPLAYED, Settings};
use crate::problem::{in_progress, problem, store_error};
use crate::record::StoredResponse;

/// The service made by [`IdempotencyLayer`](crate::IdempotencyLayer): wraps `Inner` so each
/// request with an `Idempotency-Key` runs it at most once and repeats get the first
/// response back.
pub struct IdempotencyService<S, Inner> {
    store: Arc<S>,
    settings: Arc<Settings>,
    inner: Inner,
}

impl<S, Inner> IdempotencyService<S, Inner> {
    pub(crate) fn new(store: Arc<S>, settings: Arc<Settings>, inner: Inner) -> Self {
        Self {
            store,
            settings,
            inner,
        }
    }
}

impl<S, Inner: Clone> Clone for IdempotencyService<S, Inner> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            settings: Arc::clone(&self.settings),
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, Inner: fmt::Debug> fmt::Debug for IdempotencyService<S, Inner> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .field("inner", &self.inner)
            .finish()
    }
}

/// The future of [`IdempotencyService`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, Inner, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, Inner>
where
    S: IdempotencyStore,
    Inner: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Inner::Error;
    type Future = ResponseFuture<Inner::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The instance polled ready goes with this request; `self` keeps a fresh clone.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let call = Call {
            shared: Shared {
                store: Arc::clone(&self.store),
                settings: Arc::clone(&self.settings),
            },
            inner,
        };
        Box::pin(call.handle(request))
    }
}

/// One request's journey through the layer.
struct Call<S, Inner> {
    shared: Shared<S>,
    inner: Inner,
}

/// The `Sync` half of a call, borrowed across awaits while the inner service (which
/// need not be `Sync`) is busy.
struct Shared<S> {
    store: Arc<S>,
    settings: Arc<Settings>,
}

/// What the key header says.
enum KeyHeader {
    Missing,
    Invalid(String),
    Misconfigured(Error),
    Valid(Key),
}

impl<S, Inner, ResBody> Call<S, Inner>
where
    S: IdempotencyStore,
    Inner: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async fn handle<ReqBody>(
        self,
        request: Request<ReqBody>,
    ) -> Result<Response<Body>, Inner::Error>
    where
        ReqBody: HttpBody<Data = Bytes> + Send + 'static,
        ReqBody::Error: Into<BoxError>,
    {
        if !self.shared.settings.methods.contains(request.method()) {
            return self.pass_through(request.map(Body::new)).await;
        }
        let (parts, body) = request.into_parts();
        let key = match self.shared.read_key(&parts) {
            KeyHeader::Valid(key) => key,
            KeyHeader::Missing if self.shared.settings.required => {
                let detail = format!(
                    "this request needs a {} header",
                    self.shared.settings.header
                );
                return Ok(problem(StatusCode::BAD_REQUEST, &detail));
            }
            KeyHeader::Missing => {
                return self
                    .pass_through(Request::from_parts(parts, Body::new(body)))
                    .await;
            }
            KeyHeader::Invalid(detail) => return Ok(problem(StatusCode::BAD_REQUEST, &detail)),
            KeyHeader::Misconfigured(error) => {
                tracing::error!(%error, "the idempotency key namespace is invalid");
                return Ok(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the idempotency key namespace is misconfigured",
                ));
            }
        };
        let body = match buffer_request(body, self.shared.settings.max_request_body).await {
            Ok(body) => body,
            Err(RequestBodyError::TooLarge) => {
                let detail = format!(
                    "the request body is over the {} byte limit for idempotent requests",
                    self.shared.settings.max_request_body
                );
                return Ok(problem(StatusCode::PAYLOAD_TOO_LARGE, &detail));
            }
            Err(RequestBodyError::Unreadable(error)) => {
                tracing::debug!(%error, "reading the request body failed");
                return Ok(problem(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ));
            }
        };
        let claim = ClaimRequest::new(key, self.shared.settings.lease_ttl)
            .with_fingerprint(request_fingerprint(&parts, &body));
        match self.shared.store.claim(&claim).await {
            Ok(Claim::Acquired(lease)) => {
                self.run(lease, Request::from_parts(parts, Body::from(body)))
                    .await
            }
            // The layer never writes failures, but a record is a record: replay it.
            Ok(Claim::Completed(stored) | Claim::Failed(stored)) => Ok(replay(&stored)),
            Ok(Claim::InProgress { retry_after }) => Ok(in_progress(retry_after)),
            Err(error) => Ok(store_error(&error)),
        }
    }

    async fn pass_through(
        mut self,
        request: Request<Body>,
    ) -> Result<Response<Body>, Inner::Error> {
        let response = self.inner.call(request).await?;
        Ok(response.map(Body::new))
    }

    /// Runs the inner service under the lease and decides the key's fate.
    async fn run(
        mut self,
        lease: Lease,
        request: Request<Body>,
    ) -> Result<Response<Body>, Inner::Error> {
        let guard = ReleaseOnDrop::new(Arc::clone(&self.shared.store), lease.clone());
        let limit = self.shared.settings.max_response_body;
        let inner = &mut self.inner;
        let produced = run_renewing(
            &*self.shared.store,
            &lease,
            self.shared.settings.lease_ttl,
            async move {
                let response = inner.call(request).await?;
                Ok(buffer_response(response, limit).await)
            },
        )
        .await;
        let answer = match produced {
            Err(error) => {
                self.shared
                    .release(&lease, "the inner service failed")
                    .await;
                Err(error)
            }
            Ok(BufferedResponse::Complete(parts, body)) => {
                Ok(self.shared.finish(&lease, parts, body).await)
            }
            Ok(BufferedResponse::TooLarge(response)) => {
                self.shared
                    .release(&lease, "the response is over the storable size")
                    .await;
                Ok(response)
            }
            Ok(BufferedResponse::Unreadable(error)) => {
                tracing::warn!(%error, "reading the response body failed");
                self.shared
                    .release(&lease, "the response body failed")
                    .await;
                Ok(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the response could not be produced",
                ))
            }
        };
        guard.disarm();
        answer
    }
}

impl<S: IdempotencyStore> Shared<S> {
    fn read_key(&self, parts: &Parts) -> KeyHeader {
        let mut values = parts.headers.get_all(&self.settings.header).iter();
        let Some(value) = values.next() else {
            return KeyHeader::Missing;
        };
        if values.next().is_some() {
            return KeyHeader::Invalid(format!("more than one {} header", self.settings.header));
        }
        let Ok(text) = value.to_str() else {
            return KeyHeader::Invalid(format!(
                "the {} header must be visible ASCII",
                self.settings.header
            ));
        };
        let id = unquote(text);
        let namespace = (self.settings.namespace)(parts);
        match Key::new(namespace, id) {
            Ok(key) => KeyHeader::Valid(key),
            Err(Error::InvalidInput(reason)) if is_namespace_error(&reason) => {
                KeyHeader::Misconfigured(Error::InvalidInput(reason))
            }
            Err(error) => {
                KeyHeader::Invalid(format!("invalid {} header: {error}", self.settings.header))
            }
        }
    }

    /// Stores a finished response (or releases the key after a 5xx) and returns it.
    async fn finish(
        &self,
        lease: &Lease,
        parts: http::response::Parts,
        body: Bytes,
    ) -> Response<Body> {
        if parts.status.is_server_error() && !self.settings.store_server_errors {
            self.release(lease, "server error responses are not stored")
                .await;
            return Response::from_parts(parts, Body::from(body));
        }
        let record = StoredResponse {
            status: parts.status,
            headers: self.selected_headers(&parts),
            body: body.clone(),
        };
        let stored = match record.encode() {
            Ok(encoded) => {
                self.store
                    .complete(lease, encoded, self.settings.retention)
                    .await
            }
            Err(reason) => Err(Error::corrupt(reason)),
        };
        match stored {
            Ok(()) => {}
            // Someone else holds the key now: it is theirs to finish or free.
            Err(Error::LeaseLost) => {
                tracing::warn!(
                    "the lease was lost while the handler ran; its response is not stored"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "storing the response failed; releasing the key");
                self.release(lease, "storing failed").await;
            }
        }
        // The client that ran the handler gets its response whatever the store said.
        Response::from_parts(parts, Body::from(body))
    }

    fn selected_headers(
        &self,
        parts: &http::response::Parts,
    ) -> Vec<(http::HeaderName, HeaderValue)> {
        let mut selected = Vec::new();
        for name in &self.settings.replay_headers {
            // A name configured twice is stored once.
            if selected.iter().any(|(seen, _)| seen == name) {
                continue;
            }
            for value in parts.headers.get_all(name) {
                selected.push((name.clone(), value.clone()));
            }
        }
        selected
    }

    async fn release(&self, lease: &Lease, why: &'static str) {
        tracing::debug!(why, "releasing the idempotency key");
        if let Err(error) = self.store.release(lease).await {
            tracing::warn!(%error, why, "releasing the idempotency key failed; it frees itself when the lease ends");
        }
    }
}

/// Replays a stored response, marked with `Idempotent-Replayed: true`.
fn replay(stored: &Bytes) -> Response<Body> {
    let record = match StoredResponse::decode(stored) {
        Ok(record) => record,
        Err(reason) => {
            tracing::error!(reason, "a stored response does not decode");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stored response is unreadable",
            );
        }
    };
    let mut response = Response::new(Body::from(record.body));
    *response.status_mut() = record.status;
    let headers = response.headers_mut();
    for (name, value) in record.headers {
        headers.append(name, value);
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The draft sends the key as a structured-field string (`"abc"`); bare tokens are
/// accepted too, and both spellings name the same key.
fn unquote(text: &str) -> &str {
    text.strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text)
}

fn is_namespace_error(reason: &InvalidInput) -> bool {
    matches!(
        reason,
        InvalidInput::Empty { field: "namespace" }
            | InvalidInput::TooLong {
                field: "namespace",
                ..
            }
            | InvalidInput::ControlCharacter {
                field: "namespace",
                ..
            }
    )
}

/// Runs `operation` while renewing its lease; renewal stops when it finishes or is
/// dropped, since both live in this one future.
async fn run_renewing<S: IdempotencyStore, Fut: Future>(
    store: &S,
    lease: &Lease,
    lease_ttl: idem_core::Ttl,
    operation: Fut,
) -> Fut::Output {
    tokio::select! {
        biased;
        output = operation => output,
        never = keep_renewed(store, lease, lease_ttl) => match never {},
    }
}

async fn keep_renewed<S: IdempotencyStore>(
    store: &S,
    lease: &Lease,
    lease_ttl: idem_core::Ttl,
) -> Infallible {
    // A third of the lease: two renewals may fail before it lapses.
    let every = lease_ttl.as_duration() / 3;
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.renew(lease, lease_ttl).await {
            Ok(()) => tracing::trace!(fencing = lease.fencing, "lease renewed"),
            Err(Error::LeaseLost) => {
                tracing::warn!(fencing = lease.fencing, "lease lost while the handler runs");
                return std::future::pending().await;
            }
            Err(error) => tracing::warn!(%error, "renewing the lease failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_undecodable_record_is_500() {
        let response = replay(&Bytes::from_static(b"not a record"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(IDEMPOTENT_REPLAYED).is_none());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(body.starts_with(b"{"), "a problem document");
    }

    #[test]
    fn quotes_are_optional() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
        assert_eq!(unquote("\""), "\"");
        assert_eq!(unquote("\"\""), "");
    }
}
