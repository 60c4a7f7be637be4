use idem_core::{Claim, RecordState};

use crate::context::{Doing, LONG, RETENTION, ensure, expect_lease_lost, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// A claim not finished within its lease can be acquired by another owner, with a larger
/// fencing number.
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
        Ok(())
    })
    .await
}

/// After a takeover, complete, fail, renew and release with the old lease each return
/// LeaseLost and leave the new owner's record as it was.
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

/// A lapsed lease that nobody took over still finishes its key: slowness alone loses nothing.
pub async fn lapsed_lease_still_finishes(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "lapsed_lease_still_finishes",
        store,
        capabilities,
        |ctx| async move {
            let key = ctx.key("lapsed")?;
            let lease = ctx.acquire(&key, ctx.short()).await?;
            ctx.outlive_short_ttl().await;
            ctx.complete(&lease, &b"made it"[..])
                .await
                .map_err(|e| format!("completing a lapsed lease nobody took over: {e}"))?;
            let replay = ctx.probe(&key).await?;
            ensure!(
                replay == Claim::Completed((&b"made it"[..]).into()),
                "expected the late result, got {replay:?}"
            );
            Ok(())
        },
    )
    .await
}
