//! How the executor stores outcomes: a success as the plain JSON of the value, a failure in a
//! [`StoredFailure`] envelope; and how it reads them back. The JSON is `serde_json`'s, written
//! by the executor's own cheaper [`json`] writer.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;

use super::Execution;
use super::json;
use crate::attempt::{Settle, Settlement};
use crate::config::Settings;
use crate::error::Error;
use crate::retryable::Retryable;
use crate::ttl::Ttl;

/// What the executor writes for a failed key. The envelope also records outcomes the
/// executor could not store, so a repeat gets a typed error instead of running the operation
/// again.
#[derive(Serialize, Deserialize)]
enum StoredFailure<E> {
    Operation(E),
    TooLarge { size: usize, limit: usize },
    Unserializable { reason: String },
}

/// The executor's settle step: JSON, within the executor's payload limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JsonSettle {
    success_retention: Ttl,
    failure_retention: Ttl,
    max_payload: usize,
}

impl JsonSettle {
    pub(crate) fn new(settings: &Settings) -> Self {
        Self {
            success_retention: settings.success_retention,
            failure_retention: settings.failure_retention,
            max_payload: settings.max_payload,
        }
    }

    /// A success or failure to store, read back as a `D`; one that does not serialize, does
    /// not read back as itself or is over the limit is recorded as a marker instead.
    fn encoded<V: Serialize + ?Sized, D: Serialize + DeserializeOwned>(
        self,
        value: &V,
        complete: bool,
        retention: Ttl,
    ) -> Settlement {
        let limit = self.max_payload;
        // Copied out of the encoder's buffer only when it is to be stored.
        let encoded = json::encoded_counted(value, |bytes| {
            if bytes.len() > limit {
                Err(bytes.len())
            } else {
                Ok(Bytes::copy_from_slice(bytes))
            }
        });
        match encoded {
            Ok((Ok(payload), some_nulls))
                if some_nulls > 0 && !reads_back::<D>(&payload, some_nulls) =>
            {
                let reason = SOME_READ_AS_NONE.to_owned();
                self.marker(&StoredFailure::Unserializable { reason })
            }
            Ok((Ok(payload), _)) if complete => Settlement::Complete { payload, retention },
            Ok((Ok(payload), _)) => Settlement::Fail { payload, retention },
            Ok((Err(size), _)) => self.too_large_marker(size, limit),
            Err(error) => {
                let reason = error.to_string();
                self.marker(&StoredFailure::Unserializable { reason })
            }
        }
    }

    fn too_large_marker(self, size: usize, limit: usize) -> Settlement {
        tracing::warn!(
            size,
            limit,
            "outcome too large to store; repeats get PayloadTooLarge"
        );
        self.marker(&StoredFailure::TooLarge { size, limit })
    }

    /// An envelope that holds no operation error: a few dozen bytes that always serialize,
    /// under any sane payload limit.
    fn marker(self, marker: &StoredFailure<()>) -> Settlement {
        match json::encoded(marker, Bytes::copy_from_slice) {
            Ok(payload) => Settlement::Fail {
                payload,
                retention: self.failure_retention,
            },
            // Not expected: a marker holds numbers and a string. Then the key is freed.
            Err(error) => {
                tracing::error!(%error, "a marker did not serialize; releasing the key");
                Settlement::Release
            }
        }
    }
}

impl<T, E> Settle<Result<T, E>> for JsonSettle
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned + Retryable,
{
    fn settle(&mut self, output: &Result<T, E>) -> Settlement {
        // The caller's `Serialize`, `Deserialize` and `is_retryable` run here, after the
        // operation returned: its effects may have happened, so a panic in them must not
        // leave the key claimed, to run the operation a second time once the lease ends. The
        // outcome is recorded as one that cannot be stored (the panic itself is logged by the
        // panic hook).
        let settle = *self;
        std::panic::catch_unwind(AssertUnwindSafe(|| settle.settled(output))).unwrap_or_else(
            |panic| {
                let reason = format!("writing the outcome panicked: {}", panic_message(&*panic));
                self.marker(&StoredFailure::Unserializable { reason })
            },
        )
    }

    fn too_large(&mut self, size: usize, limit: usize) -> Option<Settlement> {
        Some(self.too_large_marker(size, limit))
    }
}

impl JsonSettle {
    /// What to store for `output`.
    fn settled<T, E>(self, output: &Result<T, E>) -> Settlement
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + Retryable,
    {
        match output {
            Ok(value) => self.encoded::<T, T>(value, true, self.success_retention),
            // The next request runs the operation again.
            Err(error) if error.is_retryable() => Settlement::Release,
            Err(error) => self.encoded::<_, StoredFailure<E>>(
                &StoredFailure::Operation(error),
                false,
                self.failure_retention,
            ),
        }
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Why an outcome holding a `Some` written as `null` that reads back as `None` is not stored.
const SOME_READ_AS_NONE: &str =
    "a Some of a value written as null (Some(None), Some(())) would be read back as None";

/// Whether `payload`, holding `some_nulls` `Some`s written as `null`, reads back as a `D`
/// that writes the same bytes with as many of them: a derived `Deserialize` reads such a
/// `null` as `None`, another value (so the writer counts fewer), where a hand-written one
/// may read it as the `Some` it was.
fn reads_back<D: Serialize + DeserializeOwned>(payload: &[u8], some_nulls: usize) -> bool {
    let Ok(decoded) = serde_json::from_slice::<D>(payload) else {
        return false;
    };
    json::encoded_counted(&decoded, |bytes| bytes == payload)
        .is_ok_and(|(same, again)| same && again == some_nulls)
}

pub(crate) fn replay_success<T: DeserializeOwned, E>(
    response: &[u8],
) -> Result<Execution<T, E>, Error> {
    Ok(Execution {
        result: Ok(decode(response, "response")?),
        replayed: true,
    })
}

pub(crate) fn replay_failure<T, E: DeserializeOwned>(
    failure: &[u8],
) -> Result<Execution<T, E>, Error> {
    match decode(failure, "failure")? {
        StoredFailure::Operation(error) => Ok(Execution {
            result: Err(error),
            replayed: true,
        }),
        StoredFailure::TooLarge { size, limit } => Err(Error::PayloadTooLarge { size, limit }),
        StoredFailure::Unserializable { reason } => Err(Error::Serialization {
            source: reason.into(),
        }),
    }
}

/// Decodes a stored outcome. Bytes that are not JSON were never written by the executor: a
/// corrupt record. JSON of another shape means the caller's type is not the one stored (it
/// changed between deployments, or the key is shared by two operations): a serialization
/// error, as [`Error::Serialization`] documents.
fn decode<V: DeserializeOwned>(stored: &[u8], what: &str) -> Result<V, Error> {
    serde_json::from_slice(stored).map_err(|error| match error.classify() {
        Category::Data => Error::Serialization {
            source: Box::new(error),
        },
        Category::Syntax | Category::Eof | Category::Io => {
            Error::corrupt_with(format!("the stored {what} is not JSON"), error)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OpError {
        Transient,
        Permanent(String),
    }

    impl Retryable for OpError {
        fn is_retryable(&self) -> bool {
            matches!(self, Self::Transient)
        }
    }

    fn settle(max_payload: usize) -> JsonSettle {
        JsonSettle::new(&Settings {
            success_retention: Ttl::from_secs(11).expect("ttl"),
            failure_retention: Ttl::from_secs(22).expect("ttl"),
            max_payload,
            ..Settings::default()
        })
    }

    fn settled<T: Serialize + DeserializeOwned>(
        max_payload: usize,
        output: &Result<T, OpError>,
    ) -> Settlement {
        Settle::settle(&mut settle(max_payload), output)
    }

    fn failed(settlement: Settlement) -> Bytes {
        match settlement {
            Settlement::Fail { payload, retention } => {
                assert_eq!(retention, Ttl::from_secs(22).expect("ttl"));
                payload
            }
            other => panic!("expected a failure to store, got {other:?}"),
        }
    }

    #[test]
    fn outcomes_are_stored_as_json_with_their_own_retention() {
        match settled(64, &Ok::<_, OpError>(vec![1, 2])) {
            Settlement::Complete { payload, retention } => {
                assert_eq!(&payload[..], b"[1,2]");
                assert_eq!(retention, Ttl::from_secs(11).expect("ttl"));
                let replay = replay_success::<Vec<u8>, OpError>(&payload).expect("decodes");
                assert_eq!(replay.result, Ok(vec![1, 2]));
                assert!(replay.replayed);
            }
            other => panic!("expected a completion, got {other:?}"),
        }
        let error = OpError::Permanent("no".into());
        let payload = failed(settled::<u8>(64, &Err(error)));
        let replay = replay_failure::<u8, OpError>(&payload).expect("decodes");
        assert_eq!(replay.result, Err(OpError::Permanent("no".into())));
        assert!(replay.replayed);
        assert!(matches!(
            settled::<u8>(64, &Err(OpError::Transient)),
            Settlement::Release
        ));
    }

    #[test]
    fn an_outcome_at_the_limit_is_stored_and_one_over_it_is_a_marker() {
        // "[1,2]" is five bytes.
        assert!(matches!(
            settled(5, &Ok::<_, OpError>(vec![1, 2])),
            Settlement::Complete { .. }
        ));
        let marker = failed(settled(4, &Ok::<_, OpError>(vec![1, 2])));
        assert!(matches!(
            replay_failure::<u8, OpError>(&marker),
            Err(Error::PayloadTooLarge { size: 5, limit: 4 })
        ));
        let marker = failed(
            Settle::<Result<u8, OpError>>::too_large(&mut settle(64), 100, 50)
                .expect("a marker instead"),
        );
        assert!(matches!(
            replay_failure::<u8, OpError>(&marker),
            Err(Error::PayloadTooLarge {
                size: 100,
                limit: 50
            })
        ));
    }

    /// An outcome JSON cannot hold (a map with non-string keys) is stored as a marker, so a
    /// repeat gets a serialization error instead of running the operation again.
    #[test]
    fn an_unserializable_outcome_is_stored_as_a_marker() {
        let value: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
        assert!(serde_json::to_vec(&value).is_err(), "the premise");
        let marker = failed(settled(1024, &Ok::<_, OpError>(value)));
        match replay_failure::<u8, OpError>(&marker) {
            Err(Error::Serialization { source }) => {
                assert!(
                    source.to_string().contains("key must be a string"),
                    "{source}"
                );
            }
            other => panic!("expected a serialization error, got {other:?}"),
        }
    }

    /// Only an outcome holding a `Some` written as `null` must read back as the same bytes:
    /// any other is stored as written. A map's keys come back in another order from a fresh
    /// map (its hasher is seeded anew), so it writes other bytes, yet it is the same value
    /// and must be stored and replayed, not refused as a marker.
    #[test]
    fn an_outcome_without_a_some_written_as_null_is_stored_even_if_it_writes_back_otherwise() {
        let map: HashMap<String, u32> = (0..64).map(|i| (format!("k{i}"), i)).collect();
        match settled(4096, &Ok::<_, OpError>(map.clone())) {
            Settlement::Complete { payload, .. } => {
                let replay =
                    replay_success::<HashMap<String, u32>, OpError>(&payload).expect("decodes");
                assert_eq!(replay.result, Ok(map));
            }
            other => panic!("expected a completion, got {other:?}"),
        }
    }

    /// A value whose `Serialize` panics with `message`: as a `String` when `formatted`, as
    /// the `&str` itself otherwise.
    struct PanicsWhenWritten {
        message: &'static str,
        formatted: bool,
    }

    impl Serialize for PanicsWhenWritten {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            if self.formatted {
                panic!("{}", self.message)
            }
            std::panic::panic_any(self.message)
        }
    }

    impl<'de> Deserialize<'de> for PanicsWhenWritten {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Err(serde::de::Error::custom("never stored"))
        }
    }

    /// An outcome whose `Serialize` panics is recorded as one that could not be stored, and
    /// the error a repeat gets says what the panic said, whether it panicked with a literal
    /// (`&str`) or a formatted message (`String`), so the cause can be found.
    #[test]
    fn the_marker_of_a_panicking_serialize_says_what_the_panic_said() {
        for (message, formatted) in [("a literal panic", false), ("a formatted panic", true)] {
            let marker = failed(settled(
                1024,
                &Ok::<_, OpError>(PanicsWhenWritten { message, formatted }),
            ));
            match replay_failure::<u8, OpError>(&marker) {
                Err(Error::Serialization { source }) => assert_eq!(
                    source.to_string(),
                    format!("writing the outcome panicked: {message}")
                ),
                other => panic!("expected a serialization error, got {other:?}"),
            }
        }
    }

    #[test]
    fn stored_bytes_decode_by_what_is_wrong_with_them() {
        assert!(matches!(
            replay_success::<u8, OpError>(b"not json"),
            Err(Error::CorruptRecord { .. })
        ));
        assert!(matches!(
            replay_failure::<u8, OpError>(b"{\"Operation\""),
            Err(Error::CorruptRecord { .. })
        ));
        // JSON of another shape: the caller's type is not the one stored.
        assert!(matches!(
            replay_success::<u8, OpError>(b"\"text\""),
            Err(Error::Serialization { .. })
        ));
        assert!(matches!(
            replay_failure::<u8, OpError>(b"{\"Elsewhere\":1}"),
            Err(Error::Serialization { .. })
        ));
    }
}
