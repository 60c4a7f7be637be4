//! # The contract, sentence by sentence
//!
//! Each sentence of the `IdempotencyStore` and `TokenStore` docs (in `idem-core`), and of
//! the types they name, next to the conformance checks that fail a store breaking it.
//! Sentences are shortened, not changed. A check is listed only if it really fails such a
//! store; where a deliberately broken store in `broken` (behind the `proof` feature) proves
//! it, the defect is named (`Defect::…` for store checks, `TokenDefect::…` for token
//! checks; `tests/proof.rs` asserts each one is caught, by exactly the checks its
//! `caught_by` lists). What no check covers is listed
//! under [Gaps](#gaps), not hidden.
//!
//! ## `IdempotencyStore`: "The contract"
//!
//! | Sentence | Checks that fail a store breaking it | Broken store |
//! |---|---|---|
//! | Every method is atomic with respect to every other call on the same key. | [`checks::exclusive_claim`], [`checks::exclusive_claim_many_keys`], [`checks::exclusive_takeover`], [`checks::exclusive_every_path`] (claim against claim); [`checks::finish_races_takeover`] (complete/fail/renew against claim); [`checks::freeing_races_takeover`] (release/remove against claim); [`checks::finishes_race_each_other`] (two of complete/fail/release with one lease, and renew against each); [`checks::removal_races_holder`] (remove against a live lease's complete/fail/renew/release: the answers fit one order, no record comes back, fencing grows); [`checks::reads_race_writes`] (read against complete/fail/renew/release: never a torn state); [`checks::reads_race_claims_and_removals`] (read against a claim of a key freed by every path, and against a remove of a claimed, completed or failed key); [`checks::removals_race_each_other`] (remove against remove: exactly one finds the record, the trace survives); [`checks::retried_claim_races_own_lease`] (the holder's retried claim against its own lease's complete/fail/renew/release: neither undoes the other); [`checks::retried_claim_races_takeover`] (a lapsed owner's retried claim against a new owner's claim: exactly one acquires). Other pairs: see Gaps. | `TwoWinners`, `TwoWinnersOnTakeover`, `RacesExpiredRecords`, `CheckThenSetFinish`, `CheckThenSetRelease`, `CheckThenSetRemove`, `CheckThenSetLiveWrites`, `RemoveIgnoresLeaseLock`, `TornFinish`, `TornClaim`, `TornRemove`, `RemoveAnswersFromSnapshot`, `RetriedClaimCheckThenSet`, `LapsedRetryCheckThenSet` |
//! | `claim`: exactly one of any number of concurrent claims of a free key acquires it. | [`checks::exclusive_claim`], [`checks::exclusive_claim_many_keys`], [`checks::exclusive_takeover`], [`checks::exclusive_every_path`]; [`checks::retried_claim_races_takeover`] (a lapsed key claimed at once by its lapsed owner's retry and by a new owner) | `TwoWinners`, `TwoWinnersOnTakeover`, `RacesExpiredRecords`, `LapsedRetryCheckThenSet` |
//! | A key is free when it was never seen, was released, its lease expired without being finished, or its record outlived its retention. | [`checks::free_key`] (reads `None`, removes `false`, any fingerprint acquires, on every path), [`checks::exclusive_every_path`], [`checks::lease_expiry`], [`checks::failures`] (released), [`checks::retention`], [`checks::model`] | `LapsedReadsAsClaimed`, `RemoveCountsTraces`, `FreeKeyKeepsFingerprint`, `NeverExpiresLeases`, `IgnoresRetention` |
//! | On a key that is not free (claimed, completed, failed) the fingerprint is compared first: a differing stored fingerprint (`Some` vs `None` included) is `FingerprintMismatch` and changes nothing. | [`checks::fingerprints`] (every state, both `Some`/`None` directions, the holder's own retry, record unchanged); [`checks::free_key`] and [`checks::model`] (a *free* key does not compare) | `IgnoresFingerprints`, `OwnRetryIgnoresFingerprint`, `FreeKeyKeepsFingerprint` |
//! | A claim by the owner that already holds the key (same `OwnerToken`) returns the same lease again and extends it by `lease_ttl`. | [`checks::uncertain_claim`], [`checks::fingerprints`] (exact retry after a mismatch), [`checks::model`]; only while it *holds* it: [`checks::own_retry_after_takeover`]; while the holder's own call runs, without undoing it: [`checks::retried_claim_races_own_lease`]; after its lease lapsed, while a new owner claims the key, exactly one of the two acquiring: [`checks::retried_claim_races_takeover`]; that the record itself outlives a lease extended past the 60 s its first claim was kept: [`sabotage_checks::trace_lifetime`] (only where the hook is wired) | `ForgetsOwnClaim`, `ReclaimDoesNotExtend`, `RetryRevivesOldLease`, `RetriedClaimCheckThenSet`, `LapsedRetryCheckThenSet`, `ReclaimKeepsExpiry` |
//! | Fencing: each acquisition gets a fencing number greater than any the store issued for the key before, as long as the store remembers the key. | [`checks::lease_expiry`], [`checks::failures`], [`checks::exclusive_takeover`], [`checks::exclusive_every_path`], [`checks::spent_lease`], [`checks::lapsed_lease_still_finishes`], [`checks::removal_fencing`], [`checks::model`] | `ReusesFencing`, `RemoveForgetsFencing` |
//! | A store remembers a key while it holds its record, and after it was freed (lease expired, release, `remove`) for at least `lifecycle::trace_ttl` more: the longer of the lease TTL and `FENCING_MEMORY` (60 s). | That a freed key is remembered at all: [`checks::lease_expiry`] (expired), [`checks::failures`] (released), [`checks::removal_fencing`] (removed). For how long: [`checks::fencing_memory`] (end to end: every path claimed again [`checks::FENCING_MEMORY_CHECKED`] = 12 s after freeing); [`sabotage_checks::trace_lifetime`] (the whole `trace_ttl`, as the storage's own expiry says through [`Sabotage::kept_for`]: every path, a short lease and one longer than 60 s, and a short lease renewed, or extended by its holder's retried claim, past 60 s, owed from its new end, or the renewed lease's trace once released; only where the hook is wired, see Gaps). | `ReusesFencing`, `RemoveForgetsFencing`, `ShortFencingMemory`, `HalfFencingMemory`, `RenewKeepsExpiry`, `RenewKeepsLeaseTtl`, `ReclaimKeepsExpiry`, `RemoveKeepsExpiry` |
//! | `complete`, `fail`, `renew` and `release` apply only while the record is claimed by the lease's owner with the lease's fencing number; otherwise `LeaseLost`, changing nothing. | [`checks::finishes_race_each_other`] (the second of two racing calls with one lease finds it finished or released), [`checks::stale_lease`] (after a takeover), [`checks::lease_identity`] (owner and fencing both compared; a reused owner token), [`checks::spent_lease`] (after its own finish or release), [`checks::own_retry_after_takeover`], [`checks::finish_races_takeover`] (raced, loser changed nothing), [`checks::freeing_races_takeover`] (a release raced by a takeover changes nothing), [`checks::removal_races_holder`] (raced by a remove: `LeaseLost` and nothing written back), [`checks::inspection_and_removal`] (after a remove), [`checks::removal_fencing`] (removed lease spent), [`checks::model`] | `IgnoresOwner`, `ChecksOwnerOnly`, `ChecksFencingOnly`, `FinishIgnoresState`, `ReleaseAsExpiry`, `CheckThenSetFinish`, `CheckThenSetRelease`, `RemoveIgnoresLeaseLock` |
//! | (A lapsed lease nobody took over still counts, while the store remembers the key.) | [`checks::lapsed_lease_still_finishes`] (complete, fail, renew, release), [`checks::model`] | `DropsLapsedLeases`, `DropsLapsedRenewals` |
//! | Finished records keep their payload byte for byte for their retention TTL, then the key is free again. | [`checks::replay_fidelity`] (byte for byte), [`checks::retention`] (then free), [`checks::retention_from_finish`] (retention counted from the finish, once), [`checks::free_key`], [`checks::exclusive_every_path`] (retention ended), [`checks::model`]; a retention longer than the claim was kept for, kept whole by the storage: [`sabotage_checks::trace_lifetime`] (only where the hook is wired) | `ReencodesPayloads`, `TrimsPayloads`, `IgnoresRetention`, `SlidingRetention`, `RetentionFromClaim`, `RacesExpiredRecords`, `FinishKeepsShorterExpiry` |
//! | Payloads over the store's limit are `PayloadTooLarge` and nothing is written. | [`checks::bad_input`] (complete and fail one byte over the declared limit; the claim unchanged; exactly the limit accepted) | `IgnoresPayloadLimit` |
//! | Anything found in the store that does not decode is `CorruptRecord`. | [`sabotage_checks::corrupt_record`] (through the backend's [`Sabotage`] hook: every method on a record corrupted while claimed, once finished, and on a released key's trace, whose fencing number a claim must not start over; never a panic, never freed or overwritten; `remove` deletes it or keeps it; neighbours untouched). Not for the in-memory store: see below. | `CorruptAsFree`, `CorruptTraceAsFree` |
//! | An unreachable backend is `Unavailable`, with the driver error as `source`. | [`sabotage_checks::unavailable_backend`] (every method on the hook's store whose server does not answer, each within `Capabilities::unavailable_within`). Not for the in-memory store: see below. | `UnavailableAsBackend`, `HangsWhenDown` |
//! | Keys, TTLs and fingerprints arrive validated (`Key`, `Ttl`), so a store never has to check them. | [`checks::bad_input`] asserts `Key` and `Ttl` refuse malformed values (a rule of the core, not of a store: no store can break it) | none |
//! | A store must store them faithfully: two different keys never share a record. | [`checks::namespace_isolation`], [`checks::key_fidelity`] (separators, escapes, case, spacing, Unicode normalisation, characters of four UTF-8 bytes, truncation at the maximum length, in namespace and id; and removing one key leaves the others' records: `LIKE` and glob wildcards, prefixes) | `LeaksNamespaces`, `MangleKeys`, `FoldsNamespaceCase`, `JoinsWithSeparator`, `TruncatesNamespace`, `RemoveMatchesLike`, `ReplacesAstralChars` |
//!
//! ## `IdempotencyStore`: each method
//!
//! | Sentence | Checks that fail a store breaking it | Broken store |
//! |---|---|---|
//! | `claim`: claims a key: acquires it, or reports who has it and how it ended. | [`checks::exclusive_claim`] (in progress, then the completion to all), [`checks::failures`], [`checks::replay_fidelity`], [`checks::model`] | `TwoWinners`, `ReencodesPayloads`, `TrimsPayloads` |
//! | `complete`: stores the response of a finished operation, replayed to every repeat for `retention`. | [`checks::exclusive_claim`] (every claimer gets it), [`checks::replay_fidelity`], [`checks::retention`], [`checks::retention_from_finish`], [`checks::inspection_and_removal`] (reads as `Completed`), [`checks::model`] | `ReencodesPayloads`, `TrimsPayloads`, `IgnoresRetention`, `SlidingRetention`, `RetentionFromClaim` |
//! | `fail`: stores a permanent failure, replayed to every repeat for `retention`. | [`checks::failures`], [`checks::replay_fidelity`], [`checks::fingerprints`] (failed state), [`checks::retention`] (a failed record expires too), [`checks::model`] | `ReencodesPayloads`, `TrimsPayloads`, `IgnoresRetention`, `FailRecordsCompletion` |
//! | A retryable failure is not stored: `release` the lease instead, and the next request runs the operation again. | [`checks::failures`] (a released key is free at once, with a larger fencing number) | `ReusesFencing`, `NoopRelease` |
//! | `renew`: extends a live lease to `ttl` from now, so a slow operation keeps its key. | [`checks::renewal`] (outlives its first TTL), [`checks::renewal_from_now`] (from now, not from the old end; shorter shortens), [`checks::in_progress_retry_after`] (after a renewal), [`checks::lapsed_lease_still_finishes`], [`checks::model`]; that the record itself outlives a renewal past the 60 s its claim was kept: [`sabotage_checks::trace_lifetime`] (only where the hook is wired: no end-to-end check waits that long) | `NoopRenew`, `RenewAddsToOldEnd`, `DropsLapsedRenewals`, `RenewKeepsExpiry` |
//! | `release`: gives the key up without an outcome: the next claim acquires it, with a larger fencing number. | [`checks::failures`], [`checks::spent_lease`] (by anyone, the same owner token included), [`checks::exclusive_every_path`], [`checks::free_key`], [`checks::lapsed_lease_still_finishes`], [`checks::model`] | `ReleaseAsExpiry`, `ReusesFencing`, `TwoWinnersOnTakeover`, `NoopRelease` |
//! | `read`: reads a key's record, or `None` when the key is free. | [`checks::inspection_and_removal`], [`checks::free_key`] (`None` on every path), [`checks::model`] (every read against the reference), [`checks::reads_race_writes`] and [`checks::reads_race_claims_and_removals`] (while a call changes the key: the state before or after, never one in between) | `ReadsNothing`, `LapsedReadsAsClaimed`, `TornFinish`, `TornClaim`, `TornRemove` |
//! | `remove`: deletes a key's record whatever its state; says whether there was one (a live claim or a finished record: what `read` would have shown). | [`checks::inspection_and_removal`] (claimed and completed: `true`; absent: `false`), [`checks::key_fidelity`] (that key's record alone, not those of keys its text matches as a pattern), [`checks::free_key`] (a free key the store still remembers: `false`), [`checks::removal_fencing`] (claimed, completed, failed), [`checks::removals_race_each_other`] (of racing removes, exactly one finds the record), [`checks::model`] | `RemoveIsNoop`, `RemoveCountsTraces`, `RemoveAnswersFromSnapshot`, `RemoveMatchesLike` |
//! | `claim_unboxed`, `complete_unboxed`, `fail_unboxed`: `claim`, `complete` and `fail`, for a caller that knows the store's type (the engine). | [`checks::unboxed_steps`] (the only check given the store's type: every other one goes through the trait object, which never calls them) | `UnboxedCompleteFails` |
//! | A current owner's lease is lost by this, and the key is free. | [`checks::inspection_and_removal`], [`checks::removal_fencing`], [`checks::exclusive_every_path`] (removed), [`checks::free_key`] (removed), [`checks::removal_races_holder`] (while the owner's call runs) | `RemoveIsNoop`, `RemoveIgnoresLeaseLock` |
//! | The key's fencing number is remembered as after a release, so the next acquisition gets a larger one. | [`checks::removal_fencing`] (by a new owner and by the removed owner's token), [`checks::exclusive_every_path`], [`checks::freeing_races_takeover`] (a remove racing a takeover remembers the number it freed), [`checks::removal_races_holder`] (a remove racing the holder), [`checks::removals_race_each_other`] (a remove finding only another's trace keeps it), [`checks::model`]; remembered as long as after a release, not as long as the removed record had left: [`checks::fencing_memory`] and [`sabotage_checks::trace_lifetime`] (a finished record with a short retention, removed) | `RemoveForgetsFencing`, `CheckThenSetRemove`, `RemoveKeepsExpiry` |
//!
//! ## The types the store docs name
//!
//! | Sentence | Checks that fail a store breaking it | Broken store |
//! |---|---|---|
//! | `ClaimRequest::key`: the key to claim. | [`checks::namespace_isolation`], [`checks::key_fidelity`] | `LeaksNamespaces`, `MangleKeys`, `FoldsNamespaceCase`, `JoinsWithSeparator`, `TruncatesNamespace`, `ReplacesAstralChars` |
//! | `ClaimRequest::owner`: the attempt making the claim. | [`checks::uncertain_claim`], [`checks::own_retry_after_takeover`] | `ForgetsOwnClaim`, `RetryRevivesOldLease` |
//! | `ClaimRequest::lease_ttl`: how long the lease lasts unless renewed. | [`checks::lease_expiry`] (and no shorter: a 1.99 s lease still holds a clock slack before its end, not cut to whole seconds), [`checks::in_progress_retry_after`], [`checks::inspection_and_removal`] (time left), [`checks::model`] | `NeverExpiresLeases`, `RetryAfterIsLeaseTtl`, `LeasesInWholeSeconds` |
//! | `ClaimRequest::fingerprint`: compared with the one stored for the key. | [`checks::fingerprints`], [`checks::claim_fingerprint_decides`] (the stored one is the claim's, whatever lease finished the key) | `IgnoresFingerprints`, `OwnRetryIgnoresFingerprint`, `FinishWritesLeaseFingerprint` |
//! | `Claim::Acquired`: the key was free (never seen, released, failed retryably, or its lease expired), or this owner already held it. | [`checks::free_key`], [`checks::exclusive_every_path`], [`checks::failures`], [`checks::lease_expiry`], [`checks::uncertain_claim`] | `LapsedReadsAsClaimed`, `NeverExpiresLeases`, `ForgetsOwnClaim` |
//! | `Claim::InProgress`: another owner holds a live lease. | [`checks::exclusive_claim`], [`checks::exclusive_takeover`], [`checks::renewal`], [`checks::own_retry_after_takeover`] (even the old owner, after a takeover) | `TwoWinners`, `NoopRenew`, `RetryRevivesOldLease` |
//! | `InProgress::retry_after`: how long that lease has left. | [`checks::in_progress_retry_after`] (above zero, at most the lease TTL, within the slack; of the renewed lease after a renewal) | `RetryAfterIsLeaseTtl` |
//! | `Claim::Completed`: the stored response bytes, exactly as given. | [`checks::replay_fidelity`] | `ReencodesPayloads`, `TrimsPayloads` |
//! | `Claim::Failed`: the stored failure bytes, exactly as given. | [`checks::replay_fidelity`], [`checks::failures`] | `ReencodesPayloads`, `TrimsPayloads` |
//! | `OwnerToken`: a claim retried with the same token finds its own claim and gets the same lease back instead of "in progress". | [`checks::uncertain_claim`], [`checks::model`] | `ForgetsOwnClaim`, `ReclaimDoesNotExtend` |
//! | `OwnerToken::from_bytes`: rebuilds a token from the 16 bytes a store kept. | [`checks::inspection_and_removal`] (the owner read back in `RecordState::Claimed`), [`checks::model`] | none |
//! | `Lease`: the store applies a transition only if the record is still claimed by the same owner with the same fencing number; a stale lease changes nothing and gets `LeaseLost`. | [`checks::stale_lease`], [`checks::lease_identity`], [`checks::spent_lease`], [`checks::finish_races_takeover`], [`checks::model`] | `IgnoresOwner`, `ChecksOwnerOnly`, `ChecksFencingOnly`, `FinishIgnoresState`, `ReleaseAsExpiry`, `CheckThenSetFinish` |
//! | `Lease::fingerprint`: the fingerprint of the claim that acquired it, if it had one. | [`checks::granted_lease`] (`Claim::Acquired` carries the claim's own lease, `ClaimRequest::lease`: new key, holder's retry, takeover; with and without a fingerprint) | `LeaseWithoutFingerprint` |
//! | `Lease::fingerprint`: the store keeps the claim's own copy and that copy decides (the lease's only lets a store skip reading it). | [`checks::claim_fingerprint_decides`] (a lease rebuilt with `Lease::new`, or carrying another fingerprint, still completes, fails and renews, and the key keeps, replays to and compares the claim's fingerprint), [`checks::model`] (by chance: its forged leases carry none) | `FinishWritesLeaseFingerprint`, `HeldComparesLeaseFingerprint` |
//! | `Lease::fencing`: grows strictly each time the key is acquired again while the store remembers it, including after a lease expired. | [`checks::lease_expiry`], [`checks::exclusive_takeover`], [`checks::failures`], [`checks::removal_fencing`], [`checks::model`] | `ReusesFencing`, `RemoveForgetsFencing` |
//! | `Record`: what a store holds for a key, as `read` reports it: key, state, fencing number of the claiming lease, stored fingerprint. | [`checks::inspection_and_removal`], [`checks::fingerprints`] (fingerprint unchanged by a mismatch), [`checks::stale_lease`] (state and fencing unchanged), [`checks::model`] | `ReadsNothing` |
//! | `Record::expires_in`: time left: of the lease while claimed, of the retention once finished. | [`checks::inspection_and_removal`] (positive, at most the TTL, not far below it), [`checks::spent_lease`] (unchanged by a spent lease), [`checks::model`] | none |
//! | `RecordState::Claimed`: in progress under a live lease. | [`checks::free_key`] (a lapsed claim is not `Claimed`), [`checks::inspection_and_removal`] | `LapsedReadsAsClaimed` |
//! | `RecordState::Completed` / `Failed`: finished; replayed to every repeat. | [`checks::exclusive_claim`], [`checks::replay_fidelity`], [`checks::failures`], [`checks::inspection_and_removal`] | `ReencodesPayloads`, `TrimsPayloads` |
//! | The lifecycle diagram (free → Claimed → Completed/Failed → free; release and lease expiry → free). | [`checks::model`] (random sequences against `idem_core::backend::lifecycle`, step by step) | `IgnoresOwner`, `ChecksOwnerOnly`, `ChecksFencingOnly`, `FinishIgnoresState`, `FreeKeyKeepsFingerprint`, `RemoveForgetsFencing` |
//!
//! ## `TokenStore` and its types
//!
//! | Sentence | Checks that fail a store breaking it | Broken store |
//! |---|---|---|
//! | Both operations are atomic per token. | [`token_checks::exclusive_consume`] (consume against consume), [`token_checks::issue_races`] (issue against issue, issue against consume) | `CheckThenMark`, `CheckThenIssue` |
//! | A consumed token is kept, marked used by its consumer, until it expires, so a repeat is told `AlreadyUsed` rather than `Unknown`, and the consumer's own resend is told `Consumed` again. | [`token_checks::exclusive_consume`], [`token_checks::consume_resend`], [`token_checks::used_mark_lifetime`] (late in the TTL still `AlreadyUsed`, the resend still `Consumed`; neither restarts it), [`token_checks::token_expiry`] (the mark expires with it), [`token_checks::rejection_reasons`]; until it expires after a long TTL too: [`sabotage_checks::token_lifetime`] (30 minutes, through the [`TokenSabotage`] hook's `kept_for`) | `CheckThenMark`, `UsedMarkRestartsTtl`, `UsedMarkNeverExpires`, `CapsUsedMark`, `ForgetsConsumer`, `ResendRestartsTtl` |
//! | `issue`: stores a new token for `scope`, valid for `ttl`. | [`token_checks::token_expiry`] (an expired token issued afresh to another scope is that scope's alone; a `ttl` of whole seconds and a fraction still consumed past its whole seconds, not cut to them), [`token_checks::collision_keeps_expiry`] (a refused issue does not make the token live longer than its own `ttl`), [`token_checks::distinct_tokens`] (2,048 issued, the last of each of 32 issuing tasks consumes), [`token_checks::scope_binding`]; the whole of a long `ttl`: [`sabotage_checks::token_lifetime`] (30 minutes, through the [`TokenSabotage`] hook's `kept_for`) | `NeverExpires`, `ReissueKeepsScope`, `CapsLifetime`, `TtlInWholeSeconds` |
//! | A token already stored is left untouched and the call fails with `TokenCollision`. | [`token_checks::issue_never_overwrites`], [`token_checks::issue_against_used`] (a used token, still marked; an expired one is stored afresh), [`token_checks::issue_races`] (two issues at once: one stores, one collides), [`token_checks::collision_keeps_expiry`] (untouched includes the expiry: an unused and a used token issued again for longer still expire on time); only a token stored: [`token_checks::token_expiry`] (an expired token, used or not, is issued afresh), [`token_checks::token_fidelity`] (and only that token: tokens of another generator's format that an encoding would merge, by case, the last byte of the longest, an escape, Unicode normalisation, are two; a finite set, as for keys) | `Overwrites`, `IssueRevivesUsed`, `CheckThenIssue`, `CollisionRestartsTtl`, `ExpiredUnusedCollides`, `FoldsTokenCase` |
//! | `consume`: uses the token up for `consumer` if it is live, unused and belongs to `scope`, in one atomic step. | [`token_checks::exclusive_consume`], [`token_checks::token_expiry`], [`token_checks::scope_binding`], [`token_checks::rejection_reasons`] | `CheckThenMark`, `NeverExpires`, `IgnoresScope` |
//! | A token `consumer` used up already, for `scope`, is `Consumed` again and stays as it is; any other consumer is refused. | [`token_checks::consume_resend`] (the resend before and after another consumer's try; the consumer asking for another scope refused), [`token_checks::used_mark_lifetime`] (stays as it is: the resend does not restart the mark's TTL), [`token_checks::exclusive_consume`] (concurrent consumers: one wins) | `ForgetsConsumer`, `IgnoresConsumer`, `ResendRestartsTtl` |
//! | `Scope`: a token issued for one scope is rejected for any other, without being used up. | [`token_checks::scope_binding`], [`token_checks::scope_compared_exactly`] (case, spacing, prefix, suffix, Unicode normalisation, characters of four UTF-8 bytes, the last byte of the longest scope) | `IgnoresScope`, `BurnsOnWrongScope`, `ScopeFoldsCase`, `TruncatesScopes`, `ScopeReplacesAstralChars` |
//! | `Consumption::Consumed`: this call used the token up. | [`token_checks::exclusive_consume`] | `CheckThenMark` |
//! | `Rejection::Unknown`: never issued, or expired. | [`token_checks::malformed_tokens`] (never issued), [`token_checks::token_expiry`] (and its ID free to issue again), [`token_checks::rejection_reasons`] (used or not, any scope) | `NeverExpires`, `UsedMarkNeverExpires`, `ExpiredUnusedCollides` |
//! | `Rejection::AlreadyUsed`: consumed before. | [`token_checks::exclusive_consume`], [`token_checks::rejection_reasons`] (for any scope), [`token_checks::used_mark_lifetime`] | `CheckThenMark`, `ScopeCheckedFirst`, `UsedMarkRestartsTtl` |
//! | `Rejection::WrongScope`: issued for another scope; the token stays usable by its own scope. | [`token_checks::scope_binding`], [`token_checks::scope_compared_exactly`], [`token_checks::rejection_reasons`] | `BurnsOnWrongScope`, `ScopeFoldsCase`, `TruncatesScopes`, `ScopeReplacesAstralChars`, `ScopeCheckedFirst` |
//! | `Token::parse`: non-empty, at most `MAX_TOKEN_LEN` bytes, no whitespace or control characters, else `MalformedToken`. | [`token_checks::malformed_tokens`] (refused before the store is asked; `Tokens`' rule, no store can break it) | none |
//! | (Errors, as for `IdempotencyStore`:) a stored token that does not decode is `CorruptRecord`; an unreachable backend is `Unavailable`. | [`sabotage_checks::corrupt_token`] (consume by any scope; an issue over it is refused and overwrites nothing), [`sabotage_checks::unavailable_token_backend`] (issue and consume, within the bound), through the backend's [`TokenSabotage`] hook | `TokenDefect::CorruptAsUnknown`, `TokenDefect::UnavailableAsBackend` |
//! | `TokenGenerator::generate`: a new ID, unique across processes and machines, and unguessable. | [`token_checks::distinct_tokens`] (2,048 distinct through the store; the default generator's 10,000 in idem-core's unit tests, where consecutive ones also share no more of their 74 random bits than chance; the generator's rule, no store can break it) | none |
//!
//! ## Faults need the backend's hook
//!
//! No store-independent check can write an undecodable record, take a server down or see
//! how long the storage will keep a freed key, so those checks ([`sabotage_checks`]) run
//! through a hook each backend implements
//! ([`Sabotage`], [`TokenSabotage`]) and wires with
//! [`fault_conformance!`](crate::fault_conformance) and
//! [`token_fault_conformance!`](crate::token_fault_conformance): Redis, MySQL and PostgreSQL
//! do. The in-memory store does not, because neither sentence applies to it: it keeps
//! typed Rust values, never bytes it must decode (nothing it holds can fail to decode),
//! and it has no server to be unreachable. A store author who skips the hook runs none
//! of those six checks: the table's claim for those sentences (and for the whole length
//! of the fencing memory, for a record's expiry moved by a renewal, a retried claim or a
//! finish, and for a long token lifetime) holds only where the hook is wired (Gaps 1, 7, 8).
//!
//! ## Gaps
//!
//! What the table cannot honestly claim a check for:
//!
//! 1. **How long a freed key is remembered** (at least `trace_ttl`: the longer of the lease
//!    TTL and 60 s). End to end, [`checks::fencing_memory`] claims freed keys again 12 s
//!    ([`checks::FENCING_MEMORY_CHECKED`]) after freeing them, on every path: waiting the
//!    whole 60 s would not fit a backend's 40 s suite. The rest of the 60 s is seen only
//!    through the storage's own expiry ([`sabotage_checks::trace_lifetime`], by
//!    [`Sabotage::kept_for`]: Redis's `PTTL`, the SQL row's `expires_at`), so (a) where the
//!    hook is not wired, as for the in-memory store, a store forgetting between 12 s and
//!    60 s passes (the in-memory store's traces are `lifecycle` entries, whose expiry the
//!    core's own tests pin); (b) a store that drops a trace before the expiry it wrote, by
//!    a path of its own (a purge ignoring the expiry, an eviction under memory pressure
//!    such as a Redis `maxmemory` policy), passes for the part after 12 s. Of the broken
//!    stores, `HalfFencingMemory` (30 s) passes every check but that one.
//! 2. **"Every method is atomic with respect to every other call on the same key"** is
//!    checked for claim against claim (new owners against each other, and a lapsed owner's
//!    retried claim against a new owner's); complete/fail/renew/release/remove against a claim
//!    taking the key over; two calls presenting one lease against each other; remove
//!    against a live lease's calls; remove against remove; the holder's retried claim
//!    against its own lease's calls; and read against every call that writes. Not raced:
//!    two renewals with one lease (both succeed in either order and leave the same claim),
//!    and calls presenting two different leases of one key (the old owner's, once the key
//!    was taken over, is `LeaseLost` in any order: [`checks::stale_lease`], unraced).
//! 3. **"Two different keys never share a record"** is checked on a finite set of keys a
//!    plausible encoding would merge ([`checks::key_fidelity`]), not for all keys.
//! 4. **"Keys, TTLs and fingerprints arrive validated"** is a rule of the core's types,
//!    not of a store; [`checks::bad_input`] only restates it for `Key` and `Ttl`.
//! 5. **Not store behaviour, so no check:** `Lease::fencing`'s "guard downstream writes
//!    with it" (advice to users); `OwnerToken::random` (122 random bits),
//!    `OwnerToken::from_uuid`, `as_bytes`, `as_uuid` (constructors; [`checks::lease_identity`]
//!    only uses `from_uuid`); the `ClaimRequest` builders; `Scope::new`'s validation (no
//!    check at all); `Token::key` (no check at all).
//! 6. **"Unguessable"** token IDs: no check of a store can see it; [`token_checks::distinct_tokens`]
//!    checks uniqueness only (the default generator's random bits are idem-core's unit
//!    test: tokens made back to back share no more of them than chance), and [`token_checks::malformed_tokens`] and
//!    [`token_checks::distinct_tokens`] test `Tokens` and the generator rather than a store
//!    (no broken store can fail them; `tests/proof.rs` exempts them).
//! 7. **Corrupt records, an unreachable server, the length of the fencing memory and a
//!    long token lifetime** are checked only where the backend wires its [`Sabotage`] or
//!    [`TokenSabotage`] hook (see above); a store that does not runs none of those checks,
//!    and a [`TokenSabotage`] that leaves `kept_for` to its default passes
//!    [`sabotage_checks::token_lifetime`] whatever the store keeps. Of the broken stores,
//!    `CorruptAsFree`, `CorruptTraceAsFree`, `UnavailableAsBackend` and `HangsWhenDown`
//!    pass every other check.
//! 8. **A record's own expiry, moved by `renew`, by the holder's retried claim or by a
//!    finish,** is seen only through the storage's own expiry
//!    ([`sabotage_checks::trace_lifetime`], by [`Sabotage::kept_for`]): no end-to-end
//!    check waits past the 60 s a claim's record is first kept. Where the hook is not
//!    wired, four broken stores pass every check though they break more than the length
//!    of the fencing memory: `RenewKeepsExpiry` and `ReclaimKeepsExpiry` (a lease extended
//!    past 60 s outlives its record, and a second owner acquires the key while the first
//!    still holds it), `FinishKeepsShorterExpiry` (a retention past what the claim was
//!    kept for is cut short, and a repeat after the cut runs the operation again) and
//!    `RenewKeepsLeaseTtl` (a lease renewed past 60 s is remembered only 60 s once
//!    released).

#[allow(unused_imports)]
use crate::{Sabotage, TokenSabotage, checks, sabotage_checks, token_checks};
