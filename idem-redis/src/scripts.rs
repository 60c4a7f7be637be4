//! The Lua scripts: each store call is one of them, run atomically by Redis.

use std::sync::LazyLock;

use redis::Script;

/// Every script begins with the shared record codec and clock.
macro_rules! with_codec {
    ($file:literal) => {
        concat!(include_str!("lua/record.lua"), include_str!($file))
    };
}

/// The scripts, hashed once per process. [`Script`] runs them by `EVALSHA` and loads them
/// only when the server answers `NOSCRIPT`, so a warm call is one round trip.
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) finish: Script,
    pub(crate) renew: Script,
    pub(crate) release: Script,
    pub(crate) read: Script,
    pub(crate) remove: Script,
}

impl Scripts {
    /// The idempotency store's scripts, for [`RedisStore::load_scripts`](crate::RedisStore::load_scripts).
    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.claim,
            &self.finish,
            &self.renew,
            &self.release,
            &self.read,
            &self.remove,
        ]
    }
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: Script::new(with_codec!("lua/claim.lua")),
    finish: Script::new(with_codec!("lua/finish.lua")),
    renew: Script::new(with_codec!("lua/renew.lua")),
    release: Script::new(with_codec!("lua/release.lua")),
    read: Script::new(with_codec!("lua/read.lua")),
    remove: Script::new(with_codec!("lua/remove.lua")),
});

/// The token store's one script: consume a token (issuing is a plain `SET NX`). It carries
/// its own value layout, so it is not prefixed with the record codec.
pub(crate) static CONSUME_TOKEN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/token_consume.lua")));

/// The `phase` argument of the finish script.
pub(crate) const PHASE_COMPLETED: u8 = 3;
/// The `phase` argument of the finish script.
pub(crate) const PHASE_FAILED: u8 = 4;
/// The read script's phase of a live claim.
pub(crate) const PHASE_CLAIMED: i64 = 1;

/// The first integer the scripts do not handle exactly (Lua numbers are doubles); the store
/// never issues a fencing number this large.
pub(crate) const MAX_EXACT: u64 = 1 << 53;
