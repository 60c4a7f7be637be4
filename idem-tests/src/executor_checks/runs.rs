//! The basic promise: one run per key, failures replayed or rerun as they say, a panic frees
//! the key.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_core::attempt::CancelPolicy;
use idem_core::{ExecuteError, Execution, WaitPolicy};

use super::{
    OpError, Outcome, PATIENCE, await_free, count, counter, detached, executor, run_counted,
};
use crate::context::{LONG, ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// `concurrency` callers (64 by default) with the same key, waiting for each other: the
/// operation runs once and every caller gets its value.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the operation runs more than once
/// or a caller does not get its value; or when a store call the check needs fails unexpectedly.
pub async fn one_run_under_concurrency(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "one_run_under_concurrency",
        store,
        capabilities,
        |ctx| async move {
            let wait = WaitPolicy::wait(PATIENCE * 3);
            let idem = executor(Arc::clone(&ctx.store), LONG, wait, CancelPolicy::Detach)?;
            let key = ctx.key("concurrent")?;
            let runs = counter();
            let callers = ctx.caps.concurrency.max(2);
            let barrier = Arc::new(tokio::sync::Barrier::new(callers));
            let calls: Vec<_> = (0..callers)
                .map(|caller| {
                    let (idem, key, runs, barrier) = (
                        idem.clone(),
                        key.clone(),
                        Arc::clone(&runs),
                        Arc::clone(&barrier),
                    );
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let outcome: Outcome<String> = idem
                            .execute(&key, None, move || async move {
                                runs.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                Ok(format!("made by caller {caller}"))
                            })
                            .await;
                        outcome
                    })
                })
                .collect();
            let mut values = Vec::new();
            for call in calls {
                match call.await {
                    Ok(Ok(value)) => values.push(value),
                    other => return Err(format!("a caller did not get the value: {other:?}")),
                }
            }
            ensure!(
                count(&runs) == 1,
                "the operation ran {} times",
                count(&runs)
            );
            ensure!(
                values.iter().all(|v| v == &values[0]),
                "callers got different values: {values:?}"
            );
            Ok(())
        },
    )
    .await
}

/// A retryable failure frees the key: the next call runs again, and its success is replayed.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the next call does not run again,
/// or its success is not replayed; or when a store call the check needs fails unexpectedly.
pub async fn retryable_failure_reruns(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "retryable_failure_reruns",
        store,
        capabilities,
        |ctx| async move {
            let idem = detached(&ctx, LONG)?;
            let key = ctx.key("retryable")?;
            let runs = counter();
            let first: Outcome<u64> = idem
                .execute(&key, None, {
                    let runs = Arc::clone(&runs);
                    || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Err(OpError::Transient)
                    }
                })
                .await;
            ensure!(
                matches!(first, Err(ExecuteError::Operation(OpError::Transient))),
                "the first call should get its retryable error, got {first:?}"
            );
            let second = run_counted(&idem, &key, &runs, 12u64).await;
            ensure!(
                matches!(
                    second,
                    Ok(Execution {
                        result: Ok(12),
                        replayed: false,
                        ..
                    })
                ),
                "after a retryable failure the next call should run, got {second:?}"
            );
            let third = run_counted(&idem, &key, &runs, 13u64).await;
            ensure!(
                matches!(
                    third,
                    Ok(Execution {
                        result: Ok(12),
                        replayed: true,
                        ..
                    })
                ),
                "the success should then be replayed, got {third:?}"
            );
            ensure!(
                count(&runs) == 2,
                "the operation ran {} times",
                count(&runs)
            );
            Ok(())
        },
    )
    .await
}

/// A permanent failure is stored and replayed to every repeat, without running again.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the failure is not replayed, or
/// the operation runs again; or when a store call the check needs fails unexpectedly.
pub async fn permanent_failure_replays(store: Store, capabilities: Capabilities) -> CheckResult {
    run("permanent_failure_replays", store, capabilities, |ctx| async move {
        let idem = detached(&ctx, LONG)?;
        let key = ctx.key("permanent")?;
        let runs = counter();
        let declined = OpError::Permanent("card declined".into());
        let first: Outcome<u64> = idem
            .execute(&key, None, {
                let (runs, declined) = (Arc::clone(&runs), declined.clone());
                || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Err(declined)
                }
            })
            .await;
        ensure!(
            matches!(&first, Err(ExecuteError::Operation(e)) if e == &declined),
            "the first call should get its permanent error, got {first:?}"
        );
        for _ in 0..2 {
            let repeat = run_counted(&idem, &key, &runs, 22u64).await;
            ensure!(
                matches!(&repeat, Ok(Execution { result: Err(e), replayed: true, .. }) if e == &declined),
                "a repeat should replay the failure, got {repeat:?}"
            );
        }
        ensure!(count(&runs) == 1, "the operation ran {} times", count(&runs));
        Ok(())
    })
    .await
}

/// A panicking operation (under the default Detach) frees its key well before its lease
/// ends, and the panic reaches the caller; the next call runs.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the key stays held after the
/// panic, the panic does not reach the caller, or the next call does not run; or when a store call
/// the check needs fails unexpectedly.
pub async fn panic_frees_the_key(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "panic_frees_the_key",
        store,
        capabilities,
        |ctx| async move {
            let idem = detached(&ctx, LONG)?;
            let key = ctx.key("panic")?;
            let runs = counter();
            let caller = tokio::spawn({
                let (idem, key, runs) = (idem.clone(), key.clone(), Arc::clone(&runs));
                async move {
                    let outcome: Outcome<u64> = idem
                        .execute(&key, None, move || async move {
                            if runs.fetch_add(1, Ordering::SeqCst) < usize::MAX {
                                panic!("the operation panics (expected by this check)");
                            }
                            Ok(0)
                        })
                        .await;
                    outcome
                }
            });
            match caller.await {
                Err(error) if error.is_panic() => {}
                other => return Err(format!("the panic should reach the caller, got {other:?}")),
            }
            await_free(&ctx, &key, PATIENCE).await?;
            let next = run_counted(&idem, &key, &runs, 31u64).await;
            ensure!(
                matches!(
                    next,
                    Ok(Execution {
                        result: Ok(31),
                        replayed: false,
                        ..
                    })
                ),
                "after a panic the next call should run, got {next:?}"
            );
            Ok(())
        },
    )
    .await
}
