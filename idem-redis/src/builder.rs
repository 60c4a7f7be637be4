//! Settings of a [`RedisStore`] and the ways to connect one.

use std::time::Duration;

use idem_core::Error;
use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::errors::{bounded, from_redis};
use crate::keys::validate_prefix;
use crate::store::{RedisConnection, RedisStore};

/// Builds a [`RedisStore`]: key prefix, payload limit and timeouts, then a connection.
///
/// ```no_run
/// use std::time::Duration;
/// use idem_redis::RedisStore;
///
/// # async fn setup() -> Result<(), idem_core::Error> {
/// let store = RedisStore::builder()
///     .prefix("billing:idem:")
///     .max_payload(1 << 20)
///     .connection_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_secs(1))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    prefix: String,
    max_payload: usize,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: RedisStore::DEFAULT_PREFIX.to_owned(),
            max_payload: RedisStore::DEFAULT_MAX_PAYLOAD,
            connection_timeout: RedisStore::DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: RedisStore::DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

impl RedisStoreBuilder {
    /// Starts from the defaults: prefix `idem:`, 4 MiB payloads, 1 s to connect, 2 s to answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the prefix of every Redis key the store writes (default `idem:`), to share a
    /// server between applications or environments. It must not contain `{` or `}`: the
    /// store puts each key in a hash tag of its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the largest response or failure payload stored, in bytes (default 4 MiB).
    /// Larger ones get [`Error::PayloadTooLarge`] without reaching Redis.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets how long one attempt to (re)connect may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets how long Redis may take to answer a command (default 2 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Connects to the server at `url` (`redis://host:port/db`, `rediss://` with TLS when
    /// the `redis` crate's TLS features are enabled).
    ///
    /// Fails with [`Error::Unavailable`] when the server does not answer, and with
    /// [`Error::Backend`] for a malformed URL or a refused login.
    pub async fn connect(self, url: &str) -> Result<RedisStore, Error> {
        let client = Client::open(url).map_err(from_redis)?;
        self.connect_client(client).await
    }

    /// Connects through an existing [`Client`], with a [`ConnectionManager`] configured from
    /// these settings. The manager reconnects by itself after a connection is lost: a call
    /// made while the server is down makes one connection attempt and fails with
    /// [`Error::Unavailable`]; the next one after the server is back succeeds.
    pub async fn connect_client(self, client: Client) -> Result<RedisStore, Error> {
        validate_prefix(&self.prefix)?;
        let manager =
            connect_manager(client, self.connection_timeout, self.response_timeout).await?;
        self.build(manager)
    }

    /// Uses a connection the application already has: a [`ConnectionManager`] (clones of it
    /// share one multiplexed connection), a
    /// [`MultiplexedConnection`](redis::aio::MultiplexedConnection), or a Redis Cluster
    /// connection (the `redis` crate's `cluster-async` feature): every key one call touches
    /// is in one hash slot. The connection's own reconnect and timeout settings apply; on
    /// top of them, every store call is bounded by this builder's connection timeout plus
    /// response timeout.
    pub fn build<C: RedisConnection>(self, connection: C) -> Result<RedisStore<C>, Error> {
        validate_prefix(&self.prefix)?;
        let deadline = deadline(self.connection_timeout, self.response_timeout);
        Ok(RedisStore::from_parts(
            connection,
            self.prefix,
            self.max_payload,
            deadline,
        ))
    }
}

/// A [`ConnectionManager`] on `client` with these timeouts, connected within their sum. The
/// way every store of this crate connects when given a URL or a [`Client`].
pub(crate) async fn connect_manager(
    client: Client,
    connection_timeout: Duration,
    response_timeout: Duration,
) -> Result<ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connection_timeout))
        .set_response_timeout(Some(response_timeout))
        // Callers see an outage at once instead of waiting out a backoff; the next call
        // starts a fresh attempt.
        .set_number_of_retries(0);
    let deadline = deadline(connection_timeout, response_timeout);
    bounded(deadline, ConnectionManager::new_with_config(client, config)).await
}

/// The longest any call may take: one connection attempt and one answer.
pub(crate) fn deadline(connection_timeout: Duration, response_timeout: Duration) -> Duration {
    connection_timeout.saturating_add(response_timeout)
}
