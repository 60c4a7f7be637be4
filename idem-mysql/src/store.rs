//! The store: a pool, a table, and the settings.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::{
    Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, Ttl, check_payload,
};
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::pool::PoolConnection;

use crate::errors::{from_sqlx, retry_lock_conflicts};
use crate::ops::{self, Outcome, Reading};
use crate::schema::{self, RECORDS, TableName};
use crate::statements::Statements;

/// An [`IdempotencyStore`] on MySQL 8 or MariaDB 10.11+, one row per key in one InnoDB
/// table. See the [crate docs](crate) for setup, the schema and the transactional mode.
///
/// Cloning is cheap: clones share the pool.
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    table: TableName,
    statements: Arc<Statements>,
    max_payload: usize,
    lock_retries: u32,
}

impl fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStore")
            .field("table", &self.table)
            .field("max_payload", &self.max_payload)
            .field("lock_retries", &self.lock_retries)
            .field("pool", &self.pool)
            .finish()
    }
}

impl MySqlStore {
    /// The largest payload stored unless configured otherwise: 4 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

    /// How many times a statement that hit a deadlock or a lock wait timeout is run again
    /// on a pooled connection, unless configured otherwise.
    pub const DEFAULT_LOCK_RETRIES: u32 = 3;

    /// How long a call waits for a pooled connection before it is [`Error::Unavailable`],
    /// on pools made by [`connect`](Self::connect): bounded, so a dead server fails calls
    /// quickly instead of after sqlx's default 30 s.
    pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Connects a pool to `url` (`mysql://user:password@host:3306/database`): up to 10
    /// connections, and [`ACQUIRE_TIMEOUT`](Self::ACQUIRE_TIMEOUT) to get one. For other
    /// settings build the pool with [`MySqlPoolOptions`] and use
    /// [`from_pool`](Self::from_pool).
    ///
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`]. Either way the sqlx error is the `source`.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self::from_pool(connect_pool(url).await?))
    }

    /// Uses an existing pool, shared with the rest of the application.
    pub fn from_pool(pool: MySqlPool) -> Self {
        let table = TableName::default();
        Self {
            pool,
            statements: Arc::new(Statements::new(&table)),
            table,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            lock_retries: Self::DEFAULT_LOCK_RETRIES,
        }
    }

    /// Keeps records in table `name` instead of `idem_records`: 1 to 64 ASCII letters,
    /// digits and underscores, else [`Error::InvalidInput`].
    pub fn with_table(mut self, name: &str) -> Result<Self, Error> {
        self.table = TableName::new(name)?;
        self.statements = Arc::new(Statements::new(&self.table));
        Ok(self)
    }

    /// Refuses responses and failures over `bytes` with [`Error::PayloadTooLarge`].
    ///
    /// The server's `max_allowed_packet` must hold the largest payload plus a few hundred
    /// bytes (MariaDB's default is 16 MiB, MySQL 8's 64 MiB).
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets how many times a statement that hit a deadlock (1213) or a lock wait timeout
    /// (1205) is run again on a pooled connection before the error is returned as
    /// [`Error::Unavailable`]. Zero turns retrying off.
    pub fn with_lock_retries(mut self, retries: u32) -> Self {
        self.lock_retries = retries;
        self
    }

    /// The pool, to begin the transactions of the transactional mode.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The table name.
    pub fn table(&self) -> &str {
        self.table.as_str()
    }

    /// The payload limit.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Creates the table, or brings it up to this build's schema version; a table already
    /// there is left alone, so running it at every start is harmless.
    ///
    /// Fails with [`Error::Backend`] when a table of that name exists but is not an
    /// idem-mysql table, or carries a newer schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        schema::migrate(&mut conn, &RECORDS, &self.table).await
    }

    /// Checks that the table exists at this build's schema version, without changing
    /// anything: for deployments where the application may not run DDL.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        schema::check_version(&mut conn, &RECORDS, &self.table).await
    }

    /// The DDL [`migrate`](Self::migrate) runs, for this store's table, as text: for teams
    /// that apply schema changes with their own tooling.
    pub fn migration_sql(&self) -> String {
        schema::migration_sql(&RECORDS, &self.table)
    }

    /// The DDL for a table called `table`, without a store (say, in a build script).
    pub fn migration_sql_for(table: &str) -> Result<String, Error> {
        Ok(schema::migration_sql(&RECORDS, &TableName::new(table)?))
    }

    /// Deletes every record past its retention (and every trace of a lease past its
    /// fencing memory), `batch_size` rows per statement, until none is left; returns how
    /// many rows it deleted.
    ///
    /// Expired rows already count as absent, so purging only reclaims space. Each batch is
    /// a separate short `DELETE ... ORDER BY expires_at LIMIT n` on the `expires_at` index,
    /// so no lock is held for long. Run it on a schedule; see the [crate docs](crate).
    pub async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            ops::purge_expired(&mut conn, &self.statements.purge, batch_size).await
        })
        .await
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.statements
    }

    pub(crate) fn check_payload(&self, payload: &Bytes) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)
    }

    async fn connection(&self) -> Result<PoolConnection<sqlx::MySql>, Error> {
        self.pool.acquire().await.map_err(from_sqlx)
    }

    /// Runs `op` again after a lock conflict; see [`retry_lock_conflicts`].
    async fn retrying<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        retry_lock_conflicts(self.lock_retries, op).await
    }
}

#[async_trait]
impl IdempotencyStore for MySqlStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            ops::claim(&mut conn, &self.statements, request, Reading::Latest).await
        })
        .await
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.check_payload(&response)?;
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            let statements = &self.statements;
            ops::finish(
                &mut conn,
                statements,
                lease,
                Outcome::Completed,
                &response,
                retention,
            )
            .await
        })
        .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.check_payload(&failure)?;
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            ops::finish(
                &mut conn,
                &self.statements,
                lease,
                Outcome::Failed,
                &failure,
                retention,
            )
            .await
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            ops::renew(&mut conn, &self.statements, lease, ttl).await
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            ops::release(&mut conn, &self.statements, lease).await
        })
        .await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let mut conn = self.connection().await?;
        ops::read(&mut conn, &self.statements, key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.retrying(|| async {
            let mut conn = self.connection().await?;
            ops::remove(&mut conn, &self.statements, key).await
        })
        .await
    }
}

/// The pool [`MySqlStore::connect`] and [`MySqlTokenStore::connect`] make.
///
/// [`MySqlTokenStore::connect`]: crate::MySqlTokenStore::connect
pub(crate) async fn connect_pool(url: &str) -> Result<MySqlPool, Error> {
    MySqlPoolOptions::new()
        .acquire_timeout(MySqlStore::ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .map_err(from_sqlx)
}
