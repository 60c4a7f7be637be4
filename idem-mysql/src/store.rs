//! The store: a pool, a table, and the settings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::backend::check_payload;
use idem_core::{Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl};
use idem_sql::{CallPolicy, PurgeExpired, TableName};
use sqlx::MySqlPool;

use crate::ops::{self, OnConnection, Outcome, Reading};
use crate::schema::{RECORDS, table_name};
use crate::statements::Statements;
use crate::table::{MySqlTable, connect_pool};

/// An [`IdempotencyStore`] on MySQL 8 or MariaDB 10.11+, one row per key in one InnoDB
/// table. See the [crate docs](crate) for setup, the schema and the transactional mode.
///
/// Cloning is cheap: clones share the pool.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    table: MySqlTable,
    statements: Arc<Statements>,
    max_payload: usize,
}

impl MySqlStore {
    /// The largest payload stored unless configured otherwise: 4 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

    /// How many times a statement that hit a deadlock or a lock wait timeout is run again
    /// on a pooled connection, unless configured otherwise.
    pub const DEFAULT_LOCK_RETRIES: u32 = CallPolicy::DEFAULT_LOCK_RETRIES;

    /// The longest a call takes, retries included, before it is [`Error::Unavailable`],
    /// unless configured otherwise: 5 s, below the executor's 30 s lease.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = CallPolicy::DEFAULT_TIMEOUT;

    /// How long a call waits for a pooled connection before it is [`Error::Unavailable`],
    /// on pools made by [`connect`](Self::connect): bounded, so a dead server fails calls
    /// quickly instead of after sqlx's default 30 s.
    pub const ACQUIRE_TIMEOUT: Duration = CallPolicy::DEFAULT_TIMEOUT;

    /// Connects a pool to `url` (`mysql://user:password@host:3306/database`): up to 10
    /// connections, checked out without a ping, [`ACQUIRE_TIMEOUT`](Self::ACQUIRE_TIMEOUT)
    /// to get one, and the server's own statement bounds (`innodb_lock_wait_timeout`,
    /// MariaDB's `max_statement_time`) at [`DEFAULT_STATEMENT_TIMEOUT`](Self::DEFAULT_STATEMENT_TIMEOUT)
    /// on every connection, your own transactions on [`pool`](Self::pool) included. For other
    /// settings build the pool with [`MySqlPoolOptions`](sqlx::mysql::MySqlPoolOptions) and
    /// use [`from_pool`](Self::from_pool).
    ///
    /// No ping per checkout: a connection the server dropped fails its one call with
    /// [`Error::Unavailable`] (retried by the executor) and is discarded, and idle
    /// connections are recycled well before the server's `wait_timeout`.
    ///
    /// # Errors
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`]. Either way the sqlx error is the `source`.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self::from_pool(
            connect_pool(url, CallPolicy::default()).await?,
        ))
    }

    /// Uses an existing pool, shared with the rest of the application.
    #[must_use]
    pub fn from_pool(pool: MySqlPool) -> Self {
        let name = TableName::default_for(&RECORDS);
        Self {
            statements: Arc::new(Statements::new(&name)),
            table: MySqlTable::new(pool, name, &RECORDS),
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Keeps records in table `name` instead of `idem_records`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless `name` is 1 to 64 ASCII letters, digits and
    /// underscores.
    pub fn with_table(mut self, name: &str) -> Result<Self, Error> {
        let name = table_name(name)?;
        self.statements = Arc::new(Statements::new(&name));
        self.table = self.table.renamed(name);
        Ok(self)
    }

    /// Refuses responses and failures over `bytes` with [`Error::PayloadTooLarge`].
    ///
    /// The server's `max_allowed_packet` must hold the largest payload plus a few hundred
    /// bytes (MariaDB's default is 16 MiB, MySQL 8's 64 MiB).
    #[must_use]
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets how many times a statement that hit a deadlock (1213) or a lock wait timeout
    /// (1205) is run again on a pooled connection, within the statement timeout, before
    /// the error is returned as [`Error::Unavailable`]. Zero turns retrying off.
    #[must_use]
    pub fn with_lock_retries(mut self, retries: u32) -> Self {
        self.table.policy.lock_retries = retries;
        self
    }

    /// Sets the longest a call may take, retries included, before it is
    /// [`Error::Unavailable`]; keep it below the shortest lease TTL in use, so that no call
    /// outwaits its lease (a renewal stuck behind a row lock gives up while the lease is
    /// still its own). This is the store's own bound; the server-side bounds of a pool
    /// made by [`connect`](Self::connect) stay at the default.
    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.table.policy.timeout = timeout;
        self
    }

    /// The pool, to begin the transactions of the transactional mode.
    #[must_use]
    pub fn pool(&self) -> &MySqlPool {
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
    /// [`Error::Backend`] when a table of that name exists but is not an idem-mysql
    /// table, or carries a newer schema version.
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

    /// The DDL [`migrate`](Self::migrate) runs, for this store's table, as text: for teams
    /// that apply schema changes with their own tooling.
    #[must_use]
    pub fn migration_sql(&self) -> String {
        self.table.migration_sql()
    }

    /// The DDL for a table called `table`, without a store (say, in a build script).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that is not an identifier.
    pub fn migration_sql_for(table: &str) -> Result<String, Error> {
        Ok(RECORDS.migration_sql(&table_name(table)?))
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.statements
    }

    pub(crate) fn check_payload(&self, payload: &Bytes) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)
    }

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
                let statements = &self.statements;
                ops::finish(&mut conn, statements, lease, outcome, payload, retention).await
            })
            .await
    }
}

#[async_trait]
impl PurgeExpired for MySqlStore {
    /// Deletes every record past its retention (and every trace of a lease past its
    /// fencing memory), each batch a `DELETE ... ORDER BY expires_at LIMIT n` on the
    /// `expires_at` index; see [`PurgeExpired`] and the [crate docs](crate).
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.table.purge_expired(batch_size).await
    }
}

#[async_trait]
impl IdempotencyStore for MySqlStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.table
            .run(|| async {
                let mut conn = self.table.connection().await?;
                let mut steps = OnConnection {
                    conn: &mut conn,
                    statements: &self.statements,
                    reading: Reading::Latest,
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
