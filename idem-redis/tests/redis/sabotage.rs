//! The idem-tests fault checks against Redis: garbage written under a managed key with a
//! plain `SET`, and a private server killed after the store connected to it.

use std::sync::Arc;
use std::time::Duration;

use idem_core::{BoxError, Key, Token, async_trait};
use idem_redis::{RedisStore, RedisTokenStore};
use idem_tests::{Capabilities, Sabotage, SharedTokenStore, Store, TokenSabotage};

use crate::common::{self, RedisServer};

/// Bytes no layout version of either store decodes.
const GARBAGE: &[u8] = b"\xffnot an idem record";

/// Writes `GARBAGE` at `redis_key`, for a minute.
async fn plant(redis_key: &str) -> Result<(), BoxError> {
    let mut raw = common::raw_connection(&common::url()).await;
    common::plant(&mut raw, redis_key, GARBAGE).await;
    Ok(())
}

/// A store of the test's own, connected to a private server that is then killed.
async fn orphaned<S>(connect: impl AsyncFnOnce(String) -> S) -> S {
    let mut server = RedisServer::start();
    let store = connect(server.url()).await;
    server.kill();
    store
}

#[derive(Debug)]
struct RedisSabotage {
    store: Arc<RedisStore>,
}

#[async_trait]
impl Sabotage for RedisSabotage {
    fn store(&self) -> Store {
        self.store.clone()
    }

    async fn corrupt_record(&self, key: &Key) -> Result<(), BoxError> {
        plant(&self.store.redis_key(key)).await
    }

    async fn unreachable_store(&self) -> Result<Store, BoxError> {
        let prefix = self.store.prefix().to_owned();
        let store = orphaned(async |url| {
            common::store_at(&url, RedisStore::builder().prefix(prefix)).await
        })
        .await;
        Ok(Arc::new(store))
    }

    /// The record key's `PTTL`: Redis's own expiry of what the store keeps for `key`.
    async fn kept_for(&self, key: &Key) -> Result<Option<Duration>, BoxError> {
        pttl(&self.store.redis_key(key)).await
    }
}

/// `redis_key`'s `PTTL`: how long Redis itself keeps it, `None` when it holds nothing.
async fn pttl(redis_key: &str) -> Result<Option<Duration>, BoxError> {
    let mut raw = common::raw_connection(&common::url()).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(redis_key)
        .query_async(&mut raw)
        .await?;
    Ok(match pttl {
        -2 => None,
        -1 => Some(Duration::MAX),
        ms => Some(Duration::from_millis(u64::try_from(ms)?)),
    })
}

#[derive(Debug)]
struct RedisTokenSabotage {
    store: Arc<RedisTokenStore>,
}

#[async_trait]
impl TokenSabotage for RedisTokenSabotage {
    fn store(&self) -> SharedTokenStore {
        self.store.clone()
    }

    async fn corrupt_token(&self, token: &Token) -> Result<(), BoxError> {
        plant(&self.store.redis_key(token)).await
    }

    async fn unreachable_store(&self) -> Result<SharedTokenStore, BoxError> {
        let prefix = self.store.prefix().to_owned();
        let store = orphaned(async |url| {
            common::token_store_at(&url, RedisTokenStore::builder().prefix(prefix)).await
        })
        .await;
        Ok(Arc::new(store))
    }

    /// The token key's `PTTL`: Redis's own expiry of the token or its used mark.
    async fn kept_for(&self, token: &Token) -> Result<Option<Duration>, BoxError> {
        pttl(&self.store.redis_key(token)).await
    }
}

async fn make_sabotage() -> RedisSabotage {
    RedisSabotage {
        store: Arc::new(common::store().await),
    }
}

async fn make_token_sabotage() -> RedisTokenSabotage {
    RedisTokenSabotage {
        store: Arc::new(common::token_store().await),
    }
}

idem_tests::fault_conformance!(
    make_sabotage,
    Capabilities {
        max_payload: RedisStore::DEFAULT_MAX_PAYLOAD,
        ..Default::default()
    }
);

idem_tests::token_fault_conformance!(make_token_sabotage);
