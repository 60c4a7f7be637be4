//! The in-memory [`TokenStore`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::{
    Consumption, Error, InvalidInput, Scope, Token, TokenRecord, TokenStore, Ttl, async_trait,
};
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;

use crate::StoreFull;

/// One-time tokens in process memory. Issuing refuses to overwrite a live token; consuming
/// runs [`TokenRecord::consume`] inside moka's per-key `and_compute_with`, so of any number
/// of concurrent consumes exactly one wins. Used tokens are kept, marked, until they expire.
///
/// Like [`MemoryStore`](crate::MemoryStore) it never evicts: at capacity, issuing fails
/// with [`Error::Unavailable`] until tokens expire.
#[derive(Clone)]
pub struct MemoryTokenStore {
    cache: Cache<Token, Arc<Slot>>,
    capacity: u64,
}

/// A token's record and the instant it expires.
#[derive(Debug)]
struct Slot {
    record: TokenRecord,
    deadline: Instant,
}

impl std::fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTokenStore")
            .field("tokens", &self.cache.entry_count())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for MemoryTokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTokenStore {
    /// The default capacity: a million tokens.
    pub const DEFAULT_CAPACITY: u64 = 1_000_000;

    /// A store with the default capacity.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store holding at most about `capacity` tokens, used or not.
    pub fn with_capacity(capacity: u64) -> Self {
        Self {
            cache: Cache::builder().expire_after(SlotExpiry).build(),
            capacity,
        }
    }

    async fn ensure_room(&self) -> Result<(), Error> {
        if self.cache.entry_count() < self.capacity {
            return Ok(());
        }
        self.cache.run_pending_tasks().await;
        if self.cache.entry_count() < self.capacity {
            return Ok(());
        }
        Err(Error::unavailable(StoreFull {
            capacity: self.capacity,
        }))
    }
}

struct SlotExpiry;

impl Expiry<Token, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &Token, slot: &Arc<Slot>, now: Instant) -> Option<Duration> {
        Some(slot.deadline.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Token,
        slot: &Arc<Slot>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.deadline.saturating_duration_since(now))
    }
}

fn live(slot: &Slot) -> bool {
    slot.deadline > Instant::now()
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.ensure_room().await?;
        let mut duplicate = false;
        self.cache
            .entry_by_ref(token)
            .and_compute_with(|current| {
                duplicate = current.is_some_and(|entry| live(entry.value()));
                std::future::ready(if duplicate {
                    Op::Nop
                } else {
                    Op::Put(Arc::new(Slot {
                        record: TokenRecord {
                            scope: scope.clone(),
                            used: false,
                        },
                        deadline: Instant::now() + ttl.as_duration(),
                    }))
                })
            })
            .await;
        if duplicate {
            return Err(InvalidInput::DuplicateToken.into());
        }
        Ok(())
    }

    async fn consume(&self, token: &Token, scope: &Scope) -> Result<Consumption, Error> {
        let mut answer = None;
        self.cache
            .entry_by_ref(token)
            .and_compute_with(|current| {
                let slot = current
                    .map(|entry| entry.into_value())
                    .filter(|slot| live(slot));
                let (consumption, write) =
                    TokenRecord::consume(slot.as_ref().map(|s| &s.record), scope);
                answer = Some(consumption);
                std::future::ready(match (write, slot) {
                    // The used mark keeps the token's own deadline.
                    (Some(record), Some(slot)) => Op::Put(Arc::new(Slot {
                        record,
                        deadline: slot.deadline,
                    })),
                    _ => Op::Nop,
                })
            })
            .await;
        answer.ok_or_else(|| Error::backend("the cache did not run the consume"))
    }
}
