//! idem-memory against bare moka.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem::MemoryStore;
use idem::{Claim, ClaimRequest, Error, Idempotency, IdempotencyStore, Key, Ttl};
use moka::future::Cache;

use crate::Settings;
use crate::claims::{acquire_fresh, claim_replay, execute_noop, expect_lease};
use crate::measure::{compare, keys_needed};
use crate::report::{Mode, Row};

const BACKEND: &str = "memory";

struct Bench {
    store: MemoryStore,
    idem: Idempotency<MemoryStore>,
    raw: Cache<String, Bytes>,
    ttl: Ttl,
    payload: Bytes,
}

pub async fn run(settings: &Settings) -> Result<Vec<Row>, Error> {
    let store = MemoryStore::with_capacity(u64::MAX);
    let bench = Arc::new(Bench {
        idem: Idempotency::new(store.clone()),
        store,
        raw: Cache::builder()
            .time_to_live(Duration::from_secs(3600))
            .build(),
        ttl: Ttl::from_secs(3600)?,
        payload: Bytes::from(vec![b'x'; 100]),
    });
    let mut rows = Vec::new();
    for mode in settings.modes() {
        rows.push(claim_new(&bench, settings, mode).await?);
        rows.push(replay(&bench, settings, mode).await?);
        rows.push(complete(&bench, settings, mode).await?);
        rows.push(execute(&bench, settings, mode).await?);
    }
    Ok(rows)
}

fn key(prefix: &str, i: usize) -> Result<Key, Error> {
    Key::new("bench", format!("{prefix}{i}"))
}

async fn claim_new(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (b, r, run_i, run_r) = (Arc::clone(bench), Arc::clone(bench), run.clone(), run);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&run_i, i));
            async move { acquire_fresh(&b.store, k?, b.ttl).await }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), format!("{run_r}{i}"));
            async move {
                let p = r.payload.clone();
                r.raw.entry(k).or_insert_with(async move { p }).await;
                Ok(())
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "claim new", mode, None, figures))
}

async fn replay(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let done = key("replayed-", 0)?;
    if let Claim::Acquired(lease) = bench
        .store
        .claim(&ClaimRequest::new(done.clone(), bench.ttl))
        .await?
    {
        bench
            .store
            .complete(&lease, bench.payload.clone(), bench.ttl)
            .await?;
    }
    bench
        .raw
        .insert("replayed".to_owned(), bench.payload.clone())
        .await;
    let (b, r) = (Arc::clone(bench), Arc::clone(bench));
    let figures = compare(
        settings,
        mode,
        move |_| {
            // Both sides build their key per call, as a request handler would.
            let (b, k) = (Arc::clone(&b), Key::new(done.namespace(), done.id()));
            async move { claim_replay(&b.store, k?, b.ttl).await }
        },
        move |_| {
            let (r, k) = (Arc::clone(&r), String::from("replayed"));
            async move {
                r.raw
                    .get(&k)
                    .await
                    .map(|_| ())
                    .ok_or_else(|| Error::backend("raw key vanished"))
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "replay claim", mode, Some(0.8), figures))
}

async fn complete(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let ops = keys_needed(settings, mode);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut leases = Vec::with_capacity(ops);
    for i in 0..ops {
        let claim = bench
            .store
            .claim(&ClaimRequest::new(key(&run, i)?, bench.ttl))
            .await?;
        leases.push(expect_lease(claim)?);
    }
    let leases = Arc::new(leases);
    let (b, r) = (Arc::clone(bench), Arc::clone(bench));
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, leases) = (Arc::clone(&b), Arc::clone(&leases));
            async move {
                let lease = leases.get(i).ok_or_else(|| Error::backend("no lease"))?;
                b.store.complete(lease, b.payload.clone(), b.ttl).await
            }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), format!("{run}{i}"));
            async move {
                r.raw.insert(k, r.payload.clone()).await;
                Ok(())
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "complete", mode, None, figures))
}

async fn execute(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (b, r, run_i, run_r) = (Arc::clone(bench), Arc::clone(bench), run.clone(), run);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&run_i, i));
            async move { execute_noop(&b.idem, k?).await }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), format!("{run_r}{i}"));
            async move {
                let p = r.payload.clone();
                r.raw.entry(k).or_insert_with(async move { p }).await;
                Ok(())
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "execute", mode, Some(0.5), figures))
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
            .claim(&ClaimRequest::new(key("footprint-", i)?, ttl))
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
    struct OneHour;
    impl moka::Expiry<String, Bytes> for OneHour {
        fn expire_after_create(
            &self,
            _: &String,
            _: &Bytes,
            _: std::time::Instant,
        ) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let cache: Cache<String, Bytes> = Cache::builder().expire_after(OneHour).build();
    let before = resident_bytes();
    for i in 0..records {
        cache
            .insert(format!("bench/footprint-{i}"), Bytes::from(vec![b'x'; 100]))
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
