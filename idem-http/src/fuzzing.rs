//! A narrow entry for the fuzz targets in the repository's `fuzz/` directory and the
//! property tests: not part of the API, and hidden from the docs.

use bytes::Bytes;

use crate::record::StoredOutcome;

/// What a replay makes of stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// A response with this status, this many headers and this body.
    Response {
        /// Its status code.
        status: u16,
        /// How many header lines it carries.
        headers: usize,
        /// Its body.
        body: Bytes,
        /// How many trailer lines follow its body.
        trailers: usize,
        /// Whether encoding the decoded response and decoding that again gives the same
        /// response: the layout has one reading.
        stable: bool,
    },
    /// The marker of a response too large to store, with its status.
    TooLarge {
        /// The handler's status code.
        status: u16,
    },
    /// The marker of a response whose body failed mid-way, with its status.
    BodyFailed {
        /// The handler's status code.
        status: u16,
    },
}

/// Decodes stored bytes the way a replay does, and builds the response a replay would
/// send. `Err` carries the reason a replay answers "the stored response is unreadable".
/// Never panics.
pub fn replay(raw: &[u8]) -> Result<Replay, &'static str> {
    let stored = Bytes::copy_from_slice(raw);
    match StoredOutcome::decode(&stored)? {
        StoredOutcome::TooLarge { status, .. } => Ok(Replay::TooLarge {
            status: status.as_u16(),
        }),
        StoredOutcome::BodyFailed { status } => Ok(Replay::BodyFailed {
            status: status.as_u16(),
        }),
        StoredOutcome::Response(record) => {
            let stable = record
                .encode()
                .ok()
                .and_then(|encoded| StoredOutcome::decode(&encoded).ok())
                .is_some_and(|again| again == StoredOutcome::Response(record.clone()));
            let (response, trailers) = record.into_response();
            Ok(Replay::Response {
                status: response.status().as_u16(),
                headers: response.headers().len(),
                body: response.into_body(),
                trailers: trailers.map_or(0, |trailers| trailers.len()),
                stable,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue, StatusCode};

    use super::*;
    use crate::record::encode_response;

    /// What the fuzz target asserts on every input, on inputs this crate writes: a response
    /// record replays as written and reads back the same after encoding it again.
    #[test]
    fn records_this_crate_writes_replay_stably() {
        let headers = [
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("location"),
                HeaderValue::from_static("/orders/7"),
            ),
        ];
        let stored = encode_response(
            StatusCode::CREATED,
            || headers.iter().map(|(name, value)| (name, value)),
            None,
            b"{\"id\":7}",
        )
        .expect("encodes");
        assert_eq!(
            replay(&stored),
            Ok(Replay::Response {
                status: 201,
                headers: 2,
                body: Bytes::from_static(b"{\"id\":7}"),
                trailers: 0,
                stable: true,
            })
        );
        let marker = StoredOutcome::encode_too_large(StatusCode::ACCEPTED, 1 << 20);
        assert_eq!(replay(&marker), Ok(Replay::TooLarge { status: 202 }));
        assert!(replay(b"IH1\x00").is_err());
    }
}
