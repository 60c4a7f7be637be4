//! One-time tokens in PostgreSQL: [`PgTokenStore`].

use std::sync::Arc;

use async_trait::async_trait;
use idem_core::backend::TokenRecord;
use idem_core::{Consumption, Error, Scope, Token, TokenStore, Ttl};
use idem_sql::tokens::{self, TokenSteps, decode_scope};
use idem_sql::{CallPolicy, PurgeExpired, TableKind, TableName};
use sqlx::{PgPool, Row};

use crate::builder::{FromTable, PgBuilder};
use crate::errors::from_sqlx;
use crate::schema::TOKENS;
use crate::statements::{TokenStatements, sql};
use crate::table::PgTable;

/// The PostgreSQL [`TokenStore`], for [`Tokens`](idem_core::Tokens): one row per token in
/// one table. See the [crate docs](crate#one-time-tokens).
///
/// - **issue** is one `INSERT ... ON CONFLICT DO NOTHING`. A token already stored is
///   replaced only if its row has expired (one `UPDATE` conditioned on the expiry), so a
///   live token is never overwritten, even by a racing issue; otherwise
///   [`Error::TokenCollision`](idem_core::Error::TokenCollision).
/// - **consume** is one conditional `UPDATE` that sets `used_at` only where the token is
///   live, unused and of this scope; only when it matched nothing does one `SELECT` tell
///   why.
/// - A used token is kept, marked, until it expires; [`PurgeExpired::purge_expired`] then
///   reclaims its row.
///
/// Cloning is cheap: clones share the pool.
#[derive(Debug, Clone)]
pub struct PgTokenStore {
    table: PgTable,
    statements: Arc<TokenStatements>,
}

impl PgTokenStore {
    /// The settings, then [`connect`](PgBuilder::connect) or [`build`](PgBuilder::build).
    pub fn builder() -> PgBuilder<Self> {
        PgBuilder::new()
    }

    /// Uses an existing pool (the application's, or a [`PgStore`](crate::PgStore)'s) with
    /// every default, on table `idem_tokens`.
    #[must_use]
    pub fn from_pool(pool: PgPool) -> Self {
        Self::from_parts(
            pool,
            TableName::default_for(&TOKENS),
            CallPolicy::default(),
            0,
        )
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.table.pool
    }

    /// The table name.
    #[must_use]
    pub fn table(&self) -> &str {
        self.table.name.as_str()
    }

    /// Creates the token table, or brings it up to this build's schema version.
    ///
    /// # Errors
    /// [`Error::Backend`] when a table of that name exists but is not an idem-postgres
    /// token table (a records table included), or carries a newer schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        self.table.migrate().await
    }

    /// Checks that the token table exists at this build's schema version.
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
}

impl FromTable for PgTokenStore {
    const KIND: &'static TableKind = &TOKENS;

    fn from_parts(pool: PgPool, table: TableName, policy: CallPolicy, _: usize) -> Self {
        Self {
            statements: Arc::new(TokenStatements::new(&table)),
            table: PgTable::new(pool, table, &TOKENS, policy),
        }
    }
}

/// Microseconds as the `bigint` PostgreSQL binds.
fn signed(us: u64) -> i64 {
    i64::try_from(us).unwrap_or(i64::MAX)
}

/// The token statements on the store's pool, kept off the store's public surface.
struct Steps<'s>(&'s PgTokenStore);

impl TokenSteps for Steps<'_> {
    async fn insert(&self, token: &Token, scope: &Scope, life_us: u64) -> Result<bool, Error> {
        let done = sqlx::query(sql(&self.0.statements.insert))
            .bind(token.as_str().as_bytes())
            .bind(scope.as_str().as_bytes())
            .bind(signed(life_us))
            .execute(&self.0.table.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn replace_expired(
        &self,
        token: &Token,
        scope: &Scope,
        life_us: u64,
    ) -> Result<bool, Error> {
        let done = sqlx::query(sql(&self.0.statements.replace_expired))
            .bind(token.as_str().as_bytes())
            .bind(scope.as_str().as_bytes())
            .bind(signed(life_us))
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
        let used: bool = row.try_get("used").map_err(from_sqlx)?;
        Ok(Some(TokenRecord {
            scope: decode_scope(scope)?,
            used,
        }))
    }
}

#[async_trait]
impl TokenStore for PgTokenStore {
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
impl PurgeExpired for PgTokenStore {
    /// Deletes every expired token, used or not; see [`PurgeExpired`].
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.table.purge_expired(batch_size).await
    }
}
