//! Owner tokens and leases.

use std::fmt;
use std::hash::{Hash, Hasher};

use tokio::time::Instant;

use uuid::Uuid;

use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::ttl::Ttl;

/// Names one attempt at a request. Made once per attempt (the executor makes one per call)
/// and sent with every claim of that attempt.
///
/// A claim retried with the same token, say after its reply was lost to a timeout, finds
/// its own claim and gets the same lease back instead of "in progress".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerToken(Uuid);

impl OwnerToken {
    /// A fresh random token (UUIDv4, 122 random bits).
    #[must_use]
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps a UUID kept elsewhere, for example in a job's state.
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// Rebuilds a token from the 16 bytes a store kept.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The 16 bytes to store.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The token as a UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({})", self.0)
    }
}

/// The right to finish a claimed key: proof that this attempt acquired it.
///
/// Every transition after the claim (complete, fail, renew, release) presents the lease,
/// and the store applies it only if the record is still claimed by the same owner with the
/// same fencing number. A stale lease changes nothing and gets [`Error::LeaseLost`].
///
/// [`Error::LeaseLost`]: crate::Error::LeaseLost
///
/// Two leases are equal when their key, owner, fencing number and fingerprint are. When
/// this process sent the claim that granted the lease ([`Lease::claim_sent`]) and the TTL it
/// asked for ([`Lease::granted_ttl`]) are local knowledge, not part of the right, and not
/// compared.
#[derive(Clone)]
#[non_exhaustive]
pub struct Lease {
    /// The key this lease holds.
    pub key: Key,
    /// The attempt that acquired it.
    pub owner: OwnerToken,
    /// Grows strictly each time the key is acquired again while the store remembers it,
    /// including after a lease expired. Guard downstream writes with it: reject a write
    /// whose fencing number is lower than one already seen.
    pub fencing: u64,
    /// The fingerprint of the claim that acquired it, if it had one. The store keeps the
    /// claim's own copy and that copy decides; this one only lets a store skip reading it
    /// (idem-redis sends the finished record whole, fingerprint included, and the script
    /// writes it as it came when the claim's fingerprint field is the same).
    pub fingerprint: Option<Fingerprint>,
    /// When the claim that granted the lease was sent, where the engine knows it.
    claim_sent: Option<Instant>,
    /// The lease TTL the granting claim asked for, where the lease came from one.
    granted_ttl: Option<Ttl>,
}

impl PartialEq for Lease {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.owner == other.owner
            && self.fencing == other.fencing
            && self.fingerprint == other.fingerprint
    }
}

impl Eq for Lease {}

impl Hash for Lease {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.owner.hash(state);
        self.fencing.hash(state);
        self.fingerprint.hash(state);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("fencing", &self.fencing)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The lease `owner` holds on `key` under `fencing`: what a store rebuilds from its own
    /// records, or a test forges. A store granting a [`ClaimRequest`](crate::ClaimRequest)
    /// uses [`ClaimRequest::lease`](crate::ClaimRequest::lease).
    #[must_use]
    pub const fn new(key: Key, owner: OwnerToken, fencing: u64) -> Self {
        Self {
            key,
            owner,
            fencing,
            fingerprint: None,
            claim_sent: None,
            granted_ttl: None,
        }
    }

    /// When the claim that granted this lease was sent, if known: the engine's
    /// [`claim`](crate::attempt::Engine::claim) records it, a store does not.
    ///
    /// The store counts the lease's TTL from when it applied the claim, which is no earlier
    /// than this; a claim whose answer was slow (a row lock, a congested server) already
    /// used part of the lease when it returns. An [`Attempt`](crate::attempt::Attempt) counts
    /// the lease from here, so it renews on time; without it, from when the attempt began.
    #[must_use]
    pub const fn claim_sent(&self) -> Option<Instant> {
        self.claim_sent
    }

    /// This lease, known to have been granted by a claim sent at `sent`.
    #[must_use]
    pub(crate) fn sent_at(mut self, sent: Instant) -> Self {
        self.claim_sent = Some(sent);
        self
    }

    /// The lease TTL of the claim that granted this lease, if known: set by
    /// [`ClaimRequest::lease`](crate::ClaimRequest::lease), unknown on a lease built with
    /// [`Lease::new`]. A store whose claimed record depends on it (idem-redis's does) can
    /// then rebuild that record exactly; a renewal with another TTL may have changed it
    /// since, so it is a hint to check against the store, never proof.
    #[must_use]
    pub const fn granted_ttl(&self) -> Option<Ttl> {
        self.granted_ttl
    }

    /// This lease, granted by a claim that asked for `ttl`.
    #[must_use]
    pub(crate) fn granted_for(mut self, ttl: Ttl) -> Self {
        self.granted_ttl = Some(ttl);
        self
    }

    /// Sets the fingerprint of the claim that acquired the lease.
    #[must_use]
    pub fn with_fingerprint(mut self, fingerprint: impl Into<Option<Fingerprint>>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    const UUID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    #[test]
    fn an_owner_token_shows_its_uuid() {
        let owner = OwnerToken::from_uuid(Uuid::parse_str(UUID).expect("a UUID"));
        assert_eq!(owner.to_string(), UUID);
        assert_eq!(format!("{owner:?}"), format!("OwnerToken({UUID})"));
    }

    /// A lease is its key, owner, fencing number and fingerprint: two leases that differ
    /// in any one of them are different rights, and compare and hash apart; when the claim
    /// was sent and the TTL it asked for are local knowledge and change neither.
    #[test]
    fn leases_compare_and_hash_by_their_right_alone() {
        let state = RandomState::new();
        let key = Key::new("lease", "k").expect("valid");
        let owner = OwnerToken::random();
        let lease =
            Lease::new(key.clone(), owner, 7).with_fingerprint(Fingerprint::from_bytes(b"a"));
        let sent = lease.clone().sent_at(Instant::now());
        assert_eq!(sent, lease);
        assert_eq!(state.hash_one(&sent), state.hash_one(&lease));
        let granted = lease
            .clone()
            .granted_for(Ttl::from_secs(90).expect("valid"));
        assert_eq!(granted, lease);
        assert_eq!(state.hash_one(&granted), state.hash_one(&lease));

        let other_key = Lease {
            key: Key::new("lease", "other").expect("valid"),
            ..lease.clone()
        };
        let other_owner = Lease {
            owner: OwnerToken::random(),
            ..lease.clone()
        };
        let other_fencing = Lease {
            fencing: 8,
            ..lease.clone()
        };
        let other_fingerprint = lease.clone().with_fingerprint(None);
        for other in [other_key, other_owner, other_fencing, other_fingerprint] {
            assert_ne!(other, lease, "{other:?}");
            assert_ne!(state.hash_one(&other), state.hash_one(&lease), "{other:?}");
        }
    }

    /// A store's lease carries the TTL its claim asked for; a lease made by hand knows none.
    #[test]
    fn a_granted_lease_knows_its_claims_ttl() {
        let key = Key::new("lease", "k").expect("valid");
        let ttl = Ttl::from_secs(90).expect("valid");
        let request = crate::ClaimRequest::new(key.clone(), ttl);
        assert_eq!(request.lease(3).granted_ttl(), Some(ttl));
        assert_eq!(Lease::new(key, OwnerToken::random(), 3).granted_ttl(), None);
    }
}
