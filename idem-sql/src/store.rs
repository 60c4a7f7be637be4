//! The record store of every SQL engine: a table, its statements and the payload limit.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::backend::check_payload;
use idem_core::{Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl};

use crate::builder::{FromTable, SqlBuilder};
use crate::dialect::Pool;
use crate::ops::{self, OnConnection, Outcome, Reading};
use crate::sql_table::SqlTable;
use crate::statement::RecordStatements;
use crate::{CallPolicy, PurgeExpired, SqlDialect, TableKind, TableName};

/// An [`IdempotencyStore`] on a SQL engine `D`, one row per key in one table: `MySqlStore`
/// and `PgStore` are this store on their dialect. See their crates' docs for setup, the
/// schema and the transactional mode.
///
/// - **claim** of a new key is one INSERT. When the key has a row, the engine reads it in
///   the same statement where it can (a replay is then one statement), and the rules of
///   [`idem_core::backend::lifecycle`] decide; a free key (lapsed, released, expired) is taken over
///   by one conditional UPDATE that re-checks the rule under the row lock.
/// - **complete**, **fail**, **renew**, **release** are one UPDATE each, conditioned on
///   state, owner token, fencing number and the row not having expired; no row matched is
///   [`Error::LeaseLost`], with nothing changed.
/// - Every call is bounded ([`SqlBuilder::statement_timeout`]) and retried after a lock
///   conflict ([`SqlBuilder::lock_retries`]).
///
/// Cloning is cheap: clones share the pool.
#[derive(Debug)]
pub struct SqlStore<D: SqlDialect> {
    table: SqlTable<D>,
    statements: Arc<RecordStatements<D>>,
    max_payload: usize,
}

impl<D: SqlDialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            statements: Arc::clone(&self.statements),
            max_payload: self.max_payload,
        }
    }
}

impl<D: SqlDialect> SqlStore<D> {
    /// The largest payload stored unless configured otherwise: 4 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

    /// How many times a statement that hit a lock conflict is run again on a pooled
    /// connection, unless configured otherwise.
    pub const DEFAULT_LOCK_RETRIES: u32 = CallPolicy::DEFAULT_LOCK_RETRIES;

    /// The longest a call takes, retries included, before it is [`Error::Unavailable`],
    /// unless configured otherwise: 5 s, below the executor's 30 s lease.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = CallPolicy::DEFAULT_TIMEOUT;

    /// How long a call waits for a connection of a pool made by
    /// [`connect`](Self::connect), unless configured otherwise: the statement timeout, so a
    /// dead server fails calls quickly instead of after sqlx's default 30 s.
    pub const ACQUIRE_TIMEOUT: Duration = CallPolicy::DEFAULT_TIMEOUT;

    /// The settings, then [`connect`](SqlBuilder::connect) or [`build`](SqlBuilder::build).
    pub fn builder() -> SqlBuilder<D, Self> {
        SqlBuilder::new()
    }

    /// Connects with every default; see [`SqlBuilder::connect`].
    ///
    /// # Errors
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`]. Either way the sqlx error is the `source`.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// Uses an existing pool with every default, on the default table (`idem_records`).
    /// How the pool should check idle connections: see [`SqlBuilder::build`].
    #[must_use]
    pub fn from_pool(pool: Pool<D>) -> Self {
        let table = TableName::default_for(D::RECORDS);
        Self::from_parts(
            pool,
            table,
            CallPolicy::default(),
            Self::DEFAULT_MAX_PAYLOAD,
        )
    }

    /// The payload limit.
    #[must_use]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The DDL for a table called `table`, without a store (say, in a build script).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not an identifier.
    pub fn migration_sql_for(table: &str) -> Result<String, Error> {
        Ok(D::RECORDS.migration_sql(&TableName::new(table, D::MAX_TABLE_NAME)?))
    }

    /// The statements the store sends on its table, the dialect's own among them
    /// ([`RecordStatements::extra`]).
    #[must_use]
    pub fn statements(&self) -> &RecordStatements<D> {
        &self.statements
    }

    pub(crate) fn check_payload(&self, payload: &Bytes) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)
    }

    /// [`finish_in`](Self::finish_in) on a pooled connection of its own, bounded and
    /// retried; an oversized payload is refused before any connection is taken.
    async fn finish(
        &self,
        lease: &Lease,
        outcome: Outcome,
        payload: &Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.check_payload(payload)?;
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                self.finish_in(&mut conn, lease, outcome, payload, retention)
                    .await
            })
            .await
    }
}

/// The table's maintenance and its pool: [`pool`](SqlTable::pool),
/// [`table`](SqlTable::table), [`migrate`](SqlTable::migrate),
/// [`check_schema`](SqlTable::check_schema), [`migration_sql`](SqlTable::migration_sql).
impl<D: SqlDialect> Deref for SqlStore<D> {
    type Target = SqlTable<D>;

    fn deref(&self) -> &SqlTable<D> {
        &self.table
    }
}

impl<D: SqlDialect> FromTable<D> for SqlStore<D> {
    const KIND: &'static TableKind = D::RECORDS;

    fn from_parts(pool: Pool<D>, table: TableName, policy: CallPolicy, max_payload: usize) -> Self {
        Self {
            statements: Arc::new(D::record_statements(&table)),
            table: SqlTable::new(pool, table, D::RECORDS, policy),
            max_payload: max_payload.min(D::MAX_PAYLOAD),
        }
    }
}

#[async_trait]
impl<D: SqlDialect> PurgeExpired for SqlStore<D> {
    /// Deletes every record past its retention, and every trace of a lease past its fencing
    /// memory, in batches on the `expires_at` index; see [`PurgeExpired`].
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.table.purge_batches(batch_size).await
    }
}

#[async_trait]
impl<D: SqlDialect> IdempotencyStore for SqlStore<D> {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.table
            .run(|| async {
                let mut lost = 0;
                loop {
                    let mut conn = self.table.connection().await?;
                    let mut steps = OnConnection::<D> {
                        conn: &mut conn,
                        statements: &self.statements,
                        reading: Reading::Latest,
                    };
                    match crate::claim(&mut steps, request).await {
                        Err(error) if self.table.lost(&mut conn, &error, &mut lost).await => {}
                        claimed => return claimed,
                    }
                }
            })
            .await
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.finish(lease, Outcome::Completed, &response, retention)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.finish(lease, Outcome::Failed, &failure, retention)
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::renew(&mut *conn, &self.statements, lease, ttl).await
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::release(&mut *conn, &self.statements, lease).await
            })
            .await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::read(&mut *conn, &self.statements, key).await
            })
            .await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                D::remove(&mut *conn, &self.statements, key).await
            })
            .await
    }
}
