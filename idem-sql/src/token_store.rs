//! The one-time token store of every SQL engine.

use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use idem_core::backend::TokenRecord;
use idem_core::{Consumption, Error, OwnerToken, Scope, Token, TokenStore, Ttl};
use tokio::time::Instant;

use crate::builder::{FromTable, SqlBuilder};
use crate::dialect::Pool;
use crate::sql_table::SqlTable;
use crate::statement::{Arg, Statement, TokenStatements};
use crate::tokens::{self, TokenSteps};
use crate::{CallPolicy, PurgeExpired, SqlDialect, TableKind, TableName};

/// A [`TokenStore`] on a SQL engine `D`, for [`Tokens`](idem_core::Tokens): one row per
/// token in one table, shared by every instance that uses the database. `MySqlTokenStore`
/// and `PgTokenStore` are this store on their dialect.
///
/// - **issue** is one INSERT. A token already stored is replaced only if its row has
///   expired (one UPDATE conditioned on the expiry), so a live token is never overwritten,
///   even by a racing issue; otherwise the call fails with
///   [`Error::TokenCollision`].
/// - **consume** is one conditional UPDATE that marks the token used, and by whom (the
///   consumer's 16 bytes), only where it is live, unused and of this scope; its
///   affected-row count picks the single winner of any number of concurrent consumes. Only
///   when it matched nothing does one SELECT tell why ([`TokenRecord::consume`] decides, so
///   the order of the checks is the core's): the consumer's own resend, whose first send
///   was applied with its reply lost, is `Consumed` again and writes nothing.
/// - A used token is kept, marked, until it expires; [`PurgeExpired::purge_expired`] then
///   reclaims its row. Every time is the server's.
/// - The table keeps the consumer from schema version 2 of its kind on; `migrate()` adds
///   the column to a version 1 table, whose tokens used before then stay used for every
///   consumer.
///
/// Cloning is cheap: clones share the pool.
#[derive(Debug)]
pub struct SqlTokenStore<D: SqlDialect> {
    table: SqlTable<D>,
    statements: Arc<TokenStatements>,
}

impl<D: SqlDialect> Clone for SqlTokenStore<D> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            statements: Arc::clone(&self.statements),
        }
    }
}

impl<D: SqlDialect> SqlTokenStore<D> {
    /// The table name used unless another is configured.
    pub const DEFAULT_TABLE: &'static str = D::TOKENS.default_table;

    /// The token table's schema version this build reads and writes, kept in the table
    /// comment, apart from the records table's.
    pub const SCHEMA_VERSION: u32 = D::TOKENS.version();

    /// The settings, then [`connect`](SqlBuilder::connect) or [`build`](SqlBuilder::build).
    pub fn builder() -> SqlBuilder<D, Self> {
        SqlBuilder::new()
    }

    /// Connects with every default; see [`SqlBuilder::connect`].
    ///
    /// # Errors
    /// As [`SqlStore::connect`](crate::SqlStore::connect).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// Uses an existing pool (the application's, or a record store's:
    /// `from_pool(store.pool().clone())`) with every default, on the default table
    /// (`idem_tokens`). How the pool should check idle connections: see
    /// [`SqlBuilder::build`].
    #[must_use]
    pub fn from_pool(pool: Pool<D>) -> Self {
        Self::from_parts(
            pool,
            TableName::default_for(D::TOKENS),
            CallPolicy::default(),
            0,
        )
    }

    /// The DDL for a token table called `table`, without a store.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not an identifier.
    pub fn migration_sql_for(table: &str) -> Result<String, Error> {
        Ok(D::TOKENS.migration_sql(&TableName::new(table, D::MAX_TABLE_NAME)?))
    }

    /// Runs one token statement on a pooled connection; how many rows it matched.
    async fn execute(&self, statement: &Statement, args: &[Arg<'_>]) -> Result<u64, Error> {
        let mut conn = self.table.connection().await?;
        D::execute(&mut *conn, statement, args)
            .await
            .map_err(D::error)
    }
}

/// The table's maintenance and its pool, as for [`SqlStore`](crate::SqlStore).
impl<D: SqlDialect> Deref for SqlTokenStore<D> {
    type Target = SqlTable<D>;

    fn deref(&self) -> &SqlTable<D> {
        &self.table
    }
}

impl<D: SqlDialect> FromTable<D> for SqlTokenStore<D> {
    const KIND: &'static TableKind = D::TOKENS;

    fn from_parts(pool: Pool<D>, table: TableName, policy: CallPolicy, _: usize) -> Self {
        Self {
            statements: Arc::new(D::token_statements(&table)),
            table: SqlTable::new(pool, table, D::TOKENS, policy),
        }
    }
}

/// The token statements on the store's pool, kept off the store's public surface, for a
/// call that started at the instant it holds.
struct Steps<'s, D: SqlDialect>(&'s SqlTokenStore<D>, Instant);

impl<'s, D: SqlDialect> Steps<'s, D> {
    /// The steps of a call starting now.
    fn new(store: &'s SqlTokenStore<D>) -> Self {
        Self(store, Instant::now())
    }
}

impl<D: SqlDialect> TokenSteps for Steps<'_, D> {
    async fn insert(&self, token: &Token, scope: &Scope, life_us: u64) -> Result<bool, Error> {
        let args = [
            Arg::Bytes(token.as_str().as_bytes()),
            Arg::Bytes(scope.as_str().as_bytes()),
            Arg::Micros(life_us),
        ];
        let mut conn = self.0.table.connection().await?;
        match D::execute(&mut *conn, &self.0.statements.insert, &args).await {
            Ok(inserted) => Ok(inserted > 0),
            Err(e) if D::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(D::error(e)),
        }
    }

    async fn replace_expired(
        &self,
        token: &Token,
        scope: &Scope,
        life_us: u64,
    ) -> Result<bool, Error> {
        let args = [
            Arg::Bytes(token.as_str().as_bytes()),
            Arg::Bytes(scope.as_str().as_bytes()),
            Arg::Micros(life_us),
        ];
        let replaced = self
            .0
            .execute(&self.0.statements.replace_expired, &args)
            .await?;
        Ok(replaced > 0)
    }

    /// Not sent once the server could still run it after the call gave up (a wait for a
    /// connection, say, used up the call's slack): a consume taking effect after its caller
    /// got `Unavailable` would be there for that caller's resend, but not for a new call
    /// (another consumer) the caller makes once it has given up.
    async fn mark_used(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<bool, Error> {
        let args = [
            Arg::Bytes(token.as_str().as_bytes()),
            Arg::Bytes(scope.as_str().as_bytes()),
            Arg::Bytes(consumer.as_bytes()),
        ];
        let mut conn = self.0.table.connection().await?;
        if !self.0.table.ends_in_time(self.1) {
            return Err(Error::unavailable(
                "a consume was not sent: too little of its call's time was left for the server's own bound",
            ));
        }
        let used = D::execute(&mut *conn, &self.0.statements.consume, &args)
            .await
            .map_err(D::error)?;
        Ok(used > 0)
    }

    async fn inspect(&self, token: &Token) -> Result<Option<TokenRecord>, Error> {
        let args = [Arg::Bytes(token.as_str().as_bytes())];
        let mut conn = self.0.table.connection().await?;
        let row = D::fetch_optional(&mut *conn, &self.0.statements.inspect, &args)
            .await
            .map_err(D::error)?;
        row.map(|row| D::token(&row)?.into_record()).transpose()
    }
}

#[async_trait]
impl<D: SqlDialect> TokenStore for SqlTokenStore<D> {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        let steps = Steps::new(self);
        self.table
            .run(|| tokens::issue(&steps, token, scope, ttl))
            .await
    }

    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        let steps = Steps::new(self);
        self.table
            .run(|| tokens::consume(&steps, token, scope, consumer))
            .await
    }
}

#[async_trait]
impl<D: SqlDialect> PurgeExpired for SqlTokenStore<D> {
    /// Deletes every expired token, used or not; see [`PurgeExpired`].
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.table.purge_batches(batch_size).await
    }
}
