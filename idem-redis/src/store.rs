//! The store: each call of the contract is one command, one round trip (a claim that finds
//! a lease takes two).

use std::fmt;
use std::time::{Duration, Instant};

use bytes::BufMut;
use idem_core::backend::{check_payload, lifecycle};
use idem_core::{
    Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, RecordState, Ttl,
    async_trait,
};
use redis::aio::ConnectionManager;
use redis::{Cmd, RedisWrite, Value};

use crate::conditional_set::{ConditionalSet, not_offered};
use crate::connection::{Connection, RedisConnection};
use crate::errors::is_write_refused;
use crate::keys::{RecordKey, record_key};
use crate::record::{self, Claimed, Found, MAX_EXACT};
use crate::replication::Replication;
use crate::reply::{self, Reply, unknown_code};
use crate::scripts::{LuaScript, SCRIPTS};
use crate::wait_lanes::WaitLanes;

/// The Redis [`IdempotencyStore`]. Cloning is cheap: clones share one multiplexed
/// connection, which any number of tasks use at once (and, with
/// [`wait_for_replicas`](crate::RedisStoreBuilder::wait_for_replicas), the few its finishes
/// are sent on).
///
/// It runs on a [`ConnectionManager`] (the default: one multiplexed connection that
/// reconnects by itself) or on any other [`RedisConnection`], such as a
/// [`MultiplexedConnection`](redis::aio::MultiplexedConnection) or, with the `redis`
/// crate's `cluster-async` feature, a Redis Cluster connection; see
/// [`RedisStoreBuilder::build`](crate::RedisStoreBuilder::build).
pub struct RedisStore<C = ConnectionManager> {
    connection: Connection<C>,
    max_payload: usize,
    /// Replicas to wait for after each finish, if any.
    replication: Option<Replication>,
    /// The connections those finishes are sent on, so that their `WAIT` holds up no other
    /// call (none on an application's connection: they then go on `connection`).
    wait_lanes: WaitLanes<C>,
    /// Whether finishes try the server's conditional `SET` before the script.
    conditional_set: ConditionalSet,
}

impl<C: Clone> Clone for RedisStore<C> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            max_payload: self.max_payload,
            replication: self.replication,
            wait_lanes: self.wait_lanes.clone(),
            conditional_set: self.conditional_set.clone(),
        }
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.connection)
            .field("max_payload", &self.max_payload)
            .field("replication", &self.replication)
            .field("wait_lanes", &self.wait_lanes.len())
            .field("conditional_set", &self.conditional_set)
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
}

impl<C: RedisConnection> RedisStore<C> {
    pub(crate) fn new(
        connection: Connection<C>,
        max_payload: usize,
        replication: Option<Replication>,
        wait_lanes: WaitLanes<C>,
        conditional_set: ConditionalSet,
    ) -> Self {
        Self {
            connection,
            max_payload,
            replication,
            wait_lanes,
            conditional_set,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.connection.prefix()
    }

    /// The largest payload stored, in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Whether completes and fails go as the server's own compare-and-set (`SET ... IFEQ`):
    /// the server said it offers it, as the store connected or at its first finish. See
    /// [`RedisStoreBuilder::conditional_set`](crate::RedisStoreBuilder::conditional_set).
    pub fn finishes_by_conditional_set(&self) -> bool {
        self.conditional_set.offered()
    }

    /// The Redis key holding `key`'s record, to inspect it with `redis-cli` (the value is
    /// binary; see the crate docs for its layout).
    pub fn redis_key(&self, key: &Key) -> String {
        record_key(self.connection.prefix(), key)
    }

    /// Loads the scripts into the server now, so that even the first call of each kind that
    /// runs one is one round trip. Optional: without it, the first such call after a server
    /// restart loads its script (`EVALSHA`, `NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be reached or times out; [`Error::Backend`] when it
    /// refuses `SCRIPT LOAD` (scripting disabled, no permission).
    pub async fn load_scripts(&self) -> Result<(), Error> {
        self.connection.load(&SCRIPTS.of_records()).await
    }

    /// `EVALSHA` of a transition script (finish, renew, release) for `lease`: the lease as
    /// its claimed record starts ([`record::lease`], fingerprint included) comes first, then
    /// `args` more arguments of about `bytes` bytes.
    fn transition(
        &self,
        script: &LuaScript,
        lease: &Lease,
        args: usize,
        bytes: usize,
    ) -> Result<Cmd, Error> {
        // The store never issues a fencing number the scripts cannot compare exactly.
        if lease.fencing >= MAX_EXACT {
            return Err(Error::LeaseLost);
        }
        let key = RecordKey {
            prefix: self.connection.prefix(),
            key: &lease.key,
        };
        let mut call = script.call(key, 1 + args, 59 + bytes);
        call.arg(record::lease(lease.fencing, lease.fingerprint.as_ref(), &lease.owner).as_bytes());
        Ok(call)
    }

    async fn run_transition(&self, script: &LuaScript, call: &Cmd) -> Result<(), Error> {
        transition_done(self.connection.run(script, call).await?)
    }

    async fn finish(
        &self,
        lease: &Lease,
        payload: Bytes,
        retention: Ttl,
        phase: u8,
    ) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)?;
        // When the conditional `SET` went, where it is tried first (never on a store that
        // waits for replicas: the builder turns it off there).
        let tried_at = self.conditional_set.usable().then(Instant::now);
        if tried_at.is_some()
            && self
                .finish_by_conditional_set(lease, &payload, retention, phase)
                .await?
        {
            return Ok(());
        }
        let mut call = self.transition(&SCRIPTS.finish, lease, 3, 64 + payload.len())?;
        call.arg(retention.as_millis());
        // The finished record whole, with the lease's fingerprint, as one argument: the
        // script then writes it as it came (lua/finish.lua).
        let head = record::finished_head(phase, lease.fencing, lease.fingerprint.as_ref());
        let head = head.as_bytes();
        {
            let mut value = call.bufmut_for_next_arg(head.len() + payload.len());
            value.put_slice(head);
            value.put_slice(&payload);
        }
        let Some(replication) = &self.replication else {
            let Some(started) = tried_at else {
                return self.run_transition(&SCRIPTS.finish, &call).await;
            };
            // What the conditional `SET` did not write, the script decides, within the same
            // call's deadline.
            let reply = self
                .connection
                .run_after(started, &SCRIPTS.finish, &call)
                .await?;
            return transition_done(reply);
        };
        // A `WAIT` follows: the script is to recognise the same finish sent again.
        call.arg(1);
        // `WAIT` rides in the same round trip, right behind the script, on a lane of its own
        // where the store has them.
        let replication = *replication;
        let wait = move |spent| replication.wait(spent);
        let (reply, waited) = match self.wait_lanes.take() {
            Some(lane) => lane.run_then(&SCRIPTS.finish, call, wait).await?,
            None => {
                self.connection
                    .run_then(&SCRIPTS.finish, &call, wait)
                    .await?
            }
        };
        let written = finish_written(reply)?;
        // Also for the same finish sent again: its caller reads the outcome back on
        // `LeaseLost` and takes it as written, so it must hear first when the replicas do not
        // have it (the script wrote it again for this `WAIT` to count them).
        replication.check(waited)?;
        if written {
            Ok(())
        } else {
            Err(Error::LeaseLost)
        }
    }

    /// The finish as one `SET key finished IFEQ claimed PX retention`, where `claimed` is the
    /// record the lease's claim wrote (see the `conditional_set` module):
    /// `true` when it wrote; `false` when it did not, or the server does not know the
    /// command, or the lease cannot tell what its claim wrote: the script then decides.
    async fn finish_by_conditional_set(
        &self,
        lease: &Lease,
        payload: &[u8],
        retention: Ttl,
        phase: u8,
    ) -> Result<bool, Error> {
        let Some(granted) = lease.granted_ttl() else {
            return Ok(false);
        };
        // As `transition`: no fencing number the store cannot compare exactly.
        if lease.fencing >= MAX_EXACT {
            return Err(Error::LeaseLost);
        }
        let fingerprint = lease.fingerprint.as_ref();
        let trace_ttl = lifecycle::trace_ttl(granted.as_millis());
        let claimed = Claimed::new(lease.fencing, fingerprint, &lease.owner, trace_ttl);
        let head = record::finished_head(phase, lease.fencing, fingerprint);
        let head = head.as_bytes();
        let key = RecordKey {
            prefix: self.connection.prefix(),
            key: &lease.key,
        };
        let mut set = Cmd::with_capacity(7, self.connection.prefix().len() + 200 + payload.len());
        set.arg("SET").arg(&key);
        {
            let mut value = set.bufmut_for_next_arg(head.len() + payload.len());
            value.put_slice(head);
            value.put_slice(payload);
        }
        set.arg("IFEQ")
            .arg(claimed.as_bytes())
            .arg("PX")
            .arg(retention.as_millis());
        let answer = self.connection.query::<Value>(&set).await;
        self.conditional_set.learn(&answer);
        match answer {
            Ok(Value::Okay) => Ok(true),
            Ok(Value::Nil) => Ok(false),
            Ok(other) => Err(reply::unexpected(format!("SET IFEQ answered {other:?}"))),
            Err(error) if not_offered(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The claim ([`IdempotencyStore::claim`]), as a future of its own type: the trait's
    /// method boxes it, [`claim_unboxed`](IdempotencyStore::claim_unboxed) does not.
    async fn claim_now(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let started = Instant::now();
        let lease_ttl = request.lease_ttl.as_millis();
        let trace_ttl = lifecycle::trace_ttl(lease_ttl);
        let px = lease_ttl.saturating_add(trace_ttl);
        // Built on the stack and written straight into one command buffer of the right size:
        // a replay, which only reads what the command answers, allocates nothing else.
        let value = Claimed::new(1, request.fingerprint.as_ref(), &request.owner, trace_ttl);
        let key = RecordKey {
            prefix: self.connection.prefix(),
            key: &request.key,
        };
        let mut set = Cmd::with_capacity(7, self.connection.prefix().len() + 160);
        set.arg("SET")
            .arg(&key)
            .arg(value.as_bytes())
            .arg("NX")
            .arg("PX")
            .arg(px)
            .arg("GET");
        let found = match self.connection.query(&set).await {
            Ok(Value::Nil) => {
                return Ok(Claim::Acquired(request.lease(1)));
            }
            Ok(Value::BulkString(raw)) => record::found(raw)?,
            Ok(other) => {
                return Err(reply::unexpected(format!("SET NX GET answered {other:?}")));
            }
            // A full server, or a primary short of replicas, refuses the SET whatever it
            // would find, a replay too. The claim script writes only where the key is free:
            // it still replays a finished key and reports one in progress, and is refused
            // like the SET where it would write.
            Err(error) if is_write_refused(&error) => Found::Held,
            Err(error) => return Err(error),
        };
        match replay(request, found) {
            Some(answer) => answer,
            None => {
                let redis_key = self.redis_key(&request.key);
                self.claim_by_script(started, request, &redis_key, value.as_bytes(), px)
                    .await
            }
        }
    }

    /// The claim script, for a key the plain claim (sent at `started`) found claimed or
    /// released: only there does Redis's clock decide, atomically with the write. Both
    /// round trips together keep within one call's deadline.
    async fn claim_by_script(
        &self,
        started: Instant,
        request: &ClaimRequest,
        redis_key: &str,
        value: &[u8],
        px: u64,
    ) -> Result<Claim, Error> {
        let mut call = SCRIPTS.claim.call(redis_key, 2, value.len() + 20);
        call.arg(value).arg(px);
        let mut reply = self
            .connection
            .run_after(started, &SCRIPTS.claim, &call)
            .await?;
        match reply.code()? {
            reply::ACQUIRED => Ok(Claim::Acquired(request.lease(reply.count()?))),
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

/// What a transition script (finish, renew, release) answered: done, or the lease is lost.
fn transition_done(mut reply: Reply) -> Result<(), Error> {
    match reply.code()? {
        reply::DONE => Ok(()),
        reply::LEASE_LOST => Err(Error::LeaseLost),
        code => Err(unknown_code(code)),
    }
}

/// What the finish script followed by a `WAIT` answered: written now (`true`), or written
/// before by the same finish, whose reply was lost (`false`: the lease is spent all the
/// same); or the lease is lost.
fn finish_written(mut reply: Reply) -> Result<bool, Error> {
    match reply.code()? {
        reply::DONE => Ok(true),
        reply::FINISHED_BEFORE => Ok(false),
        reply::LEASE_LOST => Err(Error::LeaseLost),
        code => Err(unknown_code(code)),
    }
}

/// What a claim that found a finished record answers, as `idem_core::backend::lifecycle::claim` does:
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
        self.claim_now(request).await
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
        let mut call = self.transition(&SCRIPTS.renew, lease, 2, 28)?;
        call.arg(ttl.as_millis().saturating_add(trace_ttl))
            .arg(&trace_ttl.to_be_bytes()[..]);
        self.run_transition(&SCRIPTS.renew, &call).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let call = self.transition(&SCRIPTS.release, lease, 0, 0)?;
        self.run_transition(&SCRIPTS.release, &call).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let call = SCRIPTS.read.call(self.redis_key(key), 0, 0);
        let mut reply = self.connection.run(&SCRIPTS.read, &call).await?;
        match reply.code()? {
            reply::FREE => Ok(None),
            reply::RECORD => read_record(key, &mut reply).map(Some),
            code => Err(unknown_code(code)),
        }
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        let mut call = SCRIPTS.remove.call(self.redis_key(key), 1, 0);
        // A removed finished key leaves its trace as long as a lease-less release would.
        call.arg(lifecycle::trace_ttl(0));
        let mut reply = self.connection.run(&SCRIPTS.remove, &call).await?;
        match reply.code()? {
            reply::DONE => Ok(reply.int()? == 1),
            code => Err(unknown_code(code)),
        }
    }

    fn claim_unboxed<'a>(
        &'a self,
        request: &'a ClaimRequest,
    ) -> impl Future<Output = Result<Claim, Error>> + Send + 'a {
        self.claim_now(request)
    }

    fn complete_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        response: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.finish(lease, response, retention, record::COMPLETED)
    }

    fn fail_unboxed<'a>(
        &'a self,
        lease: &'a Lease,
        failure: Bytes,
        retention: Ttl,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.finish(lease, failure, retention, record::FAILED)
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
    Ok(Record::new(
        key.clone(),
        state,
        fencing,
        fingerprint,
        expires_in,
    ))
}
