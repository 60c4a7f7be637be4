//! Dropping a full store's expired records when they expire, ahead of moka.
//!
//! moka drops a record past its expiry only once the bucket of its timer wheel that holds
//! it (1.07 s wide) has gone by and its housekeeping runs, and `weighted_size` counts the
//! record until then: a full store refused new keys for up to a second after the records
//! that filled it had expired. A scan of the cache (whose iterator skips expired entries)
//! notes the keys that expire over the next [`HORIZON_MS`], so that the store can drop
//! each itself once its expiry has come, freeing its memory as well as its count.
//!
//! A scan walks every record, so a store takes one only when it is full, and at most once
//! per [`SCAN_EVERY_MS`]: the next scan comes well within the horizon of the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

/// How far ahead of a scan the expiries it saw are noted, in milliseconds.
const HORIZON_MS: u64 = 2 * SCAN_EVERY_MS;

/// The least time between two scans of a store, in milliseconds.
const SCAN_EVERY_MS: u64 = 1_000;

/// The keys a full store's last scan saw expire soon, with their expiry.
#[derive(Debug)]
pub(crate) struct Expiring<K> {
    /// Latest expiry first: the due ones are taken from the back.
    due: Mutex<Vec<(u64, K)>>,
    /// When the next scan may be taken, on the store's clock.
    next_at: AtomicU64,
}

impl<K> Default for Expiring<K> {
    fn default() -> Self {
        Self {
            due: Mutex::default(),
            next_at: AtomicU64::new(0),
        }
    }
}

impl<K> Expiring<K> {
    /// The keys whose expiry has come by `now` (a record expires at `now` >= its expiry),
    /// each handed out once; first scans `live` (each live key and its expiry) unless the
    /// last scan is under [`SCAN_EVERY_MS`] old. A key handed out may since have been
    /// written again: the store checks, under the key's own lock, that its record is still
    /// an expired one before it drops it. None while another caller scans or takes them:
    /// a scan walks every record, and a refusal is not kept waiting for it.
    pub(crate) fn take_expired(&self, now: u64, live: impl Iterator<Item = (K, u64)>) -> Vec<K> {
        let mut due = match self.due.try_lock() {
            Ok(due) => due,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Vec::new(),
        };
        if now >= self.next_at.load(Ordering::Relaxed) {
            self.next_at
                .store(now.saturating_add(SCAN_EVERY_MS), Ordering::Relaxed);
            // Keys due already stay: the new scan no longer sees them.
            let mut fresh: Vec<(u64, K)> = due.drain(..).filter(|&(at, _)| at <= now).collect();
            let horizon = now.saturating_add(HORIZON_MS);
            fresh.extend(
                live.map(|(key, at)| (at, key))
                    .filter(|&(at, _)| at <= horizon),
            );
            fresh.sort_unstable_by_key(|&(at, _)| std::cmp::Reverse(at));
            *due = fresh;
        }
        let expired = due.partition_point(|&(at, _)| at > now);
        due.drain(expired..).map(|(_, key)| key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan hands each key out once its expiry has come, not before and not twice, and
    /// notes none past its horizon; the next scan comes a second later.
    #[test]
    fn keys_are_handed_out_once_expired() {
        let expiring = Expiring::default();
        let live = [("b", 1_010), ("late", 1_000 + HORIZON_MS + 1), ("a", 1_005)];
        assert!(expiring.take_expired(1_000, live.into_iter()).is_empty());
        let again = |now| expiring.take_expired(now, std::iter::empty());
        assert!(again(1_004).is_empty());
        assert_eq!(again(1_005), ["a"]);
        assert!(again(1_009).is_empty(), "handed out twice");
        // A second on, a scan again: the one past the first scan's horizon is seen now,
        // and one due by then but not handed out yet (no longer seen) is kept.
        let live = [("late", 1_000 + HORIZON_MS + 1)];
        assert_eq!(expiring.take_expired(2_000, live.into_iter()), ["b"]);
        assert_eq!(
            expiring.take_expired(1_000 + HORIZON_MS + 1, std::iter::empty()),
            ["late"]
        );
    }
}
