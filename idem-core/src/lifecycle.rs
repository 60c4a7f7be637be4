//! The lifecycle as a pure state machine, for stores that keep records as Rust values.
//!
//! A store built on a map, a cache or any key-value engine with an atomic read-modify-write
//! runs each transition here under its per-key atomicity and writes back what the
//! [`Step`] says. The rules of the lifecycle then live once, here, instead of in every store.
//! Stores that decide inside their server (Redis Lua, SQL) implement the same rules there,
//! and the conformance suite holds both to them.
//!
//! Time is the store's own clock in milliseconds from any fixed origin.
//!
//! A key whose lease ended (released, removed, or lapsed) is free, but the store keeps a trace of it
//! for [`trace_ttl`] more, so that the next acquisition's fencing number still grows and a
//! lapsed lease nobody took over can still finish.

use std::time::Duration;

use bytes::Bytes;

use crate::claim::{Claim, ClaimRequest};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::lease::{Lease, OwnerToken};
use crate::record::{Record, RecordState};
use crate::ttl::Ttl;

/// What a store keeps for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the key is.
    pub phase: Phase,
    /// The fencing number of the latest acquisition.
    pub fencing: u64,
    /// The fingerprint of the latest claim.
    pub fingerprint: Option<Fingerprint>,
    /// When the store may forget the entry, in store milliseconds.
    pub expires_at: u64,
}

/// The phases of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Held by a lease (live until `lease_until`).
    Claimed {
        /// The attempt holding it.
        owner: OwnerToken,
        /// When the lease ends, in store milliseconds.
        lease_until: u64,
        /// The lease's TTL, kept to size the trace left when it ends ([`trace_ttl`]).
        lease_ttl: u64,
    },
    /// Free again after a release or a removal; kept only to remember the fencing number.
    Vacant,
    /// Finished with a response.
    Completed(Bytes),
    /// Finished with a permanent failure.
    Failed(Bytes),
}

/// What a transition answers and what the store must write.
#[derive(Debug)]
pub struct Step<T> {
    /// The answer for the caller.
    pub answer: Result<T, Error>,
    /// What to do with the stored entry.
    pub write: Write,
}

/// The write a [`Step`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Leave the entry as it is.
    Keep,
    /// Store this entry (it carries its own `expires_at`).
    Put(Entry),
    /// Delete the entry. No transition here asks for it (even [`remove`] leaves a trace);
    /// it is for stores that run their own maintenance through [`Step`]s.
    Remove,
}

/// The least time a store remembers a key after its lease ended: a paused process that wakes
/// up this long after its lease still finds a larger fencing number in place.
pub const FENCING_MEMORY: Duration = Duration::from_secs(60);

/// How long, in milliseconds, a store keeps the trace of a key whose lease of `lease_ttl_ms`
/// ended: the longer of one lease TTL and [`FENCING_MEMORY`].
pub fn trace_ttl(lease_ttl_ms: u64) -> u64 {
    lease_ttl_ms.max(FENCING_MEMORY.as_millis() as u64)
}

impl<T> Step<T> {
    /// Answers without writing.
    pub fn keep(answer: Result<T, Error>) -> Self {
        Self {
            answer,
            write: Write::Keep,
        }
    }

    fn put(answer: T, entry: Entry) -> Self {
        Self {
            answer: Ok(answer),
            write: Write::Put(entry),
        }
    }
}

impl Entry {
    /// Whether the store may drop the entry at `now`. Stores treat an expired entry as absent.
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// The record a reader sees at `now`: `None` for a free key.
    pub fn record(&self, key: &Key, now: u64) -> Option<Record> {
        if self.is_expired(now) {
            return None;
        }
        let (state, until) = match &self.phase {
            Phase::Claimed {
                owner, lease_until, ..
            } if *lease_until > now => (RecordState::Claimed { owner: *owner }, *lease_until),
            Phase::Claimed { .. } | Phase::Vacant => return None,
            Phase::Completed(response) => (
                RecordState::Completed {
                    response: response.clone(),
                },
                self.expires_at,
            ),
            Phase::Failed(failure) => (
                RecordState::Failed {
                    failure: failure.clone(),
                },
                self.expires_at,
            ),
        };
        Some(Record {
            key: key.clone(),
            state,
            fencing: self.fencing,
            fingerprint: self.fingerprint,
            expires_in: Duration::from_millis(until - now),
        })
    }

    /// Whether `lease` still holds this entry (a lapsed lease nobody took over still does).
    pub fn is_held_by(&self, lease: &Lease) -> bool {
        matches!(self.phase, Phase::Claimed { owner, .. } if owner == lease.owner)
            && self.fencing == lease.fencing
    }

    /// The trace this entry leaves when it is freed at `now` without an outcome: vacant,
    /// with its fencing number, for [`trace_ttl`] of its lease (a finished entry has none,
    /// so [`FENCING_MEMORY`]).
    fn vacated(&self, now: u64) -> Self {
        let lease_ttl = match self.phase {
            Phase::Claimed { lease_ttl, .. } => lease_ttl,
            _ => 0,
        };
        Self {
            phase: Phase::Vacant,
            fencing: self.fencing,
            fingerprint: None,
            expires_at: now.saturating_add(trace_ttl(lease_ttl)),
        }
    }

    fn claimed(
        owner: OwnerToken,
        fencing: u64,
        fingerprint: Option<Fingerprint>,
        ttl: Ttl,
        now: u64,
    ) -> Self {
        let lease_until = now.saturating_add(ttl.as_millis());
        Self {
            phase: Phase::Claimed {
                owner,
                lease_until,
                lease_ttl: ttl.as_millis(),
            },
            fencing,
            fingerprint,
            expires_at: lease_until.saturating_add(trace_ttl(ttl.as_millis())),
        }
    }
}

/// Claims a key (see [`IdempotencyStore::claim`](crate::IdempotencyStore::claim)).
pub fn claim(current: Option<&Entry>, request: &ClaimRequest, now: u64) -> Step<Claim> {
    let Some(entry) = current.filter(|e| !e.is_expired(now)) else {
        return acquire(request, 1, now);
    };
    let found = match &entry.phase {
        Phase::Completed(response) => Claim::Completed(response.clone()),
        Phase::Failed(failure) => Claim::Failed(failure.clone()),
        // The same attempt asking again (its first reply was lost): same lease, extended.
        Phase::Claimed { owner, .. } if *owner == request.owner => {
            if entry.fingerprint != request.fingerprint {
                return Step::keep(Err(Error::FingerprintMismatch));
            }
            return acquire(request, entry.fencing, now);
        }
        Phase::Claimed { lease_until, .. } if *lease_until > now => Claim::InProgress {
            retry_after: Duration::from_millis(lease_until - now),
        },
        // Released, or a lapsed lease of another owner: free for anyone.
        Phase::Claimed { .. } | Phase::Vacant => {
            return acquire(request, entry.fencing.saturating_add(1), now);
        }
    };
    if entry.fingerprint != request.fingerprint {
        return Step::keep(Err(Error::FingerprintMismatch));
    }
    Step::keep(Ok(found))
}

fn acquire(request: &ClaimRequest, fencing: u64, now: u64) -> Step<Claim> {
    let lease = Lease {
        key: request.key.clone(),
        owner: request.owner,
        fencing,
    };
    let entry = Entry::claimed(
        request.owner,
        fencing,
        request.fingerprint,
        request.lease_ttl,
        now,
    );
    Step::put(Claim::Acquired(lease), entry)
}

/// Finishes a claimed key with its response.
pub fn complete(
    current: Option<&Entry>,
    lease: &Lease,
    response: Bytes,
    retention: Ttl,
    now: u64,
) -> Step<()> {
    finish(current, lease, Phase::Completed(response), retention, now)
}

/// Finishes a claimed key with a permanent failure.
pub fn fail(
    current: Option<&Entry>,
    lease: &Lease,
    failure: Bytes,
    retention: Ttl,
    now: u64,
) -> Step<()> {
    finish(current, lease, Phase::Failed(failure), retention, now)
}

fn finish(
    current: Option<&Entry>,
    lease: &Lease,
    phase: Phase,
    retention: Ttl,
    now: u64,
) -> Step<()> {
    transition(current, lease, now, |entry| Entry {
        phase,
        fencing: entry.fencing,
        fingerprint: entry.fingerprint,
        expires_at: now.saturating_add(retention.as_millis()),
    })
}

/// Extends a held lease to `ttl` from `now`.
pub fn renew(current: Option<&Entry>, lease: &Lease, ttl: Ttl, now: u64) -> Step<()> {
    transition(current, lease, now, |entry| {
        Entry::claimed(lease.owner, entry.fencing, entry.fingerprint, ttl, now)
    })
}

/// Frees a held key, remembering its fencing number for [`trace_ttl`].
pub fn release(current: Option<&Entry>, lease: &Lease, now: u64) -> Step<()> {
    transition(current, lease, now, |entry| entry.vacated(now))
}

/// Frees a key whatever its phase; answers whether a record (a live claim or a finished
/// key, what [`Entry::record`] shows) was there.
///
/// Removing leaves the same trace as a release: the entry becomes [`Phase::Vacant`] with
/// its fencing number, kept [`trace_ttl`] of the removed lease (or [`FENCING_MEMORY`] for
/// a finished key). A removed owner may still be running; the next owner's fencing number
/// must stay above its number, or a downstream guard would reject the legitimate writer.
/// A key already vacant keeps its trace as it is.
pub fn remove(current: Option<&Entry>, key: &Key, now: u64) -> Step<bool> {
    match current.filter(|e| !e.is_expired(now)) {
        Some(entry) if entry.phase != Phase::Vacant => Step {
            answer: Ok(entry.record(key, now).is_some()),
            write: Write::Put(entry.vacated(now)),
        },
        _ => Step::keep(Ok(false)),
    }
}

fn transition(
    current: Option<&Entry>,
    lease: &Lease,
    now: u64,
    next: impl FnOnce(&Entry) -> Entry,
) -> Step<()> {
    match current.filter(|e| !e.is_expired(now) && e.is_held_by(lease)) {
        Some(entry) => Step::put((), next(entry)),
        None => Step::keep(Err(Error::LeaseLost)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new("lifecycle", "k").expect("valid key")
    }

    fn acquired(step: Step<Claim>) -> (Lease, Entry) {
        match (step.answer, step.write) {
            (Ok(Claim::Acquired(lease)), Write::Put(entry)) => (lease, entry),
            other => panic!("expected an acquisition, got {other:?}"),
        }
    }

    #[test]
    fn remove_leaves_a_trace_so_fencing_keeps_growing() {
        let request = ClaimRequest::new(key(), Ttl::from_secs(90).expect("ttl"));
        let (lease, claimed) = acquired(claim(None, &request, 0));
        let removed = remove(Some(&claimed), &key(), 10);
        assert!(matches!(removed.answer, Ok(true)));
        let Write::Put(trace) = removed.write else {
            panic!("remove must leave a trace, got {:?}", removed.write);
        };
        assert_eq!(trace.phase, Phase::Vacant);
        assert_eq!(
            trace.expires_at,
            10 + 90_000,
            "the removed lease's trace_ttl"
        );
        assert_eq!(trace.record(&key(), 10), None, "a removed key is free");
        assert!(matches!(
            release(Some(&trace), &lease, 20).answer,
            Err(Error::LeaseLost)
        ));
        let other = ClaimRequest::new(key(), Ttl::from_secs(1).expect("ttl"));
        let (next, _) = acquired(claim(Some(&trace), &other, 20));
        assert_eq!(next.fencing, lease.fencing + 1);

        // A finished key's trace lasts FENCING_MEMORY; a trace is left as it is.
        let done = complete(
            Some(&claimed),
            &lease,
            Bytes::new(),
            Ttl::from_secs(5).expect("ttl"),
            1,
        );
        let Write::Put(done) = done.write else {
            panic!("complete writes")
        };
        let removed = remove(Some(&done), &key(), 2);
        assert!(matches!(removed.answer, Ok(true)));
        let Write::Put(trace) = removed.write else {
            panic!("a trace")
        };
        assert_eq!(trace.expires_at, 2 + FENCING_MEMORY.as_millis() as u64);
        let again = remove(Some(&trace), &key(), 3);
        assert!(matches!(again.answer, Ok(false)));
        assert_eq!(again.write, Write::Keep);
        assert_eq!(remove(None, &key(), 3).write, Write::Keep);
    }
}
