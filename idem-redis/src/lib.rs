//! # idem-redis
//!
//! The Redis store of [idem](https://docs.rs/idem): idempotency records in Redis (or any
//! server speaking its protocol and Lua, such as Valkey), shared by every process that
//! connects to it. Pick it when several instances of a service must agree on one key and
//! the records may live in memory for hours; pick `idem-mysql` when they must survive a
//! server restart with your data, and `idem-memory` for a single process.
//!
//! ```no_run
//! use idem_core::{ExecuteError, Idempotency, Key, Fingerprint, Retryable};
//! use idem_redis::RedisStore;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug)]
//! struct Receipt { charge_id: u64 }
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug)]
//! enum ChargeError { Declined }
//! impl Retryable for ChargeError {
//!     fn is_retryable(&self) -> bool { false }
//! }
//!
//! # async fn charge() -> Result<Receipt, ChargeError> { Ok(Receipt { charge_id: 7 }) }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder()
//!     .prefix("billing:idem:")
//!     .connect("redis://127.0.0.1:6379")
//!     .await?;
//! store.load_scripts().await?; // optional: even the first calls take one round trip
//! let idem = Idempotency::new(store);
//!
//! let key = Key::new("charges", "order-1042")?;
//! let fingerprint = Some(Fingerprint::of(&("order-1042", 4_999))?);
//! // Runs `charge` once across every process using this Redis; repeats get its receipt.
//! match idem.execute(&key, fingerprint, || charge()).await {
//!     Ok(receipt) => println!("charged: {receipt:?}"),
//!     Err(ExecuteError::Operation(declined)) => println!("declined: {declined:?}"),
//!     // In progress elsewhere, reused key, Redis unavailable, ...
//!     Err(ExecuteError::Idempotency(err)) => return Err(err.into()),
//!     // It ran, but its receipt could not be stored (lease lost, Redis down).
//!     Err(ExecuteError::NotRecorded { result, error }) => println!("{error}: {result:?}"),
//!     Err(other) => return Err(format!("{other:?}").into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The store is cheap to clone and shared across tasks. Build it from a URL
//! ([`RedisStore::connect`]), a [`redis::Client`] ([`RedisStore::from_client`]) or a
//! [`redis::aio::ConnectionManager`] you already have ([`RedisStore::from_manager`]), or
//! any other [`RedisConnection`], a Redis Cluster one included
//! ([`RedisStoreBuilder::build`]); [`RedisStore::builder`] sets the key prefix, payload
//! limit and timeouts. The `redis` crate is re-exported as [`redis`], so versions always
//! match.
//!
//! ## How it works
//!
//! - **One round trip, atomic.** A claim is one plain `SET key record NX PX ttl GET`: a
//!   new key is acquired by that very write, and a finished key is replayed from the value
//!   the same command returns. Complete, fail, renew, release, read and remove are each one
//!   Lua script run by `EVALSHA`: Redis runs it without interleaving any other command, so
//!   the compare-and-set on owner token and fencing number cannot race. Only a claim that
//!   finds a lease (live, lapsed or released) takes a second round trip, the claim script,
//!   which decides atomically whether to report it in progress or take it over. Scripts
//!   are loaded on the first `NOSCRIPT` (or up front by [`RedisStore::load_scripts`]).
//! - **Redis's clock.** Deadlines are key TTLs (`PX`), enforced by Redis: a record is live
//!   exactly while its key exists, so completing, failing, renewing and releasing need no
//!   clock at all, and a claim that meets another owner's lease reads how much of it is
//!   left from the key's `PTTL`. Application clocks never matter and no sweeper is needed.
//! - **Fencing.** Each acquisition gets a larger fencing number than the last while Redis
//!   remembers the key: for its retention once finished, and for
//!   [`trace_ttl`](idem_core::backend::lifecycle::trace_ttl) (the longer of the lease TTL and 60 s)
//!   after a lease ends by expiry or release.
//! - **Keys.** An idem key lives under `prefix{tag}`, where the tag is
//!   [`Key::encoded`](idem_core::Key::encoded) with `%`, `{` and `}` percent-escaped:
//!   distinct keys never collide, whatever characters they hold, and each one is a hash tag
//!   of its own, so the store works on Redis Cluster.
//! - **Records.** One binary string per key, version 2, big-endian: `version u8 = 2 | phase
//!   u8 | fencing u64`, then for a claim `fingerprint flag u8 [32 bytes] | owner 16 bytes |
//!   trace TTL u64`, for a finished key `fingerprint flag u8 [32 bytes] | payload` (the
//!   bytes exactly as given), and nothing for a released key. A record holds no instant:
//!   its key's TTL is its expiry. A claimed key is written with `PX` lease TTL + trace TTL,
//!   so its lease ends when `PTTL` falls to the trace TTL and the key stays a trace TTL
//!   more; a released key lives a trace TTL, a finished one its retention. A value that
//!   does not decode (version 1 records included), or a Redis type other than a string, is
//!   [`Error::CorruptRecord`](idem_core::Error::CorruptRecord);
//!   [`remove`](idem_core::IdempotencyStore::remove) deletes it.
//!
//! ## One-time tokens
//!
//! [`RedisTokenStore`] keeps the tokens of [`idem_core::Tokens`] (issue a token with the
//! form, consume it once when the form comes back), shared by every process on the server.
//! Issuing is one `SET key value NX PX ttl`: a live token is never overwritten, and Redis
//! expires it on its own clock. Consuming is one script that reads the token, checks that it
//! is unused and belongs to the caller's scope, and marks it used keeping its TTL (`SET ...
//! KEEPTTL`, Redis 6.0 or later), so the check and the invalidation cannot be split by a
//! concurrent consume. A token lives under `prefix{token}` (prefix `idem:token:` by default,
//! escaped as idem keys are); its value is `version u8 = 1 | used u8 | scope`. Garbage under
//! a token key is [`Error::CorruptRecord`](idem_core::Error::CorruptRecord).
//!
//! ```no_run
//! use idem_core::{Consumption, Scope, Tokens};
//! use idem_redis::RedisTokenStore;
//!
//! # async fn run() -> Result<(), idem_core::Error> {
//! let store = RedisTokenStore::builder()
//!     .prefix("shop:token:")
//!     .connect("redis://127.0.0.1:6379")
//!     .await?;
//! let tokens = Tokens::new(store);
//! let alice = Scope::new("user:alice")?;
//!
//! let token = tokens.issue(&alice).await?; // rendered into the order form
//! // The form comes back, maybe twice:
//! match tokens.consume(&alice, token.as_str()).await? {
//!     Consumption::Consumed => println!("placing the order"),
//!     Consumption::Rejected(why) => println!("not placing it again: {why:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Durability: which Redis settings the guarantees need
//!
//! idem's rules (one run per key, every repeat gets the first outcome byte for byte, fencing
//! numbers never go backwards) hold for as long as Redis keeps what it acknowledged. Redis
//! acknowledges a write once it is in memory, so what a crash loses depends on its settings:
//!
//! | Redis settings | what a crash or failover loses | what that means here |
//! |---|---|---|
//! | no persistence (`save ""`, `appendonly no`) | everything, at every restart | every key runs again on its next request; fencing restarts at 1 |
//! | RDB snapshots only | the writes since the last snapshot (minutes) | those keys run again |
//! | `appendonly yes`, `appendfsync everysec` (Redis's usual) | nothing when only the process dies; about the last second of writes when the machine or its power fails | the claims and finishes of that second are forgotten: those keys run again |
//! | `appendonly yes`, `appendfsync always` | nothing acknowledged (each write is on disk before Redis answers, at the cost of an `fsync` per write) | none |
//! | a replica promoted by a failover (Sentinel, a managed service) | what the primary acknowledged but had not sent yet (replication is asynchronous) | those keys run again, unless finishes wait for replicas (below) |
//!
//! Also set `maxmemory-policy noeviction`: every idem key has a TTL, so the `volatile-*`
//! policies evict records as readily as the `allkeys-*` ones, and an evicted record runs
//! again; with `noeviction` a full server refuses writes, which the store reports as
//! [`Error::Unavailable`](idem_core::Error::Unavailable).
//!
//! For records that must survive a failover, [`RedisStoreBuilder::wait_for_replicas`] makes
//! each complete and fail send `WAIT n timeout` behind its script, in the same round trip, and
//! fail with a [`ReplicasNotReached`] source when fewer than `n` replicas acknowledged in time
//! (the record is on the primary all the same). `WAIT` makes a finished record durable on more
//! servers; it does not make Redis a consensus system: a failover that promotes a replica which
//! had not acknowledged can still lose it, and claims are not waited for (a claim lost in a
//! failover lets a repeat start a second run while the first is still going; fence the
//! operation's own writes with [`Lease::fencing`](idem_core::Lease::fencing) where that
//! matters).
//!
//! ## Errors and outages
//!
//! A server that cannot be reached, times out, is loading, failing over, busy or out of
//! memory gives [`Error::Unavailable`](idem_core::Error::Unavailable), with the
//! [`redis::RedisError`] as its source; other server errors give
//! [`Error::Backend`](idem_core::Error::Backend). No call waits longer than the connection
//! timeout plus the response timeout. The connection reconnects by itself: once the server
//! is back, the same store works again.
//!
//! The builder checks its settings before it connects:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use idem_redis::RedisStore;
//!
//! let braces = RedisStore::builder().prefix("app{1}:").connect("redis://127.0.0.1:6379").await;
//! assert!(matches!(braces, Err(idem_core::Error::InvalidInput(_))));
//! # });
//! ```
#![deny(missing_docs)]

#[macro_use]
mod lua_shared;

mod builder;
mod connection;
mod errors;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod record;
mod replication;
mod reply;
mod scripts;
mod store;
mod token;

pub use builder::{RedisStoreBuilder, RedisTokenStoreBuilder};
pub use connection::RedisConnection;
pub use replication::ReplicasNotReached;
pub use reply::UnexpectedReply;
pub use store::RedisStore;
pub use token::RedisTokenStore;

/// The `redis` crate this store is built on, to build a [`redis::Client`] or a
/// [`redis::aio::ConnectionManager`] of the matching version.
pub use redis;
