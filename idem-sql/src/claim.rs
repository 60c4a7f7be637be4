//! A claim as rounds of "insert, else read and let the lifecycle decide, then take over":
//! the algorithm of every SQL store, over the statements of one engine.

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
    /// Inserts a claimed row with fencing number 1 for a key without a row; when the key
    /// already has one, nothing changes, and the row comes back too if the engine reads it
    /// in the same statement.
    fn insert(
        &mut self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Insertion, Error>> + Send;

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

/// What a claim's INSERT met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insertion {
    /// The row was inserted: the key is claimed with fencing number 1.
    Inserted,
    /// The key has a row, read by the same statement: a replay (or an answer "in
    /// progress") costs that one statement.
    Existing(Entry),
    /// The key has a row the statement did not read: [`ClaimSteps::select`] reads it.
    Unread,
}

/// Claims a key: one INSERT for a never-seen key; otherwise the row is read (by the same
/// statement where the engine allows), the rules of
/// [`idem_core::backend::lifecycle`] decide, and a free key is taken over by one conditional write.
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
        let entry = match steps.insert(request).await? {
            Insertion::Inserted => return Ok(Claim::Acquired(request.lease(1))),
            Insertion::Existing(entry) => entry,
            // The row vanished (removed, purged) since the INSERT saw it: insert again.
            Insertion::Unread => match steps.select(&request.key).await? {
                Some(entry) => entry,
                None => continue,
            },
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
