//! A lease is its owner and its fencing number together, and it is spent once the key is
//! finished, released, removed or taken over.

use idem_core::{Claim, Lease, OwnerToken, RecordState};

use crate::context::{Ctx, LONG, ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// A lease after its own finish or release: its `complete`, `fail`, `renew` and `release`
/// are each `LeaseLost` and change nothing (the stored outcome, its fencing and its time
/// left stay as they were); after a release, the next claim, by anyone including the same
/// owner token, acquires with a larger fencing number.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a spent lease's call is not
/// `LeaseLost`, changes the record, or the next acquisition's fencing number does not grow; or when
/// a store call the check needs fails unexpectedly.
pub async fn spent_lease(store: Store, capabilities: Capabilities) -> CheckResult {
    run("spent_lease", store, capabilities, |ctx| async move {
        for finished in ["completed", "failed"] {
            let key = ctx.key(finished)?;
            let lease = ctx.acquire(&key, LONG).await?;
            if finished == "completed" {
                ctx.complete(&lease, &b"first"[..]).await?;
            } else {
                ctx.fail(&lease, &b"first"[..]).await?;
            }
            ctx.expect_spent(&lease, &format!("after its own finish ({finished})"))
                .await?;
            let replay = ctx.probe(&key).await?;
            ensure!(
                matches!(&replay, Claim::Completed(b) | Claim::Failed(b) if b == "first"),
                "the first outcome should replay, got {replay:?}"
            );
        }

        for by_same_owner in [false, true] {
            let key = ctx.key(&format!("released-{by_same_owner}"))?;
            let request = ctx.request(&key, LONG)?;
            let lease = ctx.acquire_with(&request).await?;
            ctx.release(&lease).await?;
            ensure!(
                ctx.read(&key).await?.is_none(),
                "a released key should read as free"
            );
            ctx.expect_spent(&lease, "after its own release").await?;
            let next_request = if by_same_owner {
                request.clone()
            } else {
                ctx.request(&key, LONG)?
            };
            let next = ctx
                .acquire_with(&next_request)
                .await
                .map_err(|e| format!("after a release (same owner token: {by_same_owner}): {e}"))?;
            ensure!(
                next.fencing > lease.fencing,
                "after a release the next claim (same owner token: {by_same_owner}) must get \
                 a larger fencing number: {} then {}",
                lease.fencing,
                next.fencing
            );
            ctx.expect_spent(&lease, "after its release and a new acquisition")
                .await?;
            ctx.complete(&next, &b"next"[..]).await?;
        }
        Ok(())
    })
    .await
}

/// A lease is its owner and its fencing number together: an owner token reused for a
/// later acquisition (as `OwnerToken::from_uuid` allows) does not revive its older lease,
/// and a lease with the current fencing number but another owner is refused.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when an older lease of a reused owner
/// token, or the current fencing with another owner, is accepted; or when a store call the check
/// needs fails unexpectedly.
pub async fn lease_identity(store: Store, capabilities: Capabilities) -> CheckResult {
    run("lease_identity", store, capabilities, |ctx| async move {
        let key = ctx.key("reused-owner")?;
        let owner = OwnerToken::from_uuid(uuid::Uuid::new_v4());
        let request = ctx.request(&key, LONG)?.with_owner(owner);
        let older = ctx.acquire_with(&request).await?;
        ctx.release(&older).await?;
        let reused = ctx
            .request(&key, LONG)?
            .with_owner(OwnerToken::from_uuid(owner.as_uuid()));
        let current = ctx.acquire_with(&reused).await?;
        ensure!(
            current.fencing > older.fencing,
            "a new acquisition must get a larger fencing number: {} then {}",
            older.fencing,
            current.fencing
        );
        ctx.expect_spent(&older, "of the same owner token, older fencing number")
            .await?;

        let forged = Lease::new(current.key.clone(), OwnerToken::random(), current.fencing);
        ctx.expect_spent(&forged, "with the current fencing number but another owner")
            .await?;
        let record = ctx.read(&key).await?.ok_or("the current claim vanished")?;
        ensure!(
            record.state == RecordState::Claimed { owner } && record.fencing == current.fencing,
            "the current lease's record changed: {record:?}"
        );
        ctx.complete(&current, &b"current"[..]).await
    })
    .await
}

/// `remove` frees a key but leaves a trace: the next acquisition, by a new owner or by the
/// removed owner's token, gets a larger fencing number than any lease before the removal
/// (whether the key was claimed, completed or failed), and the removed lease is spent.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when an acquisition after `remove`
/// does not get a larger fencing number, or the removed lease still works; or when a store call the
/// check needs fails unexpectedly.
pub async fn removal_fencing(store: Store, capabilities: Capabilities) -> CheckResult {
    run("removal_fencing", store, capabilities, |ctx| async move {
        for (i, phase) in ["claimed", "completed", "failed", "claimed-same-owner"]
            .into_iter()
            .enumerate()
        {
            let key = ctx.key(&format!("removed-{i}"))?;
            let request = ctx.request(&key, LONG)?;
            let lease = ctx.acquire_with(&request).await?;
            match phase {
                "completed" => ctx.complete(&lease, &b"done"[..]).await?,
                "failed" => ctx.fail(&lease, &b"no"[..]).await?,
                _ => {}
            }
            ensure!(
                ctx.remove(&key).await?,
                "removing a {phase} key should say it was there"
            );
            ensure!(ctx.read(&key).await?.is_none(), "a removed key still reads");
            let next_request = if phase == "claimed-same-owner" {
                request.clone()
            } else {
                ctx.request(&key, LONG)?
            };
            let next = ctx.acquire_with(&next_request).await?;
            ensure!(
                next.fencing > lease.fencing,
                "removing a {phase} key must not reset its fencing number (the removed owner \
                 may still be running): {} before, {} after",
                lease.fencing,
                next.fencing
            );
            ctx.expect_spent(&lease, &format!("removed while {phase}"))
                .await?;
            ctx.complete(&next, &b"after removal"[..]).await?;
        }
        Ok(())
    })
    .await
}

/// The original owner, retrying its exact claim after its lease lapsed and another owner
/// took the key over, is told `InProgress`: never its old lease, never a new one.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the original owner's retried
/// claim is not `InProgress`; or when a store call the check needs fails unexpectedly.
pub async fn own_retry_after_takeover(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "own_retry_after_takeover",
        store,
        capabilities,
        |ctx| async move {
            let key = ctx.key("overtaken")?;
            let request = ctx.request(&key, ctx.short())?;
            let first = ctx.acquire_with(&request).await?;
            ctx.outlive_short_ttl().await;
            let second = ctx.acquire(&key, LONG).await?;
            let retried = ctx.claim(&request).await?;
            ensure!(
                matches!(retried, Claim::InProgress { .. }),
                "the original owner's retried claim after a takeover: expected InProgress, \
                 got {retried:?} (its old lease was {first:?})"
            );
            holds(&ctx, &second).await
        },
    )
    .await
}

/// Insists that `lease` still holds its key, as read.
pub(crate) async fn holds(ctx: &Ctx, lease: &Lease) -> Result<(), String> {
    let record = ctx.read(&lease.key).await?;
    ensure!(
        record
            .as_ref()
            .is_some_and(|r| r.state == RecordState::Claimed { owner: lease.owner }
                && r.fencing == lease.fencing),
        "{lease:?} should still hold its key, but it reads {record:?}"
    );
    Ok(())
}
