//! One-time tokens in MySQL/MariaDB: [`MySqlTokenStore`].

mod schema;
mod statements;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::backend::TokenRecord;
use idem_core::{Consumption, Error, Scope, Token, TokenStore, Ttl};
use idem_sql::tokens::{self, TokenSteps, decode_scope};
use idem_sql::{CallPolicy, PurgeExpired, TableName};
use sqlx::{MySqlPool, Row};

use crate::errors::{from_sqlx, is_duplicate_key};
use crate::schema::table_name;
use crate::statements::sql;
use crate::table::{MySqlTable, connect_pool};
pub(crate) use schema::TOKENS;
use statements::TokenStatements;

/// The MySQL/MariaDB [`TokenStore`], for [`Tokens`](idem_core::Tokens): one row per token in
/// one InnoDB table, shared by every instance that uses the database. See the
/// [crate docs](crate#one-time-tokens) for setup.
///
/// - **issue** is one `INSERT`. A token already stored collides on the primary key (1062):
///   if its row has expired, one `UPDATE` conditioned on the expiry replaces it, so a live
///   token is never overwritten, even by a racing issue; otherwise the call fails with
///   [`Error::TokenCollision`](idem_core::Error::TokenCollision).
/// - **consume** is one conditional `UPDATE` that sets `used_at` only where the token is
///   live, unused and of this scope; its affected-row count picks the single winner of any
///   number of concurrent consumes. Only when it matched nothing does one `SELECT` tell why
///   ([`TokenRecord::consume`] decides, so the order of the checks is the core's).
/// - A used token is kept, marked, until it expires; [`PurgeExpired::purge_expired`] then
///   reclaims its row. Every time is the server's (`UTC_TIMESTAMP(6)`).
///
/// Cloning is cheap: clones share the pool.
#[derive(Debug, Clone)]
pub struct MySqlTokenStore {
    table: MySqlTable,
    statements: Arc<TokenStatements>,
}

impl MySqlTokenStore {
    /// The table name used unless another is configured.
    pub const DEFAULT_TABLE: &'static str = schema::DEFAULT_TABLE;

    /// The token table's schema version this build reads and writes, kept in the table
    /// comment (`idem-mysql token schema v1`), apart from the records table's.
    pub const SCHEMA_VERSION: u32 = schema::SCHEMA_VERSION;

    /// Connects a pool to `url` as [`MySqlStore::connect`](crate::MySqlStore::connect) does; for other settings use
    /// [`from_pool`](Self::from_pool).
    ///
    /// # Errors
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`]. Either way the sqlx error is the `source`.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let pool = connect_pool(url, CallPolicy::default()).await?;
        Ok(Self::from_pool(pool))
    }

    /// Uses an existing pool, shared with the rest of the application (or with a
    /// [`MySqlStore`](crate::MySqlStore): `MySqlTokenStore::from_pool(store.pool().clone())`).
    #[must_use]
    pub fn from_pool(pool: MySqlPool) -> Self {
        let name = TableName::default_for(&TOKENS);
        Self {
            statements: Arc::new(TokenStatements::new(&name)),
            table: MySqlTable::new(pool, name, &TOKENS),
        }
    }

    /// Keeps tokens in table `name` instead of `idem_tokens`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless `name` is 1 to 64 ASCII letters, digits and
    /// underscores.
    pub fn with_table(mut self, name: &str) -> Result<Self, Error> {
        let name = table_name(name)?;
        self.statements = Arc::new(TokenStatements::new(&name));
        self.table = self.table.renamed(name);
        Ok(self)
    }

    /// Sets how many times a statement that hit a deadlock or a lock wait timeout is run
    /// again, as [`MySqlStore::with_lock_retries`](crate::MySqlStore::with_lock_retries) does. Zero turns retrying off.
    #[must_use]
    pub fn with_lock_retries(mut self, retries: u32) -> Self {
        self.table.policy.lock_retries = retries;
        self
    }

    /// Sets the longest a call may take, as [`MySqlStore::with_statement_timeout`](crate::MySqlStore::with_statement_timeout) does.
    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.table.policy.timeout = timeout;
        self
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &MySqlPool {
        &self.table.pool
    }

    /// The table name.
    #[must_use]
    pub fn table(&self) -> &str {
        self.table.name.as_str()
    }

    /// Creates the token table, or brings it up to this build's schema version; a table
    /// already there is left alone, so running it at every start is harmless.
    ///
    /// # Errors
    /// [`Error::Backend`] when a table of that name exists but is not an idem-mysql token
    /// table (an idempotency records table included), or carries a newer schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        self.table.migrate().await
    }

    /// Checks that the token table exists at this build's schema version, without changing
    /// anything.
    ///
    /// # Errors
    /// [`Error::Backend`] when it does not.
    pub async fn check_schema(&self) -> Result<(), Error> {
        self.table.check_schema().await
    }

    /// The DDL [`migrate`](Self::migrate) runs, for this store's table, as text.
    #[must_use]
    pub fn migration_sql(&self) -> String {
        self.table.migration_sql()
    }

    /// The DDL for a token table called `table`, without a store.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not an identifier.
    pub fn migration_sql_for(table: &str) -> Result<String, Error> {
        Ok(TOKENS.migration_sql(&table_name(table)?))
    }
}

/// The token statements on the store's pool, kept off the store's public surface.
struct Steps<'s>(&'s MySqlTokenStore);

impl TokenSteps for Steps<'_> {
    async fn insert(&self, token: &Token, scope: &Scope, life_us: u64) -> Result<bool, Error> {
        let inserted = sqlx::query(sql(&self.0.statements.insert))
            .bind(token.as_str().as_bytes())
            .bind(scope.as_str().as_bytes())
            .bind(life_us)
            .execute(&self.0.table.pool)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(from_sqlx(e)),
        }
    }

    async fn replace_expired(
        &self,
        token: &Token,
        scope: &Scope,
        life_us: u64,
    ) -> Result<bool, Error> {
        let done = sqlx::query(sql(&self.0.statements.replace_expired))
            .bind(scope.as_str().as_bytes())
            .bind(life_us)
            .bind(token.as_str().as_bytes())
            .execute(&self.0.table.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn mark_used(&self, token: &Token, scope: &Scope) -> Result<bool, Error> {
        let done = sqlx::query(sql(&self.0.statements.consume))
            .bind(token.as_str().as_bytes())
            .bind(scope.as_str().as_bytes())
            .execute(&self.0.table.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn inspect(&self, token: &Token) -> Result<Option<TokenRecord>, Error> {
        let row = sqlx::query(sql(&self.0.statements.inspect))
            .bind(token.as_str().as_bytes())
            .fetch_optional(&self.0.table.pool)
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
}

#[async_trait]
impl TokenStore for MySqlTokenStore {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        let steps = Steps(self);
        self.table
            .run(|| tokens::issue(&steps, token, scope, ttl))
            .await
    }

    async fn consume(&self, token: &Token, scope: &Scope) -> Result<Consumption, Error> {
        let steps = Steps(self);
        self.table
            .run(|| tokens::consume(&steps, token, scope))
            .await
    }
}

#[async_trait]
impl PurgeExpired for MySqlTokenStore {
    /// Deletes every expired token, used or not; see [`PurgeExpired`].
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.table.purge_expired(batch_size).await
    }
}
