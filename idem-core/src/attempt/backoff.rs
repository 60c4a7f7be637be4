//! Jittered exponential pauses between retries of one store call.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

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
