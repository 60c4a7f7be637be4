//! What a repeat does while the key is in progress elsewhere: the [`WaitPolicy`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use crate::claim::{Claim, ClaimRequest};
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
    pub fn claim_or_wait<'a>(
        &'a self,
        request: &'a ClaimRequest,
        policy: WaitPolicy,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
        // Not an `async fn`, which would keep the policy for the whole claim and its parts
        // beside it: only the pace is kept (an HTTP request's future holds this one, and
        // over 1,032 bytes its box misses glibc's per-thread cache).
        let pace = Pace::of(policy);
        async move {
            match self.claim(request).await? {
                // The waiting in a box of its own: the claim's future, which every request's
                // future holds, then carries no timer.
                Claim::InProgress { retry_after } => match pace {
                    Some(pace) => Box::pin(self.wait_out(request, retry_after, pace)).await,
                    None => Ok(Claim::InProgress { retry_after }),
                },
                claim => Ok(claim),
            }
        }
    }

    /// Polls a key found in progress (`retry_after` is what its lease has left) until it is
    /// not, or the wait ends.
    async fn wait_out(
        &self,
        request: &ClaimRequest,
        mut retry_after: Duration,
        mut pace: Pace,
    ) -> Result<Claim, Error> {
        loop {
            let now = Instant::now();
            let left = match pace.deadline {
                Some(deadline) if now >= deadline => {
                    return Ok(Claim::InProgress { retry_after });
                }
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            // Poll no later than the lease's end, so a crashed owner is taken over promptly.
            let pause = pace
                .backoff
                .min(retry_after.max(Duration::from_millis(1)))
                .min(left);
            tokio::time::sleep(pause).await;
            pace.backoff = pace.backoff.saturating_mul(2).min(pace.max_backoff);
            match self.claim(request).await? {
                Claim::InProgress { retry_after: left } => retry_after = left,
                claim => return Ok(claim),
            }
        }
    }
}

/// When a wait ends, and the pause before the next poll.
struct Pace {
    /// `None`: never.
    deadline: Option<Instant>,
    backoff: Duration,
    max_backoff: Duration,
}

impl Pace {
    /// How a claim under `policy` waits, from now; `None` under [`WaitPolicy::FailFast`].
    fn of(policy: WaitPolicy) -> Option<Self> {
        let WaitPolicy::Wait {
            timeout,
            initial_backoff,
            max_backoff,
        } = policy
        else {
            return None;
        };
        Some(Self {
            // A timeout too long to represent as an instant (`Duration::MAX`, say) never ends.
            deadline: Instant::now().checked_add(timeout),
            backoff: initial_backoff,
            max_backoff,
        })
    }
}

/// What a repeat does when it finds the key in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitPolicy {
    /// Return [`Error::InProgress`] at once, with how long the lease has left.
    FailFast,
    /// Poll with exponential backoff until the first request finishes, its lease lapses (then
    /// this caller takes over), or `timeout` passes (then [`Error::InProgress`]).
    Wait {
        /// The longest a caller waits in all. `Duration::MAX` waits as long as it takes.
        timeout: Duration,
        /// The first pause between polls; it doubles up to `max_backoff`.
        initial_backoff: Duration,
        /// The longest pause between polls.
        max_backoff: Duration,
    },
}

impl WaitPolicy {
    /// Waits up to `timeout`, polling from every 10 ms up to every 500 ms.
    #[must_use]
    pub fn wait(timeout: Duration) -> Self {
        Self::Wait {
            timeout,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}
