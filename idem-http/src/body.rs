//! Buffering request and response bodies under a limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use bytes::{Bytes, BytesMut};
use http::Response;
use http::response::Parts;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idem_core::BoxError;

/// Why a request body could not be buffered.
pub(crate) enum RequestBodyError {
    /// Over the limit: 413.
    TooLarge,
    /// The client's body failed mid-way: 400.
    Unreadable(BoxError),
}

/// Reads a whole request body, up to `limit` bytes.
pub(crate) async fn buffer_request<B>(body: B, limit: usize) -> Result<Bytes, RequestBodyError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(RequestBodyError::TooLarge),
        Err(error) => Err(RequestBodyError::Unreadable(error)),
    }
}

/// A response body read as far as the limit allows.
pub(crate) enum BufferedResponse {
    /// The whole body. Trailers, if any, are dropped.
    Complete(Parts, Bytes),
    /// Over the limit: the response, still streaming, with what was read put back in front.
    TooLarge(Response<Body>),
    /// The body failed mid-way.
    Unreadable(BoxError),
}

/// Reads a whole response body, up to `limit` bytes.
pub(crate) async fn buffer_response<B>(response: Response<B>, limit: usize) -> BufferedResponse
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let mut body = Body::new(body);
    let mut collected = BytesMut::new();
    loop {
        let data = match body.frame().await {
            None => return BufferedResponse::Complete(parts, collected.freeze()),
            Some(Err(error)) => return BufferedResponse::Unreadable(error.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
        };
        collected.extend_from_slice(&data);
        if collected.len() > limit {
            let rest = Prefixed {
                prefix: Some(collected.freeze()),
                rest: body,
            };
            return BufferedResponse::TooLarge(Response::from_parts(parts, Body::new(rest)));
        }
    }
}

/// A body that yields `prefix`, then the rest of a partly read body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(prefix));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(prefix));
        }
        hint
    }
}
