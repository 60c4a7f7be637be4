//! A claim, retried by its owner when the store's answer is lost.

use std::sync::Arc;

use tokio::time::Instant;

use super::backoff;
use super::guard::{self, Abandoned};
use super::{Engine, WaitPolicy};
use crate::claim::{Claim, ClaimRequest};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::Key;
use crate::lease::OwnerToken;
use crate::store::IdempotencyStore;

/// Claims, retrying with the same owner token while the store is unavailable (a few
/// attempts within a second: [`backoff::resend`]). An acquired lease carries when the claim that granted
/// it was sent ([`Lease::claim_sent`](crate::Lease::claim_sent)): a retry by the same owner
/// extends the lease from its own send, so the last send is the lease's start.
///
/// An `Unavailable` claim may have been applied with only its reply lost; the retry, by the
/// same owner, then gets that very lease back (the store recognises its owner) instead of
/// leaving a claim nobody runs, answering "in progress" for a whole lease.
///
/// The first send is awaited here, the retries in a box of their own: nearly every claim is
/// answered at once, and its future, which every request's future holds, then carries no
/// timer and no retry state.
pub(crate) async fn claim<S: IdempotencyStore>(
    store: &S,
    request: &ClaimRequest,
) -> Result<Claim, Error> {
    // The store counts the lease from when it applies this claim, so no earlier than now.
    let sent = Instant::now();
    match claim_once(store, request).await {
        Ok(Claim::Acquired(lease)) => Ok(Claim::Acquired(lease.sent_at(sent))),
        Err(Error::Unavailable { source }) => {
            Box::pin(backoff::resend(sent, source, || {
                let sent = Instant::now();
                let send = claim_once(store, request);
                async move {
                    match send.await {
                        Ok(Claim::Acquired(lease)) => Ok(Claim::Acquired(lease.sent_at(sent))),
                        answer => answer,
                    }
                }
            }))
            .await
        }
        answer => answer,
    }
}

impl<S: IdempotencyStore> Engine<S> {
    /// Claims `key` for one caller, as a fresh owner (a new owner token, this engine's lease
    /// TTL, `fingerprint`), waiting while the key is in progress as `policy` says: what
    /// [`claim_or_wait`](Engine::claim_or_wait) does for an integration that claims once per
    /// request or message (the executor, the HTTP layer).
    ///
    /// The owner token is made here and never sent again once this returns, so this claim
    /// can clean up after itself: dropped before its answer came back (its caller went away:
    /// a timeout, a client gone), or ending in an error (`Unavailable`, or another error on a
    /// resend after a send whose reply was lost), the claim may have been applied all the
    /// same, and then nobody would run its operation and the key would answer "in
    /// progress" until the lease ends. The key is freed instead, on a task of its own, if the
    /// store shows this claim's owner. (Not possible for a request its caller may send again,
    /// [`ClaimRequest::with_owner`]: the freeing would race that claim.)
    ///
    /// Not an `async fn`: that would keep the key and the fingerprint in its future twice,
    /// as arguments and in the request, and an HTTP request's future holds this one.
    ///
    /// # Errors
    ///
    /// As [`claim_or_wait`](Engine::claim_or_wait).
    pub fn claim_fresh(
        &self,
        key: Key,
        fingerprint: Option<Fingerprint>,
        policy: WaitPolicy,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + '_ {
        let request = ClaimRequest {
            key,
            owner: OwnerToken::random(),
            lease_ttl: self.lease_ttl(),
            fingerprint,
        };
        async move {
            let mut in_flight = InFlight {
                store: self.store(),
                request: &request,
                answered: false,
            };
            let answer = self.claim_or_wait(&request, policy).await;
            // Ending in an error, the claim may have been applied all the same: given up as
            // unavailable (only its replies lost), or failing otherwise on a resend after an
            // earlier send was applied. Nobody runs its operation, so it is freed as if its
            // caller went away. A fingerprint mismatch shows the key held for another
            // request, never this one: no read for it.
            in_flight.answered =
                answer.is_ok() || matches!(answer, Err(Error::FingerprintMismatch));
            answer
        }
    }
}

/// A claim on its way to the store. Dropped without an answer (its caller went away, or the
/// store answered only with an error), it frees the key if the store applied the claim
/// (the key shows its owner): otherwise nobody would run the operation, and the key would
/// answer "in progress" until the lease ends.
struct InFlight<'a, S: IdempotencyStore> {
    store: &'a Arc<S>,
    request: &'a ClaimRequest,
    answered: bool,
}

impl<S: IdempotencyStore> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        tracing::debug!(
            namespace = self.request.key.namespace(),
            "claim left without an answer; freeing its key if it was applied"
        );
        guard::free(
            Arc::clone(self.store),
            Abandoned::Claim(self.request.clone()),
        );
    }
}

/// One send of the claim, without the trait's box where the store has none.
///
/// Awaited through this function, whose future is `Send` by its signature, and not as
/// `store.claim_unboxed(..)` in `claim` and its resends: there rustc would have to prove the
/// store's own future `Send` for every lifetime of a `dyn IdempotencyStore` behind an `Arc`,
/// which it cannot ("implementation of `Send` is not general enough"), and a spawned
/// `execute` on an `Arc<dyn IdempotencyStore>` would not compile
/// (pinned by `an_execute_on_a_store_trait_object_can_be_spawned` in
/// `idem-core/tests/executor.rs`, and the `idem-tests` checks, which run on one).
fn claim_once<'a, S: IdempotencyStore>(
    store: &'a S,
    request: &'a ClaimRequest,
) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
    store.claim_unboxed(request)
}
