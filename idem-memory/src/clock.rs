//! The stores' clock: milliseconds from the store's creation, the unit the core's entries
//! use, and the way back to the `Instant`s moka's expiry speaks.

use std::time::{Duration, Instant};

use idem_core::backend::TokenEntry;
use idem_core::backend::lifecycle::Entry;
use moka::Expiry;

/// Milliseconds since a fixed origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Now, in milliseconds from the origin.
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The time from `at` until the clock reads `deadline` (zero if it is past).
    pub(crate) fn until(&self, deadline: u64, at: Instant) -> Duration {
        (self.origin + Duration::from_millis(deadline)).saturating_duration_since(at)
    }
}

/// What the caches keep: a value that knows when it expires, in [`Clock`] milliseconds.
pub(crate) trait ExpiresAt {
    fn expires_at(&self) -> u64;
}

impl ExpiresAt for Entry {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

impl ExpiresAt for TokenEntry {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// Tells moka when each value's own `expires_at` comes, on the store's clock.
pub(crate) struct ClockExpiry(pub(crate) Clock);

impl<K, V: ExpiresAt> Expiry<K, V> for ClockExpiry {
    fn expire_after_create(&self, _: &K, value: &V, created_at: Instant) -> Option<Duration> {
        Some(self.0.until(value.expires_at(), created_at))
    }

    fn expire_after_update(
        &self,
        _: &K,
        value: &V,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.0.until(value.expires_at(), updated_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock reads whole milliseconds since its origin, and `until` turns a reading
    /// back into the time left from an instant (zero once it is past).
    #[test]
    fn the_clock_counts_milliseconds_from_its_origin() {
        let clock = Clock::new();
        std::thread::sleep(Duration::from_millis(30));
        let now = clock.now();
        assert!(
            (30..30_000).contains(&now),
            "30 ms after its origin the clock read {now}"
        );
        let at = Instant::now();
        let left = clock.until(now + 500, at);
        assert!(
            left > Duration::from_millis(400) && left <= Duration::from_millis(500),
            "{left:?}"
        );
        assert_eq!(clock.until(now.saturating_sub(10), at), Duration::ZERO);
    }
}
