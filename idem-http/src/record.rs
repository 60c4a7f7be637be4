//! The stored form of a response: status, selected headers, body and trailers, in a small
//! binary layout, so binary bodies are kept byte for byte without base64 or JSON escaping;
//! or the marker left by a response too large to store.
//!
//! ```text
//! b"IH1"  status:u16  headers                  body   (a response without trailers)
//! b"IH2"  status:u16  headers  trailers        body   (a response that ended with trailers)
//! b"IHM"  status:u16  size:u64          (a response of `size` bytes or more, not stored)
//! b"IHF"  status:u16                    (a response whose body failed mid-way)
//!
//! headers, trailers:  count:u16  { name_len:u16 name  value_len:u32 value }*
//! ```
//! All integers are big-endian; the body is everything after the last header (or trailer).
//! A response without trailers keeps the first layout, so records written before trailers
//! were stored read as they did.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

/// Marks the layout's version: a record of another version is refused, not misread.
const MAGIC: &[u8; 3] = b"IH1";

/// Marks a response record followed by the trailers its body ended with.
const WITH_TRAILERS: &[u8; 3] = b"IH2";

/// Marks a response that ran but was too large to store.
const MARKER: &[u8; 3] = b"IHM";

/// Marks a response that ran but whose body failed before it ended.
const FAILED: &[u8; 3] = b"IHF";

/// What a key's record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredOutcome {
    /// The response, to replay.
    Response(StoredResponse),
    /// The handler ran and answered `status`, but its body was over the storable size.
    TooLarge {
        /// The handler's status.
        status: StatusCode,
        /// How many body bytes had been read when the limit was passed.
        size: u64,
    },
    /// The handler ran and answered `status`, but its body failed before it ended.
    BodyFailed {
        /// The handler's status.
        status: StatusCode,
    },
}

impl StoredOutcome {
    /// Decodes either layout.
    pub(crate) fn decode(stored: &Bytes) -> Result<Self, &'static str> {
        if stored.starts_with(MARKER) {
            let mut reader = Reader {
                stored,
                at: MARKER.len(),
            };
            let status = StatusCode::from_u16(reader.u16()?).map_err(|_| "invalid status code")?;
            let size = reader.u64()?;
            return Ok(Self::TooLarge { status, size });
        }
        if stored.starts_with(FAILED) {
            let mut reader = Reader {
                stored,
                at: FAILED.len(),
            };
            let status = StatusCode::from_u16(reader.u16()?).map_err(|_| "invalid status code")?;
            return Ok(Self::BodyFailed { status });
        }
        StoredResponse::decode(stored).map(Self::Response)
    }

    /// The marker for a response of `status` that was over the storable size.
    pub(crate) fn encode_too_large(status: StatusCode, size: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(MARKER.len() + 10);
        out.put_slice(MARKER);
        out.put_u16(status.as_u16());
        out.put_u64(size);
        out.freeze()
    }

    /// The marker for a response of `status` whose body failed mid-way.
    pub(crate) fn encode_body_failed(status: StatusCode) -> Bytes {
        let mut out = BytesMut::with_capacity(FAILED.len() + 2);
        out.put_slice(FAILED);
        out.put_u16(status.as_u16());
        out.freeze()
    }
}

/// A response as stored and replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    /// Decoded straight into the map the replayed response carries, with room for the two
    /// a replay adds (`Idempotent-Replayed`, and `Content-Length` when the server sends it).
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The trailers the first response's body ended with, replayed after the body; `None`
    /// when it had none (an empty trailers frame counts as none).
    pub(crate) trailers: Option<Box<HeaderMap>>,
}

impl StoredResponse {
    /// Encodes the record. Fails only when a header or the header count does not fit its
    /// length field, which no real response reaches.
    pub(crate) fn encode(&self) -> Result<Bytes, &'static str> {
        encode_response(
            self.status,
            || self.headers.iter(),
            self.trailers.as_deref(),
            &self.body,
        )
    }

    /// The response to replay, and the trailers to send after its body.
    pub(crate) fn into_response(self) -> (Response<Bytes>, Option<Box<HeaderMap>>) {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        (response, self.trailers)
    }

    /// Decodes a record, refusing anything this crate did not write.
    pub(crate) fn decode(stored: &Bytes) -> Result<Self, &'static str> {
        let mut reader = Reader { stored, at: 0 };
        let magic = reader.take(MAGIC.len())?;
        if magic != MAGIC && magic != WITH_TRAILERS {
            return Err("not an idem-http response record");
        }
        let status = StatusCode::from_u16(reader.u16()?).map_err(|_| "invalid status code")?;
        let headers = reader.header_section(2)?;
        let trailers = if magic == WITH_TRAILERS {
            let trailers = reader.header_section(0)?;
            // The writer never writes an empty section: one here has two readings.
            if trailers.is_empty() {
                return Err("an empty trailers section");
            }
            Some(Box::new(trailers))
        } else {
            None
        };
        Ok(Self {
            status,
            headers,
            body: stored.slice(reader.at..),
            trailers,
        })
    }
}

/// Encodes a response record of `status`, the headers `headers()` yields (called twice: once
/// to size the record, once to write it), the `trailers` its body ended with, and `body`,
/// without collecting the headers first. Without trailers (or with an empty map) the record
/// is in the first layout, byte for byte as before trailers were stored. Fails only when a
/// header or the header count does not fit its length field, which no real response reaches.
pub(crate) fn encode_response<'a, I>(
    status: StatusCode,
    headers: impl Fn() -> I,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<Bytes, &'static str>
where
    I: Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
{
    let trailers = trailers.filter(|trailers| !trailers.is_empty());
    let (count, headers_len) = section_size(headers());
    let (trailer_count, trailers_len) = trailers.map_or((0, 0), |t| section_size(t.iter()));
    let trailers_len = if trailers.is_some() {
        2 + trailers_len
    } else {
        0
    };
    let mut out = BytesMut::with_capacity(7 + headers_len + trailers_len + body.len());
    out.put_slice(if trailers.is_some() {
        WITH_TRAILERS
    } else {
        MAGIC
    });
    out.put_u16(status.as_u16());
    put_section(&mut out, count, headers())?;
    if let Some(trailers) = trailers {
        put_section(&mut out, trailer_count, trailers.iter())?;
    }
    out.put_slice(body);
    Ok(out.freeze())
}

/// How many fields a section has, and how many bytes they take but for its count.
fn section_size<'a>(
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> (usize, usize) {
    fields.fold((0, 0), |(count, len), (name, value)| {
        (count + 1, len + 6 + name.as_str().len() + value.len())
    })
}

/// Writes a section of `count` fields: its count, then each name and value.
fn put_section<'a>(
    out: &mut BytesMut,
    count: usize,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Result<(), &'static str> {
    let count = u16::try_from(count).map_err(|_| "too many headers")?;
    out.put_u16(count);
    for (name, value) in fields.take(usize::from(count)) {
        let name_len = u16::try_from(name.as_str().len()).map_err(|_| "header name too long")?;
        let value_len = u32::try_from(value.len()).map_err(|_| "header value too long")?;
        out.put_u16(name_len);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value_len);
        out.put_slice(value.as_bytes());
    }
    Ok(())
}

/// A bounds-checked cursor over stored bytes.
struct Reader<'a> {
    stored: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(len).ok_or("truncated record")?;
        let slice = self.stored.get(self.at..end).ok_or("truncated record")?;
        self.at = end;
        Ok(slice)
    }

    /// Like [`take`](Self::take), as a slice of the stored `Bytes` sharing their buffer.
    fn take_shared(&mut self, len: usize) -> Result<Bytes, &'static str> {
        let start = self.at;
        self.take(len)?;
        Ok(self.stored.slice(start..self.at))
    }

    /// A section of headers (or trailers), in a map with room for `spare` more.
    fn header_section(&mut self, spare: usize) -> Result<HeaderMap, &'static str> {
        let count = self.u16()?;
        // Fails for more headers than a `HeaderMap` holds (2^15): only a record this crate
        // did not write has them, and `HeaderMap::append` would panic on them.
        let mut headers = HeaderMap::try_with_capacity(usize::from(count) + spare)
            .map_err(|_| "more headers than a response holds")?;
        for _ in 0..count {
            let name_len = usize::from(self.u16()?);
            let name =
                HeaderName::from_bytes(self.take(name_len)?).map_err(|_| "invalid header name")?;
            let value_len = usize::try_from(self.u32()?).map_err(|_| "header too long")?;
            // A slice of the stored bytes, not a copy: a replay allocates nothing per header.
            let value = HeaderValue::from_maybe_shared(self.take_shared(value_len)?)
                .map_err(|_| "invalid header value")?;
            headers
                .try_append(name, value)
                .map_err(|_| "more headers than a response holds")?;
        }
        Ok(headers)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| "truncated record")?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredResponse {
        StoredResponse {
            status: StatusCode::CREATED,
            headers: [
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    http::header::LOCATION,
                    HeaderValue::from_static("/orders/7"),
                ),
                (http::header::LOCATION, HeaderValue::from_static("/second")),
            ]
            .into_iter()
            .collect(),
            body: Bytes::from_static(&[0, 159, 146, 150, 255, b'I', b'H']),
            trailers: None,
        }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let record = sample();
        let encoded = record.encode().expect("encodes");
        assert_eq!(StoredResponse::decode(&encoded), Ok(record));
    }

    #[test]
    fn trailers_round_trip_and_a_record_without_them_keeps_the_first_layout() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.append("checksum", HeaderValue::from_static("sha256=ab"));
        let record = StoredResponse {
            trailers: Some(Box::new(trailers)),
            ..sample()
        };
        let encoded = record.encode().expect("encodes");
        assert!(encoded.starts_with(WITH_TRAILERS));
        assert!(encoded.ends_with(&sample().body), "the body stays last");
        assert_eq!(StoredResponse::decode(&encoded), Ok(record));
        // No trailers, or an empty trailers frame: the first layout, as before.
        let plain = sample().encode().expect("encodes");
        assert!(plain.starts_with(MAGIC));
        let empty = StoredResponse {
            trailers: Some(Box::default()),
            ..sample()
        };
        assert_eq!(empty.encode(), Ok(plain));
        // A trailers section the writer never writes is refused, not read two ways.
        let mut raw = BytesMut::new();
        raw.put_slice(WITH_TRAILERS);
        raw.put_u16(200);
        raw.put_u16(0);
        raw.put_u16(0);
        assert!(StoredResponse::decode(&raw.freeze()).is_err());
    }

    #[test]
    fn empty_body_and_no_headers_round_trip() {
        let record = StoredResponse {
            status: StatusCode::NO_CONTENT,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trailers: None,
        };
        let encoded = record.encode().expect("encodes");
        assert_eq!(StoredResponse::decode(&encoded), Ok(record));
    }

    #[test]
    fn the_too_large_marker_round_trips_and_is_no_response() {
        let marker = StoredOutcome::encode_too_large(StatusCode::CREATED, 1 << 40);
        assert_eq!(
            StoredOutcome::decode(&marker),
            Ok(StoredOutcome::TooLarge {
                status: StatusCode::CREATED,
                size: 1 << 40
            })
        );
        assert!(StoredResponse::decode(&marker).is_err());
        assert!(StoredOutcome::decode(&marker.slice(..8)).is_err());
        let response = sample().encode().expect("encodes");
        assert_eq!(
            StoredOutcome::decode(&response),
            Ok(StoredOutcome::Response(sample()))
        );
    }

    #[test]
    fn the_body_failed_marker_round_trips_and_is_no_response() {
        let marker = StoredOutcome::encode_body_failed(StatusCode::CREATED);
        assert_eq!(
            StoredOutcome::decode(&marker),
            Ok(StoredOutcome::BodyFailed {
                status: StatusCode::CREATED
            })
        );
        assert!(StoredResponse::decode(&marker).is_err());
        assert!(StoredOutcome::decode(&marker.slice(..4)).is_err());
    }

    #[test]
    fn refuses_foreign_and_truncated_bytes() {
        assert!(StoredResponse::decode(&Bytes::from_static(b"{\"ok\":1}")).is_err());
        assert!(StoredResponse::decode(&Bytes::new()).is_err());
        let encoded = sample().encode().expect("encodes");
        // Cut inside the headers: the declared lengths no longer fit.
        assert!(StoredResponse::decode(&encoded.slice(..12)).is_err());
        let mut bad_status = encoded.to_vec();
        bad_status[3..5].copy_from_slice(&42u16.to_be_bytes());
        assert!(StoredResponse::decode(&Bytes::from(bad_status)).is_err());
    }

    #[test]
    fn a_record_with_more_headers_than_a_response_holds_is_refused_not_a_panic() {
        // 2^15 + 1 distinct header names: the layout allows 65535, a `HeaderMap` 2^15.
        let count: u16 = (1 << 15) + 1;
        let mut raw = BytesMut::new();
        raw.put_slice(MAGIC);
        raw.put_u16(200);
        raw.put_u16(count);
        for n in 0..count {
            let name = format!("x{n}");
            raw.put_u16(u16::try_from(name.len()).expect("short"));
            raw.put_slice(name.as_bytes());
            raw.put_u32(0);
        }
        assert_eq!(
            StoredResponse::decode(&raw.freeze()),
            Err("more headers than a response holds")
        );
        let (replayable, _) = sample().into_response();
        assert_eq!(replayable.headers().len(), 3);
        assert_eq!(replayable.status(), StatusCode::CREATED);
    }
}
