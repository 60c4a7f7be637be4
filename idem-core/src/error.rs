//! The one error type of idem.

use std::time::Duration;

/// A boxed error from a driver or a codec, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in idem, by what the caller does about it.
///
/// Backend errors are never flattened to strings: the driver's error travels as the
/// [`source`](std::error::Error::source), so callers can `matches!` on the kind and still
/// log the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was rejected before anything was written: a bad key, namespace or TTL.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InvalidInput),

    /// The key is already known with a different request fingerprint. The stored record was
    /// left untouched. HTTP APIs answer this with `422 Unprocessable Content`.
    #[error("the key was used before with a different request (fingerprint mismatch)")]
    FingerprintMismatch,

    /// The lease no longer owns the key: it expired and another owner took the key over, or
    /// the key was released, finished or removed. Nothing was changed.
    #[error("the lease was lost: another owner holds the key, or it was released or finished")]
    LeaseLost,

    /// Another request holds the key and has not finished yet. HTTP APIs answer this with
    /// `409 Conflict` and a `Retry-After` header.
    #[error("a request with this key is still in progress; retry after {retry_after:?}")]
    InProgress {
        /// How long the current lease has left: a good moment to ask again.
        retry_after: Duration,
    },

    /// A payload is larger than the store or the executor accepts. Nothing was written.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The largest size accepted, in bytes.
        limit: usize,
    },

    /// A value found in the store under a managed key could not be decoded.
    #[error("corrupt record in the store: {reason}")]
    CorruptRecord {
        /// What was wrong with it.
        reason: String,
        /// The decoder's error, where there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend could not be reached or did not answer in time. Safe to retry later.
    #[error("the store is unavailable: {source}")]
    Unavailable {
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The backend answered with an error that retrying will not fix (permissions, schema).
    #[error("the store failed: {source}")]
    Backend {
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The operation ran, but its outcome could not be stored: the lease was lost while it
    /// ran, or the store stayed unavailable for as long as the lease lasted, or refused the
    /// payload. The caller that ran it gets its value along with this error
    /// ([`ExecuteError::NotRecorded`](crate::ExecuteError::NotRecorded),
    /// [`AttemptError::NotRecorded`](crate::attempt::AttemptError::NotRecorded)); a later
    /// request may run the operation again once the lease ends.
    #[error("the operation ran but its outcome was not recorded: {cause}")]
    NotRecorded {
        /// Why the outcome could not be stored.
        #[source]
        cause: Box<Error>,
    },

    /// A token was issued that the store already holds, live or still marked used. The
    /// existing token was left untouched.
    ///
    /// This is a collision on the server's side, never the client's fault: the client did
    /// not choose the token. It means the generator made the same token twice, or two
    /// issuers share a store and a deterministic generator. HTTP APIs answer it with
    /// `500 Internal Server Error`, not a `4xx`.
    #[error("the token was already issued (a token collision)")]
    TokenCollision,

    /// A value could not be serialized or a stored value could not be deserialized into the
    /// caller's type.
    #[error("serialization failed: {source}")]
    Serialization {
        /// The codec's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// The store could not be reached or timed out.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            source: source.into(),
        }
    }

    /// The store answered with a non-transient error.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Self::Backend {
            source: source.into(),
        }
    }

    /// A stored value did not decode.
    pub fn corrupt(reason: impl Into<String>) -> Self {
        Self::CorruptRecord {
            reason: reason.into(),
            source: None,
        }
    }

    /// A stored value did not decode, with the decoder's error.
    pub fn corrupt_with(reason: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::CorruptRecord {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    /// The operation ran, but its outcome could not be stored, because of `cause`.
    #[must_use]
    pub fn not_recorded(cause: Error) -> Self {
        Self::NotRecorded {
            cause: Box::new(cause),
        }
    }

    /// Whether retrying the same call later may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::InProgress { .. })
    }
}

/// Why an input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A key or namespace was empty.
    #[error("{field} is empty")]
    Empty {
        /// Which input.
        field: InputField,
    },
    /// A key or namespace was longer than allowed.
    #[error("{field} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which input.
        field: InputField,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A key or namespace held a control character.
    #[error("{field} holds a control character at byte {at}")]
    ControlCharacter {
        /// Which input.
        field: InputField,
        /// The byte offset of the character.
        at: usize,
    },
    /// A time to live of zero.
    #[error("a TTL must be longer than zero")]
    ZeroTtl,
    /// A time to live under one millisecond or over the maximum.
    #[error("a TTL of {ttl:?} is out of range (1 ms to {max:?})")]
    TtlOutOfRange {
        /// The TTL asked for.
        ttl: Duration,
        /// The longest TTL accepted.
        max: Duration,
    },
    /// A token that is not in its generator's format (or empty, too long, or holds control
    /// characters). Rejected before the store is asked.
    #[error("malformed token: {reason}")]
    MalformedToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value, such as a setting, that is out of its range.
    #[error("{0}")]
    Other(&'static str),
}

/// Which input an [`InvalidInput`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputField {
    /// A [`Key`](crate::Key)'s namespace (shown as `namespace`).
    Namespace,
    /// A [`Key`](crate::Key)'s id within its namespace (shown as `key`).
    Key,
    /// A token [`Scope`](crate::Scope) (shown as `scope`).
    Scope,
}

impl std::fmt::Display for InputField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Namespace => "namespace",
            Self::Key => "key",
            Self::Scope => "scope",
        })
    }
}

/// Fails with [`Error::PayloadTooLarge`] when `size` is over `limit`.
///
/// Stores call this before writing a payload so that the limit is enforced the same way
/// everywhere.
///
/// # Errors
///
/// [`Error::PayloadTooLarge`] when `size` is over `limit`.
pub fn check_payload(size: usize, limit: usize) -> Result<(), Error> {
    if size > limit {
        Err(Error::PayloadTooLarge { size, limit })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collision is the server's: callers that answer `InvalidInput` with "fix your
    /// request" must not see it there, and retrying the same issue cannot help.
    #[test]
    fn a_token_collision_is_its_own_kind() {
        let collision = Error::TokenCollision;
        assert!(!matches!(collision, Error::InvalidInput(_)));
        assert!(!collision.is_transient());
        assert!(collision.to_string().contains("collision"));
    }
}
