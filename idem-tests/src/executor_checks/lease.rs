//! The lease while the operation runs: kept alive however the operation behaves, and its loss
//! told to the operation.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idem_core::{Claim, Error, ExecuteError, Execution, RecordState};
use tokio::time::Instant;

use super::faults::expect_not_recorded;
use super::{Executor, OpError, Outcome, PATIENCE, count, counter, detached, expect_replayed_once};
use crate::context::{Ctx, ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// Polls the key with repeats while `running` says the first call runs; every repeat must be
/// in progress (no takeover of a live lease). Returns how many repeats were refused.
async fn poll_while_running(
    idem: &Executor,
    key: &idem_core::Key,
    first: &tokio::task::JoinHandle<Outcome<u64>>,
    expected: u64,
) -> Result<usize, String> {
    let intruders = counter();
    let mut refused = 0;
    while !first.is_finished() {
        match super::run_counted(idem, key, &intruders, expected + 1).await {
            Err(ExecuteError::Idempotency(Error::InProgress { .. })) => refused += 1,
            Ok(Execution {
                result: Ok(value),
                replayed: true,
                ..
            }) if value == expected => {}
            other => return Err(format!("a repeat during the first run got {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(
        count(&intruders) == 0,
        "a repeat took over a renewed lease and ran the operation"
    );
    Ok(refused)
}

/// Runs `operation` on its own task under a lease of `lease`, polls the key meanwhile, and
/// insists the first call stored its value (91) and nobody else ran.
async fn keeps_its_key<Op>(
    ctx: &Ctx,
    id: &str,
    lease: Duration,
    operation: Op,
) -> Result<(), String>
where
    Op: Future<Output = u64> + Send + 'static,
{
    let idem = detached(ctx, lease)?;
    let key = ctx.key(id)?;
    let runs = counter();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let first = tokio::spawn({
        let (idem, key, runs) = (idem.clone(), key.clone(), Arc::clone(&runs));
        async move {
            idem.execute(&key, None, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = started_tx.send(());
                Ok::<_, OpError>(operation.await)
            })
            .await
        }
    });
    ensure!(started_rx.await.is_ok(), "the operation never started");
    let refused = poll_while_running(&idem, &key, &first, 91).await?;
    ensure!(refused > 0, "no repeat was refused while the operation ran");
    match first.await {
        Ok(Ok(91)) => {}
        other => return Err(format!("the first call should store 91, got {other:?}")),
    }
    expect_replayed_once(&idem, &key, &runs, 91u64, 92u64).await
}

/// An operation that blocks its thread (no `.await`) for longer than its lease, so at least
/// twice the renewal interval, keeps its key on a multi-threaded runtime: renewal runs on a
/// task of its own.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when another owner takes the key over
/// while the operation blocks; or when a store call the check needs fails unexpectedly.
pub async fn blocking_operation_keeps_its_key(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "blocking_operation_keeps_its_key",
        store,
        capabilities,
        |ctx| async move {
            let lease = ctx.short() * 2;
            let block = lease * 3 / 2; // 4.5 renewal intervals
            keeps_its_key(&ctx, "blocking", lease, async move {
                // Only once started: the thread blocks in the operation, not before it.
                tokio::task::yield_now().await;
                std::thread::sleep(block);
                91
            })
            .await
        },
    )
    .await
}

/// An operation longer than three leases keeps its key through renewals: repeats meanwhile
/// are in progress, and the one after replays.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the key is taken over during the
/// operation, or the repeat after it does not replay; or when a store call the check needs fails
/// unexpectedly.
pub async fn long_operation_keeps_its_key(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "long_operation_keeps_its_key",
        store,
        capabilities,
        |ctx| async move {
            let lease = ctx.short();
            keeps_its_key(&ctx, "long", lease, async move {
                tokio::time::sleep(lease * 3 + lease / 2).await;
                91
            })
            .await
        },
    )
    .await
}

/// When the lease is lost mid-operation (the key taken over by another owner), the operation
/// is told (its `LeaseHandle`), and its caller gets the value back as "ran but not recorded",
/// with `LeaseLost` as the cause; the new owner's claim is untouched.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the operation is not told of the
/// loss, the caller does not get `NotRecorded` with its value and `LeaseLost`, or the new owner's
/// claim changed; or when a store call the check needs fails unexpectedly.
pub async fn lost_lease_is_told_and_not_recorded(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run("lost_lease_is_told_and_not_recorded", store, capabilities, |ctx| async move {
        let idem = detached(&ctx, ctx.short())?;
        let key = ctx.key("lost-lease")?;
        let told = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let first = tokio::spawn({
            let (idem, key, told) = (idem.clone(), key.clone(), Arc::clone(&told));
            async move {
                idem.execute_with_lease(&key, None, move |lease| async move {
                    let _ = started_tx.send(());
                    if tokio::time::timeout(PATIENCE, lease.lost()).await.is_ok() {
                        told.store(lease.is_lost(), Ordering::SeqCst);
                    }
                    Ok::<_, OpError>(101u64)
                })
                .await
                .map(|execution| execution.result.unwrap_or_default())
            }
        });
        started_rx
            .await
            .map_err(|_| "the operation never started".to_string())?;
        // Another owner takes the key over.
        ctx.store
            .remove(&key)
            .await
            .map_err(|e| format!("remove: {e:?}"))?;
        let usurper = ctx.acquire(&key, crate::context::LONG).await?;
        let deadline = Instant::now() + PATIENCE * 2;
        let outcome = tokio::time::timeout_at(deadline, first)
            .await
            .map_err(|_| "the first call never ended".to_string())?
            .map_err(|e| format!("the first call panicked: {e}"))?;
        ensure!(
            told.load(Ordering::SeqCst),
            "the operation was not told its lease was lost"
        );
        expect_not_recorded(&outcome, &101u64, |cause| matches!(cause, Error::LeaseLost))?;
        let record = ctx.read(&key).await?;
        ensure!(
            matches!(&record, Some(r) if r.state == RecordState::Claimed { owner: usurper.owner } && r.fencing == usurper.fencing),
            "the new owner's claim should be untouched, found {record:?}"
        );
        ensure!(
            matches!(ctx.probe(&key).await?, Claim::InProgress { .. }),
            "the key should still be the new owner's"
        );
        Ok(())
    })
    .await
}
