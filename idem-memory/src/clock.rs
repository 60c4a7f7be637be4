//! The stores' clock: milliseconds from the store's creation, the unit the core's entries
//! use, and the way back to the `Instant`s moka's expiry speaks.

use std::time::{Duration, Instant};

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
