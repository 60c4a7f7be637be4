//! Leases and retention are counted from the right moment, and only once.

use std::time::{Duration, Instant};

use idem_core::{Claim, Key};

use crate::context::{Ctx, LONG, ensure, expect_lease_lost, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// `InProgress::retry_after` is the time the holder's lease has left: above zero, at most
/// its lease TTL, and within the clock slack of what is really left, whatever TTL the
/// asking claim carries; after a renewal, of the renewed lease.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when `retry_after` is zero, over the
/// lease TTL, or off from the lease's time left by more than the clock slack; or when a store call
/// the check needs fails unexpectedly.
pub async fn in_progress_retry_after(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "in_progress_retry_after",
        store,
        capabilities,
        |ctx| async move {
            let key = ctx.key("held")?;
            let started = Instant::now();
            let lease = ctx.acquire(&key, LONG).await?;
            let acquired = Instant::now();
            expect_retry_after(&ctx, &key, LONG, started, acquired).await?;
            tokio::time::sleep(2 * ctx.slack()).await;
            expect_retry_after(&ctx, &key, LONG, started, acquired).await?;
            let renewed_to = LONG / 3;
            let started = Instant::now();
            ctx.renew(&lease, renewed_to).await?;
            let renewed = Instant::now();
            expect_retry_after(&ctx, &key, renewed_to, started, renewed).await
        },
    )
    .await
}

/// A fresh owner's claim (with a 1 s lease of its own) sees `InProgress` with the time
/// left of a `lease_ttl` lease taken between `started` and `taken`.
async fn expect_retry_after(
    ctx: &Ctx,
    key: &Key,
    lease_ttl: Duration,
    started: Instant,
    taken: Instant,
) -> Result<(), String> {
    let asked = Instant::now();
    let found = ctx
        .claim(&ctx.request(key, Duration::from_secs(1))?)
        .await?;
    let answered = Instant::now();
    let Claim::InProgress { retry_after } = found else {
        return Err(format!("a held key: expected InProgress, got {found:?}"));
    };
    let most = lease_ttl.saturating_sub(asked.saturating_duration_since(taken)) + ctx.slack();
    let least = lease_ttl
        .saturating_sub(answered.saturating_duration_since(started))
        .saturating_sub(ctx.slack());
    ensure!(
        !retry_after.is_zero() && retry_after <= lease_ttl,
        "retry_after {retry_after:?} must be above zero and at most the lease TTL {lease_ttl:?}"
    );
    ensure!(
        retry_after >= least && retry_after <= most,
        "retry_after {retry_after:?} is not the time the {lease_ttl:?} lease has left \
         (between {least:?} and {most:?})"
    );
    Ok(())
}

/// A renewal extends the lease to its TTL from now: not from the claim, not from the old
/// end of the lease (a renewal to a shorter TTL shortens it).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a renewed lease ends at another
/// time than its TTL from the renewal; or when a store call the check needs fails unexpectedly.
pub async fn renewal_from_now(store: Store, capabilities: Capabilities) -> CheckResult {
    run("renewal_from_now", store, capabilities, |ctx| async move {
        let unit = ctx.unit();
        let key = ctx.key("renewed")?;
        let lease = ctx.acquire(&key, 4 * unit).await?;
        tokio::time::sleep(unit.mul_f64(1.5)).await;
        let renewed_to = 3 * unit;
        let started = Instant::now();
        ctx.renew(&lease, renewed_to).await?;
        let renewed = Instant::now();
        let record = ctx
            .read(&key)
            .await?
            .ok_or("a renewed lease reads as free")?;
        ensure!(
            record.expires_in <= renewed_to && record.expires_in + ctx.slack() >= renewed_to,
            "right after a renewal to {renewed_to:?} the lease has {:?} left",
            record.expires_in
        );
        sleep_until(started + renewed_to - ctx.slack()).await;
        let before_end = ctx.probe(&key).await?;
        ensure!(
            matches!(before_end, Claim::InProgress { .. }),
            "{:?} before the renewed lease ends another owner got {before_end:?}: the renewal \
             should count {renewed_to:?} from the renewal, not from the claim",
            ctx.slack()
        );
        sleep_until(renewed + renewed_to + ctx.slack()).await;
        let after_end = ctx.probe(&key).await?;
        ensure!(
            matches!(after_end, Claim::Acquired(_)),
            "{:?} after the renewed lease ended another owner got {after_end:?}: the renewal \
             should count {renewed_to:?} from now, not from the old end of the lease",
            ctx.slack()
        );
        Ok(())
    })
    .await
}

/// Retention is counted from the finish, not from the claim, and only once: replays, reads
/// and stale lease calls during the retention do not extend it.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a record expires at another time
/// than its retention from the finish, or a replay, read or stale call extended it; or when a store
/// call the check needs fails unexpectedly.
pub async fn retention_from_finish(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "retention_from_finish",
        store,
        capabilities,
        |ctx| async move {
            let unit = ctx.unit();
            let retention = 2 * unit;
            let key = ctx.key("late-finish")?;
            let lease = ctx.acquire(&key, LONG).await?;
            tokio::time::sleep(retention).await;
            ctx.store
                .complete(&lease, "late".into(), ttl(retention)?)
                .await
                .map_err(|e| format!("complete: {e:?}"))?;
            let finished = Instant::now();
            let record = ctx.read(&key).await?.ok_or(
                "a record read right after its finish is gone: retention counted from the claim?",
            )?;
            ensure!(
                record.expires_in <= retention && record.expires_in + ctx.slack() >= retention,
                "right after the finish the record has {:?} of its {retention:?} retention left",
                record.expires_in
            );

            // Keep touching it until past its retention: replays, reads, a stale renewal.
            let until = finished + retention + ctx.slack();
            // Until late in the retention: a sliding expiry would then outlast `until`.
            while Instant::now() < finished + retention - ctx.slack() / 2 {
                ctx.probe(&key).await?;
                ctx.read(&key).await?;
                expect_lease_lost(
                    "renew after the finish",
                    ctx.store.renew(&lease, ttl(LONG)?).await,
                )?;
                tokio::time::sleep(unit / 4).await;
            }
            sleep_until(until).await;
            ensure!(
                ctx.read(&key).await?.is_none(),
                "replays and reads extended the retention: the record outlived it"
            );
            ctx.acquire(&key, LONG)
                .await
                .map_err(|e| format!("after retention: {e}"))?;
            Ok(())
        },
    )
    .await
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

/// How long after freeing [`fencing_memory`] checks that a key is still remembered: a fifth
/// of `idem_core::lifecycle::FENCING_MEMORY`, as much as the suite's time budget allows (a
/// backend's whole suite should run in 40 s, and checks run side by side).
pub const FENCING_MEMORY_CHECKED: Duration = Duration::from_secs(12);

/// A freed key is remembered well past the moment it was freed (the contract says at
/// least `lifecycle::trace_ttl`: the longer of the lease TTL and 60 s): keys freed by every
/// path (a lapsed lease, a release, a removed claim, a removed finished record whose
/// retention would have ended within seconds) are claimed
/// again [`FENCING_MEMORY_CHECKED`] later, and each new lease's fencing number is larger
/// than the one before the freeing.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a key claimed again
/// [`FENCING_MEMORY_CHECKED`] after it was freed gets a fencing number no larger than
/// before; or when a store call the check needs fails unexpectedly.
pub async fn fencing_memory(store: Store, capabilities: Capabilities) -> CheckResult {
    run("fencing_memory", store, capabilities, |ctx| async move {
        let mut freed = Vec::new();
        for path in ["lapsed", "released", "removed-claim", "removed-finished"] {
            let key = ctx.key(path)?;
            // Two acquisitions, so the number to remember is above the first one's.
            let first = ctx.acquire(&key, LONG).await?;
            ctx.release(&first).await?;
            let lease = ctx.acquire(&key, ctx.short()).await?;
            match path {
                "released" => ctx.release(&lease).await?,
                "removed-claim" => {
                    ensure!(ctx.remove(&key).await?, "removing a claim should say so");
                }
                "removed-finished" => {
                    // A retention that ends long before the check claims again: the trace a
                    // removal leaves is owed the whole memory, not what the record had left.
                    let retention = ttl(2 * ctx.unit())?;
                    ctx.store
                        .complete(&lease, "done".into(), retention)
                        .await
                        .map_err(|e| format!("complete: {e:?}"))?;
                    ensure!(ctx.remove(&key).await?, "removing a record should say so");
                }
                _ => {}
            }
            freed.push((path, key, lease));
        }
        tokio::time::sleep(ctx.short() + FENCING_MEMORY_CHECKED).await;
        for (path, key, lease) in freed {
            let next = ctx.acquire(&key, LONG).await?;
            ensure!(
                next.fencing > lease.fencing,
                "{key} ({path}): claimed again {FENCING_MEMORY_CHECKED:?} after it was freed, \
                 it got fencing {} after {}: the store forgot the key within the fencing memory",
                next.fencing,
                lease.fencing
            );
        }
        Ok(())
    })
    .await
}
