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

use std::collections::HashMap;
use std::hash::BuildHasher;
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
#[non_exhaustive]
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
#[non_exhaustive]
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
#[must_use]
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

    /// Writes the step into `entries` at `key` and hands back its answer: the whole of an
    /// [`EntryMap::update`](super::EntryMap::update) over a `HashMap` held under a lock.
    ///
    /// # Errors
    ///
    /// The step's own answer, when it is an error.
    pub fn apply_to<S: BuildHasher>(
        self,
        entries: &mut HashMap<Key, Entry, S>,
        key: &Key,
    ) -> Result<T, Error> {
        match self.write {
            Write::Keep => {}
            Write::Put(entry) => {
                entries.insert(key.clone(), entry);
            }
            Write::Remove => {
                entries.remove(key);
            }
        }
        self.answer
    }

    fn put(answer: T, entry: Entry) -> Self {
        Self {
            answer: Ok(answer),
            write: Write::Put(entry),
        }
    }
}

impl Entry {
    /// An entry in `phase`, for a store that rebuilds entries from its own encoding: the
    /// `fencing` number of the latest acquisition, the `fingerprint` of the latest claim,
    /// and when the store may forget it (`expires_at`, in store milliseconds).
    #[must_use]
    pub const fn new(
        phase: Phase,
        fencing: u64,
        fingerprint: Option<Fingerprint>,
        expires_at: u64,
    ) -> Self {
        Self {
            phase,
            fencing,
            fingerprint,
            expires_at,
        }
    }

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
#[must_use]
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
        Phase::Claimed { .. } | Phase::Vacant => return take_over(entry, request, now),
    };
    if entry.fingerprint != request.fingerprint {
        return Step::keep(Err(Error::FingerprintMismatch));
    }
    Step::keep(Ok(found))
}

/// The largest fencing number a takeover may hand out when the store keeps them in a
/// signed 64-bit column (PostgreSQL's `bigint`): a store's number above it is refused like
/// one past `u64::MAX`. See [`next_fencing`].
pub const MAX_SIGNED_FENCING: u64 = i64::MAX as u64;

/// The fencing number a takeover of a key last granted `fencing` hands out, when the store
/// can hold it (`max`: `u64::MAX`, or [`MAX_SIGNED_FENCING`] for a signed column);
/// otherwise [`Error::CorruptRecord`], and the key stays as it is.
///
/// A key cannot reach the end of the range by use (it would take 2^63 acquisitions), only
/// through a record idem did not write; and the other answer, saturating, would hand the
/// same number to a second owner, so a resource guarded by the number would accept the
/// stale owner's writes as the new one's. Every store refuses alike.
///
/// # Errors
///
/// [`Error::CorruptRecord`] when `fencing` is `max` or above: the key is left as it is.
pub fn next_fencing(fencing: u64, max: u64) -> Result<u64, Error> {
    fencing
        .checked_add(1)
        .filter(|next| *next <= max)
        .ok_or_else(|| fencing_exhausted(fencing))
}

/// The [`Error::CorruptRecord`] of a key whose fencing number `fencing` is at the end of
/// its store's range (see [`next_fencing`]).
#[must_use]
pub fn fencing_exhausted(fencing: u64) -> Error {
    Error::corrupt(format!(
        "fencing number {fencing} is at the end of the store's range and cannot grow"
    ))
}

/// A takeover of a free key: the next fencing number, or the key kept as it is.
fn take_over(entry: &Entry, request: &ClaimRequest, now: u64) -> Step<Claim> {
    match next_fencing(entry.fencing, u64::MAX) {
        Ok(fencing) => acquire(request, fencing, now),
        Err(error) => Step::keep(Err(error)),
    }
}

fn acquire(request: &ClaimRequest, fencing: u64, now: u64) -> Step<Claim> {
    let lease = request.lease(fencing);
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
#[must_use]
pub fn renew(current: Option<&Entry>, lease: &Lease, ttl: Ttl, now: u64) -> Step<()> {
    transition(current, lease, now, |entry| {
        Entry::claimed(lease.owner, entry.fencing, entry.fingerprint, ttl, now)
    })
}

/// Frees a held key, remembering its fencing number for [`trace_ttl`].
#[must_use]
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
#[must_use]
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

    fn ttl(ms: u64) -> Ttl {
        Ttl::from_millis(ms).expect("ttl")
    }

    fn put<T: std::fmt::Debug>(step: Step<T>) -> (T, Entry) {
        match (step.answer, step.write) {
            (Ok(answer), Write::Put(entry)) => (answer, entry),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn kept<T>(step: Step<T>) -> Result<T, Error> {
        assert_eq!(step.write, Write::Keep, "the step must not write");
        step.answer
    }

    fn lost(step: Step<()>) {
        assert!(matches!(kept(step), Err(Error::LeaseLost)));
    }

    fn fingerprint(byte: u8) -> Option<Fingerprint> {
        Some(Fingerprint::from_bytes(&[byte]))
    }

    #[test]
    fn the_trace_lasts_the_longer_of_a_lease_and_the_fencing_memory() {
        assert_eq!(trace_ttl(1_000), 60_000);
        assert_eq!(trace_ttl(60_000), 60_000);
        assert_eq!(trace_ttl(90_000), 90_000);
    }

    #[test]
    fn a_new_claim_holds_the_key_for_its_lease_and_leaves_a_trace_after() {
        let request = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(1));
        let (lease, entry) = acquired(claim(None, &request, 500));
        assert_eq!(lease.fencing, 1);
        assert_eq!(lease.owner, request.owner);
        assert_eq!(lease.key, key());
        assert_eq!(
            lease.fingerprint,
            fingerprint(1),
            "the claim's own fingerprint"
        );
        assert_eq!(
            entry,
            Entry {
                phase: Phase::Claimed {
                    owner: request.owner,
                    lease_until: 1_500,
                    lease_ttl: 1_000,
                },
                fencing: 1,
                fingerprint: fingerprint(1),
                expires_at: 1_500 + 60_000,
            }
        );
        // The record shows the lease's time left, and nothing once the lease is over.
        let record = entry.record(&key(), 600).expect("held");
        assert_eq!(record.state, RecordState::Claimed { owner: lease.owner });
        assert_eq!(record.expires_in, Duration::from_millis(900));
        assert_eq!(record.fencing, 1);
        assert_eq!(record.fingerprint, fingerprint(1));
        assert_eq!(record.key, key());
        assert!(entry.record(&key(), 1_499).is_some());
        assert_eq!(entry.record(&key(), 1_500), None, "the lease ended");
        assert!(entry.is_held_by(&lease));
    }

    #[test]
    fn an_entry_expires_at_its_instant_and_is_then_absent() {
        let request = ClaimRequest::new(key(), ttl(1_000));
        let (lease, entry) = acquired(claim(None, &request, 0));
        assert!(!entry.is_expired(entry.expires_at - 1));
        assert!(entry.is_expired(entry.expires_at));
        // Past its expiry an entry is absent: fencing restarts, and the old lease is lost.
        let other = ClaimRequest::new(key(), ttl(1_000));
        let (next, _) = acquired(claim(Some(&entry), &other, entry.expires_at));
        assert_eq!(next.fencing, 1);
        let (again, _) = acquired(claim(Some(&entry), &other, entry.expires_at - 1));
        assert_eq!(again.fencing, 2, "a trace still counts");
        lost(complete(
            Some(&entry),
            &lease,
            Bytes::new(),
            ttl(1_000),
            entry.expires_at,
        ));
        lost(renew(Some(&entry), &lease, ttl(1_000), entry.expires_at));
        assert!(matches!(
            kept(remove(Some(&entry), &key(), entry.expires_at)),
            Ok(false)
        ));
        assert_eq!(entry.record(&key(), entry.expires_at), None);
    }

    #[test]
    fn a_held_key_answers_others_in_progress_with_the_lease_left() {
        let holder = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(1));
        let (lease, entry) = acquired(claim(None, &holder, 0));
        let other = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(1));
        assert_eq!(
            kept(claim(Some(&entry), &other, 400)).expect("answered"),
            Claim::InProgress {
                retry_after: Duration::from_millis(600)
            }
        );
        // Another fingerprint is a mismatch even while the key is held.
        let stranger = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(2));
        assert!(matches!(
            kept(claim(Some(&entry), &stranger, 400)),
            Err(Error::FingerprintMismatch)
        ));
        // At the lease's end the key is free for anyone, with the next fencing number.
        let (next, taken) = acquired(claim(Some(&entry), &stranger, 1_000));
        assert_eq!(next.fencing, lease.fencing + 1);
        assert_eq!(taken.fingerprint, fingerprint(2));
        assert!(!taken.is_held_by(&lease));
    }

    #[test]
    fn the_holders_own_retry_extends_its_lease_with_the_same_fencing() {
        let holder = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(1));
        let (lease, entry) = acquired(claim(None, &holder, 0));
        let (again, extended) = acquired(claim(Some(&entry), &holder, 700));
        assert_eq!(again, lease);
        assert_eq!(
            extended.phase,
            Phase::Claimed {
                owner: lease.owner,
                lease_until: 1_700,
                lease_ttl: 1_000
            }
        );
        let changed = holder.clone().with_fingerprint(fingerprint(2));
        assert!(matches!(
            kept(claim(Some(&entry), &changed, 700)),
            Err(Error::FingerprintMismatch)
        ));
    }

    #[test]
    fn a_lease_is_its_owner_and_its_fencing_together() {
        let holder = ClaimRequest::new(key(), ttl(1_000));
        let (lease, entry) = acquired(claim(None, &holder, 0));
        let older = Lease::new(lease.key.clone(), lease.owner, lease.fencing + 1);
        let stranger = Lease::new(lease.key.clone(), OwnerToken::random(), lease.fencing);
        for wrong in [&older, &stranger] {
            assert!(!entry.is_held_by(wrong));
            lost(complete(Some(&entry), wrong, Bytes::new(), ttl(1_000), 1));
            lost(fail(Some(&entry), wrong, Bytes::new(), ttl(1_000), 1));
            lost(renew(Some(&entry), wrong, ttl(1_000), 1));
            lost(release(Some(&entry), wrong, 1));
        }
        lost(complete(None, &lease, Bytes::new(), ttl(1_000), 1));
    }

    #[test]
    fn finishing_keeps_fencing_and_fingerprint_and_retains_from_the_finish() {
        let holder = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(1));
        let (lease, entry) = acquired(claim(None, &holder, 0));
        // A lapsed lease nobody took over still finishes.
        let ((), done) = put(complete(
            Some(&entry),
            &lease,
            Bytes::from_static(b"ok"),
            ttl(5_000),
            2_000,
        ));
        assert_eq!(
            done,
            Entry {
                phase: Phase::Completed(Bytes::from_static(b"ok")),
                fencing: 1,
                fingerprint: fingerprint(1),
                expires_at: 7_000,
            }
        );
        let record = done.record(&key(), 3_000).expect("finished");
        assert_eq!(record.expires_in, Duration::from_millis(4_000));
        assert_eq!(
            record.state,
            RecordState::Completed {
                response: Bytes::from_static(b"ok")
            }
        );
        let ((), failed) = put(fail(
            Some(&entry),
            &lease,
            Bytes::from_static(b"no"),
            ttl(5_000),
            10,
        ));
        assert_eq!(failed.phase, Phase::Failed(Bytes::from_static(b"no")));
        assert_eq!(failed.expires_at, 5_010);
        let record = failed.record(&key(), 1_010).expect("finished");
        assert_eq!(
            record.state,
            RecordState::Failed {
                failure: Bytes::from_static(b"no")
            }
        );
        assert_eq!(record.expires_in, Duration::from_millis(4_000));
        // A finished key replays to its own fingerprint only, and is never held again.
        assert_eq!(
            kept(claim(Some(&done), &holder, 3_000)).expect("replay"),
            Claim::Completed(Bytes::from_static(b"ok"))
        );
        assert_eq!(
            kept(claim(Some(&failed), &holder, 3_000)).expect("replay"),
            Claim::Failed(Bytes::from_static(b"no"))
        );
        let changed = holder.clone().with_fingerprint(fingerprint(2));
        assert!(matches!(
            kept(claim(Some(&done), &changed, 3_000)),
            Err(Error::FingerprintMismatch)
        ));
        lost(complete(
            Some(&done),
            &lease,
            Bytes::new(),
            ttl(5_000),
            3_000,
        ));
        lost(release(Some(&done), &lease, 3_000));
        lost(renew(Some(&done), &lease, ttl(1_000), 3_000));
    }

    #[test]
    fn renewal_extends_from_now_and_release_leaves_a_trace() {
        let holder = ClaimRequest::new(key(), ttl(1_000)).with_fingerprint(fingerprint(1));
        let (lease, entry) = acquired(claim(None, &holder, 0));
        // A lapsed lease nobody took over can still be renewed.
        let ((), renewed) = put(renew(Some(&entry), &lease, ttl(2_000), 1_500));
        assert_eq!(
            renewed,
            Entry {
                phase: Phase::Claimed {
                    owner: lease.owner,
                    lease_until: 3_500,
                    lease_ttl: 2_000,
                },
                fencing: 1,
                fingerprint: fingerprint(1),
                expires_at: 3_500 + 60_000,
            }
        );
        let ((), trace) = put(release(Some(&renewed), &lease, 2_000));
        assert_eq!(
            trace,
            Entry {
                phase: Phase::Vacant,
                fencing: 1,
                fingerprint: None,
                expires_at: 2_000 + 60_000,
            }
        );
        assert_eq!(trace.record(&key(), 2_000), None);
        lost(release(Some(&trace), &lease, 2_001));
        // The next claim, even by the same owner, is a new acquisition with any fingerprint.
        let retry = holder.clone().with_fingerprint(fingerprint(9));
        let (next, _) = acquired(claim(Some(&trace), &retry, 2_001));
        assert_eq!(next.fencing, 2);
        // A long lease leaves a trace as long as itself.
        let long = ClaimRequest::new(key(), ttl(120_000));
        let (long_lease, held) = acquired(claim(None, &long, 0));
        let ((), trace) = put(release(Some(&held), &long_lease, 10));
        assert_eq!(trace.expires_at, 120_010);
    }

    #[test]
    fn removing_a_lapsed_claim_answers_false_but_leaves_its_trace() {
        let holder = ClaimRequest::new(key(), ttl(1_000));
        let (lease, entry) = acquired(claim(None, &holder, 0));
        let (answer, trace) = put(remove(Some(&entry), &key(), 1_000));
        assert!(!answer, "no record was there");
        assert_eq!(trace.phase, Phase::Vacant);
        assert_eq!(trace.fencing, lease.fencing);
        assert_eq!(trace.expires_at, 61_000);
    }

    #[test]
    fn fencing_at_the_end_of_the_range_is_refused_instead_of_wrapping_or_repeating() {
        let entry = Entry {
            phase: Phase::Vacant,
            fencing: u64::MAX,
            fingerprint: None,
            expires_at: u64::MAX,
        };
        let step = claim(Some(&entry), &ClaimRequest::new(key(), ttl(1_000)), 0);
        assert!(
            matches!(step.answer, Err(Error::CorruptRecord { .. })),
            "{:?}",
            step.answer
        );
        assert_eq!(step.write, Write::Keep);
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

    #[test]
    fn a_takeover_at_the_end_of_the_fencing_range_is_refused_and_changes_nothing() {
        let request = ClaimRequest::new(key(), Ttl::from_secs(1).expect("ttl"));
        let (_, claimed) = acquired(claim(None, &request, 0));
        let lapsed_at = |fencing| Entry {
            fencing,
            ..claimed.clone()
        };
        // Lapsed at 1 s; another owner claims at 2 s.
        let other = ClaimRequest::new(key(), Ttl::from_secs(1).expect("ttl"));
        let refused = claim(Some(&lapsed_at(u64::MAX)), &other, 2_000);
        assert!(
            matches!(refused.answer, Err(Error::CorruptRecord { .. })),
            "{:?}",
            refused.answer
        );
        assert_eq!(refused.write, Write::Keep);
        let (taken, _) = acquired(claim(Some(&lapsed_at(u64::MAX - 1)), &other, 2_000));
        assert_eq!(taken.fencing, u64::MAX);
        // The lapsed owner asking again keeps its number: nothing grows.
        let (own, _) = acquired(claim(Some(&lapsed_at(u64::MAX)), &request, 2_000));
        assert_eq!(own.fencing, u64::MAX);

        assert_eq!(next_fencing(7, u64::MAX).ok(), Some(8));
        assert_eq!(
            next_fencing(MAX_SIGNED_FENCING - 1, MAX_SIGNED_FENCING).ok(),
            Some(MAX_SIGNED_FENCING)
        );
        assert!(matches!(
            next_fencing(MAX_SIGNED_FENCING, MAX_SIGNED_FENCING),
            Err(Error::CorruptRecord { .. })
        ));
    }
}
