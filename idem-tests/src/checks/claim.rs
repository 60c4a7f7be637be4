use std::sync::Arc;

use idem_core::Claim;
use tokio::sync::Barrier;

use crate::context::{Ctx, LONG, ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// `capabilities.concurrency` tasks claim one key at the same instant: exactly one acquires,
/// every other one is told it is in progress; after completion all of them get the response.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when more or fewer than one racer
/// acquires, a loser is not told `InProgress`, or a repeat after completion does not get the
/// response; or when a store call the check needs fails unexpectedly.
pub async fn exclusive_claim(store: Store, capabilities: Capabilities) -> CheckResult {
    run("exclusive_claim", store, capabilities, |ctx| async move {
        let ctx = Arc::new(ctx);
        let key = ctx.key("contended")?;
        let claims = race(&ctx, std::slice::from_ref(&key), ctx.caps.concurrency).await?;
        let winners: Vec<_> = claims
            .iter()
            .filter(|c| matches!(c, Claim::Acquired(_)))
            .collect();
        ensure!(
            winners.len() == 1,
            "{} of {} racing claims acquired the key",
            winners.len(),
            claims.len()
        );
        let others_in_progress = claims
            .iter()
            .filter(|c| matches!(c, Claim::InProgress { .. }))
            .count();
        ensure!(
            others_in_progress == claims.len() - 1,
            "the losers should all see InProgress: {claims:?}"
        );
        let Some(Claim::Acquired(lease)) = winners.first() else {
            return Err("no winner".into());
        };
        ctx.complete(lease, &b"winner"[..]).await?;
        let after = ctx.probe(&key).await?;
        ensure!(
            after == Claim::Completed((&b"winner"[..]).into()),
            "after completion a repeat got {after:?}"
        );
        Ok(())
    })
    .await
}

/// 200 keys, each raced by 4 claimers at once: exactly one winner per key.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when any key has more or fewer than
/// one winner; or when a store call the check needs fails unexpectedly.
pub async fn exclusive_claim_many_keys(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "exclusive_claim_many_keys",
        store,
        capabilities,
        |ctx| async move {
            let ctx = Arc::new(ctx);
            let keys = (0..200)
                .map(|i| ctx.key(&format!("k{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            let claims = race(&ctx, &keys, 4).await?;
            for (i, per_key) in claims.chunks(4).enumerate() {
                let winners = per_key
                    .iter()
                    .filter(|c| matches!(c, Claim::Acquired(_)))
                    .count();
                ensure!(
                    winners == 1,
                    "key k{i}: {winners} of 4 racing claims acquired it: {per_key:?}"
                );
            }
            Ok(())
        },
    )
    .await
}

/// Keys freed by a lapsed lease or a release are raced by 8 new owners each at once: exactly
/// one takes each key over, with a larger fencing number; the others see it in progress.
/// (Takeover is where stores built on a unique index or `SET NX` race: the key exists.)
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a freed key is taken over by more
/// or fewer than one racer, or without a larger fencing number; or when a store call the check
/// needs fails unexpectedly.
pub async fn exclusive_takeover(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "exclusive_takeover",
        store,
        capabilities,
        |ctx| async move {
            let ctx = Arc::new(ctx);
            let keys = (0..20)
                .map(|i| ctx.key(&format!("freed-{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut first = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                let lease = ctx.acquire(key, ctx.short()).await?;
                if i % 2 == 1 {
                    ctx.store
                        .release(&lease)
                        .await
                        .map_err(|e| format!("release: {e:?}"))?;
                }
                first.push(lease);
            }
            ctx.outlive_short_ttl().await;
            let claims = race(&ctx, &keys, 8).await?;
            for ((per_key, before), key) in claims.chunks(8).zip(&first).zip(&keys) {
                let winners: Vec<_> = per_key
                    .iter()
                    .filter_map(|c| match c {
                        Claim::Acquired(lease) => Some(lease),
                        _ => None,
                    })
                    .collect();
                ensure!(
                    winners.len() == 1,
                    "{key}: {} of 8 racing takeovers acquired it: {per_key:?}",
                    winners.len()
                );
                ensure!(
                    winners.iter().all(|w| w.fencing > before.fencing),
                    "{key}: the takeover's fencing {:?} is not above the freed lease's {}",
                    winners.iter().map(|w| w.fencing).collect::<Vec<_>>(),
                    before.fencing
                );
                let in_progress = per_key
                    .iter()
                    .filter(|c| matches!(c, Claim::InProgress { .. }))
                    .count();
                ensure!(
                    in_progress == 7,
                    "{key}: the losers should see InProgress: {per_key:?}"
                );
            }
            Ok(())
        },
    )
    .await
}

/// Claims every key `per_key` times at once, each by its own owner; results grouped by key.
pub(crate) async fn race(
    ctx: &Arc<Ctx>,
    keys: &[idem_core::Key],
    per_key: usize,
) -> Result<Vec<Claim>, String> {
    let barrier = Arc::new(Barrier::new(keys.len() * per_key));
    let mut tasks = Vec::new();
    for key in keys {
        for _ in 0..per_key {
            let request = ctx.request(key, LONG)?;
            let (store, barrier) = (Arc::clone(&ctx.store), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&request).await
            }));
        }
    }
    let mut claims = Vec::with_capacity(tasks.len());
    for task in tasks {
        let claim = task
            .await
            .map_err(|e| format!("a claiming task panicked: {e}"))?;
        claims.push(claim.map_err(|e| format!("a racing claim failed: {e:?}"))?);
    }
    Ok(claims)
}

/// A claim retried by the same owner (its first reply lost) gets the same lease back, not
/// "in progress"; another owner still sees it in progress.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the owner's retried claim is not
/// handed the same lease, or another owner does not see the key in progress; or when a store call
/// the check needs fails unexpectedly.
pub async fn uncertain_claim(store: Store, capabilities: Capabilities) -> CheckResult {
    run("uncertain_claim", store, capabilities, |ctx| async move {
        let key = ctx.key("retried")?;
        let request = ctx.request(&key, LONG)?;
        let first = ctx.acquire_with(&request).await?;
        let again = ctx.claim(&request).await?;
        ensure!(
            again == Claim::Acquired(first.clone()),
            "the same owner claiming again should get its lease {first:?} back, got {again:?}"
        );
        let other = ctx.probe(&key).await?;
        ensure!(
            matches!(other, Claim::InProgress { .. }),
            "another owner should see InProgress, got {other:?}"
        );
        ctx.complete(&first, &b"ok"[..]).await?;
        let after = ctx.claim(&request).await?;
        ensure!(
            after == Claim::Completed((&b"ok"[..]).into()),
            "once completed, even the same owner gets the response, got {after:?}"
        );
        same_owner_reclaim_extends(&ctx).await
    })
    .await
}

/// The same owner claiming again extends its lease by the TTL from then: past the first
/// lease's end, before the extended one's, others still see it in progress.
async fn same_owner_reclaim_extends(ctx: &Ctx) -> Result<(), String> {
    let lease_ttl = ctx.short() + ctx.caps.time_slack;
    let key = ctx.key("retried-late")?;
    let request = ctx.request(&key, lease_ttl)?;
    let first = ctx.acquire_with(&request).await?;
    tokio::time::sleep(lease_ttl.mul_f64(0.7)).await;
    let again = ctx.claim(&request).await?;
    ensure!(
        again == Claim::Acquired(first.clone()),
        "a late retry of the same claim should get its lease back, got {again:?}"
    );
    // Now 1.35 lease TTLs after the first claim, 0.65 after the retry.
    tokio::time::sleep(lease_ttl.mul_f64(0.65)).await;
    let other = ctx.probe(&key).await?;
    ensure!(
        matches!(other, Claim::InProgress { .. }),
        "the retried claim should have extended the lease, but another owner got {other:?}"
    );
    Ok(())
}
