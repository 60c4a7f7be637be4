//! Carrying out a settlement: the outcome write, retried while the lease is ours.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::settle::{Settle, Settlement};
use crate::error::Error;
use crate::lease::Lease;
use crate::record::RecordState;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// An outcome write is tried at least this often, whatever the lease has left.
const MIN_WRITE_ATTEMPTS: u32 = 3;
/// The first pause between attempts; pauses double, with jitter, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Which of the two finished states an outcome is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Completed,
    Failed,
}

/// Carries out `settlement` under `lease`, known to last until `lease_until`. On `Err`,
/// nothing the operation produced is stored (the error says why).
pub(crate) async fn carry_out<S, T, St>(
    store: &S,
    lease: &Lease,
    settlement: Settlement,
    settle: &mut St,
    lease_until: Instant,
) -> Result<(), Error>
where
    S: IdempotencyStore + ?Sized,
    St: Settle<T> + ?Sized,
{
    let refused = match write(store, lease, settlement, lease_until).await {
        Err(Error::PayloadTooLarge { size, limit }) => (size, limit),
        written => return written,
    };
    let (size, limit) = refused;
    match settle.too_large(size, limit) {
        Some(instead) => {
            tracing::warn!(
                size,
                limit,
                "the outcome is over the store's payload limit; writing what the settle step gave instead"
            );
            write(store, lease, instead, lease_until).await
        }
        None => Err(Error::PayloadTooLarge { size, limit }),
    }
}

async fn write<S: IdempotencyStore + ?Sized>(
    store: &S,
    lease: &Lease,
    settlement: Settlement,
    lease_until: Instant,
) -> Result<(), Error> {
    match settlement {
        Settlement::Complete { payload, retention } => {
            finish(
                store,
                lease,
                Finish::Completed,
                payload,
                retention,
                lease_until,
            )
            .await
        }
        Settlement::Fail { payload, retention } => {
            finish(
                store,
                lease,
                Finish::Failed,
                payload,
                retention,
                lease_until,
            )
            .await
        }
        Settlement::Release => {
            // Nothing to lose: a failed release only means the key frees itself when the
            // lease runs out.
            if let Err(error) = store.release(lease).await {
                tracing::warn!(%error, "releasing the key failed; it frees itself when the lease ends");
            }
            Ok(())
        }
    }
}

/// Writes an outcome, retrying while the store is unavailable and the lease may still be
/// ours: the operation has run, and an outcome left unstored lets the key run again once
/// its lease ends.
async fn finish<S: IdempotencyStore + ?Sized>(
    store: &S,
    lease: &Lease,
    finish: Finish,
    payload: Bytes,
    retention: Ttl,
    lease_until: Instant,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(FIRST_PAUSE, MAX_PAUSE);
    let mut attempt = 1;
    loop {
        let written = match finish {
            Finish::Completed => store.complete(lease, payload.clone(), retention).await,
            Finish::Failed => store.fail(lease, payload.clone(), retention).await,
        };
        match written {
            Err(Error::Unavailable { source }) => {
                let pause = backoff.pause();
                if attempt >= MIN_WRITE_ATTEMPTS && Instant::now() + pause >= lease_until {
                    return Err(Error::Unavailable { source });
                }
                tracing::warn!(attempt, error = %source, "storing the outcome failed; retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            // An earlier attempt may have been applied and only its reply lost: then the
            // key holds this outcome under this lease's fencing number.
            Err(Error::LeaseLost) if attempt > 1 && holds(store, lease, finish, &payload).await => {
                return Ok(());
            }
            written => return written,
        }
    }
}

/// Whether the key holds `payload` as its `finish`, written under `lease`.
async fn holds<S: IdempotencyStore + ?Sized>(
    store: &S,
    lease: &Lease,
    finish: Finish,
    payload: &Bytes,
) -> bool {
    let Ok(Some(record)) = store.read(&lease.key).await else {
        return false;
    };
    record.fencing == lease.fencing
        && match (finish, record.state) {
            (Finish::Completed, RecordState::Completed { response }) => response == payload,
            (Finish::Failed, RecordState::Failed { failure }) => failure == payload,
            _ => false,
        }
}
