//! Script replies, read back into idem's types.
//!
//! Every script answers a code defined below (and given to the scripts as `R_` locals):
//! alone (an integer), or first in an array with what goes with it.

use std::time::Duration;

use idem_core::{Error, Fingerprint, OwnerToken};
use redis::Value;

shared_with_lua! {
    /// The reply codes as Lua locals, `R_` before each name.
    LUA_CODES, lua prefix "R_";
    /// The record does not decode; the reason follows.
    const CORRUPT: i64 = 0;
    /// The claim acquired the key; the fencing number follows.
    const ACQUIRED: i64 = 1;
    /// Another owner's lease is live; its milliseconds left follow.
    const IN_PROGRESS: i64 = 2;
    /// The key is completed; the response follows.
    const COMPLETED: i64 = 3;
    /// The key failed permanently; the failure follows.
    const FAILED: i64 = 4;
    /// The key is known with another fingerprint.
    const MISMATCH: i64 = 5;
    /// The transition (or removal) was applied.
    const DONE: i64 = 6;
    /// The lease no longer holds the key.
    const LEASE_LOST: i64 = 7;
    /// Nothing live under the key.
    const FREE: i64 = 8;
    /// A live record; its fields follow.
    const RECORD: i64 = 9;
    /// The token was consumed by this call, or by its consumer before: a resend.
    const CONSUMED: i64 = 10;
    /// No token under the key.
    const UNKNOWN: i64 = 11;
    /// The token was consumed before; its stored scope follows.
    const ALREADY_USED: i64 = 12;
    /// The token belongs to another scope; its stored scope follows.
    const WRONG_SCOPE: i64 = 13;
    /// The lease is spent, and the key holds the very record this finish writes: the same
    /// finish sent again after its reply was lost. Written again as it is, so that a `WAIT`
    /// behind it counts the replicas that have it.
    const FINISHED_BEFORE: i64 = 14;
}

/// A reply that is not what the scripts send: a different script under the same name, or a
/// proxy in the way. Retrying will not fix it, so it is a [`Error::Backend`].
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from an idem-redis script: {0}")]
pub struct UnexpectedReply(String);

/// The elements of one script reply, taken in order.
pub(crate) struct Reply {
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    pub(crate) fn new(value: Value) -> Result<Self, Error> {
        match value {
            Value::Array(items) => Ok(Self {
                items: items.into_iter(),
            }),
            code @ Value::Int(_) => Ok(Self {
                items: vec![code].into_iter(),
            }),
            other => Err(unexpected(format!("expected an array, got {other:?}"))),
        }
    }

    /// The reply code; a [`CORRUPT`] one is turned into [`Error::CorruptRecord`] here.
    pub(crate) fn code(&mut self) -> Result<i64, Error> {
        let code = self.int()?;
        if code == CORRUPT {
            let reason = String::from_utf8_lossy(&self.bytes()?).into_owned();
            tracing::warn!(%reason, "corrupt idem record in Redis");
            return Err(Error::corrupt(reason));
        }
        Ok(code)
    }

    pub(crate) fn int(&mut self) -> Result<i64, Error> {
        match self.items.next() {
            Some(Value::Int(n)) => Ok(n),
            other => Err(unexpected(format!("expected an integer, got {other:?}"))),
        }
    }

    pub(crate) fn count(&mut self) -> Result<u64, Error> {
        let n = self.int()?;
        u64::try_from(n).map_err(|_| unexpected(format!("expected a count, got {n}")))
    }

    pub(crate) fn millis(&mut self) -> Result<Duration, Error> {
        self.count().map(Duration::from_millis)
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        match self.items.next() {
            Some(Value::BulkString(bytes)) => Ok(bytes),
            Some(Value::SimpleString(text)) => Ok(text.into_bytes()),
            other => Err(unexpected(format!("expected a string, got {other:?}"))),
        }
    }

    /// `''` for none, else the 32 digest bytes.
    pub(crate) fn fingerprint(&mut self) -> Result<Option<Fingerprint>, Error> {
        let bytes = self.bytes()?;
        if bytes.is_empty() {
            return Ok(None);
        }
        Fingerprint::try_from(bytes.as_slice()).map(Some)
    }

    pub(crate) fn owner(&mut self) -> Result<OwnerToken, Error> {
        let bytes = self.bytes()?;
        let token: [u8; 16] = bytes.as_slice().try_into().map_err(|_| {
            Error::corrupt(format!("an owner token is 16 bytes, found {}", bytes.len()))
        })?;
        Ok(OwnerToken::from_bytes(token))
    }
}

pub(crate) fn unexpected(what: impl Into<String>) -> Error {
    Error::backend(UnexpectedReply(what.into()))
}

/// An unknown reply code.
pub(crate) fn unknown_code(code: i64) -> Error {
    unexpected(format!("unknown reply code {code}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_replies_become_corrupt_records() {
        let mut reply = Reply::new(Value::Array(vec![
            Value::Int(CORRUPT),
            Value::BulkString(b"bad".to_vec()),
        ]))
        .expect("an array");
        assert!(
            matches!(reply.code(), Err(Error::CorruptRecord { reason, .. }) if reason == "bad")
        );
    }

    #[test]
    fn malformed_replies_are_backend_errors() {
        assert!(matches!(Reply::new(Value::Nil), Err(Error::Backend { .. })));
        let mut alone = Reply::new(Value::Int(DONE)).expect("a bare code");
        assert_eq!(alone.code().expect("a code"), DONE);
        let mut reply = Reply::new(Value::Array(vec![Value::Int(-1)])).expect("an array");
        assert!(matches!(reply.count(), Err(Error::Backend { .. })));
        assert!(matches!(reply.int(), Err(Error::Backend { .. })));
    }
}
