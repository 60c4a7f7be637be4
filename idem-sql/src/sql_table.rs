//! The one table type every SQL store holds: a pool, a table of one kind, and how calls on
//! it are bounded and retried; with the maintenance every table has (migrate, check, purge),
//! written once for both stores.

use std::future::Future;

use idem_core::Error;
use sqlx::pool::PoolConnection;
use tokio::time::Instant;

use crate::dialect::Pool;
use crate::statement::Statement;
use crate::{CallPolicy, SqlDialect, TableKind, TableName, purge};

/// The table of a store ([`SqlStore`](crate::SqlStore) or
/// [`SqlTokenStore`](crate::SqlTokenStore)) on its pool, with the maintenance every table
/// has: each store dereferences to its table, so `store.migrate()`, `store.pool()` and the
/// rest are these methods.
#[derive(Debug)]
pub struct SqlTable<D: SqlDialect> {
    pool: Pool<D>,
    name: TableName,
    kind: &'static TableKind,
    policy: CallPolicy,
    purge: Statement,
}

// Not derived: a derive would ask `D: Clone`.
impl<D: SqlDialect> Clone for SqlTable<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            name: self.name.clone(),
            kind: self.kind,
            policy: self.policy,
            purge: self.purge.clone(),
        }
    }
}

impl<D: SqlDialect> SqlTable<D> {
    pub(crate) fn new(
        pool: Pool<D>,
        name: TableName,
        kind: &'static TableKind,
        policy: CallPolicy,
    ) -> Self {
        Self {
            purge: D::purge_statement(&name),
            pool,
            name,
            kind,
            policy,
        }
    }

    pub(crate) async fn connection(&self) -> Result<PoolConnection<D::Db>, Error> {
        self.pool.acquire().await.map_err(D::error)
    }

    /// Whether the call that just failed with `error` on `conn` failed because the server
    /// had ended the connection (a restart, an idle timeout, a kill) while it sat in the
    /// pool, and another may be tried: at most one per connection the pool holds, counted
    /// in `lost`. The pool hands connections out without a ping (but after an idle spell,
    /// or not at all on a caller's pool), so an idle connection the server ended can fail
    /// one call; a call safe to run again (a claim: its owner gets
    /// its own lease back) runs on the next one instead of failing with them. Told by a
    /// ping, only after an [`Error::Unavailable`]; a dead connection is closed rather than
    /// pinged again on its way back to the pool.
    pub(crate) async fn lost(
        &self,
        conn: &mut PoolConnection<D::Db>,
        error: &Error,
        lost: &mut u32,
    ) -> bool {
        if !matches!(error, Error::Unavailable { .. })
            || *lost >= self.pool.options().get_max_connections()
            || sqlx::Connection::ping(&mut **conn).await.is_ok()
        {
            return false;
        }
        tracing::debug!(%error, "idem-sql: the server had ended the connection, trying another");
        conn.close_on_drop();
        *lost += 1;
        true
    }

    /// Whether a statement sent now, in a call that started at `started`, ends on the
    /// server (within [`CallPolicy::server_timeout`]) before the call's own bound: one
    /// sent later may take effect after the call was reported [`Error::Unavailable`].
    pub(crate) fn ends_in_time(&self, started: Instant) -> bool {
        self.policy
            .outlives_nothing(started.elapsed(), self.policy.timeout)
    }

    /// Runs `op` within the statement timeout, again after a lock conflict (autocommit
    /// statements roll back alone, so running them again is exactly a retry).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.policy
            .run(
                self.policy.timeout,
                crate::driver::is_lock_conflict::<D>,
                op,
            )
            .await
    }

    /// The pool, to begin the transactions of the transactional mode, or to share with a
    /// store of the other kind (`from_pool(store.pool().clone())`).
    #[must_use]
    pub fn pool(&self) -> &Pool<D> {
        &self.pool
    }

    /// The table's name.
    #[must_use]
    pub fn table(&self) -> &str {
        self.name.as_str()
    }

    /// Creates the table, or brings it up to this build's schema version; a table already
    /// there is left alone, so running it at every start is harmless.
    ///
    /// # Errors
    /// [`Error::Backend`] when a table of that name exists but is not a table of this kind
    /// made by this crate (a token table for a record store, say), or carries a newer
    /// schema version.
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        D::migrate(&mut *conn, self.kind, &self.name).await?;
        let found = D::schema_version(&mut *conn, self.kind, &self.name).await?;
        self.kind.check(&self.name, found)
    }

    /// Checks that the table exists at this build's schema version, without changing
    /// anything: for deployments where the application may not run DDL.
    ///
    /// # Errors
    /// [`Error::Backend`] when it does not.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        let found = D::schema_version(&mut *conn, self.kind, &self.name).await?;
        self.kind.check(&self.name, found)
    }

    /// The DDL [`migrate`](Self::migrate) runs, for this table, as text: for teams that
    /// apply schema changes with their own tooling.
    #[must_use]
    pub fn migration_sql(&self) -> String {
        self.kind.migration_sql(&self.name)
    }

    /// The purge of [`PurgeExpired`](crate::PurgeExpired), for either store.
    pub(crate) async fn purge_batches(&self, batch_size: u32) -> Result<u64, Error> {
        purge::in_batches(batch_size, |batch| {
            self.run(move || async move {
                let mut conn = self.connection().await?;
                D::purge(&mut *conn, &self.name, self.kind, &self.purge, batch).await
            })
        })
        .await
    }
}
