//! idem-memory against bare moka with per-entry expiry, the policy the store needs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use idem::MemoryStore;
use idem::{ClaimRequest, Error, IdempotencyStore, Ttl};
use moka::future::Cache;

use crate::backend::{BenchBackend, Operation, payload};
use crate::claims::expect_lease;
use crate::keys::NAMESPACE;
use crate::measure::Mode;
use crate::settings::Settings;

/// The store, and bare moka with the same key and payload types' bytes as the floor.
pub struct Memory {
    store: MemoryStore,
    raw: Cache<String, Bytes>,
    ttl: Ttl,
    payload: Bytes,
}

/// Every raw entry lives for one hour from its write, through moka's per-entry expiry (a
/// cache-wide TTL would be cheaper, and not what a store with per-record retention can use).
struct OneHour;

impl moka::Expiry<String, Bytes> for OneHour {
    fn expire_after_create(&self, _: &String, _: &Bytes, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    fn expire_after_update(
        &self,
        _: &String,
        _: &Bytes,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn raw_cache() -> Cache<String, Bytes> {
    Cache::builder().expire_after(OneHour).build()
}

impl Memory {
    /// The raw key of `(tag, i)`: as long as idem's namespace and id.
    fn raw_key(tag: &str, i: usize) -> String {
        format!("{NAMESPACE}/{tag}:{i}")
    }
}

impl BenchBackend for Memory {
    type Store = MemoryStore;
    const NAME: &'static str = "memory";
    /// 4N operations last a few milliseconds at many tasks.
    const THROUGHPUT_SCALE: usize = 16;

    async fn connect(_: &Settings) -> Result<Self, Error> {
        Ok(Self {
            store: MemoryStore::with_capacity(u64::MAX),
            raw: raw_cache(),
            ttl: Ttl::from_secs(3600)?,
            payload: payload(),
        })
    }

    fn store(&self) -> &MemoryStore {
        &self.store
    }

    fn ttl(&self) -> Ttl {
        self.ttl
    }

    fn floor(&self, operation: Operation) -> &'static str {
        match operation {
            Operation::ClaimNew => "moka entry().or_insert_with",
            Operation::Replay => "moka get",
            Operation::Complete => "moka insert",
            Operation::Execute => "one moka insert",
        }
    }

    /// Issue 17's targets: complete at 0.6× a moka insert with per-entry expiry and execute
    /// (claim, run, complete) at 0.5× one; replays at 0.8× a moka get.
    fn target(&self, operation: Operation, _: Mode) -> Option<f64> {
        match operation {
            Operation::ClaimNew => None,
            Operation::Replay => Some(0.8),
            Operation::Complete => Some(0.6),
            Operation::Execute => Some(0.5),
        }
    }

    async fn raw_claim_new(&self, tag: &str, i: usize) -> Result<(), Error> {
        let payload = self.payload.clone();
        let entry = self
            .raw
            .entry(Self::raw_key(tag, i))
            .or_insert_with(async move { payload })
            .await;
        match entry.is_fresh() {
            true => Ok(()),
            false => Err(Error::backend("raw claim of a new key found a value")),
        }
    }

    async fn raw_seed_replay(&self, tag: &str) -> Result<(), Error> {
        self.raw.insert(Self::raw_key(tag, 0), payload()).await;
        Ok(())
    }

    async fn raw_replay(&self, tag: &str) -> Result<(), Error> {
        self.raw
            .get(&Self::raw_key(tag, 0))
            .await
            .map(drop)
            .ok_or_else(|| Error::backend("raw replay found no value"))
    }

    async fn raw_seed_claimed(&self, _: &str, _: usize) -> Result<(), Error> {
        Ok(())
    }

    async fn raw_complete(&self, tag: &str, i: usize) -> Result<(), Error> {
        self.raw
            .insert(Self::raw_key(tag, i), self.payload.clone())
            .await;
        Ok(())
    }

    /// One insert, not the two-step protocol: moka's `or_insert_with` costs more than the
    /// store's whole claim, so against two steps the ratio would say little about how far
    /// execute is from the one write any cache of outcomes pays.
    async fn raw_execute(&self, tag: &str, i: usize) -> Result<(), Error> {
        self.raw_complete(tag, i).await
    }

    async fn close(&self) -> Result<(), Error> {
        self.raw.invalidate_all();
        Ok(())
    }
}

/// Bytes of resident memory per record: `idem` for completed records in the store, `raw` for
/// bare moka.
pub async fn footprint(kind: &str, records: usize) -> Result<f64, Error> {
    match kind {
        "idem" => bytes_per_record(records).await,
        "raw" => Ok(raw_bytes_per_record(records).await),
        other => Err(Error::backend(format!("unknown footprint kind {other}"))),
    }
}

/// Bytes of resident memory per completed record with a 100-byte payload, over `records`.
async fn bytes_per_record(records: usize) -> Result<f64, Error> {
    let store = MemoryStore::with_capacity(u64::MAX);
    let ttl = Ttl::from_secs(3600)?;
    let payload = Bytes::from(vec![b'x'; 100]);
    let before = resident_bytes();
    for i in 0..records {
        let claim = store
            .claim(&ClaimRequest::new(
                idem::Key::new(NAMESPACE, format!("footprint-{i}"))?,
                ttl,
            ))
            .await?;
        let lease = expect_lease(claim)?;
        // A fresh copy per record, as a real response would be.
        store
            .complete(&lease, Bytes::copy_from_slice(&payload), ttl)
            .await?;
    }
    store.run_pending_tasks().await;
    let after = resident_bytes();
    drop(store);
    Ok(after.saturating_sub(before) as f64 / records as f64)
}

/// The same for bare moka holding `String` keys and 100-byte `Bytes` with a per-entry
/// expiry policy (what the store needs): the floor moka itself sets.
async fn raw_bytes_per_record(records: usize) -> f64 {
    let cache = raw_cache();
    let before = resident_bytes();
    for i in 0..records {
        cache
            .insert(
                format!("{NAMESPACE}/footprint-{i}"),
                Bytes::from(vec![b'x'; 100]),
            )
            .await;
    }
    cache.run_pending_tasks().await;
    let after = resident_bytes();
    drop(cache);
    after.saturating_sub(before) as f64 / records as f64
}

/// Resident set size from /proc/self/statm (Linux), in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
