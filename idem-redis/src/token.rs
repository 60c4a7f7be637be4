//! One-time tokens in Redis: [`RedisTokenStore`], one command per call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    Consumption, Error, InvalidInput, Rejection, Scope, Token, TokenStore, Ttl, async_trait,
};
use redis::aio::ConnectionManager;
use redis::{Client, Value};

use crate::builder::{connect_manager, deadline};
use crate::errors::{bounded, from_redis};
use crate::keys::{tagged_key, validate_prefix};
use crate::reply::{Reply, unexpected, unknown_code};
use crate::scripts::CONSUME_TOKEN;
use crate::store::{RedisConnection, RedisStore};

/// The first bytes of a token's value: version 1, not used yet. The layout is documented in
/// `lua/token_consume.lua`, which reads it.
const ISSUED_HEADER: [u8; 2] = [1, 0];

// Reply codes of the consume script, shared with `lua/token_consume.lua`.
const CONSUMED: i64 = 10;
const UNKNOWN: i64 = 11;
const ALREADY_USED: i64 = 12;
const WRONG_SCOPE: i64 = 13;

/// The Redis [`TokenStore`], for [`Tokens`](idem_core::Tokens): one-time tokens shared by
/// every process that connects to the server. Cloning is cheap: clones share one
/// multiplexed connection.
///
/// Each call is one command: issuing is `SET key value NX PX ttl`, so a live token is never
/// overwritten and Redis expires it on its own clock; consuming is one Lua script that
/// checks and marks the token in one step, so of any number of concurrent consumes exactly
/// one wins. A used token is kept, marked, until it was due to expire (`SET ... KEEPTTL`,
/// Redis 6.0 or later).
///
/// Like [`RedisStore`], it runs on a [`ConnectionManager`] by default, or on any other
/// [`RedisConnection`], a Redis Cluster one included: a call touches one key.
pub struct RedisTokenStore<C = ConnectionManager> {
    connection: C,
    prefix: Arc<str>,
    deadline: Duration,
}

impl<C: Clone> Clone for RedisTokenStore<C> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            prefix: Arc::clone(&self.prefix),
            deadline: self.deadline,
        }
    }
}

impl<C> fmt::Debug for RedisTokenStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl RedisTokenStore {
    /// The default prefix of every Redis key the token store writes. It does not clash with
    /// [`RedisStore::DEFAULT_PREFIX`]: idem records sit right after their prefix in braces.
    pub const DEFAULT_PREFIX: &'static str = "idem:token:";

    /// Settings first, then a connection: see [`RedisTokenStoreBuilder`].
    pub fn builder() -> RedisTokenStoreBuilder {
        RedisTokenStoreBuilder::new()
    }

    /// Connects to `url` with the default settings.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// Connects through an existing [`Client`] with the default settings.
    pub async fn from_client(client: Client) -> Result<Self, Error> {
        Self::builder().connect_client(client).await
    }

    /// Uses an existing [`ConnectionManager`] with the default settings; a clone of the one
    /// a [`RedisStore`] runs on shares its connection.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self {
            connection: manager,
            prefix: Self::DEFAULT_PREFIX.into(),
            deadline: deadline(
                RedisStore::DEFAULT_CONNECTION_TIMEOUT,
                RedisStore::DEFAULT_RESPONSE_TIMEOUT,
            ),
        }
    }
}

impl<C: RedisConnection> RedisTokenStore<C> {
    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key holding `token`: `prefix{token}`, with `%`, `{` and `}` percent-escaped
    /// as in idem record keys, so every token is a hash tag of its own. Its value is
    /// `version u8 = 1 | used u8 (0 or 1) | scope` (the scope's bytes exactly).
    pub fn redis_key(&self, token: &Token) -> String {
        tagged_key(&self.prefix, token.as_str())
    }

    /// Loads the consume script into the server now, so that even the first consume is one
    /// round trip. Optional: without it, the first consume after a server restart loads it
    /// (`EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`).
    pub async fn load_scripts(&self) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        bounded(
            self.deadline,
            CONSUME_TOKEN.prepare_invoke().load_async(&mut connection),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl<C: RedisConnection> TokenStore for RedisTokenStore<C> {
    /// `SET key value NX PX ttl`: a live token, or anything else under its key, is left
    /// untouched and the call fails with [`InvalidInput::DuplicateToken`].
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        let value = [ISSUED_HEADER.as_slice(), scope.as_str().as_bytes()].concat();
        let mut set = redis::cmd("SET");
        set.arg(self.redis_key(token))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis());
        let mut connection = self.connection.clone();
        let reply: Value = bounded(self.deadline, set.query_async(&mut connection)).await?;
        match reply {
            Value::Okay => Ok(()),
            Value::Nil => Err(InvalidInput::DuplicateToken.into()),
            other => Err(unexpected(format!(
                "SET NX answered {other:?}, not OK or nil"
            ))),
        }
    }

    /// One script run: [`TokenRecord::consume`](idem_core::TokenRecord::consume)'s rule on
    /// the stored value. A value that does not decode, or a Redis type other than a string,
    /// is [`Error::CorruptRecord`] and is left as it is.
    async fn consume(&self, token: &Token, scope: &Scope) -> Result<Consumption, Error> {
        let mut invocation = CONSUME_TOKEN.prepare_invoke();
        invocation.key(self.redis_key(token)).arg(scope.as_str());
        let mut connection = self.connection.clone();
        let value: Value = bounded(self.deadline, invocation.invoke_async(&mut connection)).await?;
        match Reply::new(value)?.code()? {
            CONSUMED => Ok(Consumption::Consumed),
            UNKNOWN => Ok(Consumption::Rejected(Rejection::Unknown)),
            ALREADY_USED => Ok(Consumption::Rejected(Rejection::AlreadyUsed)),
            WRONG_SCOPE => Ok(Consumption::Rejected(Rejection::WrongScope)),
            code => Err(unknown_code(code)),
        }
    }
}

/// Builds a [`RedisTokenStore`]: key prefix and timeouts, then a connection.
///
/// ```no_run
/// use std::time::Duration;
/// use idem_redis::RedisTokenStore;
///
/// # async fn setup() -> Result<(), idem_core::Error> {
/// let store = RedisTokenStore::builder()
///     .prefix("shop:token:")
///     .response_timeout(Duration::from_millis(500))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisTokenStoreBuilder {
    prefix: String,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl Default for RedisTokenStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: RedisTokenStore::DEFAULT_PREFIX.to_owned(),
            connection_timeout: RedisStore::DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: RedisStore::DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

impl RedisTokenStoreBuilder {
    /// Starts from the defaults: prefix `idem:token:`, 1 s to connect, 2 s to answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the prefix of every Redis key the store writes (default `idem:token:`). It must
    /// not contain `{` or `}`: the store puts each token in a hash tag of its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
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

    /// Connects to the server at `url`. Fails with [`Error::Unavailable`] when the server
    /// does not answer, and with [`Error::Backend`] for a malformed URL or a refused login.
    pub async fn connect(self, url: &str) -> Result<RedisTokenStore, Error> {
        let client = Client::open(url).map_err(from_redis)?;
        self.connect_client(client).await
    }

    /// Connects through an existing [`Client`], with a [`ConnectionManager`] that reconnects
    /// by itself, as [`RedisStoreBuilder::connect_client`](crate::RedisStoreBuilder::connect_client)
    /// does: a call made while the server is down fails with [`Error::Unavailable`] within
    /// the two timeouts.
    pub async fn connect_client(self, client: Client) -> Result<RedisTokenStore, Error> {
        validate_prefix(&self.prefix)?;
        let manager =
            connect_manager(client, self.connection_timeout, self.response_timeout).await?;
        self.build(manager)
    }

    /// Uses a connection the application already has (a [`ConnectionManager`], a
    /// [`MultiplexedConnection`](redis::aio::MultiplexedConnection), a Redis Cluster
    /// connection). Every store call is bounded by the connection timeout plus the response
    /// timeout.
    pub fn build<C: RedisConnection>(self, connection: C) -> Result<RedisTokenStore<C>, Error> {
        validate_prefix(&self.prefix)?;
        Ok(RedisTokenStore {
            connection,
            prefix: self.prefix.into(),
            deadline: deadline(self.connection_timeout, self.response_timeout),
        })
    }
}
