//! Store faults the executor must absorb: a lost reply to a claim or to an outcome write, a
//! write that stalls.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::{
    Claim, ClaimRequest, Error, ExecuteError, Execution, IdempotencyStore, Key, Lease, OwnerToken,
    Record, Ttl,
};
use tokio::sync::{Notify, Semaphore};

use super::{counter, detached_on, expect_replayed_once};
use crate::context::{ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// The check's store, with faults on demand.
#[derive(Debug)]
pub(crate) struct Faulty {
    inner: Store,
    /// The next claims are applied, but answered `Unavailable`.
    lost_claim_replies: AtomicU32,
    /// The next completes are applied, but answered `Unavailable`.
    lost_complete_replies: AtomicU32,
    /// While set, a complete announces itself on `stalled` and waits for a permit of `gate`
    /// before it reaches the store.
    stall_completes: std::sync::atomic::AtomicBool,
    pub(crate) stalled: Notify,
    pub(crate) gate: Semaphore,
    claim_owners: Mutex<Vec<OwnerToken>>,
    completes: AtomicU32,
}

impl Faulty {
    pub(crate) fn new(inner: Store) -> Self {
        Self {
            inner,
            lost_claim_replies: AtomicU32::new(0),
            lost_complete_replies: AtomicU32::new(0),
            stall_completes: std::sync::atomic::AtomicBool::new(false),
            stalled: Notify::new(),
            gate: Semaphore::new(0),
            claim_owners: Mutex::new(Vec::new()),
            completes: AtomicU32::new(0),
        }
    }

    pub(crate) fn stall_completes(&self) {
        self.stall_completes.store(true, Ordering::SeqCst);
    }

    fn owners(&self) -> Vec<OwnerToken> {
        self.claim_owners
            .lock()
            .map(|owners| owners.clone())
            .unwrap_or_default()
    }
}

/// Takes one fault from `left`, if any is left.
fn take(left: &AtomicU32) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn reply_lost() -> Error {
    Error::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the reply was lost (injected by the check)",
    ))
}

#[async_trait]
impl IdempotencyStore for Faulty {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        if let Ok(mut owners) = self.claim_owners.lock() {
            owners.push(request.owner);
        }
        let claim = self.inner.claim(request).await?;
        if take(&self.lost_claim_replies) {
            return Err(reply_lost());
        }
        Ok(claim)
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        if self.stall_completes.load(Ordering::SeqCst) {
            self.stalled.notify_one();
            let _permit = self.gate.acquire().await;
        }
        self.inner.complete(lease, response, retention).await?;
        if take(&self.lost_complete_replies) {
            return Err(reply_lost());
        }
        Ok(())
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, failure, retention).await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.inner.read(key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// An outcome write applied by the store whose reply was lost is recognised (by reading the
/// key back): the caller gets its value, the operation ran once, and repeats replay it.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the caller does not get its
/// value, the operation runs twice, or repeats do not replay; or when a store call the check needs
/// fails unexpectedly.
pub async fn lost_write_reply_is_recognised(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "lost_write_reply_is_recognised",
        store,
        capabilities,
        |ctx| async move {
            let faulty = Arc::new(Faulty::new(Arc::clone(&ctx.store)));
            faulty.lost_complete_replies.store(1, Ordering::SeqCst);
            let idem = detached_on(faulty.clone(), crate::context::LONG)?;
            let key = ctx.key("lost-write-reply")?;
            let runs = counter();
            let first = super::run_counted(&idem, &key, &runs, 71u64).await;
            ensure!(
                matches!(
                    first,
                    Ok(Execution {
                        result: Ok(71),
                        replayed: false,
                        ..
                    })
                ),
                "the first call should get its value, got {first:?}"
            );
            ensure!(
                faulty.completes.load(Ordering::SeqCst) == 2,
                "expected one lost write and one retry, saw {} writes",
                faulty.completes.load(Ordering::SeqCst)
            );
            expect_replayed_once(&idem, &key, &runs, 71u64, 72u64).await
        },
    )
    .await
}

/// A claim applied by the store whose reply was lost (`Unavailable`) is sent again by the same
/// owner, which gets its lease back: the operation runs at once instead of the key answering
/// "in progress" for a whole lease.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the retried claim does not get
/// its lease back, so the operation does not run at once; or when a store call the check needs
/// fails unexpectedly.
pub async fn unavailable_claim_is_retried_by_its_owner(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "unavailable_claim_is_retried_by_its_owner",
        store,
        capabilities,
        |ctx| async move {
            let faulty = Arc::new(Faulty::new(Arc::clone(&ctx.store)));
            faulty.lost_claim_replies.store(1, Ordering::SeqCst);
            let idem = detached_on(faulty.clone(), crate::context::LONG)?;
            let key = ctx.key("lost-claim-reply")?;
            let runs = counter();
            let first = super::run_counted(&idem, &key, &runs, 81u64).await;
            ensure!(
                matches!(
                    first,
                    Ok(Execution {
                        result: Ok(81),
                        replayed: false,
                        ..
                    })
                ),
                "the claim whose reply was lost should be recognised as ours, got {first:?}"
            );
            let owners = faulty.owners();
            ensure!(
                owners.len() == 2 && owners[0] == owners[1],
                "expected the claim retried once by the same owner, saw owners {owners:?}"
            );
            expect_replayed_once(&idem, &key, &runs, 81u64, 82u64).await
        },
    )
    .await
}

/// Insists on "ran but not recorded" with `expected` as the value and `cause` as the cause.
pub(crate) fn expect_not_recorded<T: PartialEq + std::fmt::Debug>(
    outcome: &Result<T, ExecuteError<super::OpError, T>>,
    expected: &T,
    cause: fn(&Error) -> bool,
) -> Result<(), String> {
    match outcome {
        Err(ExecuteError::NotRecorded {
            result: Ok(value),
            error: Error::NotRecorded { cause: why },
        }) if value == expected && cause(why) => Ok(()),
        other => Err(format!(
            "expected NotRecorded with {expected:?} and the right cause, got {other:?}"
        )),
    }
}
