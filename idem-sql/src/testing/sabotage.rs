//! The idem-tests fault checks' hook ([`Sabotage`], [`TokenSabotage`]) for every SQL store,
//! written once: a record row set to a `state` no store writes, a token row replaced by one
//! whose scope is not UTF-8, and a store on [`TestServer::unreachable_pool`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{BoxError, Key, Token, async_trait};
use idem_tests::{Sabotage, SharedTokenStore, Store, TokenSabotage};

use super::{TestServer, quoted, read_text, row_key, shared_store, shared_token_store, update_row};
use crate::{Arg, SqlStore, SqlTokenStore};

/// The shared record store of the server `S`, with its [`Sabotage`] hook.
pub struct RecordSabotage<S: TestServer> {
    store: Arc<SqlStore<S::Dialect>>,
    server: PhantomData<S>,
}

/// The shared token store of the server `S`, with its [`TokenSabotage`] hook.
pub struct TokenStoreSabotage<S: TestServer> {
    store: Arc<SqlTokenStore<S::Dialect>>,
    server: PhantomData<S>,
}

/// The fault checks' factory: the shared record store and its hook.
pub async fn record_sabotage<S: TestServer>() -> RecordSabotage<S> {
    RecordSabotage {
        store: Arc::new(shared_store::<S>().await),
        server: PhantomData,
    }
}

/// The token fault checks' factory: the shared token store and its hook.
pub async fn token_sabotage<S: TestServer>() -> TokenStoreSabotage<S> {
    TokenStoreSabotage {
        store: Arc::new(shared_token_store::<S>().await),
        server: PhantomData,
    }
}

impl<S: TestServer> fmt::Debug for RecordSabotage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSabotage")
            .field("table", &self.store.table())
            .finish()
    }
}

impl<S: TestServer> fmt::Debug for TokenStoreSabotage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStoreSabotage")
            .field("table", &self.store.table())
            .finish()
    }
}

#[async_trait]
impl<S: TestServer> Sabotage for RecordSabotage<S> {
    fn store(&self) -> Store {
        self.store.clone()
    }

    /// No store writes state 9: the row decodes as nothing, whatever its other columns.
    async fn corrupt_record(&self, key: &Key) -> Result<(), BoxError> {
        update_row::<S>(&self.store, key, "state = 9").await;
        Ok(())
    }

    async fn unreachable_store(&self) -> Result<Store, BoxError> {
        let store = SqlStore::<S::Dialect>::builder()
            .table(self.store.table())
            .max_payload(self.store.max_payload())
            .build(S::unreachable_pool())?;
        Ok(Arc::new(store))
    }

    /// The row's `expires_at`, less the server's clock: what the store keeps for `key`
    /// (and what `purge_expired` may delete after).
    async fn kept_for(&self, key: &Key) -> Result<Option<Duration>, BoxError> {
        let sql = S::kept_for_ms(self.store.table());
        let Some(left) = read_text::<S>(self.store.pool(), sql, &row_key(key)).await else {
            return Ok(None);
        };
        let left: i64 = left.parse()?;
        Ok(u64::try_from(left).ok().map(Duration::from_millis))
    }
}

#[async_trait]
impl<S: TestServer> TokenSabotage for TokenStoreSabotage<S> {
    fn store(&self) -> SharedTokenStore {
        self.store.clone()
    }

    /// The issued row goes, and a live one whose scope is not UTF-8 takes its place.
    async fn corrupt_token(&self, token: &Token) -> Result<(), BoxError> {
        let (pool, table) = (self.store.pool(), self.store.table());
        // Tokens are the generator's hex digits: safe as a literal.
        let token = token.as_str();
        let delete = format!("DELETE FROM {} WHERE token = '{token}'", quoted::<S>(table));
        if S::exec(pool, delete).await != 1 {
            return Err(format!("no issued row for token {token}").into());
        }
        S::exec(pool, S::undecodable_scope(table, token)).await;
        Ok(())
    }

    async fn unreachable_store(&self) -> Result<SharedTokenStore, BoxError> {
        let store = SqlTokenStore::<S::Dialect>::builder()
            .table(self.store.table())
            .build(S::unreachable_pool())?;
        Ok(Arc::new(store))
    }

    /// The token row's `expires_at`, less the server's clock: what the store keeps for
    /// `token`, used or not (and what `purge_expired` may delete after).
    async fn kept_for(&self, token: &Token) -> Result<Option<Duration>, BoxError> {
        let sql = S::token_kept_for_ms(self.store.table());
        let args = [Arg::Bytes(token.as_str().as_bytes())];
        let Some(left) = read_text::<S>(self.store.pool(), sql, &args).await else {
            return Ok(None);
        };
        let left: i64 = left.parse()?;
        Ok(u64::try_from(left).ok().map(Duration::from_millis))
    }
}
