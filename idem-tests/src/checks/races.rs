//! Exactly one winner, whatever freed the key, and whatever it races against.

use std::sync::Arc;

use idem_core::{Claim, Error, Key, Lease, RecordState};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use super::claim::race;
use crate::context::{Ctx, LONG, RETENTION, after_gate, ensure, joined, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// The ways a key becomes free.
pub(super) const PATHS: [&str; 5] = [
    "never-seen",
    "released",
    "lapsed",
    "retention-ended",
    "removed",
];

/// On every path by which a key becomes free (never seen, released, lapsed, retention
/// ended, removed), 8 claimers racing for it: exactly one acquires, the others see it in
/// progress; where the store remembers the key, the winner's fencing number is larger.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when on some path more or fewer than
/// one racer acquires, or a remembered key's fencing number does not grow; or when a store call the
/// check needs fails unexpectedly.
pub async fn exclusive_every_path(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "exclusive_every_path",
        store,
        capabilities,
        |ctx| async move {
            let ctx = Arc::new(ctx);
            let mut keys = Vec::new();
            let mut before = Vec::new();
            for path in PATHS {
                for i in 0..4 {
                    let key = ctx.key(&format!("{path}-{i}"))?;
                    before.push(free_by(&ctx, path, &key).await?);
                    keys.push((path, key));
                }
            }
            ctx.outlive_short_ttl().await;
            let just_keys: Vec<_> = keys.iter().map(|(_, k)| k.clone()).collect();
            let claims = race(&ctx, &just_keys, 8).await?;
            for ((per_key, (path, key)), before) in claims.chunks(8).zip(&keys).zip(&before) {
                let winners: Vec<_> = per_key
                    .iter()
                    .filter_map(|c| match c {
                        Claim::Acquired(lease) => Some(lease),
                        _ => None,
                    })
                    .collect();
                ensure!(
                    winners.len() == 1,
                    "{key} ({path}): {} of 8 racing claims acquired it: {per_key:?}",
                    winners.len()
                );
                let losers = per_key
                    .iter()
                    .filter(|c| matches!(c, Claim::InProgress { .. }))
                    .count();
                ensure!(
                    losers == 7,
                    "{key} ({path}): the losers should see InProgress: {per_key:?}"
                );
                if let Some(before) = before {
                    ensure!(
                        winners[0].fencing > *before,
                        "{key} ({path}): the winner's fencing {} is not above {before}",
                        winners[0].fencing
                    );
                }
            }
            Ok(())
        },
    )
    .await
}

/// Frees `key` by `path`; the fencing number the next acquisition must exceed, where the
/// store must still remember it. The lapsed and retention-ended paths are free only once
/// the short TTL has passed ([`Ctx::outlive_short_ttl`]).
pub(super) async fn free_by(ctx: &Ctx, path: &str, key: &Key) -> Result<Option<u64>, String> {
    if path == "never-seen" {
        return Ok(None);
    }
    let lease_ttl = if path == "lapsed" { ctx.short() } else { LONG };
    let lease = ctx.acquire(key, lease_ttl).await?;
    match path {
        "released" => ctx.release(&lease).await?,
        "retention-ended" => {
            ctx.store
                .complete(&lease, "short".into(), ttl(ctx.short())?)
                .await
                .map_err(|e| format!("complete: {e:?}"))?;
            return Ok(None);
        }
        "removed" => {
            ctx.complete(&lease, &b"removed"[..]).await?;
            ensure!(ctx.remove(key).await?, "removing a completed key said no");
        }
        _ => {}
    }
    Ok(Some(lease.fencing))
}

/// On many keys whose lease lapsed, the old owner's `complete`, `fail` or `renew` races a
/// new owner's claim: per key at most one side wins, and the loser changed nothing (the key
/// holds the winner's outcome or lease).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when both sides of a race win on some
/// key, or the loser changed the record; or when a store call the check needs fails unexpectedly.
pub async fn finish_races_takeover(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "finish_races_takeover",
        store,
        capabilities,
        |ctx| async move {
            let ctx = Arc::new(ctx);
            let leases = lapsed_leases(&ctx, "lapsed").await?;
            let barrier = Arc::new(Barrier::new(2 * leases.len()));
            let mut tasks = Vec::new();
            for (i, lease) in leases.iter().enumerate() {
                let claim = spawn_takeover(&ctx, &barrier, &lease.key)?;
                let (store, lease) = (Arc::clone(&ctx.store), lease.clone());
                let finish = after_gate(&barrier, async move {
                    let retention = ttl(RETENTION)?;
                    let payload = format!("old-{i}").into_bytes().into();
                    Ok::<_, String>(match i % 3 {
                        0 => store.complete(&lease, payload, retention).await,
                        1 => store.fail(&lease, payload, retention).await,
                        _ => store.renew(&lease, ttl(LONG)?).await,
                    })
                });
                tasks.push((finish, claim));
            }
            for (i, ((finish, claim), lease)) in tasks.into_iter().zip(&leases).enumerate() {
                let finished = joined(finish).await??;
                let claimed = taken_over(claim).await?;
                judge(&ctx, i, lease, finished, claimed).await?;
            }
            Ok(())
        },
    )
    .await
}

/// Checks one key's race: which side won, and that the key shows only the winner's doing.
async fn judge(
    ctx: &Ctx,
    i: usize,
    old: &Lease,
    finished: Result<(), Error>,
    claimed: Claim,
) -> Result<(), String> {
    let key = &old.key;
    let payload = format!("old-{i}");
    let record = ctx.read(key).await?;
    let state = record.as_ref().map(|r| (r.state.clone(), r.fencing));
    match (finished, &claimed) {
        (Ok(()), Claim::Acquired(new)) => Err(format!(
            "{key}: both won: the old owner's {} succeeded and a new owner acquired {new:?}",
            ["complete", "fail", "renew"][i % 3]
        )),
        (Err(Error::LeaseLost), Claim::Acquired(new)) => {
            ensure!(
                state == Some((RecordState::Claimed { owner: new.owner }, new.fencing)),
                "{key}: the new owner won but the key reads {record:?}"
            );
            Ok(())
        }
        (Ok(()), seen) => {
            let expected = match i % 3 {
                0 => (
                    Claim::Completed(payload.clone().into_bytes().into()),
                    RecordState::Completed {
                        response: payload.into_bytes().into(),
                    },
                ),
                1 => (
                    Claim::Failed(payload.clone().into_bytes().into()),
                    RecordState::Failed {
                        failure: payload.into_bytes().into(),
                    },
                ),
                _ => {
                    ensure!(
                        matches!(seen, Claim::InProgress { .. }),
                        "{key}: the renewal won, but the claim saw {seen:?}"
                    );
                    ensure!(
                        state == Some((RecordState::Claimed { owner: old.owner }, old.fencing)),
                        "{key}: the renewal won but the key reads {record:?}"
                    );
                    return Ok(());
                }
            };
            ensure!(
                *seen == expected.0,
                "{key}: the old owner's finish won, but the claim saw {seen:?}"
            );
            ensure!(
                state == Some((expected.1, old.fencing)),
                "{key}: the old owner's finish won but the key reads {record:?}"
            );
            Ok(())
        }
        (finished, seen) => Err(format!(
            "{key}: nobody won: the old owner got {finished:?} and the claim {seen:?}"
        )),
    }
}

/// On many keys whose lease lapsed, the old owner's `release` (half the keys) or a `remove`
/// (the other half) races a new owner's claim. The claim acquires with the next fencing
/// number either way. A release that lost changed nothing: the new owner holds the key. A
/// remove either came first (it found no record, and the new owner holds the key) or
/// second (it found the new owner's claim and freed it, leaving a trace from which the
/// next claim gets a still larger fencing number).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the racing claim does not
/// acquire with a larger fencing number, a release that raced a takeover freed the new
/// owner's key, a remove's answer disagrees with what the key shows, or the claim after a
/// remove does not get a still larger fencing number; or when a store call the check needs
/// fails.
pub async fn freeing_races_takeover(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "freeing_races_takeover",
        store,
        capabilities,
        |ctx| async move {
            let ctx = Arc::new(ctx);
            let leases = lapsed_leases(&ctx, "freed").await?;
            let barrier = Arc::new(Barrier::new(2 * leases.len()));
            let mut tasks = Vec::new();
            for (i, lease) in leases.iter().enumerate() {
                let claim = spawn_takeover(&ctx, &barrier, &lease.key)?;
                let (store, lease) = (Arc::clone(&ctx.store), lease.clone());
                let free = after_gate(&barrier, async move {
                    if i % 2 == 0 {
                        Freed::Released(store.release(&lease).await)
                    } else {
                        Freed::Removed(store.remove(&lease.key).await)
                    }
                });
                tasks.push((free, claim));
            }
            for ((free, claim), lease) in tasks.into_iter().zip(&leases) {
                let freed = joined(free).await?;
                let claimed = taken_over(claim).await?;
                judge_freeing(&ctx, lease, freed, claimed).await?;
            }
            Ok(())
        },
    )
    .await
}

/// What the freeing side of [`freeing_races_takeover`] answered.
#[derive(Debug)]
enum Freed {
    Released(Result<(), Error>),
    Removed(Result<bool, Error>),
}

async fn judge_freeing(ctx: &Ctx, old: &Lease, freed: Freed, claimed: Claim) -> Result<(), String> {
    let key = &old.key;
    let Claim::Acquired(new) = claimed else {
        return Err(format!(
            "{key}: a claim of a lapsed key racing its {freed:?} got {claimed:?}, not the key"
        ));
    };
    ensure!(
        new.fencing > old.fencing,
        "{key}: the new owner got fencing {} after the lapsed lease's {}",
        new.fencing,
        old.fencing
    );
    let record = ctx.read(key).await?;
    let held_by_new = record.as_ref().is_some_and(|r| {
        r.state == RecordState::Claimed { owner: new.owner } && r.fencing == new.fencing
    });
    match freed {
        Freed::Released(Ok(()) | Err(Error::LeaseLost)) => {
            ensure!(
                held_by_new,
                "{key}: the old owner's release raced the new owner's claim {new:?}, and the \
                 key reads {record:?}: a release must never free a key another owner took"
            );
            Ok(())
        }
        Freed::Removed(Ok(false)) => {
            ensure!(
                held_by_new,
                "{key}: remove found no record (it came first), so the new owner {new:?} \
                 should hold the key, but it reads {record:?}"
            );
            Ok(())
        }
        Freed::Removed(Ok(true)) => {
            ensure!(
                record.is_none(),
                "{key}: remove found the new owner's claim and freed it, but the key reads \
                 {record:?}"
            );
            let next = ctx.acquire(key, LONG).await?;
            ensure!(
                next.fencing > new.fencing,
                "{key}: after remove freed the claim with fencing {}, the next claim got \
                 fencing {}: the removal's trace forgot the number it freed",
                new.fencing,
                next.fencing
            );
            Ok(())
        }
        other => Err(format!("{key}: freeing a lapsed lease failed: {other:?}")),
    }
}

/// On many keys whose lease lapsed with nobody taking it over, the lapsed owner's retried
/// claim (same owner token and fingerprint: a claim whose reply was lost, sent again, with a
/// long lease this time) races a new owner's claim. A lapsed key is free, so exactly one of
/// the two acquires it: either the retry came first (its own lease back, same fencing
/// number, and the new owner sees the key in progress) or the takeover did (a larger
/// fencing number, and the retry sees the key in progress). The key then reads as the
/// winner's claim, and the winner's lease completes it.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when both or neither of the two
/// claims acquire, the retry wins with another lease than its own, the takeover wins without
/// a larger fencing number, or the key does not hold the winner's claim; or when a store call
/// the check needs fails.
pub async fn retried_claim_races_takeover(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "retried_claim_races_takeover",
        store,
        capabilities,
        |ctx| async move {
            let ctx = Arc::new(ctx);
            let mut lapsed = Vec::with_capacity(RACED_KEYS);
            for i in 0..RACED_KEYS {
                let key = ctx.key(&format!("retried-{i}"))?;
                let request = ctx.request(&key, ctx.short())?;
                let lease = ctx.acquire_with(&request).await?;
                lapsed.push((request, lease));
            }
            ctx.outlive_short_ttl().await;
            let barrier = Arc::new(Barrier::new(2 * lapsed.len()));
            let mut tasks = Vec::new();
            for (request, _) in &lapsed {
                let takeover = spawn_takeover(&ctx, &barrier, &request.key)?;
                let mut retried = request.clone();
                retried.lease_ttl = ttl(LONG)?;
                let store = Arc::clone(&ctx.store);
                let retry = after_gate(&barrier, async move { store.claim(&retried).await });
                tasks.push((retry, takeover));
            }
            for ((retry, takeover), (_, old)) in tasks.into_iter().zip(&lapsed) {
                let retried = taken_over(retry).await?;
                let claimed = taken_over(takeover).await?;
                judge_retry(&ctx, old, retried, claimed).await?;
            }
            Ok(())
        },
    )
    .await
}

/// Checks one key's race between the lapsed owner's retried claim and a new owner's.
async fn judge_retry(ctx: &Ctx, old: &Lease, retried: Claim, claimed: Claim) -> Result<(), String> {
    let key = &old.key;
    let winner = match (&retried, &claimed) {
        (Claim::Acquired(again), Claim::Acquired(new)) => {
            return Err(format!(
                "{key}: both won: the lapsed owner's retried claim got {again:?} and a new \
                 owner acquired {new:?}"
            ));
        }
        (Claim::Acquired(again), Claim::InProgress { .. }) => {
            ensure!(
                again == old,
                "{key}: the lapsed owner's retried claim won, but got {again:?} instead of \
                 its own lease {old:?}"
            );
            again
        }
        (Claim::InProgress { .. }, Claim::Acquired(new)) => {
            ensure!(
                new.fencing > old.fencing,
                "{key}: the new owner took the key over with fencing {} after the lapsed \
                 lease's {}",
                new.fencing,
                old.fencing
            );
            new
        }
        _ => {
            return Err(format!(
                "{key}: nobody won: the lapsed owner's retried claim got {retried:?} and the \
                 new owner's {claimed:?}"
            ));
        }
    };
    let record = ctx.read(key).await?;
    ensure!(
        record.as_ref().is_some_and(|r| {
            r.state
                == RecordState::Claimed {
                    owner: winner.owner,
                }
                && r.fencing == winner.fencing
        }),
        "{key}: {winner:?} won the race, but the key reads {record:?}"
    );
    ctx.complete(winner, &b"winner"[..]).await
}

/// A new owner's claim of `key`, sent once `gate` opens: the takeover side of a race.
pub(super) fn spawn_takeover(
    ctx: &Ctx,
    gate: &Arc<Barrier>,
    key: &Key,
) -> Result<JoinHandle<Result<Claim, Error>>, String> {
    let request = ctx.request(key, LONG)?;
    let store = Arc::clone(&ctx.store);
    Ok(after_gate(gate, async move { store.claim(&request).await }))
}

/// What a [`spawn_takeover`] claim found.
pub(super) async fn taken_over(claim: JoinHandle<Result<Claim, Error>>) -> Result<Claim, String> {
    joined(claim)
        .await?
        .map_err(|e| format!("a racing claim failed: {e:?}"))
}

/// How many keys each race between a takeover and the lapsed owner runs on.
const RACED_KEYS: usize = 30;

/// [`RACED_KEYS`] keys `prefix-0`, `prefix-1`, ... acquired with a short lease that has
/// since lapsed: where every race against a takeover starts.
async fn lapsed_leases(ctx: &Ctx, prefix: &str) -> Result<Vec<Lease>, String> {
    let mut leases = Vec::with_capacity(RACED_KEYS);
    for i in 0..RACED_KEYS {
        let key = ctx.key(&format!("{prefix}-{i}"))?;
        leases.push(ctx.acquire(&key, ctx.short()).await?);
    }
    ctx.outlive_short_ttl().await;
    Ok(leases)
}
