//! One-time tokens as rounds of conditional statements, for every SQL token store.

use std::future::Future;

use idem_core::backend::TokenRecord;
use idem_core::{Consumption, Error, OwnerToken, Scope, Token, Ttl};

use crate::claim::ROUNDS;
use crate::row::micros;

/// The statements a token store is made of.
pub trait TokenSteps {
    /// Stores a new token living `life_us`; `false` when the token already has a row.
    fn insert(
        &self,
        token: &Token,
        scope: &Scope,
        life_us: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Reissues a token whose row has expired, conditioned on the expiry, so a live token
    /// is never overwritten; `false` when the row is live or gone.
    fn replace_expired(
        &self,
        token: &Token,
        scope: &Scope,
        life_us: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Marks the token used where it is live, unused and of `scope`, in one conditional
    /// write whose affected-row count picks the one winner; whether it did.
    fn mark_used(
        &self,
        token: &Token,
        scope: &Scope,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// A live token's record; `None` when it was never issued or has expired.
    fn inspect(
        &self,
        token: &Token,
    ) -> impl Future<Output = Result<Option<TokenRecord>, Error>> + Send;
}

/// Issues a token: one INSERT; a collision replaces an expired row, or is
/// [`Error::TokenCollision`].
///
/// # Errors
///
/// [`Error::TokenCollision`] when a live row holds the token; what the steps return (driver
/// errors) otherwise.
pub async fn issue<S: TokenSteps + Sync>(
    steps: &S,
    token: &Token,
    scope: &Scope,
    ttl: Ttl,
) -> Result<(), Error> {
    let life_us = micros(ttl.as_millis());
    if steps.insert(token, scope, life_us).await? {
        return Ok(());
    }
    if steps.replace_expired(token, scope, life_us).await? {
        tracing::debug!("idem-sql: reissued an expired token");
        return Ok(());
    }
    // The row is live, or was purged since the INSERT saw it: one more INSERT tells which.
    if steps.insert(token, scope, life_us).await? {
        return Ok(());
    }
    Err(Error::TokenCollision)
}

/// Consumes a token: one conditional write; only when it matched nothing does one read tell
/// why ([`TokenRecord::consume`] decides, so the order of the checks is the core's).
///
/// # Errors
///
/// What the steps return (driver errors, [`Error::CorruptRecord`]); [`Error::Unavailable`] when the
/// row kept changing for [`ROUNDS`] rounds.
pub async fn consume<S: TokenSteps + Sync>(
    steps: &S,
    token: &Token,
    scope: &Scope,
    consumer: &OwnerToken,
) -> Result<Consumption, Error> {
    for _ in 0..ROUNDS {
        if steps.mark_used(token, scope).await? {
            return Ok(Consumption::Consumed);
        }
        let current = steps.inspect(token).await?;
        match TokenRecord::consume(current.as_ref(), scope, consumer) {
            // The token was (re)issued between the write and the read: try again.
            (Consumption::Consumed, Some(_)) => continue,
            // Used by this very consumer: its resend.
            (Consumption::Consumed, None) => return Ok(Consumption::Consumed),
            (rejected, _) => return Ok(rejected),
        }
    }
    Err(Error::unavailable(format!(
        "consuming a token did not settle in {ROUNDS} rounds: its row kept changing"
    )))
}

/// A stored scope as the [`Scope`] it was issued for.
///
/// # Errors
///
/// [`Error::CorruptRecord`] when the bytes are not UTF-8 or not a valid [`Scope`].
pub fn decode_scope(bytes: Vec<u8>) -> Result<Scope, Error> {
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::corrupt_with("a stored token scope is not UTF-8", e))?;
    Scope::new(text).map_err(|e| Error::corrupt_with("a stored token scope is not a scope", e))
}
