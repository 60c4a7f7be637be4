//! One-time tokens in MySQL/MariaDB: [`MySqlTokenStore`].

mod schema;
mod statements;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use idem_core::{Consumption, Error, InvalidInput, Scope, Token, TokenRecord, TokenStore, Ttl};
use sqlx::{MySqlPool, Row};

use crate::errors::{from_sqlx, is_duplicate_key, retry_lock_conflicts};
use crate::ops::{self, ROUNDS, micros};
use crate::schema::{self as table, TableName};
use crate::statements::sql;
use crate::store::MySqlStore;
pub(crate) use schema::TOKENS;
use statements::TokenStatements;

/// The MySQL/MariaDB [`TokenStore`], for [`Tokens`](idem_core::Tokens): one row per token in
/// one InnoDB table, shared by every instance that uses the database. See the
/// [crate docs](crate#one-time-tokens) for setup.
///
/// - **issue** is one `INSERT`. A token already stored collides on the primary key (1062):
///   if its row has expired, one `UPDATE` conditioned on the expiry replaces it, so a live
///   token is never overwritten, even by a racing issue; otherwise the call fails with
///   [`InvalidInput::DuplicateToken`].
/// - **consume** is one conditional `UPDATE` that sets `used_at` only where the token is
///   live, unused and of this scope; its affected-row count picks the single winner of any
///   number of concurrent consumes. Only when it matched nothing does one `SELECT` tell why
///   ([`TokenRecord::consume`] decides, so the order of the checks is the core's).
/// - A used token is kept, marked, until it expires; [`purge_expired`](Self::purge_expired)
///   then reclaims its row. Every time is the server's (`UTC_TIMESTAMP(6)`).
///
/// Cloning is cheap: clones share the pool.
#[derive(Clone)]
pub struct MySqlTokenStore {
    pool: MySqlPool,
    table: TableName,
    statements: Arc<TokenStatements>,
    lock_retries: u32,
}

impl fmt::Debug for MySqlTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlTokenStore")
            .field("table", &self.table)
            .field("lock_retries", &self.lock_retries)
            .field("pool", &self.pool)
            .finish()
    }
}

impl MySqlTokenStore {
    /// The table name used unless another is configured.
    pub const DEFAULT_TABLE: &'static str = schema::DEFAULT_TABLE;

    /// The token table's schema version this build reads and writes, kept in the table
    /// comment (`idem-mysql token schema v1`), apart from the records table's.
    pub const SCHEMA_VERSION: u32 = schema::SCHEMA_VERSION;

    /// Connects a pool to `url` as [`MySqlStore::connect`] does; for other settings use
    /// [`from_pool`](Self::from_pool).
    ///
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`]. Either way the sqlx error is the `source`.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self::from_pool(crate::store::connect_pool(url).await?))
    }

    /// Uses an existing pool, shared with the rest of the application (or with a
    /// [`MySqlStore`]: `MySqlTokenStore::from_pool(store.pool().clone())`).
    pub fn from_pool(pool: MySqlPool) -> Self {
        let table = TableName::default_for(&TOKENS);
        Self {
            pool,
            statements: Arc::new(TokenStatements::new(&table)),
            table,
            lock_retries: MySqlStore::DEFAULT_LOCK_RETRIES,
        }
    }

    /// Keeps tokens in table `name` instead of `idem_tokens`: 1 to 64 ASCII letters, digits
    /// and underscores, else [`Error::InvalidInput`].
    pub fn with_table(mut self, name: &str) -> Result<Self, Error> {
        self.table = TableName::new(name)?;
        self.statements = Arc::new(TokenStatements::new(&self.table));
        Ok(self)
    }

    /// Sets how many times a statement that hit a deadlock or a lock wait timeout is run
    /// again, as [`MySqlStore::with_lock_retries`] does. Zero turns retrying off.
    pub fn with_lock_retries(mut self, retries: u32) -> Self {
        self.lock_retries = retries;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The table name.
    pub fn table(&self) -> &str {
        self.table.as_str()
    }

    /// Creates the token table, or brings it up to this build's schema version; a table
    /// already there is left alone, so running it at every start is harmless.
    ///
    /// Fails with [`Error::Backend`] when a table of that name exists but is not an
    /// idem-mysql token table (an idempotency records table included), or carries a newer
    /// schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await.map_err(from_sqlx)?;
        table::migrate(&mut conn, &TOKENS, &self.table).await
    }

    /// Checks that the token table exists at this build's schema version, without changing
    /// anything.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await.map_err(from_sqlx)?;
        table::check_version(&mut conn, &TOKENS, &self.table).await
    }

    /// The DDL [`migrate`](Self::migrate) runs, for this store's table, as text.
    pub fn migration_sql(&self) -> String {
        table::migration_sql(&TOKENS, &self.table)
    }

    /// The DDL for a token table called `table`, without a store.
    pub fn migration_sql_for(table: &str) -> Result<String, Error> {
        Ok(table::migration_sql(&TOKENS, &TableName::new(table)?))
    }

    /// Deletes every expired token, used or not, `batch_size` rows per statement, until
    /// none is left; returns how many rows it deleted.
    ///
    /// Expired tokens already count as unknown, so purging only reclaims space. Each batch
    /// is a short `DELETE ... ORDER BY expires_at LIMIT n` on the `expires_at` index; run it
    /// on a schedule, like [`MySqlStore::purge_expired`].
    pub async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.retrying(|| async {
            let mut conn = self.pool.acquire().await.map_err(from_sqlx)?;
            ops::purge_expired(&mut conn, &self.statements.purge, batch_size).await
        })
        .await
    }

    async fn retrying<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        retry_lock_conflicts(self.lock_retries, op).await
    }

    /// Stores a new token; `false` when the token already has a row.
    async fn insert(&self, token: &Token, scope: &Scope, life_us: u64) -> Result<bool, Error> {
        let inserted = sqlx::query(sql(&self.statements.insert))
            .bind(token.as_str().as_bytes())
            .bind(scope.as_str().as_bytes())
            .bind(life_us)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(from_sqlx(e)),
        }
    }

    /// Reissues a token whose row has expired; `false` when the row is live or gone.
    async fn replace_expired(
        &self,
        token: &Token,
        scope: &Scope,
        life_us: u64,
    ) -> Result<bool, Error> {
        let done = sqlx::query(sql(&self.statements.replace_expired))
            .bind(scope.as_str().as_bytes())
            .bind(life_us)
            .bind(token.as_str().as_bytes())
            .execute(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn issue_once(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        let life_us = micros(ttl.as_millis());
        if self.insert(token, scope, life_us).await? {
            return Ok(());
        }
        if self.replace_expired(token, scope, life_us).await? {
            tracing::debug!(table = %self.table, "idem-mysql: reissued an expired token");
            return Ok(());
        }
        // The row is live, or was purged since the INSERT saw it: one more INSERT tells which.
        if self.insert(token, scope, life_us).await? {
            return Ok(());
        }
        Err(InvalidInput::DuplicateToken.into())
    }

    /// Marks the token used if it is live, unused and of `scope`; whether it was.
    async fn mark_used(&self, token: &Token, scope: &Scope) -> Result<bool, Error> {
        let done = sqlx::query(sql(&self.statements.consume))
            .bind(token.as_str().as_bytes())
            .bind(scope.as_str().as_bytes())
            .execute(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    /// A live token's record; `None` when it was never issued or has expired.
    async fn inspect(&self, token: &Token) -> Result<Option<TokenRecord>, Error> {
        let row = sqlx::query(sql(&self.statements.inspect))
            .bind(token.as_str().as_bytes())
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let scope: Vec<u8> = row.try_get("scope").map_err(from_sqlx)?;
        let used: i64 = row.try_get("used").map_err(from_sqlx)?;
        Ok(Some(TokenRecord {
            scope: decode_scope(scope)?,
            used: used != 0,
        }))
    }

    async fn consume_once(&self, token: &Token, scope: &Scope) -> Result<Consumption, Error> {
        for _ in 0..ROUNDS {
            if self.mark_used(token, scope).await? {
                return Ok(Consumption::Consumed);
            }
            let current = self.inspect(token).await?;
            match TokenRecord::consume(current.as_ref(), scope) {
                // The token was (re)issued between the UPDATE and the SELECT: try again.
                (Consumption::Consumed, _) => continue,
                (rejected, _) => return Ok(rejected),
            }
        }
        Err(Error::unavailable(format!(
            "consuming a token of table {} did not settle in {ROUNDS} rounds: its row kept changing",
            self.table
        )))
    }
}

/// A stored scope as the [`Scope`] it was issued for.
fn decode_scope(bytes: Vec<u8>) -> Result<Scope, Error> {
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::corrupt_with("a stored token scope is not UTF-8", e))?;
    Scope::new(text).map_err(|e| Error::corrupt_with("a stored token scope is not a scope", e))
}

#[async_trait]
impl TokenStore for MySqlTokenStore {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.retrying(|| self.issue_once(token, scope, ttl)).await
    }

    async fn consume(&self, token: &Token, scope: &Scope) -> Result<Consumption, Error> {
        self.retrying(|| self.consume_once(token, scope)).await
    }
}
