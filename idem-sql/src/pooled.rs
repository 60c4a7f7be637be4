//! The one table type every SQL store holds: a pool, a table of one kind, and how calls on
//! it are bounded and retried; with the maintenance every table has (migrate, check, purge).

use std::future::Future;

use idem_core::Error;
use sqlx::pool::PoolConnection;

use crate::dialect::Pool;
use crate::statement::{Arg, Statement};
use crate::{CallPolicy, SqlDialect, TableKind, TableName, purge};

/// A table of one kind on a pool.
#[derive(Debug)]
pub(crate) struct PooledTable<D: SqlDialect> {
    pub(crate) pool: Pool<D>,
    pub(crate) name: TableName,
    pub(crate) kind: &'static TableKind,
    pub(crate) policy: CallPolicy,
    purge: Statement,
}

// Not derived: a derive would ask `D: Clone`.
impl<D: SqlDialect> Clone for PooledTable<D> {
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

impl<D: SqlDialect> PooledTable<D> {
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

    /// Runs `op` within the statement timeout, again after a lock conflict (autocommit
    /// statements roll back alone, so running them again is exactly a retry).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.policy
            .run(self.policy.timeout, D::is_lock_conflict, op)
            .await
    }

    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        D::migrate(&mut *conn, self.kind, &self.name).await?;
        let found = D::schema_version(&mut *conn, self.kind, &self.name).await?;
        self.kind.check(&self.name, found)
    }

    pub(crate) async fn check_schema(&self) -> Result<(), Error> {
        let mut conn = self.connection().await?;
        let found = D::schema_version(&mut *conn, self.kind, &self.name).await?;
        self.kind.check(&self.name, found)
    }

    pub(crate) fn migration_sql(&self) -> String {
        self.kind.migration_sql(&self.name)
    }

    pub(crate) async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error> {
        purge::in_batches(batch_size, |batch| {
            self.run(move || async move {
                let mut conn = self.connection().await?;
                D::execute(&mut *conn, &self.purge, &[Arg::Count(batch)])
                    .await
                    .map_err(D::error)
            })
        })
        .await
    }
}
