//! The in-memory [`TokenStore`]: the core's [`TokenMapStore`] over a moka cache.

use std::sync::Arc;

use idem_core::backend::{TokenEntry, TokenMap, TokenMapStore};
use idem_core::{Consumption, Error, OwnerToken, Scope, Token, TokenStore, Ttl, async_trait};
use moka::future::Cache;
use moka::ops::compute::Op;

use crate::clock::{Clock, ClockExpiry};
use crate::full::StoreFull;
use crate::scan::Expiring;
use crate::unapplied::Unapplied;

/// Bytes of process memory one token takes besides its text and its scope's: moka's entry
/// with per-entry expiry, the headers, allocator rounding (as [`RECORD_OVERHEAD`] for
/// records, of which a token's bookkeeping is a little smaller).
///
/// [`RECORD_OVERHEAD`]: crate::RECORD_OVERHEAD
pub const TOKEN_OVERHEAD: u64 = 460;

/// One-time tokens in process memory. Issuing refuses to overwrite a live token; consuming
/// runs [`TokenRecord::consume`](idem_core::backend::TokenRecord::consume) inside moka's per-key
/// `and_compute_with`, so of any number of concurrent consumes exactly one wins. Used tokens
/// are kept, marked, until they expire.
///
/// Like [`MemoryStore`](crate::MemoryStore) it is bounded by bytes and never evicts: at
/// capacity, issuing fails with [`Error::Unavailable`] until tokens expire.
#[derive(Debug, Clone)]
pub struct MemoryTokenStore {
    inner: TokenMapStore<Tokens>,
}

/// The tokens of a [`MemoryTokenStore`]: a moka cache with per-entry expiry, bounded by
/// bytes.
#[derive(Clone)]
pub struct Tokens {
    cache: Cache<Token, TokenEntry, foldhash::fast::RandomState>,
    /// The weight of the tokens written since the store last ran moka's housekeeping,
    /// which moka's `weighted_size` may not count yet.
    unapplied: Arc<Unapplied>,
    /// The tokens a full store saw expire soon (see [`Tokens::drop_expired`]).
    expiring: Arc<Expiring<Arc<Token>>>,
    clock: Clock,
    capacity: u64,
}

/// What one token counts against the capacity.
fn weight(token: &Token, entry: &TokenEntry) -> u64 {
    (token.as_str().len() + entry.record.scope.as_str().len()) as u64 + TOKEN_OVERHEAD
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.cache.entry_count())
            .field("held_bytes", &self.held_bytes())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryTokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTokenStore {
    /// The default capacity: 256 MiB of tokens (about 500,000).
    pub const DEFAULT_CAPACITY: u64 = 256 * 1024 * 1024;

    /// A store with the default capacity.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store whose tokens take at most about `capacity` bytes of process memory, used or
    /// not (bytes, as [`MemoryStore::with_capacity`](crate::MemoryStore::with_capacity)).
    #[must_use]
    pub fn with_capacity(capacity: u64) -> Self {
        let clock = Clock::new();
        let cache = Cache::builder()
            .expire_after(ClockExpiry(clock))
            .weigher(|token: &Token, entry: &TokenEntry| {
                u32::try_from(weight(token, entry)).unwrap_or(u32::MAX)
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            inner: TokenMapStore::new(Tokens {
                cache,
                unapplied: Arc::default(),
                expiring: Arc::default(),
                clock,
                capacity,
            }),
        }
    }

    /// The capacity in bytes.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.inner.map().capacity
    }

    /// The bytes the tokens held take, by the store's own count: at least what they take
    /// after every issue (a token just issued counts at once), expired tokens included until
    /// they are dropped.
    #[must_use]
    pub fn held_bytes(&self) -> u64 {
        self.inner.map().held_bytes()
    }
}

impl Tokens {
    fn held_bytes(&self) -> u64 {
        self.unapplied.held(self.cache.weighted_size())
    }

    /// Drops the tokens past their expiry that moka has not dropped yet (its timer wheel
    /// does, up to a second later: `crate::scan`), so that their bytes leave the count, and
    /// the process, at their own expiry.
    async fn drop_expired(&self) {
        let tokens = self
            .cache
            .iter()
            .map(|(token, entry)| (token, entry.expires_at));
        for token in self.expiring.take_expired(self.clock.now(), tokens) {
            // In the token's own compute, as every write of a token is made: one issued
            // again since the scan is live, and stays. An expired token shows as none, and
            // removing it drops what is left of it.
            self.cache
                .entry_by_ref(&*token)
                .and_compute_with(|current| {
                    std::future::ready(match current {
                        None => Op::Remove,
                        Some(_) => Op::Nop,
                    })
                })
                .await;
        }
    }

    /// Runs moka's housekeeping: expired tokens leave, and `weighted_size` counts every
    /// write made so far.
    async fn apply_pending(&self) {
        self.unapplied.restart();
        self.cache.run_pending_tasks().await;
    }
}

impl TokenMap for Tokens {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    async fn update<T: Send>(
        &self,
        token: &Token,
        step: impl FnOnce(Option<&TokenEntry>) -> (T, Option<TokenEntry>) + Send,
    ) -> Result<T, Error> {
        let mut answer = None;
        let mut written = 0;
        self.cache
            .entry_by_ref(token)
            .and_compute_with(|current| {
                let (value, write) = step(current.as_ref().map(|e| e.value()));
                answer = Some(value);
                std::future::ready(match write {
                    Some(entry) => {
                        written = weight(token, &entry);
                        Op::Put(entry)
                    }
                    None => Op::Nop,
                })
            })
            .await;
        // Counted once the cache took it (see `Unapplied::add`).
        self.unapplied.add(written);
        answer.ok_or_else(|| Error::backend("the cache did not run the update"))
    }

    async fn admit(&self) -> Result<(), Error> {
        if self.held_bytes() < self.capacity {
            return Ok(());
        }
        self.drop_expired().await;
        self.apply_pending().await;
        if self.held_bytes() < self.capacity {
            return Ok(());
        }
        Err(Error::unavailable(StoreFull::new(self.capacity)))
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.inner.issue(token, scope, ttl).await
    }
    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        self.inner.consume(token, scope, consumer).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use idem_core::{TokenGenerator, UuidV7Tokens};

    use super::*;

    fn token() -> Token {
        Token::parse(&UuidV7Tokens.generate(), &UuidV7Tokens).expect("a well-formed token")
    }

    fn scope() -> Scope {
        Scope::new("user:7").expect("valid scope")
    }

    /// What one token counts against the capacity, scope included.
    fn weight_of(token: &Token, scope: &Scope) -> u64 {
        (token.as_str().len() + scope.as_str().len()) as u64 + TOKEN_OVERHEAD
    }

    fn ttl(millis: u64) -> Ttl {
        Ttl::from_millis(millis).expect("valid ttl")
    }

    /// The held bytes are exactly the tokens' weights: text, scope and overhead, used or
    /// not.
    #[tokio::test]
    async fn a_token_weighs_its_text_its_scope_and_the_overhead() {
        let store = MemoryTokenStore::new();
        assert_eq!(store.capacity(), 256 * 1024 * 1024);
        assert_eq!(MemoryTokenStore::with_capacity(9).capacity(), 9);
        let (token, scope) = (token(), scope());
        store
            .issue(&token, &scope, ttl(60_000))
            .await
            .expect("issue");
        store.inner.map().apply_pending().await;
        assert_eq!(store.held_bytes(), weight_of(&token, &scope));
        assert_eq!(
            store
                .consume(&token, &scope, &OwnerToken::random())
                .await
                .expect("consume"),
            Consumption::Consumed
        );
        store.inner.map().apply_pending().await;
        assert_eq!(
            store.held_bytes(),
            weight_of(&token, &scope),
            "the used mark is the same token"
        );
        let shown = format!("{store:?}");
        assert!(
            shown.contains("tokens: 1") && shown.contains("capacity: 268435456"),
            "{shown}"
        );
    }

    /// A store over its capacity (issues that raced past the check at once) refuses
    /// to issue, as a full one does: being over is no reason to skip the check.
    #[tokio::test]
    async fn a_token_store_over_its_capacity_refuses_to_issue() {
        let (first, scope) = (token(), scope());
        let store = MemoryTokenStore::with_capacity(weight_of(&first, &scope));
        let tokens = &store.inner.map().cache;
        for token in [first, token()] {
            let entry = TokenEntry::new(
                idem_core::backend::TokenRecord::issued(scope.clone()),
                store.inner.map().now() + 60_000,
            );
            tokens.insert(token, entry).await;
        }
        tokens.run_pending_tasks().await;
        assert!(store.held_bytes() > store.capacity(), "the premise");
        assert!(
            matches!(
                store.issue(&token(), &scope, ttl(60_000)).await,
                Err(Error::Unavailable { .. })
            ),
            "a store over its capacity issued"
        );
    }

    /// Tokens issued one after another, with nobody running moka's housekeeping, stop at
    /// the capacity, not at what moka last counted.
    #[tokio::test]
    async fn issued_tokens_count_against_the_capacity_at_once() {
        let scope = scope();
        let one = weight_of(&token(), &scope);
        let store = MemoryTokenStore::with_capacity(4 * one);
        let mut issued = 0;
        for _ in 0..100 {
            match store.issue(&token(), &scope, ttl(60_000)).await {
                Ok(()) => issued += 1,
                Err(Error::Unavailable { .. }) => break,
                Err(other) => panic!("issue: {other:?}"),
            }
        }
        store.inner.map().apply_pending().await;
        assert!(
            store.held_bytes() <= store.capacity(),
            "a store with room for 4 tokens issued {issued}: {} bytes held",
            store.held_bytes()
        );
    }

    /// At capacity (held == capacity is full) issuing is refused with [`StoreFull`], and a
    /// token that expires makes room again: the refusal looks past moka's stale count.
    #[tokio::test]
    async fn a_full_token_store_refuses_to_issue_until_a_token_expires() {
        let (first, scope) = (token(), scope());
        let store = MemoryTokenStore::with_capacity(weight_of(&first, &scope));
        store.issue(&first, &scope, ttl(200)).await.expect("issue");
        store.inner.map().apply_pending().await;
        assert_eq!(store.held_bytes(), store.capacity());
        let refused = store.issue(&token(), &scope, ttl(60_000)).await;
        match refused {
            Err(Error::Unavailable { source }) => {
                assert_eq!(
                    source.downcast_ref::<StoreFull>().map(|full| full.capacity),
                    Some(store.capacity())
                );
            }
            other => panic!("a full store issued: {other:?}"),
        }
        // The first token's 200 ms run out; moka's timer wheel ticks about once a second.
        // Nobody runs moka's housekeeping here but the refusal itself.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let late = token();
        store
            .issue(&late, &scope, ttl(1_000))
            .await
            .expect("an expired token made room");
        // Issued seconds into the store's life, its second of life counts from now.
        assert_eq!(
            store
                .consume(&late, &scope, &OwnerToken::random())
                .await
                .expect("consume"),
            Consumption::Consumed
        );
    }
}
