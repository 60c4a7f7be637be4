//! idem-redis against the raw `redis` client, on Redis and on Valkey (8.1, whose `SET ...
//! IFEQ` idem-redis finishes with, and so does the raw side there).
//!
//! Each side gets a [`ConnectionManager`] of its own with the same settings (the store the
//! one `RedisStoreBuilder::connect_client` makes, the raw side one configured alike), shared
//! by all its tasks, so both pipeline the same
//! way over one multiplexed connection. Every key of a run lives under a fresh prefix, and
//! the run deletes them all at the end, whether or not it succeeded.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError};
use bytes::Bytes;
use idem::redis::RedisStore;
use idem::{Error, Ttl};
// The raw side's complete: the minimal compare-and-set idem's finish script also does (read
// the record, compare the owner field, write the payload with an expiry), without idem's
// record codec and clock; the `server_cost` example measures the same script.
use idem_redis::floor::COMPARE_AND_SET;

use crate::backend::{BenchBackend, Operation, payload};
use crate::keys::NAMESPACE;
use crate::measure::Mode;
use crate::settings::Settings;

/// How to start the shared server, for the error when it is not there.
const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
     --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// How to start the shared Valkey server (built on its first start).
const START_VALKEY: &str = "bash .ci/services valkey";

/// The Redis store and a raw client of its own; on the shared Valkey server when `VALKEY`.
pub struct Redis<const VALKEY: bool = false> {
    store: RedisStore,
    raw: ConnectionManager,
    /// Every Redis key of this run starts with it.
    prefix: String,
    ttl: Ttl,
    /// What a completed call stores and a replay returns.
    payload: Bytes,
    /// What the raw claim writes: the owner field, then filler up to the length of idem's
    /// claimed record (43 bytes).
    claim_value: Bytes,
    /// The owner field the raw compare-and-set checks.
    owner: Bytes,
    compare_and_set_sha: String,
}

/// The Valkey section: the same store and raw client, on Valkey 8.1.
pub type Valkey = Redis<true>;

impl<const VALKEY: bool> Redis<VALKEY> {
    /// The raw side's Redis key number `i` under `tag`, as long as idem's.
    fn raw_key(&self, tag: &str, i: usize) -> String {
        format!("{}raw:{{{tag}:{NAMESPACE}:{i}}}", self.prefix)
    }

    /// `SET key value NX PX ttl GET`: the raw claim, answering the value already there.
    async fn raw_claim(&self, key: String, value: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let mut connection = self.raw.clone();
        ::redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis())
            .arg("GET")
            .query_async(&mut connection)
            .await
            .map_err(driver)
    }
}

impl<const VALKEY: bool> BenchBackend for Redis<VALKEY> {
    type Store = RedisStore;
    const NAME: &'static str = if VALKEY { "valkey" } else { "redis" };
    /// 32,000 operations by default: at 40,000 to 200,000 a second, a few tenths of a
    /// second per row; with the default's 8,000 each slice lasted about ten milliseconds,
    /// and on Valkey, where both sides are fastest, idem's execute read 0.69 to 0.74 there
    /// against 0.85 in rows five times as long.
    const THROUGHPUT_SCALE: usize = 4;

    async fn connect(_: &Settings) -> Result<Self, Error> {
        let (var, default, start) = if VALKEY {
            ("IDEM_VALKEY_URL", "redis://127.0.0.1:6380", START_VALKEY)
        } else {
            ("IDEM_REDIS_URL", "redis://127.0.0.1:6379", START_REDIS)
        };
        let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        connect(&url, var, start).await
    }

    fn store(&self) -> &RedisStore {
        &self.store
    }

    fn ttl(&self) -> Ttl {
        self.ttl
    }

    fn floor(&self, operation: Operation) -> &'static str {
        match (operation, VALKEY) {
            (Operation::ClaimNew | Operation::Replay, _) => "SET NX PX GET",
            (Operation::Complete, false) => "EVALSHA of a minimal Lua CAS",
            (Operation::Execute, false) => "SET NX PX GET + EVALSHA CAS",
            (Operation::Complete, true) => "SET IFEQ PX",
            (Operation::Execute, true) => "SET NX PX GET + SET IFEQ PX",
        }
    }

    /// Issue 17's targets, at many tasks: the full cycle at 0.85× the raw two-round-trip
    /// cycle, and replays at 0.9× an existing-key `SET NX PX GET`. (Its third, finish at no
    /// more than 3 µs of Redis time per call, is measured from the server's own statistics by
    /// idem-redis's `server_cost` example, on a server of its own.)
    fn target(&self, operation: Operation, mode: Mode) -> Option<f64> {
        match (operation, mode) {
            (Operation::Execute, Mode::Throughput(_)) => Some(0.85),
            (Operation::Replay, Mode::Throughput(_)) => Some(0.9),
            _ => None,
        }
    }

    async fn raw_claim_new(&self, tag: &str, i: usize) -> Result<(), Error> {
        match self
            .raw_claim(self.raw_key(tag, i), &self.claim_value)
            .await?
        {
            None => Ok(()),
            Some(_) => Err(Error::backend("raw claim of a new key found a value")),
        }
    }

    async fn raw_seed_replay(&self, tag: &str) -> Result<(), Error> {
        self.raw_claim(self.raw_key(tag, 0), &self.payload)
            .await
            .map(drop)
    }

    async fn raw_replay(&self, tag: &str) -> Result<(), Error> {
        match self
            .raw_claim(self.raw_key(tag, 0), &self.claim_value)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(Error::backend("raw replay found no value")),
        }
    }

    /// Writes the raw side's claimed keys in one pipeline.
    async fn raw_seed_claimed(&self, tag: &str, count: usize) -> Result<(), Error> {
        let mut pipe = ::redis::pipe();
        for i in 0..count {
            pipe.cmd("SET")
                .arg(self.raw_key(tag, i))
                .arg(&self.claim_value[..])
                .arg("PX")
                .arg(self.ttl.as_millis())
                .ignore();
        }
        let mut connection = self.raw.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(driver)
    }

    /// The leanest compare-and-set the server offers: `SET IFEQ` on Valkey, the minimal
    /// script on Redis.
    async fn raw_complete(&self, tag: &str, i: usize) -> Result<(), Error> {
        let mut connection = self.raw.clone();
        let key = self.raw_key(tag, i);
        if VALKEY {
            let written: Option<String> = ::redis::cmd("SET")
                .arg(key)
                .arg(&self.payload[..])
                .arg("IFEQ")
                .arg(&self.claim_value[..])
                .arg("PX")
                .arg(self.ttl.as_millis())
                .query_async(&mut connection)
                .await
                .map_err(driver)?;
            return match written {
                Some(_) => Ok(()),
                None => Err(Error::backend("raw SET IFEQ did not match")),
            };
        }
        let swapped: i64 = ::redis::cmd("EVALSHA")
            .arg(&self.compare_and_set_sha)
            .arg(1)
            .arg(key)
            .arg(&self.owner[..])
            .arg(&self.payload[..])
            .arg(self.ttl.as_millis())
            .query_async(&mut connection)
            .await
            .map_err(driver)?;
        match swapped {
            1 => Ok(()),
            _ => Err(Error::backend("raw compare-and-set did not match")),
        }
    }

    /// Deletes every key of the run.
    async fn close(&self) -> Result<(), Error> {
        delete_run_keys(&self.raw, &self.prefix).await
    }
}

/// The settings `RedisStoreBuilder::connect` gives its manager, used for both sides.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RedisStore::DEFAULT_CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RedisStore::DEFAULT_RESPONSE_TIMEOUT))
        .set_number_of_retries(0)
}

async fn manager(url: &str, var: &str, start: &str) -> Result<ConnectionManager, Error> {
    let unreachable = |reason: String| {
        Error::unavailable(format!(
            "cannot reach the server at {url} ({reason}); start it with: {start} (or set {var})"
        ))
    };
    let client = Client::open(url).map_err(|e| unreachable(e.to_string()))?;
    let connecting = ConnectionManager::new_with_config(client, manager_config());
    tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .map_err(|_| unreachable("no answer in 3 s".to_owned()))?
        .map_err(|e| unreachable(e.to_string()))
}

async fn connect<const VALKEY: bool>(
    url: &str,
    var: &str,
    start: &str,
) -> Result<Redis<VALKEY>, Error> {
    let prefix = format!("idem-bench:{}:", uuid::Uuid::new_v4().simple());
    // Connected as applications connect it: on the store's own manager, which bounds every
    // call itself, so the store adds no timer (`build` on a manager of the bench's would).
    let client = Client::open(url).map_err(driver)?;
    let store = RedisStore::builder()
        .prefix(format!("{prefix}idem:"))
        .connect_client(client)
        .await?;
    store.load_scripts().await?;
    if VALKEY && !store.finishes_by_conditional_set() {
        // The section would measure the script path and say it measured the other.
        return Err(Error::backend(format!(
            "the server at {url} does not offer SET ... IFEQ (Valkey 8.1 or later does)"
        )));
    }
    let mut raw = manager(url, var, start).await?;
    let compare_and_set_sha: String = ::redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(COMPARE_AND_SET)
        .query_async(&mut raw)
        .await
        .map_err(driver)?;
    let owner = Bytes::from(vec![b'o'; 16]);
    let mut claim_value = owner.to_vec();
    claim_value.resize(43, b'c');
    Ok(Redis {
        store,
        raw,
        prefix,
        ttl: Ttl::from_secs(600)?,
        payload: payload(),
        claim_value: claim_value.into(),
        owner,
        compare_and_set_sha,
    })
}

fn driver(error: RedisError) -> Error {
    Error::backend(error)
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
