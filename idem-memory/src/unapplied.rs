//! What a moka cache holds, counted at once.
//!
//! moka's `weighted_size` counts only the writes its housekeeping has applied, and the
//! housekeeping runs every few dozen writes: a store that checked its capacity against it
//! alone took in far more than its capacity between two runs. So each store adds the bytes
//! it wrote since it last ran the housekeeping itself. The sum is never below what the cache
//! holds (a write moka applied on its own is counted twice until the next run), so a store
//! that finds itself full runs the housekeeping, which starts the count again, before it
//! refuses anything.
//!
//! An eviction listener would keep an exact count instead, but moka's write path costs
//! about 1,700 instructions more per insert with one (callgrind, `cycle_cost execute`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes written to a cache since its store last ran the cache's housekeeping.
#[derive(Debug, Default)]
pub(crate) struct Unapplied(AtomicU64);

impl Unapplied {
    /// A write of `bytes`, counted once the cache took it: a housekeeping run that starts
    /// the count again in between then applies it, and nothing is left uncounted.
    pub(crate) fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What the cache holds at most, given its `weighted_size`.
    pub(crate) fn held(&self, weighted_size: u64) -> u64 {
        weighted_size.saturating_add(self.0.load(Ordering::Relaxed))
    }

    /// Called right before the store runs the cache's housekeeping, which applies every
    /// write made so far.
    pub(crate) fn restart(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_counts_writes_until_restarted() {
        let unapplied = Unapplied::default();
        assert_eq!(unapplied.held(10), 10);
        unapplied.add(5);
        unapplied.add(7);
        assert_eq!(unapplied.held(10), 22);
        unapplied.restart();
        assert_eq!(unapplied.held(10), 10);
        assert_eq!(unapplied.held(u64::MAX), u64::MAX);
    }
}
