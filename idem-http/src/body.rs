//! Bodies: buffering requests and responses under a limit, and the layer's response body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use idem_core::BoxError;
use pin_project_lite::pin_project;

use crate::unwind::Panic;

pin_project! {
    /// The body of every response the layer returns: a buffered body (a stored or replayed
    /// response, or the layer's own answer), the inner service's body passed through
    /// untouched, or an oversized body streamed on after the part the layer read.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Full { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
        Inner { #[pin] body: B },
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        Self::full_with_trailers(data, None)
    }

    /// A buffered body followed by its trailers: a first response, or its replay.
    pub(crate) fn full_with_trailers(data: Bytes, trailers: Option<Box<HeaderMap>>) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix: Some(prefix),
                rest,
            },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "full",
            Kind::Inner { .. } => "inner",
            Kind::Prefixed { .. } => "prefixed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProjection::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
            KindProjection::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProjection::Prefixed { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                rest.as_mut().poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, trailers } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                if trailers.is_none() {
                    return SizeHint::with_exact(len);
                }
                // Not exact, as the handler's own body was not: HTTP/1 then sends it
                // chunked, the one framing trailers can follow.
                let mut hint = SizeHint::new();
                hint.set_lower(len);
                hint
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Prefixed { prefix, rest } => {
                let prefix = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(prefix));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(prefix));
                }
                hint
            }
        }
    }
}

/// Why a request body could not be buffered.
pub(crate) enum RequestBodyError {
    /// Over the layer's limit: 413.
    TooLarge,
    /// Ended by a limit in front of the layer (tower-http's `RequestBodyLimitLayer` on a
    /// chunked body, say): 413 too, as without the layer.
    OverOuterLimit,
    /// The client's body failed mid-way: 400.
    Unreadable(BoxError),
    /// The body ended with trailers, which the body rebuilt for the handler (from bytes)
    /// cannot carry: 400 rather than a handler that never sees them.
    Trailers,
}

/// Reads a whole request body, up to `limit` bytes.
///
/// A body that says it is longer than `limit` (its `Content-Length`) is refused before any
/// of it is read: polling it would have the server send `100 Continue` to a client that
/// asked first (`Expect: 100-continue`), so that it uploads a body only to be refused, and
/// a `Content-Length` larger than what is sent would keep the request waiting for bytes
/// that never come.
pub(crate) async fn buffer_request<B>(body: B, limit: usize) -> Result<Bytes, RequestBodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(RequestBodyError::TooLarge);
    }
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut read = Read::Nothing;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|error| match error {
            error if error.is::<LengthLimitError>() => RequestBodyError::TooLarge,
            error if is_length_limit(&*error) => RequestBodyError::OverOuterLimit,
            error => RequestBodyError::Unreadable(error),
        })?;
        match frame.into_data() {
            Ok(data) => read.push(data),
            Err(frame) if frame.is_trailers() => return Err(RequestBodyError::Trailers),
            // A frame of a kind neither data nor trailers (none exists yet) carries nothing
            // of the body.
            Err(_) => {}
        }
    }
    Ok(read.into_bytes())
}

/// What a request body's frames gave so far. Nearly every request body comes in one frame
/// (a `Content-Length` body hyper read at once, a test's `Body::from`): its bytes are kept
/// as they are, where collecting them (`http_body_util`'s `collect`) allocated a list of
/// frames for every request.
enum Read {
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Read {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Read::Nothing) {
            Read::Nothing => Read::One(data),
            Read::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Read::Many(many)
            }
            Read::Many(mut many) => {
                many.extend_from_slice(&data);
                Read::Many(many)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Read::Nothing => Bytes::new(),
            Read::One(data) => data,
            Read::Many(many) => many.freeze(),
        }
    }
}

/// Whether a length-limit error is anywhere in `error`'s chain: a limit in front of the
/// layer ends the body with one, boxed again by every body type on the way (axum's).
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<LengthLimitError>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// A response body read as far as the limit allows.
pub(crate) enum BufferedResponse<B> {
    /// The whole body, and its trailers if any: given back to the first client, and
    /// stored with the response.
    Complete(Parts, Bytes, Option<Box<HeaderMap>>),
    /// Over the limit: the response, still streaming, with what was read put back in
    /// front; and how many bytes were read.
    TooLarge(Response<ResponseBody<B>>, u64),
    /// The body of a response of this status failed mid-way.
    Unreadable(http::StatusCode, BoxError),
    /// The handler panicked: the panic, resumed once its key is settled.
    Panicked(Panic),
}

impl<B> BufferedResponse<B> {
    /// A response found over the limit once `read` was read: streamed on with `read` in
    /// front of the rest of `body`.
    fn too_large(parts: Parts, read: Bytes, body: Pin<Box<B>>) -> Self {
        let size = read.len() as u64;
        Self::TooLarge(
            Response::from_parts(parts, ResponseBody::prefixed(read, body)),
            size,
        )
    }
}

/// Reads a whole response body, up to `limit` bytes.
///
/// A future written by hand, not an `async fn`: it lives in the attempt's box, where an
/// `async fn` would keep the response it was given beside the parts and body it splits it
/// into.
pub(crate) struct BufferResponse<B> {
    /// The response's head and body; `None` once read.
    response: Option<(Parts, Pin<Box<B>>)>,
    collected: BytesMut,
    trailers: Option<Box<HeaderMap>>,
    limit: usize,
}

impl<B> BufferResponse<B> {
    pub(crate) fn new(response: Response<B>, limit: usize) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            response: Some((parts, Box::pin(body))),
            collected: BytesMut::new(),
            trailers: None,
            limit,
        }
    }
}

impl<B> Future for BufferResponse<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = BufferedResponse<B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BufferedResponse<B>> {
        let this = &mut *self;
        loop {
            // Taken out while polled, put back while more is to come.
            let Some((parts, mut body)) = this.response.take() else {
                // Polled again after it finished: there is nothing more to give.
                return Poll::Pending;
            };
            let Poll::Ready(frame) = body.as_mut().poll_frame(cx) else {
                this.response = Some((parts, body));
                return Poll::Pending;
            };
            let data = match frame {
                None => {
                    let collected = std::mem::take(&mut this.collected).freeze();
                    let trailers = this.trailers.take();
                    return Poll::Ready(BufferedResponse::Complete(parts, collected, trailers));
                }
                Some(Err(error)) => {
                    return Poll::Ready(BufferedResponse::Unreadable(parts.status, error.into()));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // The last frame: kept for the first client.
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok().map(Box::new);
                        this.response = Some((parts, body));
                        continue;
                    }
                },
            };
            if this.collected.is_empty() && body.is_end_stream() {
                // The common case, one frame: keep its bytes as they are.
                return Poll::Ready(if data.len() > this.limit {
                    BufferedResponse::too_large(parts, data, body)
                } else {
                    BufferedResponse::Complete(parts, data, None)
                });
            }
            this.collected.extend_from_slice(&data);
            if this.collected.len() > this.limit {
                let read = std::mem::take(&mut this.collected).freeze();
                return Poll::Ready(BufferedResponse::too_large(parts, read, body));
            }
            this.response = Some((parts, body));
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Empty;

    use super::*;

    /// The layer's response body is `Debug` whatever the inner service's body is, so a
    /// `Response` it returns can be logged with `{:?}`: it names which body it is, buffered
    /// or the inner service's own, and never dumps the bytes (up to `max_response_body`).
    #[test]
    fn a_response_body_debugs_as_its_kind_not_its_bytes() {
        let full = ResponseBody::<Empty<Bytes>>::full(Bytes::from_static(b"the receipt"));
        assert_eq!(format!("{full:?}"), r#"ResponseBody { kind: "full" }"#);
        let inner = ResponseBody::inner(Empty::<Bytes>::new());
        assert_eq!(format!("{inner:?}"), r#"ResponseBody { kind: "inner" }"#);
    }

    /// A body of the given frames, each a chunk of data or, for `None`, trailers.
    fn frames(chunks: &[Option<&'static [u8]>]) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                Ok::<_, BoxError>(match chunk {
                    Some(data) => Frame::data(Bytes::from_static(data)),
                    None => Frame::trailers(HeaderMap::new()),
                })
            })
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    fn buffered(chunks: &[Option<&'static [u8]>], limit: usize) -> Result<Bytes, &'static str> {
        let read = futures::executor::block_on(buffer_request(frames(chunks), limit));
        read.map_err(|refused| match refused {
            RequestBodyError::TooLarge => "too large",
            RequestBodyError::OverOuterLimit => "over an outer limit",
            RequestBodyError::Unreadable(_) => "unreadable",
            RequestBodyError::Trailers => "trailers",
        })
    }

    /// A body in one frame is handed on as the very bytes it came in (no copy); one in
    /// several is their concatenation, in order; the limit counts every frame; trailers,
    /// which the body rebuilt for the handler cannot carry, refuse the request.
    #[test]
    fn request_bodies_are_read_whole_up_to_the_limit() {
        let one: &'static [u8] = b"{\"cents\":4999}";
        let read = buffered(&[Some(one)], 64).expect("within the limit");
        assert_eq!(read.as_ptr(), one.as_ptr(), "one frame is kept, not copied");
        assert_eq!(
            buffered(&[Some(b"ab"), Some(b""), Some(b"cd"), Some(b"e")], 5),
            Ok(Bytes::from_static(b"abcde"))
        );
        assert_eq!(buffered(&[], 5), Ok(Bytes::new()));
        assert_eq!(buffered(&[Some(b"abc"), Some(b"def")], 5), Err("too large"));
        assert_eq!(buffered(&[Some(b"abcdef")], 5), Err("too large"));
        assert_eq!(buffered(&[Some(b"ab"), None], 5), Err("trailers"));
        assert_eq!(
            buffered(&[Some(b"ab"), Some(b"cd"), None], 5),
            Err("trailers")
        );
    }
}
