//! One builder for both stores: key prefix, payload limit and timeouts, then a connection.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use idem_core::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, ProtocolVersion, ServerErrorKind};

use crate::conditional_set::ConditionalSet;
use crate::connection::{Connection, Deadline, RedisConnection};
use crate::errors::{from_redis, timed_out};
use crate::keys::validate_prefix;
use crate::replication::Replication;
use crate::store::RedisStore;
use crate::token::RedisTokenStore;
use crate::wait_lanes::WaitLanes;

/// Builds a [`RedisStore`] (`RedisStore::builder()`) or a [`RedisTokenStore`]
/// (`RedisTokenStore::builder()`, a [`RedisTokenStoreBuilder`]): settings first, then a
/// connection, from a URL ([`connect`](Self::connect)), a [`Client`]
/// ([`connect_client`](Self::connect_client)) or a connection the application already has
/// ([`build`](Self::build)). The settings are checked before anything connects.
///
/// ```no_run
/// use std::time::Duration;
/// use idem_redis::{RedisStore, RedisTokenStore};
///
/// # async fn setup() -> Result<(), idem_core::Error> {
/// let store = RedisStore::builder()
///     .prefix("billing:idem:")
///     .max_payload(1 << 20)
///     .connection_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_secs(1))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// let tokens = RedisTokenStore::builder()
///     .prefix("shop:token:")
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # let _ = (store, tokens);
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until it connects or builds"]
pub struct RedisStoreBuilder<S = RedisStore> {
    prefix: String,
    max_payload: usize,
    connection_timeout: Duration,
    response_timeout: Duration,
    replicas: Option<(u32, Duration)>,
    conditional_set: bool,
    store: PhantomData<fn() -> S>,
}

/// The builder of a [`RedisTokenStore`]: the same settings, less the payload limit.
pub type RedisTokenStoreBuilder = RedisStoreBuilder<RedisTokenStore>;

impl<S> Clone for RedisStoreBuilder<S> {
    fn clone(&self) -> Self {
        Self {
            prefix: self.prefix.clone(),
            ..*self
        }
    }
}

impl<S> fmt::Debug for RedisStoreBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("max_payload", &self.max_payload)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("replicas", &self.replicas)
            .field("conditional_set", &self.conditional_set)
            .finish()
    }
}

impl<S> RedisStoreBuilder<S> {
    fn with_prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            max_payload: RedisStore::DEFAULT_MAX_PAYLOAD,
            connection_timeout: RedisStore::DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: RedisStore::DEFAULT_RESPONSE_TIMEOUT,
            replicas: None,
            conditional_set: true,
            store: PhantomData,
        }
    }

    /// Sets the prefix of every Redis key the store writes, to share a server between
    /// applications or environments. It must not contain `{` or `}`: the store puts each key
    /// in a hash tag of its own.
    ///
    /// Default: [`RedisStore::DEFAULT_PREFIX`] (`idem:`), or
    /// [`RedisTokenStore::DEFAULT_PREFIX`] (`idem:token:`) for tokens.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long one attempt to (re)connect may take.
    ///
    /// Default: [`RedisStore::DEFAULT_CONNECTION_TIMEOUT`] (1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets how long Redis may take to answer a command.
    ///
    /// Default: [`RedisStore::DEFAULT_RESPONSE_TIMEOUT`] (2 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The longest any call may take: one connection attempt and one answer.
    fn deadline(&self) -> Duration {
        self.connection_timeout
            .saturating_add(self.response_timeout)
    }

    /// A [`ConnectionManager`] on `client` with these timeouts, connected within their sum:
    /// it bounds every call itself, so the store adds no timer of its own. It reconnects by
    /// itself after a connection is lost: a call made while the server is down makes one
    /// connection attempt and fails with [`Error::Unavailable`]; the next one after the
    /// server is back succeeds.
    ///
    /// It speaks RESP3 where the server lets it (see [`speaking`]); a server that refuses
    /// `HELLO` (a proxy that only speaks RESP2, `HELLO` renamed away) is spoken to in RESP2,
    /// as before the store asked for RESP3, within what is left of the same deadline.
    async fn managed(&self, client: Client) -> Result<Connection<ConnectionManager>, Error> {
        validate_prefix(&self.prefix)?;
        let started = Instant::now();
        let manager = match self
            .manager(speaking(&client, ProtocolVersion::RESP3)?, self.deadline())
            .await
        {
            Err(err) if refused_hello(&err) => {
                tracing::warn!(
                    error = %err,
                    "Redis refused HELLO 3: the idem store speaks RESP2, and finds a connection \
                     the server closed only when the next call fails"
                );
                let left = self.deadline().saturating_sub(started.elapsed());
                self.manager(speaking(&client, ProtocolVersion::RESP2)?, left)
                    .await
            }
            other => other,
        }
        .map_err(from_redis)?;
        Ok(self.on(manager, Deadline::Connection(self.deadline())))
    }

    /// A [`ConnectionManager`] on `client` with these timeouts, connected within `deadline`.
    async fn manager(
        &self,
        client: Client,
        deadline: Duration,
    ) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            // Callers see an outage at once instead of waiting out a backoff; the next call
            // starts a fresh attempt.
            .set_number_of_retries(0);
        tokio::time::timeout(deadline, ConnectionManager::new_with_config(client, config))
            .await
            .unwrap_or_else(|_| Err(timed_out(deadline)))
    }

    /// An application's connection, whose settings are unknown: the store bounds each call.
    fn checked<C: RedisConnection>(&self, connection: C) -> Result<Connection<C>, Error> {
        validate_prefix(&self.prefix)?;
        Ok(self.on(connection, Deadline::Store(self.deadline())))
    }

    fn on<C: RedisConnection>(&self, connection: C, deadline: Deadline) -> Connection<C> {
        Connection::new(connection, self.prefix.clone(), deadline)
    }

    /// The replica wait, checked (only a [`RedisStore`] builder can set one).
    fn replication(&self) -> Result<Option<Replication>, Error> {
        self.replicas
            .map(|(replicas, timeout)| Replication::new(replicas, timeout, self.response_timeout))
            .transpose()
    }

    /// The connections of their own that finishes waiting for replicas are sent on
    /// ([`WaitLanes`]), each managed as the store's own; none without a replica wait.
    async fn wait_lanes(
        &self,
        client: &Client,
        replication: Option<&Replication>,
    ) -> Result<Vec<Connection<ConnectionManager>>, Error> {
        if replication.is_none() {
            return Ok(Vec::new());
        }
        // All at once: one after another, a slow server would make connecting take as many
        // deadlines as there are lanes.
        let lanes =
            (0..WaitLanes::<ConnectionManager>::COUNT).map(|_| self.managed(client.clone()));
        futures::future::try_join_all(lanes).await
    }
}

/// `client`, speaking `protocol`. The store asks for RESP3 (RESP3 first: see [`speaking`]): only on RESP3 does
/// a [`ConnectionManager`] reconnect as soon as the server closes its connection (an idle
/// timeout, a restart, `CLIENT KILL`); on RESP2 it finds out from the next call, which then
/// fails with [`Error::Unavailable`] although the server is up. Every server the store runs
/// on (Redis 7.0 or later) speaks RESP3, and the store's commands answer alike on both.
fn speaking(client: &Client, protocol: ProtocolVersion) -> Result<Client, Error> {
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(protocol);
    Client::open(info.set_redis_settings(settings)).map_err(from_redis)
}

/// Whether connecting failed because the server refused `HELLO 3`: a command it does not
/// know (a RESP2-only proxy, `HELLO` renamed away) or one it does not let the user run
/// (`NOPERM`).
fn refused_hello(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
    )
}

/// What a store is put together from, besides its connection: the builder's settings and
/// what connecting found.
struct Parts<C> {
    max_payload: usize,
    replication: Option<Replication>,
    /// Connections of their own for replicated finishes (none on an application's).
    wait_lanes: Vec<Connection<C>>,
    conditional_set: ConditionalSet,
}

/// How each store is put together from its connection and [`Parts`] (a token store takes
/// none of them: it has no payload limit, no replica wait and no finish).
trait Assemble {
    /// The store on a connection of type `C`.
    type On<C: RedisConnection>;
    /// Whether the store finishes records, and so asks the server for its conditional `SET`.
    const FINISHES: bool;

    fn assemble<C: RedisConnection>(connection: Connection<C>, parts: Parts<C>) -> Self::On<C>;
}

impl Assemble for RedisStore {
    type On<C: RedisConnection> = RedisStore<C>;
    const FINISHES: bool = true;

    fn assemble<C: RedisConnection>(connection: Connection<C>, parts: Parts<C>) -> RedisStore<C> {
        RedisStore::new(
            connection,
            parts.max_payload,
            parts.replication,
            WaitLanes::new(parts.wait_lanes),
            parts.conditional_set,
        )
    }
}

impl Assemble for RedisTokenStore {
    type On<C: RedisConnection> = RedisTokenStore<C>;
    const FINISHES: bool = false;

    fn assemble<C: RedisConnection>(
        connection: Connection<C>,
        _parts: Parts<C>,
    ) -> RedisTokenStore<C> {
        RedisTokenStore::new(connection)
    }
}

/// The ways to a store, written once for both; the public methods below name them per
/// store.
// The bound sits on each (private) method: on the impl, it would make a private trait bound
// a public type's impl.
impl<S> RedisStoreBuilder<S> {
    async fn connect_url(self, url: &str) -> Result<S::On<ConnectionManager>, Error>
    where
        S: Assemble,
    {
        let client = Client::open(url).map_err(from_redis)?;
        self.connect_with(client).await
    }

    async fn connect_with(self, client: Client) -> Result<S::On<ConnectionManager>, Error>
    where
        S: Assemble,
    {
        let replication = self.replication()?;
        // The store's own connection and its wait lanes are opened together, within one
        // deadline.
        let (connection, wait_lanes) = futures::try_join!(
            self.managed(client.clone()),
            self.wait_lanes(&client, replication.as_ref())
        )?;
        // Asked now, so that even the first finish is one round trip.
        let conditional_set = self
            .finishing::<S>(replication.as_ref())
            .probe(&connection)
            .await;
        let parts = Parts {
            max_payload: self.max_payload,
            replication,
            wait_lanes,
            conditional_set,
        };
        Ok(S::assemble(connection, parts))
    }

    fn build_on<C: RedisConnection>(self, connection: C) -> Result<S::On<C>, Error>
    where
        S: Assemble,
    {
        let replication = self.replication()?;
        let connection = self.checked(connection)?;
        // The application's connection is the only one: replicated finishes go on it too.
        let parts = Parts {
            max_payload: self.max_payload,
            conditional_set: self.finishing::<S>(replication.as_ref()),
            replication,
            wait_lanes: Vec::new(),
        };
        Ok(S::assemble(connection, parts))
    }

    /// A manager with the default settings, which need no check: its own timeouts apply, and
    /// the store bounds each call by the default deadline on top.
    fn adopt(self, manager: ConnectionManager) -> S::On<ConnectionManager>
    where
        S: Assemble,
    {
        let connection = self.on(manager, Deadline::Store(self.deadline()));
        let parts = Parts {
            max_payload: self.max_payload,
            replication: None,
            wait_lanes: Vec::new(),
            conditional_set: self.finishing::<S>(None),
        };
        S::assemble(connection, parts)
    }

    /// Whether the store is to try the server's conditional `SET`: where it finishes, the
    /// builder allows it, and no `WAIT` follows a finish (the script recognises a finish
    /// sent again for its `WAIT` to count; the conditional `SET` cannot).
    fn finishing<A: Assemble>(&self, replication: Option<&Replication>) -> ConditionalSet {
        if A::FINISHES && self.conditional_set && replication.is_none() {
            ConditionalSet::untried()
        } else {
            ConditionalSet::off()
        }
    }
}

impl Default for RedisStoreBuilder<RedisStore> {
    fn default() -> Self {
        Self::with_prefix(RedisStore::DEFAULT_PREFIX)
    }
}

impl Default for RedisStoreBuilder<RedisTokenStore> {
    fn default() -> Self {
        Self::with_prefix(RedisTokenStore::DEFAULT_PREFIX)
    }
}

impl RedisStoreBuilder<RedisStore> {
    /// Starts from the defaults: prefix `idem:`, 4 MiB payloads, 1 s to connect, 2 s to answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the largest response or failure payload stored, in bytes. Larger ones get
    /// [`Error::PayloadTooLarge`] without reaching Redis.
    ///
    /// Default: [`RedisStore::DEFAULT_MAX_PAYLOAD`] (4 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// After each complete or fail, waits until `replicas` replicas acknowledged the
    /// finished record (`WAIT replicas timeout`, sent in the same round trip as the write),
    /// for records that must survive a failover to a replica. When fewer acknowledge within
    /// `timeout`, the call fails with an [`Error::Backend`] whose source is a
    /// [`ReplicasNotReached`](crate::ReplicasNotReached); the record is written on the
    /// primary all the same. `WAIT` makes a write durable on more servers, not atomic
    /// across them: see the crate docs on durability. Not for Redis Cluster connections.
    ///
    /// `WAIT` holds up the connection it is sent on until it answers, so a store that waits
    /// for replicas sends its finishes on connections of their own (four more, opened by
    /// [`connect`](Self::connect) and [`connect_client`](Self::connect_client)), each on the
    /// one with the fewest finishes in flight: while the replicas lag, claims, replays and
    /// reads go on as before, and a finish waits behind another's `WAIT` only when more than
    /// four are in flight. A store [`build`](Self::build) on an application's connection has
    /// no other connection to use: there every call of the store (claims too) waits behind
    /// each finish's `WAIT`. A finish held up past its deadline that way is reported
    /// [`Error::Unavailable`] although written, and the executor sends it again: the store
    /// recognises its own record, writes it again as it is and waits for the replicas once
    /// more, so the retry reports the shortfall as the first send would have. Still, keep
    /// `timeout` short against the response timeout, for replicas that normally keep up.
    ///
    /// `replicas` must be at least 1, and `timeout` at least 1 ms and shorter than the
    /// response timeout (checked when the store is built).
    ///
    /// Default: no waiting (a finish returns once the primary applied it).
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = Some((replicas, timeout));
        self
    }

    /// Whether a complete or fail is sent as the server's own compare-and-set, `SET key
    /// finished IFEQ claimed PX retention`, where the server offers it (Valkey 8.1 and
    /// later, Redis 8.4 and later): one plain command, which costs the server about a fifth
    /// of what the finish script does. It writes only where the key holds exactly the
    /// claimed record the lease's claim wrote; where it writes nothing (a lost lease, a
    /// lease renewed with another TTL, a lease made by hand), the finish script runs after
    /// it and decides, so the answers are the script's either way. Whether the server
    /// offers it is asked as the store connects ([`connect`](Self::connect),
    /// [`connect_client`](Self::connect_client)), or learnt from the first finish of a
    /// store [`build`](Self::build) on an application's connection; servers that do not
    /// know it get the script, as with `false`. A store that waits for replicas
    /// ([`wait_for_replicas`](Self::wait_for_replicas)) always runs the script.
    ///
    /// Default: `true`.
    pub fn conditional_set(mut self, use_it: bool) -> Self {
        self.conditional_set = use_it;
        self
    }
}

/// The entry points both stores have: on the builder, `connect`, `connect_client` and
/// `build`; on the store, `builder` and the same three with the default settings (`connect`,
/// `from_client`, `from_manager`).
macro_rules! entry_points {
    ($store:ident, $builder:ident, $invalid:literal) => {
        impl $builder {
            /// Connects to the server at `url` (`redis://host:port/db`, `rediss://` with TLS
            /// when the `redis` crate's TLS features are enabled).
            ///
            /// # Errors
            ///
            #[doc = concat!("[`Error::InvalidInput`] for ", $invalid, ",")]
            /// [`Error::Unavailable`] when the server does not answer, [`Error::Backend`] for a
            /// malformed URL or a refused login.
            pub async fn connect(self, url: &str) -> Result<$store, Error> {
                self.connect_url(url).await
            }

            /// Connects through an existing [`Client`], with a [`ConnectionManager`]
            /// configured from these settings, which reconnects by itself: a call made while
            /// the server is down fails with [`Error::Unavailable`] within the two timeouts;
            /// the next one after the server is back succeeds. The store's connections speak
            /// RESP3 whatever protocol the client was opened with, so that one the server
            /// closes is replaced at once (RESP2 where the server refuses `HELLO 3`: see
            /// the crate docs on errors and outages).
            ///
            /// # Errors
            ///
            /// As [`connect`](Self::connect).
            pub async fn connect_client(self, client: Client) -> Result<$store, Error> {
                self.connect_with(client).await
            }

            /// Uses a connection the application already has: a [`ConnectionManager`] (clones
            /// of it share one multiplexed connection), a
            /// [`MultiplexedConnection`](redis::aio::MultiplexedConnection), or a Redis
            /// Cluster connection (the `redis` crate's `cluster-async` feature): every key one
            /// call touches is in one hash slot. The connection's own reconnect and timeout
            /// settings apply; on top of them, every store call is bounded by this builder's
            /// connection timeout plus response timeout.
            ///
            /// # Errors
            ///
            #[doc = concat!("[`Error::InvalidInput`] for ", $invalid, ".")]
            pub fn build<C: RedisConnection>(self, connection: C) -> Result<$store<C>, Error> {
                self.build_on(connection)
            }
        }

        impl $store {
            #[doc = concat!("Settings first, then a connection: see [`", stringify!($builder), "`].")]
            pub fn builder() -> $builder {
                $builder::default()
            }

            /// Connects to `url` with the default settings.
            ///
            /// # Errors
            ///
            #[doc = concat!("As [`", stringify!($builder), "::connect`].")]
            pub async fn connect(url: &str) -> Result<Self, Error> {
                Self::builder().connect(url).await
            }

            /// Connects through an existing [`Client`] with the default settings.
            ///
            /// # Errors
            ///
            #[doc = concat!("As [`", stringify!($builder), "::connect`].")]
            pub async fn from_client(client: Client) -> Result<Self, Error> {
                Self::builder().connect_client(client).await
            }

            /// Uses an existing [`ConnectionManager`] with the default settings; its own
            /// timeouts apply, and the store bounds each call by the default deadline on top.
            /// Clones of one manager share its connection, so a [`RedisStore`] and a
            /// [`RedisTokenStore`] can run on one.
            #[must_use]
            pub fn from_manager(manager: ConnectionManager) -> Self {
                Self::builder().adopt(manager)
            }
        }
    };
}

entry_points!(
    RedisStore,
    RedisStoreBuilder,
    "a prefix with a brace or a replica wait out of range"
);
entry_points!(
    RedisTokenStore,
    RedisTokenStoreBuilder,
    "a prefix with a brace"
);
