//! A caller that goes away never causes a second run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use idem_core::attempt::CancelPolicy;
use idem_core::{RecordState, WaitPolicy};
use tokio::sync::oneshot;

use super::faults::Faulty;
use super::{
    Executor, Outcome, PATIENCE, await_free, count, counter, detached, executor,
    expect_in_progress, expect_replay_after, expect_replayed_once,
};
use crate::context::{LONG, ensure, run};
use crate::{Capabilities, CheckResult, Store};

type Call = Pin<Box<dyn Future<Output = Outcome<u64>> + Send>>;

/// Starts a call whose operation counts its run and then waits for `go` (or forever, if `go`
/// is dropped), and polls it until the operation started. Returns the call, not finished.
async fn started_call(
    idem: &Executor,
    key: &idem_core::Key,
    runs: &Arc<std::sync::atomic::AtomicUsize>,
    go: oneshot::Receiver<()>,
    value: u64,
) -> Result<Call, String> {
    let (started_tx, started_rx) = oneshot::channel();
    let (idem, key, runs) = (idem.clone(), key.clone(), Arc::clone(runs));
    let mut call: Call = Box::pin(async move {
        idem.execute(&key, None, move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = started_tx.send(());
            if go.await.is_err() {
                std::future::pending::<()>().await;
            }
            Ok(value)
        })
        .await
    });
    let started = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            finished = &mut call => Err(format!("the call finished before it was let go: {finished:?}")),
            started = started_rx => started.map_err(|_| "the operation never started".to_string()),
        }
    })
    .await;
    match started {
        Ok(Ok(())) => Ok(call),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("the operation did not start within {PATIENCE:?}")),
    }
}

/// Under the default Detach, a caller whose future is dropped mid-operation changes nothing:
/// the operation runs once, to the end; a repeat meanwhile is in progress, and the one after
/// it finished is a replay.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the operation runs twice or not
/// to the end, a repeat meanwhile is not in progress, or the one after is not a replay; or when a
/// store call the check needs fails unexpectedly.
pub async fn dropped_caller_runs_once(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "dropped_caller_runs_once",
        store,
        capabilities,
        |ctx| async move {
            let idem = detached(&ctx, LONG)?;
            let key = ctx.key("dropped-caller")?;
            let runs = counter();
            let (go, wait) = oneshot::channel();
            let call = started_call(&idem, &key, &runs, wait, 41).await?;
            drop(call);
            let meanwhile = super::run_counted(&idem, &key, &runs, 42u64).await;
            expect_in_progress(
                "a repeat while the dropped caller's operation runs",
                &meanwhile,
            )?;
            ensure!(
                go.send(()).is_ok(),
                "the operation was dropped with its caller"
            );
            expect_replayed_once(&idem, &key, &runs, 41u64, 43u64).await
        },
    )
    .await
}

/// Once the operation returned, a caller dropped while its outcome is written releases
/// nothing. Under Release (the caller's future runs the write), the key stays claimed by the
/// attempt until its lease ends; under Detach the write finishes and repeats replay.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when dropping the caller during the
/// outcome write freed the key or lost the outcome; or when a store call the check needs fails
/// unexpectedly.
pub async fn cancel_during_write_keeps_the_key(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run("cancel_during_write_keeps_the_key", store, capabilities, |ctx| async move {
        for policy in [CancelPolicy::Release, CancelPolicy::Detach] {
            let faulty = Arc::new(Faulty::new(Arc::clone(&ctx.store)));
            faulty.stall_completes();
            let idem = executor(faulty.clone(), LONG, WaitPolicy::FailFast, policy)?;
            let key = ctx.key(&format!("cancel-during-write-{policy:?}"))?;
            let runs = counter();
            let (go, wait) = oneshot::channel();
            let mut call = started_call(&idem, &key, &runs, wait, 51).await?;
            ensure!(go.send(()).is_ok(), "the operation was dropped");
            // Drive the call until its outcome write is under way, then drop it.
            let stalled = tokio::time::timeout(PATIENCE, async {
                tokio::select! {
                    finished = &mut call => Err(format!("the call finished through a stalled write: {finished:?}")),
                    () = faulty.stalled.notified() => Ok(()),
                }
            })
            .await;
            match stalled {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(format!("{policy:?}: the outcome write never began")),
            }
            drop(call);
            // Give a wrongly armed guard time to release the key.
            tokio::time::sleep(ctx.caps.time_slack).await;
            let record = ctx.read(&key).await?;
            match policy {
                CancelPolicy::Release => {
                    ensure!(
                        matches!(&record, Some(r) if matches!(r.state, RecordState::Claimed { .. })),
                        "Release: a caller dropped during the outcome write released the key \
                         (its operation had run): {record:?}"
                    );
                    // The repeat goes to the store itself: one that wrongly acquired would
                    // hang in the stalled write for a whole lease before failing the check.
                    let plain = detached(&ctx, LONG)?;
                    let repeat = super::run_counted(&plain, &key, &runs, 52u64).await;
                    expect_in_progress(
                        "Release: a repeat after a drop during the write",
                        &repeat,
                    )?;
                }
                _ => {
                    faulty.gate.add_permits(1);
                    expect_replay_after(&idem, &key, &runs, 51u64, 53u64).await?;
                }
            }
            ensure!(
                count(&runs) == 1,
                "{policy:?}: the operation ran {} times",
                count(&runs)
            );
        }
        Ok(())
    })
    .await
}

/// A call dropped outside any Tokio runtime (a future kept after its runtime was left, then
/// dropped on a plain thread): under Release its key is released from a helper thread, not
/// left locked for the lease; under Detach the operation runs on and its outcome is stored.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when under Release the key stays
/// locked for the lease, or under Detach the outcome is not stored; or when a store call the check
/// needs fails unexpectedly.
pub async fn drop_outside_runtime(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "drop_outside_runtime",
        store,
        capabilities,
        |ctx| async move {
            for policy in [CancelPolicy::Release, CancelPolicy::Detach] {
                let idem = executor(Arc::clone(&ctx.store), LONG, WaitPolicy::FailFast, policy)?;
                let key = ctx.key(&format!("drop-outside-runtime-{policy:?}"))?;
                let runs = counter();
                let (go, wait) = oneshot::channel();
                let call = started_call(&idem, &key, &runs, wait, 61).await?;
                let dropped = std::thread::spawn(move || {
                    let outside = tokio::runtime::Handle::try_current().is_err();
                    drop(call);
                    outside
                })
                .join();
                ensure!(
                    matches!(dropped, Ok(true)),
                    "the call was not dropped outside a runtime: {dropped:?}"
                );
                match policy {
                    CancelPolicy::Release => {
                        await_free(&ctx, &key, PATIENCE).await.map_err(|e| {
                            format!("Release, dropped outside a runtime: not released: {e}")
                        })?;
                        drop(go);
                    }
                    _ => {
                        ensure!(
                            go.send(()).is_ok(),
                            "Detach: the operation was dropped with its caller"
                        );
                        expect_replay_after(&idem, &key, &runs, 61u64, 62u64).await?;
                    }
                }
                ensure!(
                    count(&runs) == 1,
                    "{policy:?}: the operation ran {} times",
                    count(&runs)
                );
            }
            Ok(())
        },
    )
    .await
}
