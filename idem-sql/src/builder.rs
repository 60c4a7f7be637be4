//! The one builder of every SQL store: a table name, the limits, then a pool.

use std::marker::PhantomData;
use std::time::Duration;

use idem_core::{Error, InvalidInput};

use crate::dialect::Pool;
use crate::{CallPolicy, SqlDialect, SqlStore, TableKind, TableName};

/// A store [`SqlBuilder`] makes: [`SqlStore`] or [`SqlTokenStore`](crate::SqlTokenStore).
/// Sealed.
pub trait FromTable<D: SqlDialect>: Sized + private::Sealed {
    /// The kind of table the store keeps.
    #[doc(hidden)]
    const KIND: &'static TableKind;

    /// The store on a table, with the builder's payload limit.
    #[doc(hidden)]
    fn from_parts(pool: Pool<D>, table: TableName, policy: CallPolicy, max_payload: usize) -> Self;
}

mod private {
    pub trait Sealed {}
    impl<D: crate::SqlDialect> Sealed for crate::SqlStore<D> {}
    impl<D: crate::SqlDialect> Sealed for crate::SqlTokenStore<D> {}
}

/// Builds a record store (from `MySqlStore::builder()`, `PgStore::builder()`) or a token
/// store (from `MySqlTokenStore::builder()`, `PgTokenStore::builder()`): every setting has
/// a default, and [`connect`](Self::connect) or [`build`](Self::build) is the one fallible
/// step.
#[must_use]
#[derive(Debug)]
pub struct SqlBuilder<D, S> {
    table: Option<String>,
    max_payload: usize,
    policy: CallPolicy,
    max_connections: u32,
    store: PhantomData<fn() -> (D, S)>,
}

// Not derived: a derive would ask `D: Clone` and `S: Clone`.
impl<D, S> Clone for SqlBuilder<D, S> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            ..*self
        }
    }
}

impl<D: SqlDialect, S: FromTable<D>> SqlBuilder<D, S> {
    /// The size of the pool [`connect`](Self::connect) makes unless configured otherwise.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

    pub(crate) fn new() -> Self {
        Self {
            table: None,
            max_payload: SqlStore::<D>::DEFAULT_MAX_PAYLOAD,
            policy: CallPolicy::default(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            store: PhantomData,
        }
    }

    /// The table: ASCII letters, digits and underscores, at most 64 bytes on MySQL and 52
    /// on PostgreSQL (checked by `build`).
    /// Default: `idem_records` for records, `idem_tokens` for tokens.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// The longest any call may take, retries included, before it is
    /// [`Error::Unavailable`]. Keep it below the shortest lease TTL in use, so that no call
    /// outwaits its lease: a renewal stuck behind a row lock gives up while the lease is
    /// still its own. Pools made by [`connect`](Self::connect) also give nine tenths of it
    /// to the server (PostgreSQL's `statement_timeout`; MySQL's `innodb_lock_wait_timeout`
    /// and MariaDB's `max_statement_time`), so the server gives up on a stuck statement
    /// first, with a clean error on a connection that stays usable.
    /// Longer than zero (checked by `build`). Default: 5 s, below the executor's 30 s lease.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = timeout;
        self
    }

    /// How many times a statement that hit a lock conflict (MySQL: deadlock 1213, lock
    /// wait timeout 1205; PostgreSQL: deadlock 40P01, serialization failure 40001, lock
    /// timeout 55P03) is run again on a pooled connection, within the statement timeout:
    /// only while nine tenths of it, the server's bound for the retry, are left, so that no
    /// retry the server is still running can take effect after its call was reported
    /// [`Error::Unavailable`]. Zero turns retrying off. Default: 3.
    pub fn lock_retries(mut self, retries: u32) -> Self {
        self.policy.lock_retries = retries;
        self
    }

    /// The size of the pool [`connect`](Self::connect) makes: at least 1 (checked by
    /// `connect`). Default: 10.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
    }

    /// Uses an existing pool, shared with the rest of the application. Its connections keep
    /// their own server-side bounds; the store still bounds each call on its side.
    ///
    /// The pool checks its connections out as it was built to. With sqlx's
    /// `test_before_acquire(false)` and no check of its own, every connection the server
    /// ended while idle (a restart, an idle timeout) fails one call with
    /// [`Error::Unavailable`]; a token consume or an outcome write so failed is not sent
    /// again on another connection. Give such a pool the check [`connect`](Self::connect)
    /// uses: `.before_acquire(idem_sql::driver::alive_after_idle::<Db>)`
    /// ([`alive_after_idle`](crate::driver::alive_after_idle)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a table name that is not an identifier, or a statement
    /// timeout of zero.
    pub fn build(self, pool: Pool<D>) -> Result<S, Error> {
        let name = self.checked_table()?;
        Ok(S::from_parts(pool, name, self.policy, self.max_payload))
    }

    /// The table name, once every setting checks out: a call bounded by no time at all
    /// would be `Unavailable` every time, as if the server were down.
    fn checked_table(&self) -> Result<TableName, Error> {
        if self.policy.timeout.is_zero() {
            return Err(InvalidInput::Other("a statement timeout is longer than zero").into());
        }
        TableName::new(
            self.table.as_deref().unwrap_or(S::KIND.default_table),
            D::MAX_TABLE_NAME,
        )
    }

    /// Connects a pool to `url` (`mysql://user:password@host:3306/database`,
    /// `postgres://user:password@host:5432/database`) and builds.
    ///
    /// The pool checks connections out without a ping, except one idle for a second or
    /// more ([`alive_after_idle`](crate::driver::alive_after_idle)): one the server
    /// dropped while idle is replaced, and one dropped within a second of its last call
    /// fails that call with [`Error::Unavailable`], which the executor retries, and is
    /// discarded (a claim, which its owner may send again, runs on another connection
    /// instead). It waits at most the statement timeout for a connection, and sets the
    /// server's own statement bounds (see [`statement_timeout`](Self::statement_timeout)).
    ///
    /// # Errors
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`], each with the sqlx error as `source`; a bad table name, a
    /// statement timeout of zero or a pool of no connections is [`Error::InvalidInput`].
    pub async fn connect(self, url: &str) -> Result<S, Error> {
        // The settings first: a bad name should not cost a pool of connections, and sqlx's
        // pool panics on a size of zero.
        self.checked_table()?;
        if self.max_connections == 0 {
            return Err(InvalidInput::Other("a pool holds at least one connection").into());
        }
        let pool = D::connect(url, self.policy, self.max_connections).await?;
        self.build(pool)
    }
}

impl<D: SqlDialect> SqlBuilder<D, SqlStore<D>> {
    /// Refuses responses and failures over `bytes` with [`Error::PayloadTooLarge`]. A
    /// payload the server itself refuses (MySQL's `max_allowed_packet`, 16 MiB on MariaDB
    /// and 64 MiB on MySQL 8 by default) is refused the same way, with nothing written.
    /// A limit over the engine's own ([`SqlDialect::MAX_PAYLOAD`]: just under 1 GiB on
    /// PostgreSQL) is the engine's.
    /// Default: 4 MiB ([`SqlStore::DEFAULT_MAX_PAYLOAD`]).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}
