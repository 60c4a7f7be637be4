//! The server's own compare-and-set, where it offers one: `SET key finished IFEQ claimed PX
//! retention` (Valkey 8.1 and later, Redis 8.4 and later) writes the finished record only
//! where the key still holds, byte for byte, the claimed record its lease's claim wrote. A
//! finish is then one plain command, which costs the server about what a bare `SET` does:
//! 0.7 µs per call on Valkey 8.1 with 64 in flight, against 3.7 for the finish script (its
//! Lua call, its `GET`, its comparison; the `server_cost` example).
//!
//! Equal bytes mean the same lease: the claimed record holds the owner token (random, one
//! per attempt), the fencing number and the fingerprint. So a write the command makes is
//! one the finish script would make too, with the same bytes. The converse does not hold:
//! the record can still be this lease's and differ (a renewal with another lease TTL
//! changed its trace TTL; a lease made by hand does not know the claim's fingerprint or
//! TTL), and then the command writes nothing. Whenever it writes nothing, the finish
//! script runs after it and decides, as it does on servers without the command: the
//! command only ever takes the fast path, never a decision.
//!
//! Which servers offer it is learnt from the servers themselves: the store asks once as it
//! connects (a conditional `SET` on a key that does not exist, which writes nothing), and a
//! store built on an application's connection learns from its first finish. A server that
//! answers the command with a syntax error does not know it; the store then finishes by
//! script for the rest of its life (a server upgraded under a running store is seen at
//! its next start).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use idem_core::{Error, OwnerToken};
use redis::{RedisError, Value};

use crate::connection::{Connection, RedisConnection};

/// Not known yet: the next finish tries the command and learns from its answer.
const UNTRIED: u8 = 0;
/// The server runs the command.
const OFFERED: u8 = 1;
/// The server does not know the command: finish by script.
const NOT_OFFERED: u8 = 2;
/// Turned off by the builder: finish by script.
const OFF: u8 = 3;

/// Whether a store finishes with the server's conditional `SET`, shared by the store's
/// clones.
#[derive(Clone)]
pub(crate) struct ConditionalSet(Arc<AtomicU8>);

impl fmt::Debug for ConditionalSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.0.load(Ordering::Relaxed) {
            UNTRIED => "untried",
            OFFERED => "offered",
            NOT_OFFERED => "not offered",
            _ => "off",
        };
        f.write_str(state)
    }
}

impl ConditionalSet {
    /// Used where the server offers it, learnt from the first finish.
    pub(crate) fn untried() -> Self {
        Self::with(UNTRIED)
    }

    /// Never used: every finish runs the script.
    pub(crate) fn off() -> Self {
        Self::with(OFF)
    }

    fn with(state: u8) -> Self {
        Self(Arc::new(AtomicU8::new(state)))
    }

    /// Asks the server at the end of `connection` whether it runs the command, with one on a
    /// key that does not exist (so nothing is written). An answer that tells nothing (the
    /// server went away) leaves it for the first finish to learn.
    pub(crate) async fn probe<C: RedisConnection>(self, connection: &Connection<C>) -> Self {
        if self.0.load(Ordering::Relaxed) != UNTRIED {
            return self;
        }
        let mut probe = redis::cmd("SET");
        probe
            .arg(format!("{}conditional-set-probe", connection.prefix()))
            .arg("")
            .arg("IFEQ")
            // No key holds it: the command writes nothing wherever it runs.
            .arg(OwnerToken::random().as_bytes().as_slice());
        self.learn(&connection.query::<Value>(&probe).await);
        self
    }

    /// Whether the server said it runs the command.
    pub(crate) fn offered(&self) -> bool {
        self.0.load(Ordering::Relaxed) == OFFERED
    }

    /// Whether a finish is to try the command first.
    pub(crate) fn usable(&self) -> bool {
        matches!(self.0.load(Ordering::Relaxed), UNTRIED | OFFERED)
    }

    /// Learns from what the server answered the command: whether it knows it. Never turns
    /// the builder's "off" on.
    pub(crate) fn learn<T>(&self, answer: &Result<T, Error>) {
        let learnt = match answer {
            Ok(_) => OFFERED,
            Err(error) if not_offered(error) => NOT_OFFERED,
            Err(_) => return,
        };
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                (state != OFF && state != learnt).then_some(learnt)
            });
    }
}

/// The server's answer to a command it does not know the arguments of: a syntax error (the
/// `IFEQ` of an older `SET`).
pub(crate) fn not_offered(error: &Error) -> bool {
    let Error::Backend { source } = error else {
        return false;
    };
    source.downcast_ref::<RedisError>().is_some_and(|error| {
        error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("syntax error"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server answers with `line` (`-CODE detail`), as a store call reports it.
    fn answered(line: &str) -> Error {
        let value =
            redis::parse_redis_value(format!("{line}\r\n").as_bytes()).expect("a RESP error line");
        let error = value.extract_error().expect_err("an error reply");
        crate::errors::from_record_call(error)
    }

    #[test]
    fn only_a_syntax_error_says_the_server_lacks_it() {
        assert!(not_offered(&answered("-ERR syntax error")));
        for other in [
            "-ERR value is not an integer or out of range",
            "-WRONGTYPE Operation against a key holding the wrong kind of value",
            "-OOM command not allowed when used memory > 'maxmemory'",
            "-NOPERM this user has no permissions to run the 'set' command",
        ] {
            assert!(!not_offered(&answered(other)), "{other}");
        }
        assert!(!not_offered(&Error::unavailable("connection refused")));
    }

    #[test]
    fn answers_teach_an_untried_store_and_errors_of_another_kind_do_not() {
        let set = ConditionalSet::untried();
        set.learn(&answered_err(
            "-OOM command not allowed when used memory > 'maxmemory'",
        ));
        set.learn(&answered_err(
            "-ERR value is not an integer or out of range",
        ));
        assert_eq!(format!("{set:?}"), "untried");
        assert!(set.usable() && !set.offered());
        set.learn(&Ok(()));
        assert!(set.usable() && set.offered());
        set.learn(&answered_err("-ERR syntax error"));
        assert!(!set.usable() && !set.offered());
        assert_eq!(format!("{set:?}"), "not offered");
    }

    #[test]
    fn what_the_builder_turned_off_stays_off() {
        let set = ConditionalSet::off();
        set.learn(&Ok(()));
        set.learn(&answered_err("-ERR syntax error"));
        assert!(!set.usable() && !set.offered());
        assert_eq!(format!("{set:?}"), "off");
    }

    fn answered_err(line: &str) -> Result<(), Error> {
        Err(answered(line))
    }
}
