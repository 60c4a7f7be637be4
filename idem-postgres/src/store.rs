//! The record store: a table, its statements and the payload limit.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::backend::check_payload;
use idem_core::{Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl};
use idem_sql::{CallPolicy, PurgeExpired, TableKind, TableName};
use sqlx::PgPool;

use crate::builder::{FromTable, PgBuilder};
use crate::ops::{self, OnConnection, Outcome};
use crate::schema::RECORDS;
use crate::statements::Statements;
use crate::table::PgTable;

/// An [`IdempotencyStore`] on PostgreSQL, one row per key in one table. See the
/// [crate docs](crate) for setup, the schema and the transactional mode.
///
/// Cloning is cheap: clones share the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    table: PgTable,
    statements: Arc<Statements>,
    max_payload: usize,
}

impl PgStore {
    /// The largest payload stored unless configured otherwise: 4 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

    /// The settings, then [`connect`](PgBuilder::connect) or [`build`](PgBuilder::build).
    pub fn builder() -> PgBuilder<Self> {
        PgBuilder::new()
    }

    /// Connects with every default; see [`PgBuilder::connect`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached, [`Error::Backend`] for a
    /// malformed URL or a refused login.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// Uses an existing pool with every default, on table `idem_records`.
    #[must_use]
    pub fn from_pool(pool: PgPool) -> Self {
        let table = TableName::default_for(&RECORDS);
        Self::from_parts(
            pool,
            table,
            CallPolicy::default(),
            Self::DEFAULT_MAX_PAYLOAD,
        )
    }

    /// The pool, to begin the transactions of the transactional mode.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.table.pool
    }

    /// The table name.
    #[must_use]
    pub fn table(&self) -> &str {
        self.table.name.as_str()
    }

    /// The payload limit.
    #[must_use]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Creates the table, or brings it up to this build's schema version; a table already
    /// there is left alone, so running it at every start is harmless.
    ///
    /// # Errors
    /// [`Error::Backend`] when a table of that name exists but is not an idem-postgres
    /// records table, or carries a newer schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        self.table.migrate().await
    }

    /// Checks that the table exists at this build's schema version, without changing
    /// anything: for deployments where the application may not run DDL.
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

    pub(crate) fn statements(&self) -> &Statements {
        &self.statements
    }

    pub(crate) fn check_payload(&self, payload: &Bytes) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)
    }
}

impl FromTable for PgStore {
    const KIND: &'static TableKind = &RECORDS;

    fn from_parts(pool: PgPool, table: TableName, policy: CallPolicy, max_payload: usize) -> Self {
        Self {
            statements: Arc::new(Statements::new(&table)),
            table: PgTable::new(pool, table, &RECORDS, policy),
            max_payload,
        }
    }
}

#[async_trait]
impl PurgeExpired for PgStore {
    /// Deletes every record past its retention, and every trace of a lease past its fencing
    /// memory; see [`PurgeExpired`].
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.table.purge_expired(batch_size).await
    }
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                let mut steps = OnConnection {
                    conn: &mut conn,
                    statements: &self.statements,
                };
                idem_sql::claim(&mut steps, request).await
            })
            .await
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.check_payload(&response)?;
        self.finish(lease, Outcome::Completed, &response, retention)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.check_payload(&failure)?;
        self.finish(lease, Outcome::Failed, &failure, retention)
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::renew(&mut conn, &self.statements, lease, ttl).await
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::release(&mut conn, &self.statements, lease).await
            })
            .await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::read(&mut conn, &self.statements, key).await
            })
            .await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::remove(&mut conn, &self.statements, key).await
            })
            .await
    }
}

impl PgStore {
    async fn finish(
        &self,
        lease: &Lease,
        outcome: Outcome,
        payload: &Bytes,
        retention: Ttl,
    ) -> Result<(), Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                ops::finish(
                    &mut conn,
                    &self.statements,
                    lease,
                    outcome,
                    payload,
                    retention,
                )
                .await
            })
            .await
    }
}
