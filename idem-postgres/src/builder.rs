//! The one builder of both stores: a table name, the limits, then a pool.

use std::marker::PhantomData;
use std::time::Duration;

use idem_core::Error;
use idem_sql::{CallPolicy, TableKind, TableName};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::errors::from_sqlx;
use crate::schema::MAX_TABLE_NAME;

/// A store [`PgBuilder`] makes: [`PgStore`](crate::PgStore) or
/// [`PgTokenStore`](crate::PgTokenStore). Sealed.
pub trait FromTable: Sized + private::Sealed {
    /// The kind of table the store keeps.
    #[doc(hidden)]
    const KIND: &'static TableKind;

    /// The store on a table, with the builder's payload limit.
    #[doc(hidden)]
    fn from_parts(pool: PgPool, table: TableName, policy: CallPolicy, max_payload: usize) -> Self;
}

mod private {
    pub trait Sealed {}
    impl Sealed for crate::PgStore {}
    impl Sealed for crate::PgTokenStore {}
}

/// Builds a [`PgStore`](crate::PgStore) (from [`PgStore::builder`](crate::PgStore::builder))
/// or a [`PgTokenStore`](crate::PgTokenStore) (from
/// [`PgTokenStore::builder`](crate::PgTokenStore::builder)): every setting has a default,
/// and [`connect`](Self::connect) or [`build`](Self::build) is the one fallible step.
#[must_use]
#[derive(Debug, Clone)]
pub struct PgBuilder<S> {
    table: Option<String>,
    max_payload: usize,
    policy: CallPolicy,
    max_connections: u32,
    store: PhantomData<fn() -> S>,
}

impl<S: FromTable> PgBuilder<S> {
    pub(crate) fn new() -> Self {
        Self {
            table: None,
            max_payload: crate::PgStore::DEFAULT_MAX_PAYLOAD,
            policy: CallPolicy::default(),
            max_connections: 10,
            store: PhantomData,
        }
    }

    /// The table: 1 to 52 ASCII letters, digits and underscores (checked by `build`).
    /// Default: `idem_records` for records, `idem_tokens` for tokens.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// The longest any call may take, retries included, before it is
    /// [`Error::Unavailable`]. Keep it below the shortest lease TTL in use, so that no call
    /// outwaits its lease. Pools made by [`connect`](Self::connect) also set nine tenths of
    /// it as the server's `statement_timeout`, so the server gives up on a stuck statement
    /// first, with a clean error on a connection that stays usable.
    /// Default: 5 s, below the executor's 30 s lease.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = timeout;
        self
    }

    /// How many times a statement that hit a deadlock (40P01), a serialization failure
    /// (40001) or a lock timeout (55P03) is run again on a pooled connection, within the
    /// statement timeout. Zero turns retrying off. Default: 3.
    pub fn lock_retries(mut self, retries: u32) -> Self {
        self.policy.lock_retries = retries;
        self
    }

    /// The size of the pool [`connect`](Self::connect) makes. Default: 10.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
    }

    /// Uses an existing pool, shared with the rest of the application. Its connections keep
    /// their own `statement_timeout`; the store still bounds each call on its side.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a table name that is not an identifier.
    pub fn build(self, pool: PgPool) -> Result<S, Error> {
        let name = TableName::new(
            self.table.as_deref().unwrap_or(S::KIND.default_table),
            MAX_TABLE_NAME,
        )?;
        Ok(S::from_parts(pool, name, self.policy, self.max_payload))
    }

    /// Connects a pool to `url` (`postgres://user:password@host:5432/database`) and builds.
    ///
    /// The pool checks connections out without a ping (a dead connection fails its call
    /// with [`Error::Unavailable`], which the executor retries, and is dropped), waits
    /// at most the statement timeout for a connection, and sets `statement_timeout` on the
    /// server.
    ///
    /// # Errors
    /// An unreachable server is [`Error::Unavailable`]; a malformed URL or a refused login
    /// is [`Error::Backend`], each with the sqlx error as `source`; a bad table name is
    /// [`Error::InvalidInput`].
    pub async fn connect(self, url: &str) -> Result<S, Error> {
        let options: PgConnectOptions = url.parse().map_err(from_sqlx)?;
        let timeout_ms = self.policy.server_timeout().as_millis().max(1).to_string();
        let options = options.options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.policy.timeout)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(from_sqlx)?;
        self.build(pool)
    }
}

impl PgBuilder<crate::PgStore> {
    /// Refuses responses and failures over `bytes` with [`Error::PayloadTooLarge`].
    /// Default: 4 MiB ([`PgStore::DEFAULT_MAX_PAYLOAD`](crate::PgStore::DEFAULT_MAX_PAYLOAD)).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}
