//! What an attempt writes once its operation returned.

use bytes::Bytes;

use crate::ttl::Ttl;

/// What to do with the key once the operation returned: store its outcome, or free the key.
///
/// The engine does not know how outcomes are encoded; the caller's [`Settle`] step turns the
/// operation's output into one of these (the executor encodes JSON, the HTTP layer a
/// response record).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Finish the key with this response, replayed to every repeat for `retention`.
    Complete {
        /// The encoded response.
        payload: Bytes,
        /// How long it is replayed.
        retention: Ttl,
    },
    /// Finish the key with this permanent failure, replayed to every repeat for `retention`.
    Fail {
        /// The encoded failure.
        payload: Bytes,
        /// How long it is replayed.
        retention: Ttl,
    },
    /// Free the key without an outcome (a retryable failure): the next request runs again.
    Release,
}

/// Turns an operation's output into the [`Settlement`] the engine carries out.
///
/// Any `FnMut(&T) -> Settlement` closure is one; implement the trait to also say what to
/// write when the store refuses a payload as too large.
pub trait Settle<T> {
    /// What to write for `output`.
    fn settle(&mut self, output: &T) -> Settlement;

    /// What to write instead when the store refused the settlement's payload as too large
    /// (`size` bytes over its `limit`): a small marker, say. `None` (the default) writes
    /// nothing more: the attempt ends "not recorded" with
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) as the cause.
    fn too_large(&mut self, size: usize, limit: usize) -> Option<Settlement> {
        let _ = (size, limit);
        None
    }
}

impl<T, F: FnMut(&T) -> Settlement> Settle<T> for F {
    fn settle(&mut self, output: &T) -> Settlement {
        self(output)
    }
}
