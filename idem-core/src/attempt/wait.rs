//! What a repeat does while the key is in progress elsewhere: the [`WaitPolicy`].

use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use crate::claim::{Claim, ClaimRequest};
use crate::config::WaitPolicy;
use crate::error::Error;
use crate::store::IdempotencyStore;

impl<S: IdempotencyStore> Engine<S> {
    /// Claims, and while the key is in progress elsewhere waits as `policy` says: the one
    /// waiting rule of every integration (the executor, the HTTP layer). Every poll is the
    /// same request (same owner), so a claim applied whose reply was lost is ours.
    ///
    /// # Errors
    ///
    /// As [`claim`](Self::claim). A key still in progress when the wait ends is not an
    /// error: the answer is [`Claim::InProgress`].
    pub async fn claim_or_wait(
        &self,
        request: &ClaimRequest,
        policy: WaitPolicy,
    ) -> Result<Claim, Error> {
        let engine = self;
        let WaitPolicy::Wait {
            timeout,
            initial_backoff,
            max_backoff,
        } = policy
        else {
            return engine.claim(request).await;
        };
        // A timeout too long to represent as an instant (`Duration::MAX`, say) never ends.
        let deadline = Instant::now().checked_add(timeout);
        let mut backoff = initial_backoff;
        loop {
            let claim = engine.claim(request).await?;
            let Claim::InProgress { retry_after } = claim else {
                return Ok(claim);
            };
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return Ok(claim),
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            // Poll no later than the lease's end, so a crashed owner is taken over promptly.
            let pause = backoff
                .min(retry_after.max(Duration::from_millis(1)))
                .min(left);
            tokio::time::sleep(pause).await;
            backoff = backoff.saturating_mul(2).min(max_backoff);
        }
    }
}
