//! One-time tokens in Redis: [`RedisTokenStore`], one command per call.

use std::fmt;

use idem_core::{
    Consumption, Error, OwnerToken, Rejection, Scope, Token, TokenStore, Ttl, async_trait,
};
use redis::Value;
use redis::aio::ConnectionManager;

use crate::connection::{Connection, RedisConnection};
use crate::keys::tagged_key;
use crate::record::{CONSUMER_LEN, ISSUED, TOKEN_VERSION};
use crate::reply::{self, unexpected, unknown_code};
use crate::scripts::SCRIPTS;

/// The Redis [`TokenStore`], for [`Tokens`](idem_core::Tokens): one-time tokens shared by
/// every process that connects to the server. Cloning is cheap: clones share one
/// multiplexed connection.
///
/// Each call is one command: issuing is `SET key value NX PX ttl`, so a live token is never
/// overwritten and Redis expires it on its own clock; consuming is one Lua script that
/// checks and marks the token in one step, so of any number of concurrent consumes exactly
/// one wins. A used token is kept, marked with its consumer, until it was due to expire
/// (`SET ... KEEPTTL`, Redis 6.0 or later): the consumer's own resend, after a reply lost
/// to a timeout or a dropped connection, is told it consumed, and anyone else that the token
/// was used.
///
/// Like [`RedisStore`](crate::RedisStore), it runs on a [`ConnectionManager`] by default, or on any other
/// [`RedisConnection`], a Redis Cluster one included: a call touches one key.
pub struct RedisTokenStore<C = ConnectionManager> {
    connection: Connection<C>,
}

impl<C: Clone> Clone for RedisTokenStore<C> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
        }
    }
}

impl<C> fmt::Debug for RedisTokenStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl RedisTokenStore {
    /// The default prefix of every Redis key the token store writes. It does not clash with
    /// [`RedisStore::DEFAULT_PREFIX`](crate::RedisStore::DEFAULT_PREFIX): idem records sit
    /// right after their prefix in braces.
    pub const DEFAULT_PREFIX: &'static str = "idem:token:";
}

impl<C: RedisConnection> RedisTokenStore<C> {
    pub(crate) fn new(connection: Connection<C>) -> Self {
        Self { connection }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.connection.prefix()
    }

    /// The Redis key holding `token`: `prefix{token}`, with `%`, `{` and `}` percent-escaped
    /// as in idem record keys, so every token is a hash tag of its own. Its value is
    /// `version u8 = 1 | state u8 | ...`, the scope's bytes exactly at the end:
    ///
    /// - issued (state 0): `scope`;
    /// - used by a consumer (state 2): `consumer 16 | scope`, the consumer's
    ///   [`OwnerToken::as_bytes`];
    /// - used, consumer not kept (state 1): `scope`. No longer written, but read: a token
    ///   used before the store kept consumers is [`Rejection::AlreadyUsed`] for every
    ///   consumer.
    pub fn redis_key(&self, token: &Token) -> String {
        tagged_key(self.connection.prefix(), token.as_str())
    }

    /// Loads the consume script into the server now, so that even the first consume is one
    /// round trip. Optional: without it, the first consume after a server restart loads it
    /// (`EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be reached or times out; [`Error::Backend`] when it
    /// refuses `SCRIPT LOAD` (scripting disabled, no permission).
    pub async fn load_scripts(&self) -> Result<(), Error> {
        self.connection.load(&[&SCRIPTS.consume_token]).await
    }
}

#[async_trait]
impl<C: RedisConnection> TokenStore for RedisTokenStore<C> {
    /// `SET key value NX PX ttl`: a live token, or anything else under its key, is left
    /// untouched and the call fails with [`Error::TokenCollision`].
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        let value = [&[TOKEN_VERSION, ISSUED], scope.as_str().as_bytes()].concat();
        let mut set = redis::cmd("SET");
        set.arg(self.redis_key(token))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis());
        match self.connection.query::<Value>(&set).await? {
            Value::Okay => Ok(()),
            Value::Nil => Err(Error::TokenCollision),
            other => Err(unexpected(format!(
                "SET NX answered {other:?}, not OK or nil"
            ))),
        }
    }

    /// One script run: [`TokenRecord::consume`](idem_core::backend::TokenRecord::consume)'s rule on
    /// the stored value. The used mark keeps `consumer`, so its resend is `Consumed` again
    /// and writes nothing. A value that does not decode, or a Redis type other than a
    /// string, is [`Error::CorruptRecord`] and is left as it is.
    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        let script = &SCRIPTS.consume_token;
        let mut call = script.call(
            self.redis_key(token),
            2,
            scope.as_str().len() + CONSUMER_LEN,
        );
        call.arg(scope.as_str()).arg(consumer.as_bytes().as_slice());
        let mut reply = self.connection.run(script, &call).await?;
        let rejection = match reply.code()? {
            reply::CONSUMED => return Ok(Consumption::Consumed),
            reply::UNKNOWN => return Ok(Consumption::Rejected(Rejection::Unknown)),
            reply::ALREADY_USED => Rejection::AlreadyUsed,
            reply::WRONG_SCOPE => Rejection::WrongScope,
            code => return Err(unknown_code(code)),
        };
        stored_scope(reply.bytes()?)?;
        Ok(Consumption::Rejected(rejection))
    }
}

/// The scope a rejected consume found stored, as the [`Scope`] it must be: a value whose
/// header reads well over bytes no scope can be was not written by this store, and is
/// [`Error::CorruptRecord`] rather than a rejection.
fn stored_scope(bytes: Vec<u8>) -> Result<Scope, Error> {
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::corrupt_with("a stored token scope is not UTF-8", e))?;
    Scope::new(text).map_err(|e| Error::corrupt_with("a stored token scope is not a scope", e))
}
