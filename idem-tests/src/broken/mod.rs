//! Stores with one deliberate defect each, to prove the suite catches what it claims to.
//!
//! Each [`Defect`] is a plausible backend bug (a conditional write that checks one field of
//! two, a check-then-set on one path, a sliding expiry, a collation that folds case, ...)
//! in an otherwise correct map-backed store; [`Defect::caught_by`] names exactly the checks
//! that fail against it. This crate's own tests run the whole suite against every defect
//! and assert exactly that, so emptying or weakening a check shows up as a defect that is
//! no longer caught, and a check that starts catching more shows up as a table to update.
//!
//! Behind the `proof` feature: these stores are the suite's own evidence, not part of its
//! API for store authors.

mod sabotage;
mod store;
pub mod tokens;

pub use store::BrokenStore;

/// One way a store can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Defect {
    /// A claim that should be "in progress" acquires too: two owners run the operation.
    TwoWinners,
    /// A check-then-set when taking over a key that was freed (lapsed, released, removed):
    /// new keys are claimed correctly.
    TwoWinnersOnTakeover,
    /// A check-then-set when claiming a key whose record outlived its retention.
    RacesExpiredRecords,
    /// Complete, fail, renew and release ignore the owner token and fencing number.
    IgnoresOwner,
    /// The conditional write compares the owner token only, not the fencing number.
    ChecksOwnerOnly,
    /// The conditional write compares the fencing number only, not the owner token.
    ChecksFencingOnly,
    /// Complete and fail check owner and fencing but not that the key is still claimed: a
    /// finished key is finished again.
    FinishIgnoresState,
    /// Release ends the lease (as an expiry would) instead of freeing the key: the owner's
    /// lease still names the key.
    ReleaseAsExpiry,
    /// Complete and fail check the lease, then write in a second step.
    CheckThenSetFinish,
    /// Release checks the lease, then frees the key in a second step.
    CheckThenSetRelease,
    /// Remove reads the key, then writes its trace in a second step.
    CheckThenSetRemove,
    /// Complete, fail, renew and release of a live lease check it, then write in a second
    /// step (a lapsed lease is written in one): two calls with one lease both win.
    CheckThenSetLiveWrites,
    /// A finish of a live lease writes the finished state, then its payload in a second
    /// step (two statements outside a transaction): a read in between sees a finished
    /// record with no payload.
    TornFinish,
    /// Calls presenting a lease take a per-key lock; renew and release of a live lease
    /// check it, then write in a second step. `remove` does not take the lock, so a remove
    /// between a check and its write is undone (the claim comes back, or both say they
    /// freed the key). Two calls with one lease stay exclusive.
    RemoveIgnoresLeaseLock,
    /// The first acquisition of a key the store does not know inserts the claim, then sets
    /// its fencing number in a second statement (outside a transaction): a read in between
    /// sees the new owner under fencing number 0.
    TornClaim,
    /// Removing a finished record blanks its payload first, then leaves the trace in a
    /// second step: a read in between sees a finished record with no payload.
    TornRemove,
    /// The holder's retried claim reads its own live claim, then writes the extended lease
    /// in a second step: a finish or release of that lease landing in between is undone.
    RetriedClaimCheckThenSet,
    /// The retried claim of an owner whose lease lapsed (nobody took the key over) reads its
    /// own claim, then writes the extended lease in a second step: a new owner's takeover
    /// landing in between is overwritten, and two owners hold the key.
    LapsedRetryCheckThenSet,
    /// Removing a finished record decides its answer from a read made before its (atomic)
    /// delete: two removes racing both say they found the record.
    RemoveAnswersFromSnapshot,
    /// A claim by an owner that held the key before, while someone else holds it now,
    /// gets that owner's old lease back.
    RetryRevivesOldLease,
    /// "In progress" reports the holder's whole lease TTL instead of the time it has left.
    RetryAfterIsLeaseTtl,
    /// Replays and reads of a finished key restart its retention (a sliding expiry).
    SlidingRetention,
    /// Retention is counted from the claim, not from the finish.
    RetentionFromClaim,
    /// A finish may shorten the record's own expiry but never extends it past where the
    /// claim set it (the lease plus the fencing memory; an expiry written with Redis's
    /// `PEXPIRE … LT`, a `LEAST` in SQL): a retention longer than that is cut short, and a
    /// repeat after the cut runs the operation again.
    FinishKeepsShorterExpiry,
    /// A renewal extends from the lease's old end instead of from now.
    RenewAddsToOldEnd,
    /// A renewal keeps the lease TTL the claim recorded (an unchanged `lease_ttl` column),
    /// so the trace the lease leaves once freed is sized for the claim's TTL, not the
    /// renewed one: a lease renewed past 60 s is remembered only 60 s after its release.
    RenewKeepsLeaseTtl,
    /// A renewal moves the lease's end but not the record's own expiry (a row's
    /// `expires_at`, a key's TTL), which stays where the claim set it: a lease renewed past
    /// the fencing memory outlives its record, and a second owner acquires the key while
    /// the first still holds it.
    RenewKeepsExpiry,
    /// A lapsed lease nobody took over can finish but not renew.
    DropsLapsedRenewals,
    /// A free key that the store still remembers compares fingerprints.
    FreeKeyKeepsFingerprint,
    /// A lapsed claim still reads as claimed.
    LapsedReadsAsClaimed,
    /// Removing a free key the store still remembers says there was a record.
    RemoveCountsTraces,
    /// The holder's own retried claim skips the fingerprint comparison.
    OwnRetryIgnoresFingerprint,
    /// Removing forgets the key, so fencing numbers start over at 1.
    RemoveForgetsFencing,
    /// Removing leaves the trace with the expiry the record had (Redis's `SET … KEEPTTL`):
    /// a finished record removed near the end of a short retention is forgotten with it,
    /// long before the fencing memory's 60 s, so fencing numbers start over.
    RemoveKeepsExpiry,
    /// A freed key (lapsed, released, removed) is remembered 5 s instead of the fencing
    /// memory's 60 s, so fencing numbers start over after that.
    ShortFencingMemory,
    /// A freed key is remembered 30 s instead of 60 s: longer than the end-to-end check
    /// waits ([`FENCING_MEMORY_CHECKED`](crate::checks::FENCING_MEMORY_CHECKED)), so only
    /// the storage's own expiry, seen through the [`Sabotage`](crate::Sabotage) hook, shows it.
    HalfFencingMemory,
    /// Leases never expire: a crashed owner blocks its key for good.
    NeverExpiresLeases,
    /// Lease TTLs (claimed and renewed) are cut to whole seconds, at least one, as Redis's
    /// `EX` or an integer `INTERVAL` would keep them: a 1.99 s lease lasts 1 s, and a second
    /// owner acquires the key while the first still holds it.
    LeasesInWholeSeconds,
    /// Payloads are stored through a lossy UTF-8 conversion.
    ReencodesPayloads,
    /// `complete_unboxed`, the step the engine calls, stores a permanent failure: every
    /// other check goes through the trait object, which calls `complete`.
    UnboxedCompleteFails,
    /// Trailing spaces are cut from payloads, as a `CHAR` column keeps them (and as MySQL
    /// before 5.0.3 kept a `VARCHAR`): a response that ends in spaces replays shorter.
    TrimsPayloads,
    /// Fingerprints are dropped on claim.
    IgnoresFingerprints,
    /// Complete and fail write the fingerprint the presented lease carries instead of the
    /// claim's (the finished record sent whole, as idem-redis sends it, without checking the
    /// lease's field is the claim's): a lease rebuilt with `Lease::new` finishes the key with
    /// no fingerprint, and the request's own repeats are then refused as a mismatch.
    FinishWritesLeaseFingerprint,
    /// The ownership test compares the fingerprint the presented lease carries with the
    /// claim's: a lease rebuilt from its owner and fencing number (`Lease::new`) is
    /// `LeaseLost`.
    HeldComparesLeaseFingerprint,
    /// An acquired lease is built from its key, owner and fencing number (`Lease::new`)
    /// instead of from its claim (`ClaimRequest::lease`): it carries no fingerprint.
    LeaseWithoutFingerprint,
    /// A free key forgets its fencing number, so numbers are reused.
    ReusesFencing,
    /// The namespace is dropped: every namespace shares one key space.
    LeaksNamespaces,
    /// Keys are folded to lower case and cut to 64 bytes, merging distinct keys.
    MangleKeys,
    /// Namespaces are compared case-insensitively (a case-folding collation on one column).
    FoldsNamespaceCase,
    /// Namespace and id are joined with `|` unescaped, so a `|` moves the boundary.
    JoinsWithSeparator,
    /// Namespaces are cut to 128 bytes (a narrower column than `MAX_KEY_LEN`, silently
    /// truncating): namespaces that differ only past that share records.
    TruncatesNamespace,
    /// Characters outside the Basic Multilingual Plane (emoji: four bytes of UTF-8) are
    /// kept as `?`, as a MySQL `utf8` (utf8mb3) column converts what it cannot hold: keys
    /// that differ only there share a record.
    ReplacesAstralChars,
    /// Payloads over the declared limit are accepted.
    IgnoresPayloadLimit,
    /// Finished records are kept a thousand times longer than asked.
    IgnoresRetention,
    /// Renewing says yes and does nothing.
    NoopRenew,
    /// Release checks the lease and answers `Ok`, but its write changes nothing (an update
    /// whose row count is not looked at): the key stays claimed until its lease ends.
    NoopRelease,
    /// Fail records the failure as a completion (one finish statement for both, its state
    /// column fixed): a repeat gets the failure's bytes back as a success.
    FailRecordsCompletion,
    /// A claim retried by the same owner is told "in progress".
    ForgetsOwnClaim,
    /// A claim retried by the same owner gets its lease back but not extended.
    ReclaimDoesNotExtend,
    /// A claim retried by the same owner extends its lease but not the record's own expiry,
    /// which stays where the first claim set it: a retry asking for a lease past the
    /// fencing memory outlives its record, and a second owner acquires the key.
    ReclaimKeepsExpiry,
    /// A lapsed lease nobody took over can no longer finish.
    DropsLapsedLeases,
    /// Reading always finds nothing.
    ReadsNothing,
    /// Removing says yes and removes nothing.
    RemoveIsNoop,
    /// Removing deletes every record whose encoded key matches the key's as a `LIKE`
    /// pattern (a `DELETE … WHERE k LIKE ?` without escaping): `%` and `_` in a key match
    /// other keys, so removing `a_` removes `ab`'s record too.
    RemoveMatchesLike,
    /// A record that does not decode counts as no record: it reads as free, and a claim
    /// writes over it.
    CorruptAsFree,
    /// A freed key's trace that does not decode counts as no trace (only a claim or a
    /// finished record is checked): it reads as free, and a claim writes over it with
    /// fencing number 1, below the numbers the key had already issued.
    CorruptTraceAsFree,
    /// A server that does not answer is reported as `Backend` (not worth retrying) instead
    /// of `Unavailable`.
    UnavailableAsBackend,
    /// A call to a server that does not answer waits forever.
    HangsWhenDown,
}

impl Defect {
    /// Every defect.
    pub const ALL: &'static [Defect] = &[
        Defect::TwoWinners,
        Defect::TwoWinnersOnTakeover,
        Defect::RacesExpiredRecords,
        Defect::IgnoresOwner,
        Defect::ChecksOwnerOnly,
        Defect::ChecksFencingOnly,
        Defect::FinishIgnoresState,
        Defect::ReleaseAsExpiry,
        Defect::CheckThenSetFinish,
        Defect::CheckThenSetRelease,
        Defect::CheckThenSetRemove,
        Defect::CheckThenSetLiveWrites,
        Defect::TornFinish,
        Defect::RemoveIgnoresLeaseLock,
        Defect::TornClaim,
        Defect::TornRemove,
        Defect::RetriedClaimCheckThenSet,
        Defect::LapsedRetryCheckThenSet,
        Defect::RemoveAnswersFromSnapshot,
        Defect::RetryRevivesOldLease,
        Defect::RetryAfterIsLeaseTtl,
        Defect::SlidingRetention,
        Defect::RetentionFromClaim,
        Defect::FinishKeepsShorterExpiry,
        Defect::RenewAddsToOldEnd,
        Defect::RenewKeepsLeaseTtl,
        Defect::RenewKeepsExpiry,
        Defect::DropsLapsedRenewals,
        Defect::FreeKeyKeepsFingerprint,
        Defect::LapsedReadsAsClaimed,
        Defect::RemoveCountsTraces,
        Defect::OwnRetryIgnoresFingerprint,
        Defect::RemoveForgetsFencing,
        Defect::RemoveKeepsExpiry,
        Defect::ShortFencingMemory,
        Defect::HalfFencingMemory,
        Defect::NeverExpiresLeases,
        Defect::LeasesInWholeSeconds,
        Defect::ReencodesPayloads,
        Defect::TrimsPayloads,
        Defect::UnboxedCompleteFails,
        Defect::IgnoresFingerprints,
        Defect::FinishWritesLeaseFingerprint,
        Defect::HeldComparesLeaseFingerprint,
        Defect::LeaseWithoutFingerprint,
        Defect::ReusesFencing,
        Defect::LeaksNamespaces,
        Defect::MangleKeys,
        Defect::FoldsNamespaceCase,
        Defect::JoinsWithSeparator,
        Defect::TruncatesNamespace,
        Defect::ReplacesAstralChars,
        Defect::IgnoresPayloadLimit,
        Defect::IgnoresRetention,
        Defect::NoopRenew,
        Defect::NoopRelease,
        Defect::FailRecordsCompletion,
        Defect::ForgetsOwnClaim,
        Defect::ReclaimDoesNotExtend,
        Defect::ReclaimKeepsExpiry,
        Defect::DropsLapsedLeases,
        Defect::ReadsNothing,
        Defect::RemoveIsNoop,
        Defect::RemoveMatchesLike,
        Defect::CorruptAsFree,
        Defect::CorruptTraceAsFree,
        Defect::UnavailableAsBackend,
        Defect::HangsWhenDown,
    ];

    /// Exactly the checks that fail against this defect: this crate's proof asserts that
    /// each of them fails and, where [`Defect::is_exact`], that no other check does, so the
    /// list is the true table of what catches what. The randomized
    /// [`model`](crate::checks::model) check may also catch a defect it is not listed for,
    /// in a run whose random steps happen to reach it.
    #[must_use]
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            Defect::TwoWinners => &[
                "exclusive_claim",
                "exclusive_claim_many_keys",
                "exclusive_every_path",
                "exclusive_takeover",
                "fingerprints",
                "finish_races_takeover",
                "free_key",
                "in_progress_retry_after",
                "lapsed_lease_still_finishes",
                "lease_expiry",
                "model",
                "own_retry_after_takeover",
                "renewal",
                "renewal_from_now",
                "unboxed_steps",
                "uncertain_claim",
            ],
            Defect::TwoWinnersOnTakeover => &[
                "exclusive_every_path",
                "exclusive_takeover",
                "finish_races_takeover",
            ],
            Defect::RacesExpiredRecords => &["exclusive_every_path"],
            Defect::IgnoresOwner => &[
                "finish_races_takeover",
                "freeing_races_takeover",
                "lease_identity",
                "model",
                "removal_fencing",
                "spent_lease",
                "stale_lease",
                "unboxed_steps",
            ],
            Defect::ChecksOwnerOnly => {
                &["lease_identity", "model", "removal_fencing", "spent_lease"]
            }
            Defect::ChecksFencingOnly => &["lease_identity", "model", "unboxed_steps"],
            Defect::FinishIgnoresState => &["finishes_race_each_other", "model", "spent_lease"],
            Defect::ReleaseAsExpiry => &[
                "finishes_race_each_other",
                "lease_identity",
                "model",
                "retried_claim_races_own_lease",
                "spent_lease",
            ],
            Defect::CheckThenSetFinish => &[
                "finish_races_takeover",
                "finishes_race_each_other",
                "removal_races_holder",
            ],
            Defect::CheckThenSetRelease => &[
                "finishes_race_each_other",
                "freeing_races_takeover",
                "removal_races_holder",
            ],
            Defect::CheckThenSetRemove => &[
                "freeing_races_takeover",
                "removal_races_holder",
                "removals_race_each_other",
            ],
            Defect::CheckThenSetLiveWrites => &["finishes_race_each_other", "removal_races_holder"],
            Defect::TornFinish => &[
                "reads_race_writes",
                "removal_races_holder",
                "retried_claim_races_own_lease",
            ],
            Defect::RemoveIgnoresLeaseLock => &["removal_races_holder"],
            Defect::TornClaim => &["reads_race_claims_and_removals"],
            Defect::TornRemove => &["reads_race_claims_and_removals", "removals_race_each_other"],
            Defect::RetriedClaimCheckThenSet => &["retried_claim_races_own_lease"],
            Defect::LapsedRetryCheckThenSet => &["retried_claim_races_takeover"],
            Defect::RemoveAnswersFromSnapshot => &["removals_race_each_other"],
            Defect::RetryRevivesOldLease => &[
                "model",
                "own_retry_after_takeover",
                "retried_claim_races_takeover",
            ],
            // The randomized check reaches it only when an "in progress" answer comes a
            // quantum or more into the holder's lease, which some runs' seeds never do.
            Defect::RetryAfterIsLeaseTtl => &["in_progress_retry_after"],
            Defect::SlidingRetention => &["model", "retention_from_finish"],
            Defect::RetentionFromClaim => &["model", "retention_from_finish"],
            Defect::FinishKeepsShorterExpiry => &["trace_lifetime"],
            Defect::RenewAddsToOldEnd => &["in_progress_retry_after", "model", "renewal_from_now"],
            Defect::RenewKeepsLeaseTtl | Defect::RenewKeepsExpiry => &["trace_lifetime"],
            Defect::DropsLapsedRenewals => &["lapsed_lease_still_finishes"],
            Defect::FreeKeyKeepsFingerprint => &["free_key", "granted_lease", "model"],
            Defect::LapsedReadsAsClaimed => &["free_key", "reads_race_claims_and_removals"],
            Defect::RemoveCountsTraces => &[
                "free_key",
                "freeing_races_takeover",
                "inspection_and_removal",
                "model",
                "removal_races_holder",
                "removals_race_each_other",
            ],
            Defect::OwnRetryIgnoresFingerprint => &["fingerprints", "model"],
            Defect::RemoveForgetsFencing => &[
                "exclusive_every_path",
                "fencing_memory",
                "freeing_races_takeover",
                "model",
                "removal_fencing",
                "removal_races_holder",
                "removals_race_each_other",
                "trace_lifetime",
            ],
            Defect::RemoveKeepsExpiry | Defect::ShortFencingMemory => {
                &["fencing_memory", "trace_lifetime"]
            }
            Defect::HalfFencingMemory => &["trace_lifetime"],
            Defect::NeverExpiresLeases => &[
                "exclusive_every_path",
                "exclusive_takeover",
                "fencing_memory",
                "finish_races_takeover",
                "free_key",
                "freeing_races_takeover",
                "in_progress_retry_after",
                "inspection_and_removal",
                "lease_expiry",
                "model",
                "own_retry_after_takeover",
                "reads_race_claims_and_removals",
                "renewal_from_now",
                "stale_lease",
            ],
            Defect::LeasesInWholeSeconds => &["lease_expiry"],
            Defect::ReencodesPayloads => &["replay_fidelity"],
            Defect::TrimsPayloads => &["replay_fidelity"],
            Defect::UnboxedCompleteFails => &["unboxed_steps"],
            Defect::IgnoresFingerprints => &[
                "claim_fingerprint_decides",
                "fingerprints",
                "granted_lease",
                "inspection_and_removal",
                "model",
            ],
            Defect::FinishWritesLeaseFingerprint | Defect::HeldComparesLeaseFingerprint => {
                &["claim_fingerprint_decides"]
            }
            Defect::LeaseWithoutFingerprint => &["granted_lease"],
            Defect::ReusesFencing => &[
                "exclusive_every_path",
                "exclusive_takeover",
                "failures",
                "fencing_memory",
                "freeing_races_takeover",
                "lapsed_lease_still_finishes",
                "lease_expiry",
                "lease_identity",
                "model",
                "removal_fencing",
                "removal_races_holder",
                "removals_race_each_other",
                "retried_claim_races_own_lease",
                "retried_claim_races_takeover",
                "spent_lease",
            ],
            Defect::LeaksNamespaces => &[
                "exclusive_every_path",
                "fingerprints",
                "free_key",
                "key_fidelity",
                "namespace_isolation",
            ],
            Defect::MangleKeys => &["key_fidelity"],
            Defect::FoldsNamespaceCase => &["key_fidelity"],
            Defect::JoinsWithSeparator => &["key_fidelity"],
            Defect::TruncatesNamespace => &["key_fidelity"],
            Defect::ReplacesAstralChars => &["key_fidelity"],
            Defect::IgnoresPayloadLimit => &["bad_input"],
            Defect::IgnoresRetention => &[
                "exclusive_every_path",
                "free_key",
                "inspection_and_removal",
                "model",
                "reads_race_claims_and_removals",
                "retention",
                "retention_from_finish",
            ],
            Defect::NoopRenew => &[
                "finish_races_takeover",
                "in_progress_retry_after",
                "lapsed_lease_still_finishes",
                "lease_identity",
                "model",
                "removal_fencing",
                "renewal",
                "retention_from_finish",
                "spent_lease",
                "stale_lease",
                "trace_lifetime",
            ],
            Defect::NoopRelease => &[
                "exclusive_every_path",
                "failures",
                "fencing_memory",
                "finishes_race_each_other",
                "free_key",
                "granted_lease",
                "lease_identity",
                "model",
                "reads_race_claims_and_removals",
                "reads_race_writes",
                "removal_races_holder",
                "retried_claim_races_own_lease",
                "spent_lease",
            ],
            Defect::FailRecordsCompletion => &[
                "claim_fingerprint_decides",
                "failures",
                "fingerprints",
                "finish_races_takeover",
                "finishes_race_each_other",
                "lapsed_lease_still_finishes",
                "model",
                "reads_race_claims_and_removals",
                "reads_race_writes",
                "replay_fidelity",
                "retention",
                "retried_claim_races_own_lease",
                "unboxed_steps",
            ],
            Defect::ForgetsOwnClaim => &[
                "fingerprints",
                "granted_lease",
                "model",
                "retried_claim_races_own_lease",
                "trace_lifetime",
                "uncertain_claim",
            ],
            Defect::ReclaimDoesNotExtend => &[
                "fingerprints",
                "model",
                "retried_claim_races_takeover",
                "trace_lifetime",
                "uncertain_claim",
            ],
            Defect::ReclaimKeepsExpiry => &["trace_lifetime"],
            Defect::DropsLapsedLeases => &["lapsed_lease_still_finishes"],
            Defect::ReadsNothing => &[
                "bad_input",
                "claim_fingerprint_decides",
                "fingerprints",
                "finish_races_takeover",
                "finishes_race_each_other",
                "freeing_races_takeover",
                "inspection_and_removal",
                "lease_identity",
                "model",
                "namespace_isolation",
                "own_retry_after_takeover",
                "reads_race_claims_and_removals",
                "reads_race_writes",
                "renewal",
                "renewal_from_now",
                "replay_fidelity",
                "retention_from_finish",
                "retried_claim_races_own_lease",
                "retried_claim_races_takeover",
                "stale_lease",
            ],
            Defect::RemoveIsNoop => &[
                "exclusive_every_path",
                "fencing_memory",
                "free_key",
                "freeing_races_takeover",
                "inspection_and_removal",
                "model",
                "reads_race_claims_and_removals",
                "removal_fencing",
                "removal_races_holder",
                "removals_race_each_other",
                "trace_lifetime",
            ],
            Defect::RemoveMatchesLike => &["key_fidelity"],
            Defect::CorruptAsFree | Defect::CorruptTraceAsFree => &["corrupt_record"],
            Defect::UnavailableAsBackend | Defect::HangsWhenDown => &["unavailable_backend"],
        }
    }

    /// Whether [`Defect::caught_by`] is the whole set of checks that fail. Not for races that
    /// several checks hit (which checks' interleavings hit one changes from run to run; the
    /// races of calls with one lease only their own checks reach), nor for defects that
    /// make the concurrently running checks share keys: other checks catch those by chance
    /// too, and the table lists the checks that catch them every time. Nor for leases cut to
    /// whole seconds, which stretches the checks' short leases to a second: whether a check
    /// waiting just past a short lease sees it end is then a matter of milliseconds.
    #[must_use]
    pub fn is_exact(self) -> bool {
        !matches!(
            self,
            Defect::TwoWinners
                | Defect::TwoWinnersOnTakeover
                | Defect::RacesExpiredRecords
                | Defect::CheckThenSetFinish
                | Defect::CheckThenSetRelease
                | Defect::CheckThenSetRemove
                | Defect::LeaksNamespaces
                | Defect::LeasesInWholeSeconds
        )
    }

    /// A store with this defect, whose honest payload limit is `max_payload`.
    #[must_use]
    pub fn store(self, max_payload: usize) -> BrokenStore {
        BrokenStore::new(self, max_payload)
    }
}
