#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[macro_use]
mod lua_shared;

mod builder;
mod conditional_set;
mod connection;
mod errors;
#[doc(hidden)]
pub mod floor;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod record;
mod replication;
mod reply;
mod scripts;
mod store;
mod token;
mod wait_lanes;

pub use builder::{RedisStoreBuilder, RedisTokenStoreBuilder};
pub use connection::RedisConnection;
pub use replication::ReplicasNotReached;
pub use reply::UnexpectedReply;
pub use store::RedisStore;
pub use token::RedisTokenStore;

/// The `redis` crate this store is built on, to build a [`redis::Client`] or a
/// [`redis::aio::ConnectionManager`] of the matching version.
pub use redis;
