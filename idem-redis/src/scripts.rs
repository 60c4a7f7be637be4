//! The Lua scripts: the calls that must read before they write are one of them each, run
//! atomically by Redis.

use std::sync::LazyLock;

use redis::Script;

/// A script that decodes the record: the codec first, then the helpers it uses (each one a
/// closure built on every call, so a script carries only its own).
macro_rules! with_codec {
    ($($file:literal),+) => {
        concat!(include_str!("lua/record.lua"), $(include_str!($file)),+)
    };
}

/// A transition (finish, renew, release): its hot path first, ahead of the codec, which only
/// a key not held by the lease gets to (to tell a lost lease from a corrupt record).
macro_rules! transition {
    ($file:literal) => {
        concat!(
            include_str!("lua/held.lua"),
            include_str!($file),
            include_str!("lua/record.lua"),
            include_str!("lua/not_held.lua")
        )
    };
}

/// A script's code and its SHA1, to run it by `EVALSHA` and load it on `NOSCRIPT`.
pub(crate) struct LuaScript {
    pub(crate) code: &'static str,
    pub(crate) hash: String,
}

impl LuaScript {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: Script::new(code).get_hash().to_owned(),
        }
    }
}

/// The scripts, hashed once per process. The store runs them by `EVALSHA` and loads them
/// only when the server answers `NOSCRIPT`, so a warm call is one round trip.
pub(crate) struct Scripts {
    pub(crate) claim: LuaScript,
    pub(crate) finish: LuaScript,
    pub(crate) renew: LuaScript,
    pub(crate) release: LuaScript,
    pub(crate) read: LuaScript,
    pub(crate) remove: LuaScript,
}

impl Scripts {
    /// The idempotency store's scripts, for [`RedisStore::load_scripts`](crate::RedisStore::load_scripts).
    pub(crate) fn all(&self) -> [&LuaScript; 6] {
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
    claim: LuaScript::new(with_codec!("lua/lease_left.lua", "lua/claim.lua")),
    finish: LuaScript::new(transition!("lua/finish.lua")),
    renew: LuaScript::new(transition!("lua/renew.lua")),
    release: LuaScript::new(transition!("lua/release.lua")),
    read: LuaScript::new(with_codec!("lua/lease_left.lua", "lua/read.lua")),
    remove: LuaScript::new(with_codec!("lua/lease_left.lua", "lua/remove.lua")),
});

/// The token store's one script: consume a token (issuing is a plain `SET NX`). It carries
/// its own value layout, so it is not prefixed with the record codec.
pub(crate) static CONSUME_TOKEN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/token_consume.lua")));

/// The first integer the scripts do not handle exactly (Lua numbers are doubles); the store
/// never issues a fencing number this large.
pub(crate) const MAX_EXACT: u64 = 1 << 53;
