//! A claim as rounds of "insert, else read and let the lifecycle decide, then take over":
//! the algorithm of every SQL store, over the statements of one engine.
//!
//! A claim of a new key, the common case, is one plain INSERT: the statement a hand-written
//! client sends, and the cheapest for the server to run. A key that has a row costs a
//! second statement to read it. Reading it in the same statement (MariaDB's `INSERT ... ON
//! DUPLICATE KEY UPDATE ... RETURNING`, a PostgreSQL CTE around the INSERT) saves that
//! second statement on replays but costs every new key more: on a loaded 2-core machine
//! the server spent about 1.7× (PostgreSQL) and 1.2× (MariaDB) the CPU of a plain INSERT
//! per new key, which also answered with a result set instead of an OK, and new-key
//! claims ran at 0.68–0.89× a raw INSERT. New keys are most claims; a replay pays the
//! second statement, as a hand-written client does.

use std::future::Future;

use idem_core::backend::lifecycle::{self, Entry};
use idem_core::{Claim, ClaimRequest, Error, Key};

use crate::row::NOW;

/// How many read-then-write rounds a claim (or a token's consume) makes before it gives up.
/// A round fails only when another caller changed the row in between, so a second round
/// nearly always settles.
pub const ROUNDS: usize = 16;

/// The three statements a claim is made of, on one connection (pooled, or the caller's
/// transaction).
pub trait ClaimSteps {
    /// Inserts a claimed row with fencing number 1 for a key without a row: whether it
    /// did. When the key already has a row, nothing changes.
    fn insert(
        &mut self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Reads a key's row as a lifecycle entry at [`NOW`]; `None` when there is none.
    fn select(&mut self, key: &Key) -> impl Future<Output = Result<Option<Entry>, Error>> + Send;

    /// Takes a row over with one conditional write that re-checks, under the row lock, that
    /// the key is free for this request (expired, released, lapsed, or this owner's own
    /// claim); the new fencing number, or `None` when the row no longer was free.
    fn take_over(
        &mut self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// The largest fencing number the engine's column holds: a takeover past it is refused
    /// with [`Error::CorruptRecord`] (see [`lifecycle::next_fencing`]).
    fn max_fencing(&self) -> u64 {
        u64::MAX
    }
}

/// Claims a key: one INSERT for a never-seen key; otherwise the row is read by a second
/// statement, the rules of [`idem_core::backend::lifecycle`] decide, and a free key is
/// taken over by one conditional write.
///
/// # Errors
///
/// What the lifecycle answers ([`Error::FingerprintMismatch`]) and what the steps return (driver
/// errors, [`Error::CorruptRecord`]); [`Error::Unavailable`] when the row kept changing for
/// [`ROUNDS`] rounds.
pub async fn claim<S: ClaimSteps + Send>(
    steps: &mut S,
    request: &ClaimRequest,
) -> Result<Claim, Error> {
    for _ in 0..ROUNDS {
        if steps.insert(request).await? {
            return Ok(Claim::Acquired(request.lease(1)));
        }
        // The row vanished (removed, purged) since the INSERT saw it: insert again.
        let Some(entry) = steps.select(&request.key).await? else {
            continue;
        };
        match lifecycle::claim(Some(&entry), request, NOW).answer {
            // The lifecycle counts in u64; an engine with a narrower column refuses past it.
            Ok(Claim::Acquired(granted)) if granted.fencing > steps.max_fencing() => {
                return Err(lifecycle::fencing_exhausted(entry.fencing));
            }
            Ok(Claim::Acquired(_)) => {
                if let Some(fencing) = steps.take_over(request).await? {
                    tracing::debug!(key = %request.key, fencing, "idem-sql: took a free key over");
                    return Ok(Claim::Acquired(request.lease(fencing)));
                }
                // Another caller changed the row first: look again.
            }
            answer => return answer,
        }
    }
    Err(Error::unavailable(format!(
        "the claim of {} did not settle in {ROUNDS} rounds: the row kept changing",
        request.key
    )))
}
