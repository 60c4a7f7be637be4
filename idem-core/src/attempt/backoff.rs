//! Jittered exponential pauses between retries of one store call, and the resend of a
//! call whose reply may have been lost.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{BoxError, Error};

/// How often a call is sent at most while the store is unavailable.
const RESEND_ATTEMPTS: u32 = 4;
/// How long a caller waits in all for an unavailable store to answer.
const RESEND_WINDOW: Duration = Duration::from_secs(1);
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Sends a call again, after its first send at `first_sent` was unavailable with `source`,
/// while the store stays unavailable: at most [`RESEND_ATTEMPTS`] sends in all within
/// [`RESEND_WINDOW`] of the first, with jittered pauses between them.
///
/// For calls that carry who sends them (a claim's owner, a token consume's consumer): an
/// `Unavailable` send may have been applied with only its reply lost, and the store
/// recognises the resend as the same caller's and answers it as it answered the first.
pub(crate) async fn resend<T, Fut>(
    first_sent: Instant,
    mut source: BoxError,
    mut send: impl FnMut() -> Fut,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = first_sent + RESEND_WINDOW;
    let mut backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
    let mut attempt = 1;
    loop {
        let pause = backoff.pause();
        if attempt >= RESEND_ATTEMPTS || Instant::now() + pause >= deadline {
            return Err(Error::Unavailable { source });
        }
        tracing::debug!(attempt, error = %source, "the store did not answer; sending again as the same caller");
        tokio::time::sleep(pause).await;
        attempt += 1;
        match send().await {
            Err(Error::Unavailable { source: again }) => source = again,
            answer => return answer,
        }
    }
}

/// Pauses that double from `first` up to `max`, each drawn at random from its upper half, so
/// callers that failed together do not retry together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The next pause, in `[base / 2, base]`; the base then doubles, up to `max`.
    pub(crate) fn pause(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(unit_random())
    }
}

/// A number in `[0, 1)` from the standard library's per-process random hash keys: jitter
/// needs no more than that, and no extra dependency.
fn unit_random() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_within_their_upper_half_and_stop_at_the_max() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(20), ms(100));
        for base in [20, 40, 80, 100, 100] {
            let pause = backoff.pause();
            assert!(
                pause >= ms(base) / 2 && pause <= ms(base),
                "{pause:?} is not in [{}, {base}] ms",
                base / 2
            );
        }
    }

    #[test]
    fn pauses_are_jittered() {
        let pauses: std::collections::HashSet<_> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).pause())
            .collect();
        assert!(pauses.len() > 1, "20 pauses were all {pauses:?}");
    }
}
