//! Records, as a store reports them for inspection.

use std::time::Duration;

use bytes::Bytes;

use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::lease::OwnerToken;

/// What a store holds for a key, as [`IdempotencyStore::read`] reports it.
///
/// [`IdempotencyStore::read`]: crate::IdempotencyStore::read
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The key.
    pub key: Key,
    /// Where the key is in its lifecycle.
    pub state: RecordState,
    /// The fencing number of the lease that claimed (and maybe finished) it.
    pub fencing: u64,
    /// The fingerprint stored with the claim.
    pub fingerprint: Option<Fingerprint>,
    /// Time left: of the lease while claimed, of the retention once finished.
    pub expires_in: Duration,
}

impl Record {
    /// What a store reports for `key`: its `state`, the `fencing` number of the lease that
    /// claimed it, the claim's `fingerprint`, and the time `expires_in` left (of the lease
    /// while claimed, of the retention once finished).
    #[must_use]
    pub const fn new(
        key: Key,
        state: RecordState,
        fencing: u64,
        fingerprint: Option<Fingerprint>,
        expires_in: Duration,
    ) -> Self {
        Self {
            key,
            state,
            fencing,
            fingerprint,
            expires_in,
        }
    }
}

/// The lifecycle of a key:
///
/// ```text
///             claim                 complete
///   (free) ─────────▶ Claimed ─────────────────▶ Completed ──┐
///      ▲                │ │      fail (permanent)            │ retention
///      │   release,     │ └────────────────────▶ Failed ─────┤ expires
///      │   lease expiry │                                    │
///      └────────────────┴────────────────────────────────────┘
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// In progress under a live lease.
    Claimed {
        /// The attempt holding the lease.
        owner: OwnerToken,
    },
    /// Finished; the response is replayed to every repeat.
    Completed {
        /// The stored response bytes.
        response: Bytes,
    },
    /// Failed permanently; the failure is replayed to every repeat.
    Failed {
        /// The stored failure bytes.
        failure: Bytes,
    },
}
