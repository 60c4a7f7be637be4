//! Reclaiming the rows of expired records and tokens, for every SQL store.

use std::future::Future;

use async_trait::async_trait;
use idem_core::{Error, InvalidInput};

/// A store whose expired rows stay until deleted: they already count as absent, and
/// purging only reclaims their space. Implemented by every SQL record and token store, so
/// one scheduled task can purge them all.
///
/// Concurrent purges (from every instance) are harmless.
#[async_trait]
pub trait PurgeExpired: Send + Sync {
    /// Deletes every expired row, `batch_size` rows per statement (each a short statement
    /// on the `expires_at` index, so no lock is held for long), until none is left; returns
    /// how many rows it deleted. A `batch_size` of 0 is [`Error::InvalidInput`].
    async fn purge_expired(&self, batch_size: u32) -> Result<u64, Error>;
}

/// Runs `batch` (one DELETE of up to `batch_size` expired rows; how many it deleted) until a
/// batch comes back short; the total.
///
/// # Errors
///
/// [`InvalidInput::Other`] for a `batch_size` of 0, before any batch runs; else the first error a
/// batch returns (the rows deleted before it stay deleted).
pub async fn in_batches<F, Fut>(batch_size: u32, mut batch: F) -> Result<u64, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<u64, Error>>,
{
    if batch_size == 0 {
        return Err(InvalidInput::Other("a purge batch holds at least one row").into());
    }
    let mut total = 0;
    loop {
        let deleted = batch(batch_size).await?;
        total += deleted;
        if deleted < u64::from(batch_size) {
            return Ok(total);
        }
    }
}
