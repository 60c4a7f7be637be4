use std::time::{Duration, Instant};

use idem_core::{Claim, RecordState};

use crate::context::{Ctx, Doing, LONG, RETENTION, ensure, expect_lease_lost, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// A claim not finished within its lease can be acquired by another owner, with a larger
/// fencing number; and not before: a lease of whole seconds and a fraction still holds
/// past its whole seconds (seen where the clock slack is under that fraction).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a lapsed claim is not acquired by
/// another owner, or its fencing number does not grow, or a live lease is taken over before its
/// end; or when a store call the check needs fails unexpectedly.
pub async fn lease_expiry(store: Store, capabilities: Capabilities) -> CheckResult {
    run("lease_expiry", store, capabilities, |ctx| async move {
        let key = ctx.key("abandoned")?;
        let first = ctx.acquire(&key, ctx.short()).await?;
        let meanwhile = ctx.probe(&key).await?;
        ensure!(
            matches!(meanwhile, Claim::InProgress { .. }),
            "before expiry another owner should see InProgress, got {meanwhile:?}"
        );
        ctx.outlive_short_ttl().await;
        let second = ctx
            .acquire(&key, LONG)
            .await
            .map_err(|e| format!("after the lease expired: {e}"))?;
        ensure!(
            second.fencing > first.fencing,
            "fencing must grow on takeover (a store remembers a vacated key for \
             lifecycle::trace_ttl): first {}, then {}",
            first.fencing,
            second.fencing
        );
        holds_its_fraction(&ctx).await
    })
    .await
}

/// A lease of one second and a fraction of one.
const FRACTIONAL_LEASE: Duration = Duration::from_millis(1_990);

/// Another owner still sees a [`FRACTIONAL_LEASE`] in progress a clock slack before its end.
/// A store keeping leases in whole seconds (Redis's `EX`, an integer `INTERVAL`) ends it
/// after one second, and lets a second owner in while the first still runs.
async fn holds_its_fraction(ctx: &Ctx) -> Result<(), String> {
    let key = ctx.key("fractional")?;
    let asked = Instant::now();
    let lease = ctx.acquire(&key, FRACTIONAL_LEASE).await?;
    let before_end = FRACTIONAL_LEASE.saturating_sub(ctx.slack());
    tokio::time::sleep(before_end.saturating_sub(asked.elapsed())).await;
    let meanwhile = ctx.probe(&key).await?;
    ensure!(
        matches!(meanwhile, Claim::InProgress { .. }),
        "{:?} into a {FRACTIONAL_LEASE:?} lease, another owner should see InProgress, got \
         {meanwhile:?}",
        asked.elapsed()
    );
    ctx.release(&lease).await
}

/// After a takeover, complete, fail, renew and release with the old lease each return
/// `LeaseLost` and leave the new owner's record as it was.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a call with the old lease is not
/// `LeaseLost`, or changed the new owner's record; or when a store call the check needs fails
/// unexpectedly.
pub async fn stale_lease(store: Store, capabilities: Capabilities) -> CheckResult {
    run("stale_lease", store, capabilities, |ctx| async move {
        let key = ctx.key("taken-over")?;
        let stale = ctx.acquire(&key, ctx.short()).await?;
        ctx.outlive_short_ttl().await;
        let current = ctx.acquire(&key, LONG).await?;
        let retention = ttl(RETENTION)?;
        expect_lease_lost(
            "complete",
            ctx.store.complete(&stale, "stale".into(), retention).await,
        )?;
        expect_lease_lost(
            "fail",
            ctx.store.fail(&stale, "stale".into(), retention).await,
        )?;
        expect_lease_lost("renew", ctx.store.renew(&stale, ttl(LONG)?).await)?;
        expect_lease_lost("release", ctx.store.release(&stale).await)?;

        let record = ctx
            .read(&key)
            .await?
            .ok_or("the new owner's record is gone")?;
        ensure!(
            record.state
                == RecordState::Claimed {
                    owner: current.owner
                }
                && record.fencing == current.fencing,
            "the stale lease changed the new owner's record: {record:?}"
        );
        ctx.complete(&current, &b"fresh"[..]).await?;
        let replay = ctx.probe(&key).await?;
        ensure!(
            replay == Claim::Completed((&b"fresh"[..]).into()),
            "the new owner's result should replay, got {replay:?}"
        );
        Ok(())
    })
    .await
}

/// A renewed lease outlives its first TTL; others keep seeing it in progress.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a renewed lease is taken over
/// after its first TTL, or others stop seeing it in progress; or when a store call the check needs
/// fails unexpectedly.
pub async fn renewal(store: Store, capabilities: Capabilities) -> CheckResult {
    run("renewal", store, capabilities, |ctx| async move {
        let key = ctx.key("slow")?;
        let lease = ctx.acquire(&key, ctx.short()).await?;
        tokio::time::sleep(ctx.short() / 3).await;
        let extended = 2 * (ctx.short() + ctx.caps.time_slack) + ctx.short();
        ctx.store
            .renew(&lease, ttl(extended)?)
            .await
            .doing("renew")?;
        ctx.outlive_short_ttl().await;
        let other = ctx.probe(&key).await?;
        ensure!(
            matches!(other, Claim::InProgress { .. }),
            "past its first TTL a renewed lease should hold, but another owner got {other:?}"
        );
        let record = ctx.read(&key).await?.ok_or("the renewed claim is gone")?;
        ensure!(
            record.state == RecordState::Claimed { owner: lease.owner },
            "renewed record changed: {record:?}"
        );
        ctx.complete(&lease, &b"late"[..]).await?;
        Ok(())
    })
    .await
}

/// A lapsed lease that nobody took over still counts: it completes, fails, renews (after
/// which others see the key in progress again) and releases (after which the next claim
/// gets a larger fencing number). Slowness alone loses nothing.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a call with a lapsed lease nobody
/// took over is refused, or its effect is not the usual one; or when a store call the check needs
/// fails unexpectedly.
pub async fn lapsed_lease_still_finishes(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "lapsed_lease_still_finishes",
        store,
        capabilities,
        |ctx| async move {
            let mut leases = Vec::new();
            for what in ["complete", "fail", "renew", "release"] {
                leases.push((what, ctx.acquire(&ctx.key(what)?, ctx.short()).await?));
            }
            ctx.outlive_short_ttl().await;
            for (what, lease) in &leases {
                let key = &lease.key;
                let late = |e: String| format!("{what} with a lapsed lease nobody took over: {e}");
                match *what {
                    "complete" => ctx.complete(lease, &b"made it"[..]).await.map_err(late)?,
                    "fail" => ctx.fail(lease, &b"made it"[..]).await.map_err(late)?,
                    "renew" => ctx.renew(lease, LONG).await.map_err(late)?,
                    _ => ctx.release(lease).await.map_err(late)?,
                }
                let next = ctx.probe(key).await?;
                let fine = match *what {
                    "complete" => next == Claim::Completed((&b"made it"[..]).into()),
                    "fail" => next == Claim::Failed((&b"made it"[..]).into()),
                    "renew" => matches!(next, Claim::InProgress { .. }),
                    _ => matches!(&next, Claim::Acquired(l) if l.fencing > lease.fencing),
                };
                ensure!(fine, "after a late {what}, another owner got {next:?}");
            }
            Ok(())
        },
    )
    .await
}
