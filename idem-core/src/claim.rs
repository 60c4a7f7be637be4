//! Claims: the first step of every request.

use std::time::Duration;

use bytes::Bytes;

use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::lease::{Lease, OwnerToken};
use crate::ttl::Ttl;

/// A request to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimRequest {
    /// The key to claim.
    pub key: Key,
    /// The attempt making the claim.
    pub owner: OwnerToken,
    /// How long the lease lasts unless renewed.
    pub lease_ttl: Ttl,
    /// The request's digest, compared with the one stored for the key.
    pub fingerprint: Option<Fingerprint>,
}

impl ClaimRequest {
    /// A claim with a fresh owner token and no fingerprint.
    #[must_use]
    pub fn new(key: Key, lease_ttl: Ttl) -> Self {
        Self {
            key,
            owner: OwnerToken::random(),
            lease_ttl,
            fingerprint: None,
        }
    }

    /// Sets the owner token, to retry a claim of the same attempt.
    #[must_use]
    pub fn with_owner(mut self, owner: OwnerToken) -> Self {
        self.owner = owner;
        self
    }

    /// Sets the request fingerprint.
    #[must_use]
    pub fn with_fingerprint(mut self, fingerprint: impl Into<Option<Fingerprint>>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }

    /// The lease a store grants this request under `fencing`, for its
    /// [`Claim::Acquired`]: this request's key, owner and fingerprint, and its lease TTL as
    /// the lease's [`granted_ttl`](Lease::granted_ttl).
    #[must_use]
    pub fn lease(&self, fencing: u64) -> Lease {
        Lease::new(self.key.clone(), self.owner, fencing)
            .with_fingerprint(self.fingerprint)
            .granted_for(self.lease_ttl)
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free (never seen, released, failed retryably, or its lease expired), or
    /// this owner already held it: run the operation, then finish with the lease.
    Acquired(Lease),
    /// Another owner holds a live lease.
    InProgress {
        /// How long that lease has left.
        retry_after: Duration,
    },
    /// The key was completed: these are the stored response bytes, exactly as given.
    Completed(Bytes),
    /// The key failed permanently: these are the stored failure bytes, exactly as given.
    Failed(Bytes),
}
