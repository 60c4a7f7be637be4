//! The store: each call of the contract is one script, one round trip.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, RecordState, Ttl,
    async_trait, check_payload, lifecycle,
};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Client, ScriptInvocation, Value};

use crate::builder::RedisStoreBuilder;
use crate::errors::bounded;
use crate::keys::record_key;
use crate::reply::{self, Reply, unknown_code};
use crate::scripts::{MAX_EXACT, PHASE_CLAIMED, PHASE_COMPLETED, PHASE_FAILED, SCRIPTS};

/// The Redis [`IdempotencyStore`]. Cloning is cheap: clones share one multiplexed
/// connection, which any number of tasks use at once.
///
/// It runs on a [`ConnectionManager`] (the default: one multiplexed connection that
/// reconnects by itself) or on any other [`RedisConnection`], such as a
/// [`MultiplexedConnection`](redis::aio::MultiplexedConnection) or, with the `redis`
/// crate's `cluster-async` feature, a Redis Cluster connection; see
/// [`RedisStoreBuilder::build`].
pub struct RedisStore<C = ConnectionManager> {
    connection: C,
    prefix: Arc<str>,
    max_payload: usize,
    deadline: Duration,
}

/// The connections a [`RedisStore`] runs on: any async Redis connection that can be cloned
/// and shared across tasks.
pub trait RedisConnection: ConnectionLike + Clone + Send + Sync + 'static {}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisConnection for C {}

impl<C: Clone> Clone for RedisStore<C> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            prefix: Arc::clone(&self.prefix),
            max_payload: self.max_payload,
            deadline: self.deadline,
        }
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("max_payload", &self.max_payload)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The default prefix of every Redis key the store writes.
    pub const DEFAULT_PREFIX: &'static str = "idem:";
    /// The default largest payload: 4 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;
    /// The default time one connection attempt may take.
    pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
    /// The default time Redis may take to answer.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

    /// Settings first, then a connection: see [`RedisStoreBuilder`].
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::new()
    }

    /// Connects to `url` with the default settings.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// Connects through an existing [`Client`] with the default settings.
    pub async fn from_client(client: Client) -> Result<Self, Error> {
        Self::builder().connect_client(client).await
    }

    /// Uses an existing [`ConnectionManager`] with the default settings.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self::from_parts(
            manager,
            Self::DEFAULT_PREFIX.to_owned(),
            Self::DEFAULT_MAX_PAYLOAD,
            Self::DEFAULT_CONNECTION_TIMEOUT.saturating_add(Self::DEFAULT_RESPONSE_TIMEOUT),
        )
    }
}

impl<C: RedisConnection> RedisStore<C> {
    pub(crate) fn from_parts(
        connection: C,
        prefix: String,
        max_payload: usize,
        deadline: Duration,
    ) -> Self {
        Self {
            connection,
            prefix: prefix.into(),
            max_payload,
            deadline,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The largest payload stored, in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The Redis key holding `key`'s record, to inspect it with `redis-cli` (the value is
    /// binary; see the crate docs for its layout).
    pub fn redis_key(&self, key: &Key) -> String {
        record_key(&self.prefix, key)
    }

    /// Loads the scripts into the server now, so that even the first call of each kind is
    /// one round trip. Optional: without it, the first call of a kind after a server
    /// restart loads its script (`EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`).
    pub async fn load_scripts(&self) -> Result<(), Error> {
        for script in SCRIPTS.all() {
            let mut connection = self.connection.clone();
            self.bounded(script.prepare_invoke().load_async(&mut connection))
                .await?;
        }
        Ok(())
    }

    /// Runs one script call within the deadline.
    async fn run(&self, invocation: &ScriptInvocation<'_>) -> Result<Reply, Error> {
        let mut connection = self.connection.clone();
        let value: Value = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        Reply::new(value)
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        bounded(self.deadline, call).await
    }

    /// Runs a transition script (finish, renew, release) for `lease`, with `extra` arguments
    /// after the owner and fencing number.
    async fn transition(
        &self,
        script: &redis::Script,
        lease: &Lease,
        extra: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<(), Error> {
        // The store never issues a fencing number the scripts cannot compare exactly.
        if lease.fencing >= MAX_EXACT {
            return Err(Error::LeaseLost);
        }
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.redis_key(&lease.key))
            .arg(lease.owner.as_bytes().as_slice())
            .arg(lease.fencing);
        extra(&mut invocation);
        let mut reply = self.run(&invocation).await?;
        match reply.code()? {
            reply::DONE => Ok(()),
            reply::LEASE_LOST => Err(Error::LeaseLost),
            code => Err(unknown_code(code)),
        }
    }

    async fn finish(
        &self,
        lease: &Lease,
        payload: Bytes,
        retention: Ttl,
        phase: u8,
    ) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)?;
        self.transition(&SCRIPTS.finish, lease, |invocation| {
            invocation
                .arg(retention.as_millis())
                .arg(payload.as_ref())
                .arg(phase);
        })
        .await
    }
}

#[async_trait]
impl<C: RedisConnection> IdempotencyStore for RedisStore<C> {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let fingerprint: &[u8] = match &request.fingerprint {
            Some(fingerprint) => fingerprint.as_bytes(),
            None => &[],
        };
        let mut invocation = SCRIPTS.claim.prepare_invoke();
        invocation
            .key(self.redis_key(&request.key))
            .arg(request.owner.as_bytes().as_slice())
            .arg(request.lease_ttl.as_millis())
            .arg(lifecycle::trace_ttl(request.lease_ttl.as_millis()))
            .arg(fingerprint);
        let mut reply = self.run(&invocation).await?;
        match reply.code()? {
            reply::ACQUIRED => Ok(Claim::Acquired(Lease {
                key: request.key.clone(),
                owner: request.owner,
                fencing: reply.count()?,
            })),
            reply::IN_PROGRESS => Ok(Claim::InProgress {
                retry_after: reply.millis()?,
            }),
            reply::COMPLETED => Ok(Claim::Completed(Bytes::from(reply.bytes()?))),
            reply::FAILED => Ok(Claim::Failed(Bytes::from(reply.bytes()?))),
            reply::MISMATCH => Err(Error::FingerprintMismatch),
            code => Err(unknown_code(code)),
        }
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.finish(lease, response, retention, PHASE_COMPLETED)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.finish(lease, failure, retention, PHASE_FAILED).await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.transition(&SCRIPTS.renew, lease, |invocation| {
            invocation
                .arg(ttl.as_millis())
                .arg(lifecycle::trace_ttl(ttl.as_millis()));
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.transition(&SCRIPTS.release, lease, |_| {}).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let mut invocation = SCRIPTS.read.prepare_invoke();
        invocation.key(self.redis_key(key));
        let mut reply = self.run(&invocation).await?;
        match reply.code()? {
            reply::FREE => Ok(None),
            reply::RECORD => read_record(key, &mut reply).map(Some),
            code => Err(unknown_code(code)),
        }
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        let mut invocation = SCRIPTS.remove.prepare_invoke();
        invocation.key(self.redis_key(key));
        let mut reply = self.run(&invocation).await?;
        match reply.code()? {
            reply::DONE => Ok(reply.int()? == 1),
            code => Err(unknown_code(code)),
        }
    }
}

/// `phase, fencing, fingerprint, ms left, owner or payload`, as the read script sends them.
fn read_record(key: &Key, reply: &mut Reply) -> Result<Record, Error> {
    let phase = reply.int()?;
    let fencing = reply.count()?;
    let fingerprint = reply.fingerprint()?;
    let expires_in = reply.millis()?;
    let state = match phase {
        PHASE_CLAIMED => RecordState::Claimed {
            owner: reply.owner()?,
        },
        p if p == i64::from(PHASE_COMPLETED) => RecordState::Completed {
            response: Bytes::from(reply.bytes()?),
        },
        p if p == i64::from(PHASE_FAILED) => RecordState::Failed {
            failure: Bytes::from(reply.bytes()?),
        },
        other => return Err(reply::unexpected(format!("unknown phase {other}"))),
    };
    Ok(Record {
        key: key.clone(),
        state,
        fencing,
        fingerprint,
        expires_in,
    })
}
