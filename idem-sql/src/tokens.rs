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

    /// Marks the token used by `consumer` where it is live, unused and of `scope`, in one
    /// conditional write whose affected-row count picks the one winner; whether it did.
    /// The consumer is written by that same write, so a resend finds it.
    fn mark_used(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// A live token's record, its consumer with it; `None` when it was never issued or has
    /// expired.
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
/// why ([`TokenRecord::consume`] decides, so the order of the checks is the core's): a
/// token `consumer` used up already is its own resend, `Consumed` again with nothing
/// written.
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
        if steps.mark_used(token, scope, consumer).await? {
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

/// One token row, its columns as the engine's driver decoded them, as
/// [`TokenStatements::inspect`](crate::TokenStatements::inspect) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The scope's bytes.
    pub scope: Vec<u8>,
    /// Whether it was used.
    pub used: bool,
    /// Who used it: 16 bytes, or `None` when unused or used before the table kept
    /// consumers.
    pub used_by: Option<Vec<u8>>,
}

impl StoredToken {
    /// The record this row stands for. A row used before its table kept consumers (a
    /// NULL consumer) is used by no one known, so it is `AlreadyUsed` for every consumer.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRecord`] for a scope that does not decode, or a consumer that is
    /// not 16 bytes.
    pub fn into_record(self) -> Result<TokenRecord, Error> {
        let scope = decode_scope(self.scope)?;
        // Decoded even on an unused row, so a consumer no store wrote never passes unseen;
        // otherwise an unused row's consumer means nothing (a previous build's reissue
        // leaves the last one there) and the next consume overwrites it.
        let used_by = self.used_by.as_deref().map(decode_consumer).transpose()?;
        Ok(if self.used {
            TokenRecord::used(scope, used_by)
        } else {
            TokenRecord::issued(scope)
        })
    }
}

/// A stored consumer as the [`OwnerToken`] that consumed the token.
///
/// # Errors
///
/// [`Error::CorruptRecord`] unless it is 16 bytes.
pub fn decode_consumer(bytes: &[u8]) -> Result<OwnerToken, Error> {
    let token: [u8; 16] = bytes.try_into().map_err(|_| {
        Error::corrupt(format!(
            "a token's consumer is 16 bytes, found {}",
            bytes.len()
        ))
    })?;
    Ok(OwnerToken::from_bytes(token))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(used: bool, used_by: Option<&[u8]>) -> StoredToken {
        StoredToken {
            scope: b"alice".to_vec(),
            used,
            used_by: used_by.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn a_row_is_the_record_with_its_consumer() {
        let alice = Scope::new("alice").expect("valid");
        let consumer = OwnerToken::random();
        let by = Some(consumer.as_bytes().as_slice());
        assert_eq!(
            row(true, by).into_record().expect("decodes"),
            TokenRecord::used(alice.clone(), Some(consumer))
        );
        assert_eq!(
            row(true, None).into_record().expect("decodes"),
            TokenRecord::used(alice.clone(), None),
            "used before the table kept consumers"
        );
        assert_eq!(
            row(false, by).into_record().expect("decodes"),
            TokenRecord::issued(alice),
            "an unused row's consumer is a leftover"
        );
    }

    #[test]
    fn a_consumer_of_another_length_is_corrupt() {
        for bytes in [&[][..], &[1; 15], &[1; 17]] {
            for used in [true, false] {
                assert!(matches!(
                    row(used, Some(bytes)).into_record(),
                    Err(Error::CorruptRecord { .. })
                ));
            }
        }
    }
}
