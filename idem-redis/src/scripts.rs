//! The Lua scripts: the calls that must read before they write are one of them each, run
//! atomically by Redis. Every script starts with the constants it shares with Rust
//! ([`record::LUA_LAYOUT`], [`reply::LUA_CODES`], ...), generated from their one definition.

use std::sync::LazyLock;

use redis::{Cmd, Script, ToRedisArgs};

use crate::{record, reply};

/// A script's code and its SHA1, to run it by `EVALSHA` and load it on `NOSCRIPT`.
#[derive(Debug)]
pub(crate) struct LuaScript {
    pub(crate) code: String,
    pub(crate) hash: String,
}

impl LuaScript {
    fn new(parts: &[&str]) -> Self {
        let code = parts.concat();
        let hash = Script::new(&code).get_hash().to_owned();
        Self { code, hash }
    }

    /// `EVALSHA hash 1 key`, for `args` more arguments of about `bytes` bytes in all to
    /// follow (sized once, so building the command does not reallocate).
    pub(crate) fn call(&self, key: impl ToRedisArgs, args: usize, bytes: usize) -> Cmd {
        let mut call = Cmd::with_capacity(4 + args, 128 + bytes);
        call.arg("EVALSHA").arg(&self.hash).arg(1).arg(key);
        call
    }

    /// `SCRIPT LOAD code`.
    pub(crate) fn load(&self) -> Cmd {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(&self.code);
        load
    }

    /// A script of the idempotency store: the record layout and reply codes, then `parts`.
    fn on_records(parts: &[&str]) -> Self {
        Self::new(&[&[record::LUA_LAYOUT, reply::LUA_CODES], parts].concat())
    }
}

/// A script that decodes the record: the codec first, then the helpers it uses (each one a
/// closure built on every call, so a script carries only its own).
macro_rules! with_codec {
    ($($file:literal),+) => {
        LuaScript::on_records(&[include_str!("lua/record.lua"), $(include_str!($file)),+])
    };
}

/// A transition (finish, renew, release): its hot path first, ahead of the codec, which only
/// a key not held by the lease gets to (to tell a lost lease from a corrupt record).
macro_rules! transition {
    ($file:literal) => {
        LuaScript::on_records(&[
            include_str!("lua/held.lua"),
            include_str!($file),
            include_str!("lua/record.lua"),
            include_str!("lua/not_held.lua"),
        ])
    };
}

/// Every script, hashed once per process. The stores run them by `EVALSHA` and load them
/// only when the server answers `NOSCRIPT`, so a warm call is one round trip.
pub(crate) struct Scripts {
    pub(crate) claim: LuaScript,
    pub(crate) finish: LuaScript,
    pub(crate) renew: LuaScript,
    pub(crate) release: LuaScript,
    pub(crate) read: LuaScript,
    pub(crate) remove: LuaScript,
    /// The token store's one script (issuing is a plain `SET NX`). It has a value layout of
    /// its own, so it carries no record codec.
    pub(crate) consume_token: LuaScript,
}

impl Scripts {
    /// The idempotency store's scripts, for [`RedisStore::load_scripts`](crate::RedisStore::load_scripts).
    pub(crate) fn of_records(&self) -> [&LuaScript; 6] {
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
    claim: with_codec!("lua/lease_left.lua", "lua/claim.lua"),
    finish: transition!("lua/finish.lua"),
    renew: transition!("lua/renew.lua"),
    release: transition!("lua/release.lua"),
    read: with_codec!("lua/lease_left.lua", "lua/read.lua"),
    remove: with_codec!("lua/lease_left.lua", "lua/remove.lua"),
    consume_token: LuaScript::new(&[
        record::LUA_TOKEN_LAYOUT,
        reply::LUA_CODES,
        include_str!("lua/token_consume.lua"),
    ]),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_reach_the_scripts_as_written() {
        assert!(reply::LUA_CODES.contains("local R_DONE = 6\n"));
        assert!(record::LUA_LAYOUT.contains("local MAX_EXACT = 9007199254740992\n"));
        let finish = &SCRIPTS.finish.code;
        assert!(finish.starts_with("local VERSION = 2\n"));
        assert!(
            SCRIPTS
                .consume_token
                .code
                .contains("local TOKEN_VERSION = 1\n")
        );
        assert!(record::LUA_TOKEN_LAYOUT.contains("local USED_BY = 2\nlocal CONSUMER_LEN = 16\n"));
    }
}
