//! The store: each call of the contract is one command, one round trip (a claim that finds
//! a lease takes two).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, RecordState, Ttl,
    async_trait, check_payload, lifecycle,
};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Client, Cmd, ErrorKind, ServerErrorKind, Value};

use crate::builder::RedisStoreBuilder;
use crate::errors::{bounded, deadline_passed, from_record_call};
use crate::keys::record_key;
use crate::record::{self, Found};
use crate::reply::{self, Reply, unknown_code};
use crate::scripts::{LuaScript, MAX_EXACT, SCRIPTS};

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

    /// Loads the scripts into the server now, so that even the first call of each kind that
    /// runs one is one round trip. Optional: without it, the first such call after a server
    /// restart loads its script (`EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`).
    pub async fn load_scripts(&self) -> Result<(), Error> {
        for script in SCRIPTS.all() {
            let mut connection = self.connection.clone();
            self.bounded(load(script).query_async::<()>(&mut connection))
                .await?;
        }
        Ok(())
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        bounded(self.deadline, call).await
    }

    /// Sends one command on a record within the deadline; a value of another Redis type
    /// under the key is a corrupt record.
    async fn query(&self, command: &Cmd) -> Result<Value, Error> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(self.deadline, command.query_async(&mut connection))
            .await
            .map_err(|_| deadline_passed(self.deadline))?
            .map_err(from_record_call)
    }

    /// Runs `call`, an `EVALSHA` of `script` from [`evalsha`], within the deadline, loading
    /// the script first if the server does not know it.
    async fn run(&self, script: &LuaScript, call: &Cmd) -> Result<Reply, Error> {
        let mut connection = self.connection.clone();
        let attempt = async {
            match call.query_async::<Value>(&mut connection).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    load(script).query_async::<()>(&mut connection).await?;
                    call.query_async(&mut connection).await
                }
                other => other,
            }
        };
        let value = tokio::time::timeout(self.deadline, attempt)
            .await
            .map_err(|_| deadline_passed(self.deadline))?
            .map_err(from_record_call)?;
        Reply::new(value)
    }

    /// `EVALSHA` of a transition script (finish, renew, release) for `lease`: its record
    /// header and owner come first, then what `extra` adds.
    fn transition(&self, script: &LuaScript, lease: &Lease) -> Result<Cmd, Error> {
        // The store never issues a fencing number the scripts cannot compare exactly.
        if lease.fencing >= MAX_EXACT {
            return Err(Error::LeaseLost);
        }
        let mut call = evalsha(script, &self.redis_key(&lease.key));
        call.arg(&record::header(record::CLAIMED, lease.fencing)[..])
            .arg(&lease.owner.as_bytes()[..]);
        Ok(call)
    }

    async fn run_transition(&self, script: &LuaScript, call: &Cmd) -> Result<(), Error> {
        let mut reply = self.run(script, call).await?;
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
        let mut call = self.transition(&SCRIPTS.finish, lease)?;
        call.arg(&record::header(phase, lease.fencing)[..])
            .arg(retention.as_millis())
            .arg(payload.as_ref());
        self.run_transition(&SCRIPTS.finish, &call).await
    }

    /// The claim script, for a key the plain claim found claimed or released: only there
    /// does Redis's clock decide, atomically with the write.
    async fn claim_by_script(
        &self,
        request: &ClaimRequest,
        redis_key: &str,
        value: &[u8],
        px: u64,
    ) -> Result<Claim, Error> {
        let mut call = evalsha(&SCRIPTS.claim, redis_key);
        call.arg(value).arg(px);
        let mut reply = self.run(&SCRIPTS.claim, &call).await?;
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
}

/// `EVALSHA sha 1 key`, for the script's arguments to follow.
fn evalsha(script: &LuaScript, redis_key: &str) -> Cmd {
    let mut call = redis::cmd("EVALSHA");
    call.arg(&script.hash).arg(1).arg(redis_key);
    call
}

fn load(script: &LuaScript) -> Cmd {
    let mut call = redis::cmd("SCRIPT");
    call.arg("LOAD").arg(script.code);
    call
}

/// What a claim that found a finished record answers, as idem_core::lifecycle::claim does:
/// the outcome, unless the fingerprints differ.
fn replay(request: &ClaimRequest, found: Found) -> Option<Result<Claim, Error>> {
    let Found::Finished {
        phase,
        fingerprint,
        payload,
    } = found
    else {
        return None;
    };
    if fingerprint != request.fingerprint {
        return Some(Err(Error::FingerprintMismatch));
    }
    Some(Ok(if phase == record::FAILED {
        Claim::Failed(payload)
    } else {
        Claim::Completed(payload)
    }))
}

#[async_trait]
impl<C: RedisConnection> IdempotencyStore for RedisStore<C> {
    /// One plain `SET key record NX PX ttl GET`: a new key is acquired (fencing 1) and a
    /// finished one replayed from the value the same command returns. Only a key found
    /// claimed or released takes a second round trip, the claim script, because only Redis's
    /// clock can tell whether that lease lapsed.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let lease_ttl = request.lease_ttl.as_millis();
        let trace_ttl = lifecycle::trace_ttl(lease_ttl);
        let px = lease_ttl.saturating_add(trace_ttl);
        let value = record::claimed(1, request.fingerprint.as_ref(), &request.owner, trace_ttl);
        let redis_key = self.redis_key(&request.key);
        let mut set = redis::cmd("SET");
        set.arg(&redis_key)
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(px)
            .arg("GET");
        let found = match self.query(&set).await? {
            Value::Nil => {
                return Ok(Claim::Acquired(Lease {
                    key: request.key.clone(),
                    owner: request.owner,
                    fencing: 1,
                }));
            }
            Value::BulkString(raw) => record::found(raw)?,
            other => {
                return Err(reply::unexpected(format!("SET NX GET answered {other:?}")));
            }
        };
        match replay(request, found) {
            Some(answer) => answer,
            None => self.claim_by_script(request, &redis_key, &value, px).await,
        }
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.finish(lease, response, retention, record::COMPLETED)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.finish(lease, failure, retention, record::FAILED).await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        let trace_ttl = lifecycle::trace_ttl(ttl.as_millis());
        let mut call = self.transition(&SCRIPTS.renew, lease)?;
        call.arg(ttl.as_millis().saturating_add(trace_ttl))
            .arg(&trace_ttl.to_be_bytes()[..]);
        self.run_transition(&SCRIPTS.renew, &call).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let call = self.transition(&SCRIPTS.release, lease)?;
        self.run_transition(&SCRIPTS.release, &call).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let call = evalsha(&SCRIPTS.read, &self.redis_key(key));
        let mut reply = self.run(&SCRIPTS.read, &call).await?;
        match reply.code()? {
            reply::FREE => Ok(None),
            reply::RECORD => read_record(key, &mut reply).map(Some),
            code => Err(unknown_code(code)),
        }
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        let mut call = evalsha(&SCRIPTS.remove, &self.redis_key(key));
        // A removed finished key leaves its trace as long as a lease-less release would.
        call.arg(lifecycle::trace_ttl(0));
        let mut reply = self.run(&SCRIPTS.remove, &call).await?;
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
        p if p == i64::from(record::CLAIMED) => RecordState::Claimed {
            owner: reply.owner()?,
        },
        p if p == i64::from(record::COMPLETED) => RecordState::Completed {
            response: Bytes::from(reply.bytes()?),
        },
        p if p == i64::from(record::FAILED) => RecordState::Failed {
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
