use std::sync::Arc;

use idem_core::{Claim, Error, IdempotencyStore, Lease, OwnerToken};

use crate::context::{Doing, LONG, RETENTION, ensure, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// `claim_unboxed`, `complete_unboxed` and `fail_unboxed` do what `claim`, `complete` and
/// `fail` do: a fresh key is acquired, a held one is in progress for another owner, a stale
/// lease finishes nothing, and what the holder stores is replayed as it was stored.
///
/// The engine calls these on every store whose type it knows (each `Idempotency<S>`), and a
/// store may override them to hand back its futures unboxed; every other check goes through
/// the trait object, which never calls them. So this check takes the store by its type:
/// [`conformance!`](crate::conformance) runs it, [`run_all`](crate::run_all) (which has only
/// the trait object) does not; call it beside `run_all` there.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when an unboxed step answers
/// otherwise than its boxed twin would; or when a store call the check needs fails
/// unexpectedly.
pub async fn unboxed_steps<S: IdempotencyStore>(
    store: Arc<S>,
    capabilities: Capabilities,
) -> CheckResult {
    let shared: Store = Arc::clone(&store) as Store;
    run("unboxed_steps", shared, capabilities, |ctx| async move {
        // The store's own steps: `Arc<S>` is a store too, whose unboxed steps are the
        // trait's defaults, calling the boxed ones.
        let store: &S = &store;
        let retention = ttl(RETENTION)?;
        let completed = ctx.key("completed")?;
        let request = ctx.request(&completed, LONG)?;
        let lease = match store.claim_unboxed(&request).await.doing("claim_unboxed")? {
            Claim::Acquired(lease) if lease.key == request.key && lease.owner == request.owner => {
                lease
            }
            other => {
                return Err(format!(
                    "claim_unboxed of a fresh key: expected its lease, got {other:?}"
                ));
            }
        };
        let rival = ctx.request(&completed, LONG)?;
        let found = store.claim_unboxed(&rival).await.doing("claim_unboxed")?;
        ensure!(
            matches!(found, Claim::InProgress { .. }),
            "claim_unboxed of a key another owner holds: expected InProgress, got {found:?}"
        );

        let stale = Lease::new(lease.key.clone(), OwnerToken::random(), lease.fencing)
            .with_fingerprint(lease.fingerprint);
        let refused = store
            .complete_unboxed(&stale, "stale".into(), retention)
            .await;
        ensure!(
            matches!(refused, Err(Error::LeaseLost)),
            "complete_unboxed under another owner's lease: expected LeaseLost, got {refused:?}"
        );
        let refused = store.fail_unboxed(&stale, "stale".into(), retention).await;
        ensure!(
            matches!(refused, Err(Error::LeaseLost)),
            "fail_unboxed under another owner's lease: expected LeaseLost, got {refused:?}"
        );

        store
            .complete_unboxed(&lease, "done".into(), retention)
            .await
            .doing("complete_unboxed")?;
        expect_finished(&ctx, store, &completed, &Claim::Completed("done".into())).await?;

        let failed = ctx.key("failed")?;
        let lease = ctx.acquire(&failed, LONG).await?;
        store
            .fail_unboxed(&lease, "no".into(), retention)
            .await
            .doing("fail_unboxed")?;
        expect_finished(&ctx, store, &failed, &Claim::Failed("no".into())).await
    })
    .await
}

/// `key` replays `expected` through `claim` and through `claim_unboxed`.
async fn expect_finished<S: IdempotencyStore>(
    ctx: &crate::context::Ctx,
    store: &S,
    key: &idem_core::Key,
    expected: &Claim,
) -> Result<(), String> {
    let boxed = ctx.probe(key).await?;
    let unboxed = store
        .claim_unboxed(&ctx.request(key, LONG)?)
        .await
        .doing("claim_unboxed")?;
    ensure!(
        (&boxed, &unboxed) == (expected, expected),
        "{key} should replay {expected:?}: claim gave {boxed:?}, claim_unboxed {unboxed:?}"
    );
    Ok(())
}
