//! The one way both stores talk to Redis: a connection with the crate's settings (key
//! prefix, deadline), which sends commands and runs every script.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::Error;
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, ServerErrorKind, Value};

use crate::errors::{deadline_passed, from_record_call, from_redis, timed_out};
use crate::reply::Reply;
use crate::scripts::LuaScript;

/// The connections a [`RedisStore`](crate::RedisStore) or
/// [`RedisTokenStore`](crate::RedisTokenStore) runs on: any async Redis connection that can
/// be cloned and shared across tasks.
pub trait RedisConnection: ConnectionLike + Clone + Send + Sync + 'static {}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisConnection for C {}

/// How long a call may take (the connection timeout plus the response timeout), and who
/// enforces it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deadline {
    /// The connection bounds every command itself: the [`ConnectionManager`] this crate
    /// configures with the same timeouts, so a timer per call would only add its cost. A
    /// call's later round trips (a claim's script after its `SET`, the reload after a
    /// `NOSCRIPT`) are still bounded by what is left of the whole: each command alone would
    /// be given the response timeout.
    ///
    /// [`ConnectionManager`]: redis::aio::ConnectionManager
    Connection(Duration),
    /// A connection from the application, whose own settings are unknown: every call is
    /// wrapped in a timer.
    Store(Duration),
}

impl Deadline {
    /// The longest one store call may take, round trips all included.
    fn whole(self) -> Duration {
        match self {
            Self::Connection(whole) | Self::Store(whole) => whole,
        }
    }
}

/// A connection with the settings every call needs.
pub(crate) struct Connection<C> {
    connection: C,
    prefix: Arc<str>,
    deadline: Deadline,
}

impl<C: Clone> Clone for Connection<C> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            prefix: Arc::clone(&self.prefix),
            deadline: self.deadline,
        }
    }
}

impl<C> fmt::Debug for Connection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// The script's own error out of the error of a pipeline whose first command is the script,
/// so it is sorted as the same script run alone would be (`redis` gives a pipeline's error
/// no code of its own when the server's code is not one it knows, such as `WRONGTYPE`,
/// `OOM` or `BUSY`). An error of a later command alone (the script ran) stays the
/// pipeline's.
fn script_error(err: RedisError) -> RedisError {
    match err.clone().into_server_errors().as_deref() {
        Some([(0, first), ..]) => first.clone().into(),
        _ => err,
    }
}

impl<C: RedisConnection> Connection<C> {
    pub(crate) fn new(connection: C, prefix: String, deadline: Deadline) -> Self {
        Self {
            connection,
            prefix: prefix.into(),
            deadline,
        }
    }

    /// The prefix of every key the store writes.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sends one command on a record within the deadline; a value of another Redis type
    /// under the key is a corrupt record.
    pub(crate) async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        self.bounded(command.query_async(&mut connection))
            .await?
            .map_err(from_record_call)
    }

    /// Runs `call`, a [`LuaScript::call`] of `script`, within the deadline, loading the
    /// script first if the server does not know it (`EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`,
    /// `EVALSHA`).
    pub(crate) async fn run(&self, script: &LuaScript, call: &Cmd) -> Result<Reply, Error> {
        let value = self
            .bounded(self.evalsha(Instant::now(), script, call))
            .await?
            .map_err(from_record_call)?;
        Reply::new(value)
    }

    /// [`run`](Self::run), as the second round trip of a store call that started at
    /// `started`: bounded by what is left of the call's deadline, so that both round trips
    /// together keep within it.
    pub(crate) async fn run_after(
        &self,
        started: Instant,
        script: &LuaScript,
        call: &Cmd,
    ) -> Result<Reply, Error> {
        let whole = self.deadline.whole();
        let left = whole.saturating_sub(started.elapsed());
        let value = tokio::time::timeout(left, self.evalsha(started, script, call))
            .await
            .map_err(|_| deadline_passed(whole))?
            .map_err(from_record_call)?;
        Reply::new(value)
    }

    /// `call`, sent at `started`, loading `script` first if the server does not know it.
    async fn evalsha(
        &self,
        started: Instant,
        script: &LuaScript,
        call: &Cmd,
    ) -> RedisResult<Value> {
        let mut connection = self.connection.clone();
        match call.query_async::<Value>(&mut connection).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let reload = async {
                    script.load().query_async::<()>(&mut connection).await?;
                    call.query_async(&mut connection).await
                };
                self.within(started, reload).await
            }
            other => other,
        }
    }

    /// The rest of a call that started at `started` (the reload after a `NOSCRIPT`), bounded
    /// by what is left of its deadline: a connection that bounds each command by the
    /// response timeout would give each of the three round trips that much.
    async fn within<T>(
        &self,
        started: Instant,
        rest: impl Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        let whole = self.deadline.whole();
        let left = whole.saturating_sub(started.elapsed());
        tokio::time::timeout(left, rest)
            .await
            .unwrap_or_else(|_| Err(timed_out(whole)))
    }

    /// [`run`](Self::run), with `then(spent)` sent right behind the script in the same round
    /// trip (a pipeline), `spent` being how long the call has taken so far; its reply comes
    /// back beside the script's. When the server did not know the script, the first
    /// pipeline's `then` ran all the same: the second is built with the time it took.
    pub(crate) async fn run_then(
        &self,
        script: &LuaScript,
        call: &Cmd,
        then: impl Fn(Duration) -> Cmd,
    ) -> Result<(Reply, Value), Error> {
        let started = Instant::now();
        let pipeline = |then: Cmd| {
            let mut pipe = redis::pipe();
            pipe.add_command(call.clone()).add_command(then);
            pipe
        };
        let mut connection = self.connection.clone();
        let attempt = async {
            match pipeline(then(Duration::ZERO))
                .query_async::<(Value, Value)>(&mut connection)
                .await
            {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    let reload = async {
                        script.load().query_async::<()>(&mut connection).await?;
                        pipeline(then(started.elapsed()))
                            .query_async(&mut connection)
                            .await
                    };
                    self.within(started, reload).await
                }
                other => other,
            }
        };
        let (value, then) = self
            .bounded(attempt)
            .await?
            .map_err(|err| from_record_call(script_error(err)))?;
        Ok((Reply::new(value)?, then))
    }

    /// Loads `scripts` into the server: each `SCRIPT LOAD` a command of its own, all sent at
    /// once (one round trip on a multiplexed connection). Not a pipeline: a cluster
    /// connection sends a lone `SCRIPT LOAD` to every primary, but a pipeline of commands
    /// without a key to one node only, and the keys live on all of them.
    pub(crate) async fn load(&self, scripts: &[&LuaScript]) -> Result<(), Error> {
        let loads = scripts.iter().map(|script| {
            let mut connection = self.connection.clone();
            async move { script.load().query_async::<()>(&mut connection).await }
        });
        self.bounded(futures::future::try_join_all(loads))
            .await?
            .map(drop)
            .map_err(from_redis)
    }

    /// `call`, bounded by the deadline where the connection does not bound it itself.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<RedisResult<T>, Error> {
        match self.deadline {
            Deadline::Connection(_) => Ok(call.await),
            Deadline::Store(deadline) => tokio::time::timeout(deadline, call)
                .await
                .map_err(|_| deadline_passed(deadline)),
        }
    }
}
