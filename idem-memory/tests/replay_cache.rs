//! The replay cache: the whole conformance suite wrapped around the in-memory store, Redis
//! and MySQL, and the rules of its own (only finished records cached, bounded by their
//! retention, a local remove seen at once, a remote one within the TTL).

use std::time::{Duration, Instant};

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, Fingerprint, IdempotencyStore, Key, Lease, Ttl,
};
use idem_memory::{MemoryStore, ReplayCache};

/// The suite's payload limit, set on the stores behind the cache.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

mod around_memory {
    use super::*;

    async fn make_store() -> ReplayCache<MemoryStore> {
        ReplayCache::new(MemoryStore::new().with_max_payload(MAX_PAYLOAD))
    }

    idem_tests::conformance!(
        make_store,
        idem_tests::Capabilities {
            max_payload: MAX_PAYLOAD,
            ..Default::default()
        }
    );
}

mod around_redis {
    use super::*;
    use idem_redis::RedisStore;

    const START_REDIS: &str = "bash .ci/services (or: redis-server --daemonize yes --bind \
         127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no)";

    async fn make_store() -> ReplayCache<RedisStore> {
        let url =
            std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("idem-test:{}:", uuid::Uuid::new_v4().simple());
        let store = RedisStore::builder()
            .prefix(prefix)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!("Redis at {url} did not answer ({e}); start it with {START_REDIS}")
            });
        ReplayCache::new(store)
    }

    idem_tests::conformance!(
        make_store,
        idem_tests::Capabilities {
            max_payload: RedisStore::DEFAULT_MAX_PAYLOAD,
            ..Default::default()
        }
    );
}

mod around_mysql {
    use super::*;
    use idem_mysql::MySqlStore;
    use idem_mysql::sqlx::mysql::MySqlPoolOptions;

    const START_MARIADB: &str = "bash .ci/services (or: mkdir -p /run/mysqld && chown \
         mysql:mysql /run/mysqld && start-stop-daemon --start --oknodo --background --exec \
         /usr/sbin/mariadbd -- --user=mysql)";

    /// One table for every check: each works in namespaces of its own.
    const TABLE: &str = "idem_test_replay_cache";

    async fn make_store() -> ReplayCache<MySqlStore> {
        let url = std::env::var("IDEM_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!("MariaDB at {url} did not answer ({e}); start it with {START_MARIADB}")
            });
        let store = MySqlStore::builder()
            .table(TABLE)
            .max_payload(MAX_PAYLOAD)
            .build(pool)
            .expect("a valid table name");
        store.migrate().await.expect("migrate the test table");
        ReplayCache::new(store)
    }

    idem_tests::conformance!(
        make_store,
        idem_tests::Capabilities {
            max_payload: MAX_PAYLOAD,
            ..Default::default()
        }
    );
}

fn ttl(millis: u64) -> Ttl {
    Ttl::from_millis(millis).expect("valid ttl")
}

fn key(id: &str) -> Key {
    Key::new("replay-cache", id).expect("valid key")
}

async fn acquire(store: &impl IdempotencyStore, key: &Key) -> Lease {
    match store
        .claim(&ClaimRequest::new(key.clone(), ttl(30_000)))
        .await
    {
        Ok(Claim::Acquired(lease)) => lease,
        other => panic!("expected to acquire {key:?}, got {other:?}"),
    }
}

async fn claim(store: &impl IdempotencyStore, key: &Key) -> Result<Claim, Error> {
    store
        .claim(&ClaimRequest::new(key.clone(), ttl(30_000)))
        .await
}

/// Claims `key` until it is acquired again, for at most `deadline`; whether it was.
async fn acquired_within(store: &impl IdempotencyStore, key: &Key, deadline: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Ok(Claim::Acquired(_)) = claim(store, key).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A cache and a handle on the store behind it that bypasses the cache, as another process
/// would.
fn cached(ttl: Duration) -> (ReplayCache<MemoryStore>, MemoryStore) {
    let behind = MemoryStore::new();
    (
        ReplayCache::builder().ttl(ttl).build(behind.clone()),
        behind,
    )
}

#[tokio::test]
async fn a_replay_is_served_from_memory_until_the_ttl_ends() {
    let (cache, behind) = cached(Duration::from_millis(400));
    let k = key("served");
    let lease = acquire(&cache, &k).await;
    cache
        .complete(&lease, Bytes::from_static(b"first"), ttl(60_000))
        .await
        .expect("complete");
    // The first repeat fills the cache.
    assert_eq!(
        claim(&cache, &k).await.expect("replay"),
        Claim::Completed(Bytes::from_static(b"first"))
    );
    // Another process removes the record: this one may replay it until the TTL ends...
    assert!(behind.remove(&k).await.expect("remove behind"));
    assert_eq!(
        claim(&cache, &k).await.expect("cached replay"),
        Claim::Completed(Bytes::from_static(b"first")),
        "the replay did not come from the cache"
    );
    // ...and not after.
    assert!(
        acquired_within(&cache, &k, Duration::from_secs(20)).await,
        "a remote remove stayed unseen past the cache TTL"
    );
}

#[tokio::test]
async fn a_remove_through_the_cache_is_seen_at_once() {
    let (cache, _behind) = cached(Duration::from_secs(3600));
    let k = key("removed");
    let lease = acquire(&cache, &k).await;
    cache
        .complete(&lease, Bytes::from_static(b"done"), ttl(60_000))
        .await
        .expect("complete");
    claim(&cache, &k).await.expect("fill");
    assert!(cache.remove(&k).await.expect("remove"));
    assert!(
        matches!(claim(&cache, &k).await, Ok(Claim::Acquired(_))),
        "a removed record was replayed from the cache"
    );
}

#[tokio::test]
async fn a_cached_replay_ends_with_the_record_retention() {
    let (cache, _behind) = cached(Duration::from_secs(3600));
    let k = key("retention");
    let lease = acquire(&cache, &k).await;
    cache
        .complete(&lease, Bytes::from_static(b"short"), ttl(300))
        .await
        .expect("complete");
    claim(&cache, &k).await.expect("fill");
    // An hour-long cache TTL: only the record's 300 ms retention can free the key.
    assert!(
        acquired_within(&cache, &k, Duration::from_secs(20)).await,
        "the cached copy outlived the record's retention"
    );
}

#[tokio::test]
async fn claims_are_never_cached() {
    let (cache, behind) = cached(Duration::from_secs(3600));
    let k = key("claimed");
    let lease = acquire(&cache, &k).await;
    assert!(matches!(
        claim(&cache, &k).await,
        Ok(Claim::InProgress { .. })
    ));
    // The owner, elsewhere, gives the key up: the next claim here must see it free.
    behind.release(&lease).await.expect("release behind");
    assert!(
        matches!(claim(&cache, &k).await, Ok(Claim::Acquired(_))),
        "an in-progress answer was served from the cache"
    );
}

#[tokio::test]
async fn a_cached_replay_still_checks_the_fingerprint() {
    let (cache, behind) = cached(Duration::from_secs(3600));
    let k = key("fingerprint");
    let print = Fingerprint::of(&"order 1").expect("fingerprint");
    let request = ClaimRequest::new(k.clone(), ttl(30_000)).with_fingerprint(print);
    let Ok(Claim::Acquired(lease)) = cache.claim(&request).await else {
        panic!("a fresh key")
    };
    cache
        .complete(&lease, Bytes::from_static(b"one"), ttl(60_000))
        .await
        .expect("complete");
    cache.claim(&request).await.expect("fill");
    // From here only the cache can answer: the record behind is gone.
    behind.remove(&k).await.expect("remove behind");
    assert_eq!(
        cache.claim(&request).await.expect("cached replay"),
        Claim::Completed(Bytes::from_static(b"one"))
    );
    let other = ClaimRequest::new(k.clone(), ttl(30_000))
        .with_fingerprint(Fingerprint::of(&"order 2").expect("fingerprint"));
    assert!(matches!(
        cache.claim(&other).await,
        Err(Error::FingerprintMismatch)
    ));
    assert!(matches!(
        cache.claim(&ClaimRequest::new(k, ttl(30_000))).await,
        Err(Error::FingerprintMismatch)
    ));
}

/// A store behind the cache with a network's latency: a `remove` travels a while before it
/// applies, and a `read` answers a while after it was applied, as over a loaded link.
#[derive(Debug, Clone)]
struct Latent {
    inner: MemoryStore,
    request_delay: Duration,
    reply_delay: Duration,
}

#[idem_core::async_trait]
impl IdempotencyStore for Latent {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        let record = self.inner.read(key).await;
        tokio::time::sleep(self.reply_delay).await;
        record
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        tokio::time::sleep(self.request_delay).await;
        self.inner.remove(key).await
    }
}

/// A repeat that starts while a remove through the cache is on its way reads the record
/// before the remove applies, and its answer arrives after the remove returned: that copy
/// must not be kept, or this instance replays the removed outcome for the whole cache TTL.
#[tokio::test]
async fn a_fill_that_read_before_a_local_remove_applied_is_discarded() {
    let behind = MemoryStore::new();
    let cache = ReplayCache::builder()
        .ttl(Duration::from_secs(3600))
        .build(Latent {
            inner: behind.clone(),
            request_delay: Duration::from_millis(100),
            reply_delay: Duration::from_millis(300),
        });
    let k = key("racing-remove");
    let lease = acquire(&cache, &k).await;
    cache
        .complete(&lease, Bytes::from_static(b"gone"), ttl(60_000))
        .await
        .expect("complete");
    let remover = {
        let (cache, k) = (cache.clone(), k.clone());
        tokio::spawn(async move { cache.remove(&k).await })
    };
    // The repeat starts after the remove did, and reads before the remove applies.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let repeat = {
        let (cache, k) = (cache.clone(), k.clone());
        tokio::spawn(async move { claim(&cache, &k).await })
    };
    assert!(
        remover.await.expect("remove task").expect("remove"),
        "the record was there to remove"
    );
    assert_eq!(
        repeat.await.expect("repeat task").expect("repeat"),
        Claim::Completed(Bytes::from_static(b"gone"))
    );
    assert!(behind.read(&k).await.expect("read behind").is_none());
    assert!(
        matches!(claim(&cache, &k).await, Ok(Claim::Acquired(_))),
        "a record removed through this cache is still replayed from it"
    );
}

/// The moment the store lets a record go, the cache does too: a copy never answers past
/// the record's end, not even within its last millisecond (the store counts the time left
/// in whole milliseconds, which can round it up).
#[tokio::test]
async fn a_cached_replay_never_outlives_the_record_by_a_millisecond() {
    let (cache, behind) = cached(Duration::from_secs(3600));
    let mut outlived = 0;
    for i in 0..20 {
        let k = key(&format!("last-millisecond-{i}"));
        let lease = acquire(&cache, &k).await;
        cache
            .complete(&lease, Bytes::from_static(b"done"), ttl(30))
            .await
            .expect("complete");
        claim(&cache, &k).await.expect("fill");
        // Until the store lets the record go...
        while behind.read(&k).await.expect("read").is_some() {
            std::hint::spin_loop();
        }
        // ...and at once after: the key is free, so the cache must not replay it.
        if let Ok(Claim::Completed(_)) = claim(&cache, &k).await {
            outlived += 1;
        }
    }
    assert_eq!(outlived, 0, "cached copies outlived their records");
}

/// A store behind the cache whose `remove` applies and then never answers, as over a link
/// that died right after the command went out.
#[derive(Debug, Clone)]
struct Unanswered {
    inner: MemoryStore,
}

#[idem_core::async_trait]
impl IdempotencyStore for Unanswered {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await?;
        std::future::pending().await
    }
}

/// A remove through the cache whose caller gives up waiting for it (a timeout, a client
/// gone) may have applied all the same: the copy must go with it, or this instance replays
/// the removed outcome for the whole cache TTL while the key is free.
#[tokio::test]
async fn a_remove_whose_caller_went_away_still_drops_the_copy() {
    let behind = MemoryStore::new();
    let cache = ReplayCache::builder()
        .ttl(Duration::from_secs(3600))
        .build(Unanswered {
            inner: behind.clone(),
        });
    let k = key("abandoned-remove");
    let lease = acquire(&cache, &k).await;
    cache
        .complete(&lease, Bytes::from_static(b"gone"), ttl(60_000))
        .await
        .expect("complete");
    claim(&cache, &k).await.expect("the repeat fills the cache");
    let abandoned = tokio::time::timeout(Duration::from_millis(50), cache.remove(&k)).await;
    assert!(abandoned.is_err(), "the remove never answers");
    assert!(behind.read(&k).await.expect("read behind").is_none());
    assert!(
        matches!(claim(&cache, &k).await, Ok(Claim::Acquired(_))),
        "a record removed through this cache is still replayed from it"
    );
}

/// What the executor's operation can fail with here: nothing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Never;

impl idem_core::Retryable for Never {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// The executor knows its store's type and claims without the trait's box
/// (`claim_unboxed`): those claims are served by the cache too. The record is removed
/// behind the cache once a repeat filled it, so only a cached replay keeps the operation
/// from running again.
#[tokio::test]
async fn the_executors_repeats_are_served_by_the_cache() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (cache, behind) = cached(Duration::from_secs(60));
    let idempotency = idem_core::Idempotency::new(cache);
    let k = key("executor");
    let runs = Arc::new(AtomicUsize::new(0));
    let execute = || {
        let runs = Arc::clone(&runs);
        idempotency.execute(&k, None, || async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, Never>(format!("run {run}"))
        })
    };
    // The run, then the repeat that fills the cache.
    for _ in 0..2 {
        assert_eq!(execute().await.expect("execute"), "run 1");
    }
    assert!(behind.remove(&k).await.expect("remove behind"));
    assert_eq!(
        execute().await.expect("execute"),
        "run 1",
        "the repeat was not served by the cache"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
