//! The broken stores' engine: a map of [`lifecycle`] entries, correct except for its one
//! [`Defect`]. It keeps its own records (it wraps no other store), so a defect can break a
//! rule at the exact place a real backend would: in the claim rule, the ownership test, a
//! write path, the key encoding or the clock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::backend::check_payload;
use idem_core::backend::lifecycle::{self, Entry, Phase, Step, Write};
use idem_core::{
    Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, RecordState, Ttl,
};

use super::Defect;

/// How long [`Defect::ShortFencingMemory`] remembers a freed key, in milliseconds.
const SHORT_TRACE_MS: u64 = 5_000;

/// How long [`Defect::HalfFencingMemory`] remembers a freed key, in milliseconds: longer
/// than the end-to-end check waits, half of what the contract asks.
const HALF_TRACE_MS: u64 = 30_000;

/// How many bytes of a namespace [`Defect::TruncatesNamespace`] keeps: more than any
/// namespace the checks would use if they only varied their ids.
const TRUNCATED_NAMESPACE: usize = 128;

/// The window a check-then-set leaves between its check and its write.
const GAP: Duration = Duration::from_millis(5);

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn prefix(text: &str, bytes: usize) -> &str {
    let cut = (0..=text.len().min(bytes))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

/// Whether `text` matches `pattern` as SQL's `LIKE` does with no escape character: `%`
/// matches any run of characters, `_` any one character.
fn like(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // The last `%` seen, and where in the text its run would end if it took one more.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) && pattern[p] != '%' {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some((p, t));
            p += 1;
        } else if let Some((at, from)) = star {
            // Let the last `%` take one more character and try again from there.
            star = Some((at, from + 1));
            p = at + 1;
            t = from + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '%')
}

/// `text` with every character of four UTF-8 bytes replaced by `?`, as a three-byte
/// character set keeps it.
fn narrowed(text: &str) -> String {
    text.chars()
        .map(|c| if c.len_utf8() == 4 { '?' } else { c })
        .collect()
}

/// A map-backed store with one [`Defect`].
#[derive(Debug)]
pub struct BrokenStore {
    pub(super) defect: Defect,
    origin: Instant,
    pub(super) max_payload: usize,
    state: Mutex<State>,
    /// Answers every call as a store whose server is gone (see `broken::sabotage`).
    pub(super) down: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Slots whose record was replaced by bytes that do not decode (`Sabotage`).
    pub(super) corrupt: HashSet<String>,
    /// Entries by encoded key ([`BrokenStore::slot`]); expired ones stay until overwritten.
    pub(super) entries: HashMap<String, Entry>,
    /// The retention each finished key was given, for the sliding-expiry defect.
    retention: HashMap<String, u64>,
    /// Every lease handed out per key, for the lease-reviving defect.
    leases: HashMap<String, Vec<Lease>>,
    /// The per-key locks of the calls presenting a lease, for [`Defect::RemoveIgnoresLeaseLock`].
    lease_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The second step of a transition written in two.
enum Later<F> {
    /// Runs the transition on the entry as it was checked.
    Write(Entry, F),
    /// Writes this entry.
    Put(Entry),
}

/// Which transition presents a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Finish,
    Renew,
    Release,
}

impl BrokenStore {
    pub(super) fn new(defect: Defect, max_payload: usize) -> Self {
        Self {
            defect,
            origin: Instant::now(),
            max_payload,
            state: Mutex::default(),
            down: false,
        }
    }

    /// A store with this defect whose server is gone.
    pub(super) fn unreachable(defect: Defect, max_payload: usize) -> Self {
        Self {
            down: true,
            ..Self::new(defect, max_payload)
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn lock(&self) -> Result<MutexGuard<'_, State>, Error> {
        self.state
            .lock()
            .map_err(|_| Error::backend("a broken store's lock was poisoned"))
    }

    /// Where a key lives. The honest encoding is length-prefixed, so no part can move the
    /// boundary between namespace and id.
    pub(super) fn slot(&self, key: &Key) -> String {
        let (namespace, id) = (key.namespace(), key.id());
        match self.defect {
            Defect::LeaksNamespaces => format!("shared:{id}"),
            Defect::MangleKeys => {
                let folded = id.to_lowercase();
                format!("{}:{namespace}:{}", namespace.len(), prefix(&folded, 64))
            }
            Defect::FoldsNamespaceCase => {
                let folded = namespace.to_lowercase();
                format!("{}:{folded}:{id}", folded.len())
            }
            Defect::JoinsWithSeparator => format!("{namespace}|{id}"),
            Defect::TruncatesNamespace => {
                let kept = prefix(namespace, TRUNCATED_NAMESPACE);
                format!("{}:{kept}:{id}", kept.len())
            }
            Defect::ReplacesAstralChars => {
                let (namespace, id) = (narrowed(namespace), narrowed(id));
                format!("{}:{namespace}:{id}", namespace.len())
            }
            _ => format!("{}:{namespace}:{id}", namespace.len()),
        }
    }

    /// Stretches a TTL a thousandfold, within what `Ttl` accepts.
    fn stretched(ttl: Ttl) -> Result<Ttl, Error> {
        Ttl::new((ttl.as_duration() * 1000).min(Ttl::MAX))
    }

    /// `ttl` in whole seconds, at least one: what an expiry counted in seconds keeps of it.
    fn in_seconds(ttl: Ttl) -> Result<Ttl, Error> {
        Ttl::new(Duration::from_secs(ttl.as_duration().as_secs().max(1)))
    }

    fn payload(&self, payload: Bytes) -> Result<Bytes, Error> {
        if self.defect != Defect::IgnoresPayloadLimit {
            check_payload(payload.len(), self.max_payload)?;
        }
        Ok(match self.defect {
            Defect::ReencodesPayloads => {
                Bytes::from(String::from_utf8_lossy(&payload).into_owned())
            }
            Defect::TrimsPayloads => {
                let kept = payload
                    .iter()
                    .rposition(|b| *b != b' ')
                    .map_or(0, |i| i + 1);
                payload.slice(..kept)
            }
            _ => payload,
        })
    }

    /// Whether this claim goes through a check-then-set: decided on a snapshot, written
    /// after a gap, so concurrent claimers all act on the same snapshot.
    fn racy_claim(&self, raw: Option<&Entry>, request: &ClaimRequest, now: u64) -> bool {
        let free_but_known = |e: &Entry| {
            !e.is_expired(now)
                && match e.phase {
                    Phase::Vacant => true,
                    Phase::Claimed { lease_until, .. } => lease_until <= now,
                    _ => false,
                }
        };
        match self.defect {
            Defect::TwoWinnersOnTakeover => raw.is_some_and(free_but_known),
            Defect::RacesExpiredRecords => raw.is_some_and(|e| e.is_expired(now)),
            Defect::LapsedRetryCheckThenSet => raw.is_some_and(|e| {
                !e.is_expired(now)
                    && matches!(e.phase, Phase::Claimed { owner, lease_until, .. }
                        if owner == request.owner && lease_until <= now)
            }),
            Defect::RetriedClaimCheckThenSet => raw.is_some_and(|e| {
                !e.is_expired(now)
                    && matches!(e.phase, Phase::Claimed { owner, lease_until, .. }
                        if owner == request.owner && lease_until > now)
            }),
            _ => false,
        }
    }

    /// Under [`Defect::TornClaim`], what the first acquisition of a key the store does not
    /// know writes first: the claim with no fencing number yet (0).
    fn torn_claim(&self, raw: Option<&Entry>, step: &Step<Claim>, now: u64) -> Option<Entry> {
        let unknown = raw.is_none_or(|e| e.is_expired(now));
        match (&step.answer, &step.write) {
            (Ok(Claim::Acquired(_)), Write::Put(entry))
                if self.defect == Defect::TornClaim && unknown =>
            {
                Some(Entry::new(
                    entry.phase.clone(),
                    0,
                    entry.fingerprint,
                    entry.expires_at,
                ))
            }
            _ => None,
        }
    }

    /// The claim rule, with this store's defect.
    fn decide_claim(
        &self,
        state: &State,
        slot: &str,
        request: &ClaimRequest,
        now: u64,
    ) -> Step<Claim> {
        let current = state.entries.get(slot).filter(|e| !e.is_expired(now));
        let free = |e: &Entry| e.record(&request.key, now).is_none();
        let own = current
            .filter(|e| matches!(e.phase, Phase::Claimed { owner, .. } if owner == request.owner));
        match self.defect {
            Defect::ReusesFencing if current.is_some_and(free) => {
                return lifecycle::claim(None, request, now);
            }
            Defect::FreeKeyKeepsFingerprint
                if current.is_some_and(|e| free(e) && e.fingerprint != request.fingerprint) =>
            {
                return Step::keep(Err(Error::FingerprintMismatch));
            }
            Defect::ForgetsOwnClaim if own.is_some() => {
                return Step::keep(Ok(Claim::InProgress {
                    retry_after: Duration::from_secs(1),
                }));
            }
            Defect::ReclaimDoesNotExtend => {
                if let Some(entry) = own {
                    return Step::keep(Ok(Claim::Acquired(request.lease(entry.fencing))));
                }
            }
            Defect::ReclaimKeepsExpiry => {
                if let Some(entry) = own {
                    let mut step = lifecycle::claim(current, request, now);
                    if let Write::Put(extended) = &mut step.write {
                        extended.expires_at = entry.expires_at;
                    }
                    return step;
                }
            }
            Defect::OwnRetryIgnoresFingerprint => {
                if let Some(entry) = own {
                    let retried = request.clone().with_fingerprint(entry.fingerprint);
                    return lifecycle::claim(current, &retried, now);
                }
            }
            Defect::RetryRevivesOldLease => {
                let held_by_other = current.is_some_and(|e| {
                    matches!(e.phase, Phase::Claimed { owner, lease_until, .. }
                        if owner != request.owner && lease_until > now)
                });
                let old = state
                    .leases
                    .get(slot)
                    .and_then(|leases| leases.iter().rev().find(|l| l.owner == request.owner));
                if let (true, Some(old)) = (held_by_other, old) {
                    return Step::keep(Ok(Claim::Acquired(old.clone())));
                }
            }
            _ => {}
        }
        let mut step = lifecycle::claim(current, request, now);
        match (&mut step.answer, current) {
            (Ok(Claim::InProgress { retry_after }), Some(entry)) => match self.defect {
                Defect::TwoWinners => {
                    step.answer = Ok(Claim::Acquired(request.lease(0)));
                }
                Defect::RetryAfterIsLeaseTtl => {
                    if let Phase::Claimed { lease_ttl, .. } = entry.phase {
                        *retry_after = Duration::from_millis(lease_ttl);
                    }
                }
                _ => {}
            },
            (Ok(Claim::Completed(_) | Claim::Failed(_)), Some(entry))
                if self.defect == Defect::SlidingRetention =>
            {
                step.write = Write::Put(self.slid(state, slot, entry, now));
            }
            _ => {}
        }
        step
    }

    /// Writes what a claim decided and answers it.
    fn apply(
        &self,
        state: &mut State,
        slot: String,
        mut step: Step<Claim>,
    ) -> Result<Claim, Error> {
        // The lease as a careless store builds it: from its parts, not from its claim.
        if let (Ok(Claim::Acquired(lease)), Defect::LeaseWithoutFingerprint) =
            (&mut step.answer, self.defect)
        {
            *lease = Lease::new(lease.key.clone(), lease.owner, lease.fencing);
        }
        match step.write {
            Write::Put(entry) => {
                state.entries.insert(slot.clone(), self.kept(entry));
            }
            Write::Remove => {
                state.entries.remove(&slot);
            }
            Write::Keep => {}
        }
        if let Ok(Claim::Acquired(lease)) = &step.answer {
            state.leases.entry(slot).or_default().push(lease.clone());
        }
        step.answer
    }

    /// How long the entry at `slot` is kept, in milliseconds; `None` when there is none.
    pub(super) fn kept_ms(&self, slot: &str) -> Result<Option<u64>, Error> {
        let state = self.lock()?;
        let now = self.now();
        Ok(state
            .entries
            .get(slot)
            .filter(|e| !e.is_expired(now))
            .map(|e| e.expires_at - now))
    }

    /// The entry as this store keeps it: a freed key's trace (a lapsed or vacant entry) is
    /// cut to [`SHORT_TRACE_MS`] under [`Defect::ShortFencingMemory`], to
    /// [`HALF_TRACE_MS`] under [`Defect::HalfFencingMemory`].
    fn kept(&self, entry: Entry) -> Entry {
        let trace_ms = match self.defect {
            Defect::ShortFencingMemory => SHORT_TRACE_MS,
            Defect::HalfFencingMemory => HALF_TRACE_MS,
            _ => return entry,
        };
        let expires_at = match entry.phase {
            Phase::Claimed { lease_until, .. } => lease_until.saturating_add(trace_ms),
            Phase::Vacant => entry
                .expires_at
                .saturating_sub(lifecycle::trace_ttl(0))
                .saturating_add(trace_ms),
            Phase::Completed(_) | Phase::Failed(_) => entry.expires_at,
        };
        Entry::new(entry.phase, entry.fencing, entry.fingerprint, expires_at)
    }

    /// A finished entry whose retention starts over at `now`: the sliding-expiry defect.
    fn slid(&self, state: &State, slot: &str, entry: &Entry, now: u64) -> Entry {
        let retention = state.retention.get(slot).copied().unwrap_or(0);
        Entry::new(
            entry.phase.clone(),
            entry.fencing,
            entry.fingerprint,
            now.saturating_add(retention),
        )
    }

    /// Whether `lease` may change `entry`, by this store's ownership test.
    fn held(&self, entry: &Entry, lease: &Lease, now: u64, op: Op) -> bool {
        let claimed = matches!(entry.phase, Phase::Claimed { .. });
        let by_owner = matches!(entry.phase, Phase::Claimed { owner, .. } if owner == lease.owner);
        let same_fencing = entry.fencing == lease.fencing;
        let live = matches!(entry.phase, Phase::Claimed { lease_until, .. } if lease_until > now);
        match self.defect {
            Defect::IgnoresOwner => claimed,
            Defect::ChecksOwnerOnly => by_owner,
            Defect::ChecksFencingOnly => claimed && same_fencing,
            Defect::FinishIgnoresState if op == Op::Finish => {
                same_fencing
                    && (by_owner || matches!(entry.phase, Phase::Completed(_) | Phase::Failed(_)))
            }
            Defect::DropsLapsedLeases => entry.is_held_by(lease) && live,
            Defect::HeldComparesLeaseFingerprint => {
                entry.is_held_by(lease) && entry.fingerprint == lease.fingerprint
            }
            Defect::DropsLapsedRenewals if op == Op::Renew => entry.is_held_by(lease) && live,
            _ => entry.is_held_by(lease),
        }
    }

    /// Runs a transition that presents `lease`: `LeaseLost` unless held, else `next`.
    async fn transition(
        &self,
        lease: &Lease,
        op: Op,
        next: impl FnOnce(&Entry, u64) -> Entry,
    ) -> Result<(), Error> {
        let slot = self.slot(&lease.key);
        self.reachable().await?;
        if self.undecodable(&slot)? {
            return Err(match self.defect {
                Defect::CorruptAsFree => Error::LeaseLost,
                _ => Self::corrupt(),
            });
        }
        let locked = self.defect == Defect::RemoveIgnoresLeaseLock;
        let _lease_lock = if locked {
            Some(self.lease_lock(&slot)?.lock_owned().await)
        } else {
            None
        };
        let later = {
            let mut state = self.lock()?;
            let now = self.now();
            let Some(entry) = state
                .entries
                .get(&slot)
                .filter(|e| !e.is_expired(now) && self.held(e, lease, now, op))
                .cloned()
            else {
                return Err(Error::LeaseLost);
            };
            let live =
                matches!(entry.phase, Phase::Claimed { lease_until, .. } if lease_until > now);
            match self.defect {
                Defect::CheckThenSetFinish if op == Op::Finish => Later::Write(entry, next),
                Defect::CheckThenSetRelease if op == Op::Release => Later::Write(entry, next),
                Defect::CheckThenSetLiveWrites if live => Later::Write(entry, next),
                Defect::RemoveIgnoresLeaseLock if live && op != Op::Finish => {
                    Later::Write(entry, next)
                }
                Defect::TornFinish if op == Op::Finish && live => {
                    // The state lands now, its payload after the gap.
                    let full = self.kept(next(&entry, now));
                    state
                        .entries
                        .insert(slot.clone(), Self::without_payload(full.clone()));
                    Later::Put(full)
                }
                _ => {
                    state.entries.insert(slot, self.kept(next(&entry, now)));
                    return Ok(());
                }
            }
        };
        tokio::time::sleep(GAP).await;
        let now = self.now();
        let entry = match later {
            Later::Write(checked, next) => self.kept(next(&checked, now)),
            Later::Put(entry) => entry,
        };
        self.lock()?.entries.insert(slot, entry);
        Ok(())
    }

    /// The lock the calls presenting a lease on `slot` take under
    /// [`Defect::RemoveIgnoresLeaseLock`].
    fn lease_lock(&self, slot: &str) -> Result<Arc<tokio::sync::Mutex<()>>, Error> {
        let mut state = self.lock()?;
        Ok(Arc::clone(
            state.lease_locks.entry(slot.to_owned()).or_default(),
        ))
    }

    /// A finished entry with its payload not written yet, for [`Defect::TornFinish`] (and
    /// with its payload gone already, for [`Defect::TornRemove`]).
    fn without_payload(entry: Entry) -> Entry {
        let phase = match entry.phase {
            Phase::Completed(_) => Phase::Completed(Bytes::new()),
            Phase::Failed(_) => Phase::Failed(Bytes::new()),
            other => other,
        };
        Entry::new(phase, entry.fencing, entry.fingerprint, entry.expires_at)
    }

    /// Under [`Defect::TornRemove`], removes a finished record in two steps (its payload,
    /// then after the gap the record, if nothing replaced it meanwhile) and answers.
    async fn torn_remove(
        &self,
        slot: &str,
        key: &Key,
    ) -> Result<Option<Result<bool, Error>>, Error> {
        if self.defect != Defect::TornRemove {
            return Ok(None);
        }
        let (blank, step) = {
            let mut state = self.lock()?;
            let now = self.now();
            let Some(entry) = state
                .entries
                .get(slot)
                .filter(|e| {
                    !e.is_expired(now) && matches!(e.phase, Phase::Completed(_) | Phase::Failed(_))
                })
                .cloned()
            else {
                return Ok(None);
            };
            let blank = Self::without_payload(entry.clone());
            state.entries.insert(slot.to_owned(), blank.clone());
            (blank, lifecycle::remove(Some(&entry), key, now))
        };
        tokio::time::sleep(GAP).await;
        if let Write::Put(trace) = step.write {
            let mut state = self.lock()?;
            if state.entries.get(slot) == Some(&blank) {
                state.entries.insert(slot.to_owned(), self.kept(trace));
            }
        }
        Ok(Some(step.answer))
    }

    /// Under [`Defect::RemoveAnswersFromSnapshot`], the answer a remove of a finished record
    /// decided before its delete (`true`), after waiting out the gap; `None` otherwise.
    async fn snapshot_answer(&self, slot: &str) -> Result<Option<bool>, Error> {
        if self.defect != Defect::RemoveAnswersFromSnapshot {
            return Ok(None);
        }
        let finished = {
            let state = self.lock()?;
            let now = self.now();
            state.entries.get(slot).is_some_and(|e| {
                !e.is_expired(now) && matches!(e.phase, Phase::Completed(_) | Phase::Failed(_))
            })
        };
        if !finished {
            return Ok(None);
        }
        tokio::time::sleep(GAP).await;
        Ok(Some(true))
    }

    /// Under [`Defect::RemoveMatchesLike`], removes every other slot that `slot` matches as
    /// a `LIKE` pattern, leaving each the trace a removal leaves.
    fn remove_matching(&self, state: &mut State, slot: &str, key: &Key, now: u64) {
        // Without a `%` only a text of as many characters can match: a cheap first cut.
        let chars = (!slot.contains('%')).then(|| slot.chars().count());
        let matched: Vec<String> = state
            .entries
            .keys()
            .filter(|other| *other != slot)
            .filter(|other| chars.is_none_or(|n| other.chars().count() == n))
            .filter(|other| like(slot, other))
            .cloned()
            .collect();
        for other in matched {
            let current = state.entries.get(&other).filter(|e| !e.is_expired(now));
            if let Write::Put(trace) = lifecycle::remove(current, key, now).write {
                state.entries.insert(other, self.kept(trace));
            }
        }
    }

    async fn finish(&self, lease: &Lease, phase: Phase, retention: Ttl) -> Result<(), Error> {
        let retention = match self.defect {
            Defect::IgnoresRetention => Self::stretched(retention)?,
            _ => retention,
        };
        let from_claim = self.defect == Defect::RetentionFromClaim;
        let never_extends = self.defect == Defect::FinishKeepsShorterExpiry;
        let fingerprint = |entry: &Entry| match self.defect {
            Defect::FinishWritesLeaseFingerprint => lease.fingerprint,
            _ => entry.fingerprint,
        };
        self.transition(lease, Op::Finish, |entry, now| {
            let start = match entry.phase {
                Phase::Claimed {
                    lease_until,
                    lease_ttl,
                    ..
                } if from_claim => lease_until.saturating_sub(lease_ttl),
                _ => now,
            };
            let retained_until = start.saturating_add(retention.as_millis());
            let expires_at = if never_extends {
                retained_until.min(entry.expires_at)
            } else {
                retained_until
            };
            Entry::new(phase, entry.fencing, fingerprint(entry), expires_at)
        })
        .await?;
        self.lock()?
            .retention
            .insert(self.slot(&lease.key), retention.as_millis());
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for BrokenStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let mut request = request.clone();
        match self.defect {
            Defect::NeverExpiresLeases => request.lease_ttl = Self::stretched(request.lease_ttl)?,
            Defect::LeasesInWholeSeconds => {
                request.lease_ttl = Self::in_seconds(request.lease_ttl)?
            }
            Defect::IgnoresFingerprints => request.fingerprint = None,
            _ => {}
        }
        let slot = self.slot(&request.key);
        self.reachable().await?;
        if self.undecodable(&slot)? {
            match self.defect {
                // The garbage decodes as "no record": the claim writes over it.
                Defect::CorruptAsFree => self.forget(&slot)?,
                _ => return Err(Self::corrupt()),
            }
        }
        let delayed = {
            let mut state = self.lock()?;
            let now = self.now();
            let step = self.decide_claim(&state, &slot, &request, now);
            if let Some(torn) = self.torn_claim(state.entries.get(&slot), &step, now) {
                // The claim lands now, its new fencing number after the gap.
                state.entries.insert(slot.clone(), torn);
            } else if !self.racy_claim(state.entries.get(&slot), &request, now) {
                return self.apply(&mut state, slot, step);
            }
            step
        };
        tokio::time::sleep(GAP).await;
        self.apply(&mut *self.lock()?, slot, delayed)
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        let response = self.payload(response)?;
        self.finish(lease, Phase::Completed(response), retention)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        let failure = self.payload(failure)?;
        let phase = match self.defect {
            Defect::FailRecordsCompletion => Phase::Completed(failure),
            _ => Phase::Failed(failure),
        };
        self.finish(lease, phase, retention).await
    }

    /// As a store that hands back its futures unboxed would, and where
    /// [`Defect::UnboxedCompleteFails`] breaks it.
    #[allow(clippy::manual_async_fn)] // the trait's signature, which async_trait leaves as is
    fn complete_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        response: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        async move {
            match self.defect {
                Defect::UnboxedCompleteFails => self.fail(lease, response, retention).await,
                _ => self.complete(lease, response, retention).await,
            }
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.reachable().await?;
        if self.undecodable(&self.slot(&lease.key))? {
            return Err(Self::corrupt());
        }
        let ttl = match self.defect {
            Defect::NoopRenew => return Ok(()),
            Defect::NeverExpiresLeases => Self::stretched(ttl)?,
            Defect::LeasesInWholeSeconds => Self::in_seconds(ttl)?,
            _ => ttl,
        };
        let from_old_end = self.defect == Defect::RenewAddsToOldEnd;
        let keeps_expiry = self.defect == Defect::RenewKeepsExpiry;
        let keeps_lease_ttl = self.defect == Defect::RenewKeepsLeaseTtl;
        self.transition(lease, Op::Renew, |entry, now| {
            let start = match entry.phase {
                Phase::Claimed { lease_until, .. } if from_old_end => lease_until,
                _ => now,
            };
            let lease_until = start.saturating_add(ttl.as_millis());
            let expires_at = if keeps_expiry {
                entry.expires_at
            } else {
                lease_until.saturating_add(lifecycle::trace_ttl(ttl.as_millis()))
            };
            let lease_ttl = match entry.phase {
                Phase::Claimed { lease_ttl, .. } if keeps_lease_ttl => lease_ttl,
                _ => ttl.as_millis(),
            };
            Entry::new(
                Phase::Claimed {
                    owner: lease.owner,
                    lease_until,
                    lease_ttl,
                },
                entry.fencing,
                entry.fingerprint,
                expires_at,
            )
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let as_expiry = self.defect == Defect::ReleaseAsExpiry;
        let noop = self.defect == Defect::NoopRelease;
        self.transition(lease, Op::Release, |entry, now| {
            if noop {
                // The lease is checked, then the write changes nothing.
                return entry.clone();
            }
            let lease_ttl = match entry.phase {
                Phase::Claimed { lease_ttl, .. } => lease_ttl,
                _ => 0,
            };
            if as_expiry {
                // "Release" by ending the lease now: the entry still names its owner.
                return Entry::new(
                    Phase::Claimed {
                        owner: lease.owner,
                        lease_until: now,
                        lease_ttl,
                    },
                    entry.fencing,
                    entry.fingerprint,
                    now.saturating_add(lifecycle::trace_ttl(lease_ttl)),
                );
            }
            Entry::new(
                Phase::Vacant,
                entry.fencing,
                None,
                now.saturating_add(lifecycle::trace_ttl(lease_ttl)),
            )
        })
        .await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let slot = self.slot(key);
        self.reachable().await?;
        if self.undecodable(&slot)? {
            return match self.defect {
                Defect::CorruptAsFree => Ok(None),
                _ => Err(Self::corrupt()),
            };
        }
        if self.defect == Defect::ReadsNothing {
            return Ok(None);
        }
        let mut state = self.lock()?;
        let now = self.now();
        let Some(entry) = state
            .entries
            .get(&slot)
            .filter(|e| !e.is_expired(now))
            .cloned()
        else {
            return Ok(None);
        };
        match (&entry.phase, self.defect) {
            (Phase::Claimed { owner, .. }, Defect::LapsedReadsAsClaimed) => Ok(Some(Record::new(
                key.clone(),
                RecordState::Claimed { owner: *owner },
                entry.fencing,
                entry.fingerprint,
                entry
                    .record(key, now)
                    .map_or(Duration::ZERO, |r| r.expires_in),
            ))),
            (Phase::Completed(_) | Phase::Failed(_), Defect::SlidingRetention) => {
                let slid = self.slid(&state, &slot, &entry, now);
                let record = slid.record(key, now);
                state.entries.insert(slot, slid);
                Ok(record)
            }
            _ => Ok(entry.record(key, now)),
        }
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        let slot = self.slot(key);
        self.reachable().await?;
        if self.undecodable(&slot)? {
            // Removing is the way out of a corrupt record: it goes, whatever it held.
            self.forget(&slot)?;
            return Ok(true);
        }
        if self.defect == Defect::CheckThenSetRemove {
            let step = {
                let state = self.lock()?;
                let now = self.now();
                let current = state.entries.get(&slot).filter(|e| !e.is_expired(now));
                lifecycle::remove(current, key, now)
            };
            tokio::time::sleep(GAP).await;
            if let Write::Put(entry) = step.write {
                self.lock()?.entries.insert(slot, self.kept(entry));
            }
            return step.answer;
        }
        if let Some(answer) = self.torn_remove(&slot, key).await? {
            return answer;
        }
        let answered_early = self.snapshot_answer(&slot).await?;
        let mut state = self.lock()?;
        let now = self.now();
        let current = state
            .entries
            .get(&slot)
            .filter(|e| !e.is_expired(now))
            .cloned();
        let there = current.is_some();
        let step = lifecycle::remove(current.as_ref(), key, now);
        if self.defect == Defect::RemoveMatchesLike {
            self.remove_matching(&mut state, &slot, key, now);
        }
        match self.defect {
            Defect::RemoveIsNoop => return Ok(true),
            Defect::RemoveForgetsFencing => {
                state.entries.remove(&slot);
                return step.answer;
            }
            Defect::RemoveCountsTraces => {
                if let Write::Put(entry) = step.write {
                    state.entries.insert(slot, self.kept(entry));
                }
                return Ok(there);
            }
            Defect::RemoveKeepsExpiry => {
                if let (Write::Put(trace), Some(removed)) = (step.write, &current) {
                    let kept = Entry::new(trace.phase, trace.fencing, None, removed.expires_at);
                    state.entries.insert(slot, kept);
                }
                return step.answer;
            }
            _ => {}
        }
        if let Write::Put(entry) = step.write {
            state.entries.insert(slot, self.kept(entry));
        }
        answered_early.map_or(step.answer, Ok)
    }
}
