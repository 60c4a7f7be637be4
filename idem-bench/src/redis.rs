//! idem-redis against the raw `redis` client.
//!
//! Each side gets a [`ConnectionManager`] of its own with the same settings (the ones
//! `RedisStoreBuilder::connect` uses), shared by all its tasks, so both pipeline the same
//! way over one multiplexed connection. Every key of a run lives under a fresh prefix, and
//! the run deletes them all at the end, whether or not it succeeded.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Value};
use bytes::Bytes;
use idem::redis::RedisStore;
use idem::{ClaimRequest, Error, Idempotency, IdempotencyStore, Key, Lease, Ttl};

use crate::Settings;
use crate::claims::{acquire_fresh, claim_replay, execute_noop, expect_lease};
use crate::measure::{compare, keys_needed};
use crate::report::{Mode, Row};

const BACKEND: &str = "redis";
const NAMESPACE: &str = "bench";

/// How to start the shared server, for the error when it is not there.
const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
     --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// The raw side's complete: the minimal compare-and-set idem's finish script also does
/// (read the record, compare the owner field, write the payload with an expiry), without
/// idem's record codec and clock.
const COMPARE_AND_SET: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 16) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

struct Bench {
    store: RedisStore,
    idem: Idempotency<RedisStore>,
    raw: ConnectionManager,
    /// Every Redis key of this run starts with it.
    prefix: String,
    ttl: Ttl,
    /// What a completed call stores and a replay returns.
    payload: Bytes,
    /// What the raw claim writes: as long as idem's claimed record (43 bytes).
    claim_value: Bytes,
    /// The owner field the raw compare-and-set checks.
    owner: Bytes,
    compare_and_set_sha: String,
}

impl Bench {
    /// The raw side's Redis key number `i` under `tag`, as long as idem's.
    fn raw_key(&self, tag: &str, i: usize) -> String {
        format!("{}raw:{{{tag}:{NAMESPACE}:{i}}}", self.prefix)
    }
}

/// Measures every Redis row; the run's keys are deleted afterwards even when a measurement
/// fails.
pub async fn run(settings: &Settings) -> Result<Vec<Row>, Error> {
    let url =
        std::env::var("IDEM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let bench = Arc::new(connect(&url).await?);
    let rows = measure_all(&bench, settings).await;
    let cleaned = delete_run_keys(&bench.raw, &bench.prefix).await;
    let rows = rows?;
    cleaned?;
    Ok(rows)
}

async fn measure_all(bench: &Arc<Bench>, settings: &Settings) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    for mode in settings.modes() {
        rows.push(claim_new(bench, settings, mode).await?);
        rows.push(replay(bench, settings, mode).await?);
        rows.push(complete(bench, settings, mode).await?);
        rows.push(execute(bench, settings, mode).await?);
    }
    Ok(rows)
}

/// The settings `RedisStoreBuilder::connect` gives its manager, used for both sides.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RedisStore::DEFAULT_CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RedisStore::DEFAULT_RESPONSE_TIMEOUT))
        .set_number_of_retries(0)
}

async fn manager(url: &str) -> Result<ConnectionManager, Error> {
    let unreachable = |reason: String| {
        Error::unavailable(format!(
            "cannot reach Redis at {url} ({reason}); start it with: {START_REDIS} \
             (or set IDEM_REDIS_URL)"
        ))
    };
    let client = Client::open(url).map_err(|e| unreachable(e.to_string()))?;
    let connecting = ConnectionManager::new_with_config(client, manager_config());
    tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .map_err(|_| unreachable("no answer in 3 s".to_owned()))?
        .map_err(|e| unreachable(e.to_string()))
}

async fn connect(url: &str) -> Result<Bench, Error> {
    let prefix = format!("idem-bench:{}:", uuid::Uuid::new_v4().simple());
    let store = RedisStore::builder()
        .prefix(format!("{prefix}idem:"))
        .build(manager(url).await?)?;
    store.load_scripts().await?;
    let mut raw = manager(url).await?;
    let compare_and_set_sha: String = ::redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(COMPARE_AND_SET)
        .query_async(&mut raw)
        .await
        .map_err(driver)?;
    Ok(Bench {
        idem: Idempotency::new(store.clone()),
        store,
        raw,
        prefix,
        ttl: Ttl::from_secs(600)?,
        payload: Bytes::from(vec![b'x'; 100]),
        claim_value: Bytes::from(vec![b'c'; 43]),
        owner: Bytes::from(vec![b'o'; 16]),
        compare_and_set_sha,
    })
}

fn driver(error: RedisError) -> Error {
    Error::backend(error)
}

fn key(tag: &str, i: usize) -> Result<Key, Error> {
    Key::new(NAMESPACE, format!("{tag}:{i}"))
}

/// A tag for the keys of one measurement, so no two measurements share a key.
fn fresh_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `SET key value NX PX ttl GET`: the raw claim, answering the value already there.
async fn raw_claim(bench: &Bench, key: String, value: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut connection = bench.raw.clone();
    ::redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .arg("PX")
        .arg(bench.ttl.as_millis())
        .arg("GET")
        .query_async(&mut connection)
        .await
        .map_err(driver)
}

async fn claim_new(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = Arc::<str>::from(fresh_tag());
    let (b, r, tag_i, tag_r) = (Arc::clone(bench), Arc::clone(bench), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&tag_i, i));
            async move { acquire_fresh(&b.store, k?, b.ttl).await }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), r.raw_key(&tag_r, i));
            async move {
                match raw_claim(&r, k, &r.claim_value).await? {
                    None => Ok(()),
                    Some(_) => Err(Error::backend("raw claim of a new key found a value")),
                }
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "claim new", mode, Some(0.9), figures))
}

async fn replay(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = Arc::<str>::from(fresh_tag());
    let lease = expect_lease(
        bench
            .store
            .claim(&ClaimRequest::new(key(&tag, 0)?, bench.ttl))
            .await?,
    )?;
    bench
        .store
        .complete(&lease, bench.payload.clone(), bench.ttl)
        .await?;
    raw_claim(bench, bench.raw_key(&tag, 0), &bench.payload).await?;
    let (b, r, tag_i, tag_r) = (Arc::clone(bench), Arc::clone(bench), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |_| {
            // Both sides build their key per call, as a request handler would.
            let (b, k) = (Arc::clone(&b), key(&tag_i, 0));
            async move { claim_replay(&b.store, k?, b.ttl).await }
        },
        move |_| {
            let (r, k) = (Arc::clone(&r), r.raw_key(&tag_r, 0));
            async move {
                match raw_claim(&r, k, &r.claim_value).await? {
                    Some(_) => Ok(()),
                    None => Err(Error::backend("raw replay found no value")),
                }
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "replay claim", mode, Some(0.9), figures))
}

async fn complete(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = Arc::<str>::from(fresh_tag());
    let needed = keys_needed(settings, mode);
    let leases = Arc::new(claim_all(bench, &tag, needed).await?);
    set_owned(bench, &tag, needed).await?;
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
            let (r, k) = (Arc::clone(&r), r.raw_key(&tag, i));
            async move {
                let mut connection = r.raw.clone();
                let swapped: i64 = ::redis::cmd("EVALSHA")
                    .arg(&r.compare_and_set_sha)
                    .arg(1)
                    .arg(k)
                    .arg(&r.owner[..])
                    .arg(&r.payload[..])
                    .arg(r.ttl.as_millis())
                    .query_async(&mut connection)
                    .await
                    .map_err(driver)?;
                match swapped {
                    1 => Ok(()),
                    _ => Err(Error::backend("raw compare-and-set did not match")),
                }
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "complete", mode, Some(0.9), figures))
}

/// Claims keys `0..count` under `tag`, all at once, and hands back their leases in order.
async fn claim_all(bench: &Arc<Bench>, tag: &str, count: usize) -> Result<Vec<Lease>, Error> {
    let claims: Vec<_> = (0..count)
        .map(|i| {
            let (b, k) = (Arc::clone(bench), key(tag, i));
            tokio::spawn(async move { b.store.claim(&ClaimRequest::new(k?, b.ttl)).await })
        })
        .collect();
    let mut leases = Vec::with_capacity(count);
    for claim in claims {
        let claim = claim
            .await
            .map_err(|e| Error::backend(format!("claim task: {e}")))??;
        leases.push(expect_lease(claim)?);
    }
    Ok(leases)
}

/// Writes the raw side's claimed keys `0..count` under `tag`: the owner field, then filler
/// up to the length of idem's claimed record.
async fn set_owned(bench: &Bench, tag: &str, count: usize) -> Result<(), Error> {
    let mut value = bench.owner.to_vec();
    value.resize(bench.claim_value.len(), b'c');
    let mut pipe = ::redis::pipe();
    for i in 0..count {
        pipe.cmd("SET")
            .arg(bench.raw_key(tag, i))
            .arg(&value)
            .arg("PX")
            .arg(bench.ttl.as_millis())
            .ignore();
    }
    let mut connection = bench.raw.clone();
    pipe.query_async::<()>(&mut connection)
        .await
        .map_err(driver)
}

async fn execute(bench: &Arc<Bench>, settings: &Settings, mode: Mode) -> Result<Row, Error> {
    let tag = Arc::<str>::from(fresh_tag());
    let (b, r, tag_i, tag_r) = (Arc::clone(bench), Arc::clone(bench), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&tag_i, i));
            async move { execute_noop(&b.idem, k?).await }
        },
        move |i| {
            let (r, k) = (Arc::clone(&r), r.raw_key(&tag_r, i));
            async move {
                let mut connection = r.raw.clone();
                let set: Value = ::redis::cmd("SET")
                    .arg(k)
                    .arg(&r.claim_value[..])
                    .arg("NX")
                    .arg("PX")
                    .arg(r.ttl.as_millis())
                    .query_async(&mut connection)
                    .await
                    .map_err(driver)?;
                match set {
                    Value::Okay => Ok(()),
                    other => Err(Error::backend(format!(
                        "raw SET NX of a new key answered {other:?}"
                    ))),
                }
            }
        },
    )
    .await?;
    Ok(Row::new(BACKEND, "execute", mode, Some(0.45), figures))
}

/// Deletes every key under `prefix` (SCAN, then UNLINK each batch found).
async fn delete_run_keys(raw: &ConnectionManager, prefix: &str) -> Result<(), Error> {
    let mut connection = raw.clone();
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .map_err(driver)?;
        if !keys.is_empty() {
            ::redis::cmd("UNLINK")
                .arg(keys)
                .query_async::<()>(&mut connection)
                .await
                .map_err(driver)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
