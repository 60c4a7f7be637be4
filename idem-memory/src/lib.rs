#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod clock;
mod full;
mod replay_cache;
mod scan;
mod store;
mod token;
mod unapplied;

pub use full::StoreFull;
pub use replay_cache::{ReplayCache, ReplayCacheBuilder};
pub use store::{MemoryStore, RECORD_OVERHEAD, Records, STRIPES};
pub use token::{MemoryTokenStore, TOKEN_OVERHEAD, Tokens};
