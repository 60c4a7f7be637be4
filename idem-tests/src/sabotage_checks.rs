//! The contract's two sentences about faults, as checks on a store a [`Sabotage`] hook can
//! break: "anything found in the store that does not decode is `CorruptRecord`; an
//! unreachable backend is `Unavailable`, with the driver error as `source`"; and how long
//! a freed key is remembered, which only the hook's look into the storage shows whole.
//!
//! Every store call here runs on a task of its own, so a store that panics on garbage fails
//! the check with the call named, rather than taking the check down with it.
//!
//! [`Sabotage`]: crate::Sabotage

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::backend::lifecycle::{FENCING_MEMORY, trace_ttl};
use idem_core::{
    Claim, ClaimRequest, Consumption, Error, Fingerprint, Key, Lease, OwnerToken, Record, Scope,
    Token, Tokens, Ttl,
};

use crate::context::{Ctx, Doing, LONG, RETENTION, ensure, run, ttl};
use crate::{Capabilities, CheckResult, SharedTokenSabotage, SharedTokenStore, Store};
use crate::{SharedSabotage, token_checks};

/// Runs one call on a task of its own: a panic is a failure naming the call.
async fn settle<T, Fut>(what: &str, call: Fut) -> Result<Result<T, Error>, String>
where
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(call)
        .await
        .map_err(|panic| format!("{what} panicked: {panic}"))
}

fn expect_corrupt<T: std::fmt::Debug>(what: &str, got: &Result<T, Error>) -> Result<(), String> {
    ensure!(
        matches!(got, Err(Error::CorruptRecord { .. })),
        "{what}: expected CorruptRecord, got {got:?}"
    );
    Ok(())
}

/// Every call on a key whose record does not decode is `CorruptRecord` and never panics; a
/// call presenting a lease may instead be `LeaseLost` (a conditional write that matched
/// nothing decodes nothing). None of them frees the key or overwrites the record: it still
/// reads as corrupt afterwards. `remove` either deletes it (the key is then free: the
/// operator's way out) or is `CorruptRecord` and leaves it. Keys next to it, finished or
/// claimed, are untouched. Checked on a record corrupted while claimed (its owner's lease
/// presented), once finished, and once released (the trace that carries its fencing
/// number).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a call on the corrupt key
/// panics, succeeds or fails otherwise, frees or overwrites it, or a neighbour changes; or when
/// the hook or a store call the check needs fails unexpectedly.
pub async fn corrupt_record(sabotage: SharedSabotage, capabilities: Capabilities) -> CheckResult {
    run(
        "corrupt_record",
        sabotage.store(),
        capabilities,
        |ctx| async move {
            let done = ctx.key("neighbour-done")?;
            let done_lease = ctx.acquire(&done, LONG).await?;
            ctx.complete(&done_lease, "neighbour").await?;
            let held = ctx.key("neighbour-held")?;
            let held_lease = ctx.acquire(&held, LONG).await?;
            let neighbours = [
                (done.clone(), ctx.read(&done).await?),
                (held.clone(), ctx.read(&held).await?),
            ];
            for id in ["corrupt-claimed", "corrupt-finished", "corrupt-freed"] {
                let key = ctx.key(id)?;
                let lease = ctx.acquire(&key, LONG).await?;
                match id {
                    "corrupt-finished" => ctx.complete(&lease, "to be corrupted").await?,
                    // The trace a freed key leaves carries its fencing number: read as no
                    // trace, the next claim would start the numbers over.
                    "corrupt-freed" => ctx.release(&lease).await?,
                    _ => {}
                }
                sabotage
                    .corrupt_record(&key)
                    .await
                    .map_err(|e| format!("the sabotage hook could not corrupt {key}: {e}"))?;
                every_call_is_corrupt(&ctx, &lease, id).await?;
                removing_clears_or_keeps(&ctx, &key, id).await?;
            }
            for (key, before) in neighbours {
                let after = ctx.read(&key).await?;
                ensure!(
                    unchanged(&before, &after),
                    "a key next to the corrupt ones changed: {before:?} -> {after:?}"
                );
            }
            let replay = ctx.probe(&done).await?;
            ensure!(
                replay == Claim::Completed("neighbour".into()),
                "the finished neighbour no longer replays: {replay:?}"
            );
            ctx.renew(&held_lease, LONG).await
        },
    )
    .await
}

/// The record's state, fencing and fingerprint are as they were.
fn unchanged(before: &Option<Record>, after: &Option<Record>) -> bool {
    let strip = |r: &Option<Record>| r.clone().map(|r| (r.state, r.fencing, r.fingerprint));
    strip(before) == strip(after)
}

async fn every_call_is_corrupt(ctx: &Ctx, lease: &Lease, what: &str) -> Result<(), String> {
    let key = &lease.key;
    still_corrupt(ctx, key, &format!("{what}, at first")).await?;
    let requests = [
        ("a new owner's claim", ctx.request(key, LONG)?),
        (
            "its owner's claim",
            ctx.request(key, LONG)?.with_owner(lease.owner),
        ),
        (
            "a claim with a fingerprint",
            ctx.request(key, LONG)?
                .with_fingerprint(Fingerprint::from_bytes(b"corrupt")),
        ),
    ];
    for (which, request) in requests {
        let store = Arc::clone(&ctx.store);
        let got = settle(which, async move { store.claim(&request).await }).await?;
        expect_corrupt(&format!("{which} of {what}"), &got)?;
    }
    let retention = ttl(RETENTION)?;
    let calls: [(&str, LeaseCall); 4] = [
        ("complete", |s, l, t| {
            Box::pin(async move { s.complete(&l, "over garbage".into(), t).await })
        }),
        ("fail", |s, l, t| {
            Box::pin(async move { s.fail(&l, "over garbage".into(), t).await })
        }),
        ("renew", |s, l, t| {
            Box::pin(async move { s.renew(&l, t).await })
        }),
        ("release", |s, l, _| {
            Box::pin(async move { s.release(&l).await })
        }),
    ];
    for (which, call) in calls {
        let got = settle(
            which,
            call(Arc::clone(&ctx.store), lease.clone(), retention),
        )
        .await?;
        ensure!(
            matches!(got, Err(Error::CorruptRecord { .. } | Error::LeaseLost)),
            "{which} of {what} with its owner's lease: expected CorruptRecord (or LeaseLost), \
             got {got:?}"
        );
        still_corrupt(ctx, key, &format!("{what}, after {which}")).await?;
    }
    Ok(())
}

/// A call presenting a lease, boxed so the four fit in one list.
type LeaseCall =
    fn(Store, Lease, Ttl) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// The key still reads as corrupt and a new owner's claim still finds it corrupt: nothing
/// freed or overwrote it.
async fn still_corrupt(ctx: &Ctx, key: &Key, when: &str) -> Result<(), String> {
    let store = Arc::clone(&ctx.store);
    let read_key = key.clone();
    let read = settle("read", async move { store.read(&read_key).await }).await?;
    expect_corrupt(&format!("read of {when}"), &read)?;
    let store = Arc::clone(&ctx.store);
    let request = ctx.request(key, LONG)?;
    let claim = settle("claim", async move { store.claim(&request).await }).await?;
    expect_corrupt(&format!("a new owner's claim of {when}"), &claim)
}

async fn removing_clears_or_keeps(ctx: &Ctx, key: &Key, what: &str) -> Result<(), String> {
    let store = Arc::clone(&ctx.store);
    let removed_key = key.clone();
    let removed = settle("remove", async move { store.remove(&removed_key).await }).await?;
    match removed {
        // Whether a corrupt record counts as "a record there" is the store's call (Redis
        // says yes; the SQL stores say no, as `read` showed no record); either way it is gone.
        Ok(_) => {
            let read = ctx.read(key).await?;
            ensure!(
                read.is_none(),
                "after removing {what} the key should be free, read {read:?}"
            );
            ctx.acquire(key, LONG).await.map(drop)
        }
        Err(Error::CorruptRecord { .. }) => {
            still_corrupt(ctx, key, &format!("{what}, after remove")).await
        }
        other => Err(format!(
            "remove of {what}: expected Ok (deleted) or CorruptRecord (kept), got {other:?}"
        )),
    }
}

/// Every call on a store whose server does not answer is `Unavailable`, with a source, and
/// returns within `capabilities.unavailable_within` (a hang is a failure): claim, complete,
/// fail, renew, release, read and remove, with a lease the live store granted.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a call succeeds, fails
/// otherwise, panics or hangs; or when the hook or a store call the check needs fails
/// unexpectedly.
pub async fn unavailable_backend(
    sabotage: SharedSabotage,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "unavailable_backend",
        sabotage.store(),
        capabilities,
        |ctx| async move {
            let key = ctx.key("down")?;
            let lease = ctx.acquire(&key, LONG).await?;
            let down = sabotage
                .unreachable_store()
                .await
                .map_err(|e| format!("the sabotage hook made no unreachable store: {e}"))?;
            let request = ctx.request(&key, LONG)?;
            let long = ttl(LONG)?;
            let (s, l) = (&down, &lease);
            let calls: Vec<(&str, Call<()>)> = vec![
                (
                    "claim",
                    boxed(clone2(s, &request), |s, r| async move {
                        s.claim(&r).await.map(drop)
                    }),
                ),
                (
                    "complete",
                    boxed(clone2(s, l), move |s, l| async move {
                        s.complete(&l, "down".into(), long).await
                    }),
                ),
                (
                    "fail",
                    boxed(clone2(s, l), move |s, l| async move {
                        s.fail(&l, "down".into(), long).await
                    }),
                ),
                (
                    "renew",
                    boxed(
                        clone2(s, l),
                        move |s, l| async move { s.renew(&l, long).await },
                    ),
                ),
                (
                    "release",
                    boxed(clone2(s, l), |s, l| async move { s.release(&l).await }),
                ),
                (
                    "read",
                    boxed(
                        clone2(s, &key),
                        |s, k| async move { s.read(&k).await.map(drop) },
                    ),
                ),
                (
                    "remove",
                    boxed(clone2(s, &key), |s, k| async move {
                        s.remove(&k).await.map(drop)
                    }),
                ),
            ];
            all_unavailable(&ctx.caps, calls).await?;
            ctx.release(&lease).await
        },
    )
    .await
}

type Call<T> = std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

fn clone2<S: Clone, A: Clone>(store: &S, arg: &A) -> (S, A) {
    (store.clone(), arg.clone())
}

fn boxed<S, A, F, Fut>((store, arg): (S, A), call: F) -> Call<()>
where
    F: FnOnce(S, A) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    Box::pin(call(store, arg))
}

/// Runs the calls at once; each must be `Unavailable` with a source, within the bound.
async fn all_unavailable(caps: &Capabilities, calls: Vec<(&str, Call<()>)>) -> Result<(), String> {
    let bound = caps.unavailable_within;
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(what, call)| (what, tokio::spawn(tokio::time::timeout(bound, call))))
        .collect();
    for (what, task) in tasks {
        let got = task
            .await
            .map_err(|panic| format!("{what} on a down store panicked: {panic}"))?
            .map_err(|_| format!("{what} on a down store did not return within {bound:?}"))?;
        match got {
            Err(Error::Unavailable { source }) => ensure!(
                !source.to_string().is_empty(),
                "{what} on a down store: Unavailable with an empty source"
            ),
            other => {
                return Err(format!(
                    "{what} on a down store: expected Unavailable with the driver error as \
                     source, got {other:?}"
                ));
            }
        }
    }
    Ok(())
}

/// A lease longer than the fencing memory, so that the trace must outlast the memory.
const LONGER_THAN_MEMORY: Duration = Duration::from_secs(FENCING_MEMORY.as_secs() + 30);

/// A freed key is remembered for the whole of `lifecycle::trace_ttl` from the moment it was
/// freed (the longer of the lease TTL and `FENCING_MEMORY`, 60 s; 60 s for a finished
/// record), as the storage itself says through [`Sabotage::kept_for`](crate::Sabotage::kept_for):
/// keys freed by every path (a lapsed lease, a release, a removed claim, a removed finished
/// record whose retention would have ended within seconds), under a short lease and under one longer than 60 s, must be kept at least that
/// long from their freeing, less the time since. A short lease renewed past 60 s, or
/// extended past 60 s by its holder's retried claim, is owed as much from its new end: the
/// record must outlive the extension, not the first claim (and once released, it is owed
/// the trace of the renewed lease); and one finished with a
/// retention past 60 s is owed its whole retention from the finish.
/// [`checks::fencing_memory`] claims freed keys again 12 s later, end to end; this sees the
/// rest of the 60 s without waiting it out.
///
/// [`checks::fencing_memory`]: crate::checks::fencing_memory
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the storage keeps a freed
/// key for less than its trace TTL (beyond the clock slack), or nothing at all; or when the
/// hook or a store call the check needs fails.
pub async fn trace_lifetime(sabotage: SharedSabotage, capabilities: Capabilities) -> CheckResult {
    run(
        "trace_lifetime",
        sabotage.store(),
        capabilities,
        |ctx| async move {
            let mut freed = Vec::new();
            for lease_ttl in [ctx.short(), LONGER_THAN_MEMORY] {
                for path in [
                    "lapsed",
                    "released",
                    "removed-claim",
                    "removed-finished",
                    "renewed",
                    "renewed-released",
                    "reclaimed",
                    "completed",
                ] {
                    if path != "released"
                        && !path.starts_with("removed")
                        && lease_ttl == LONGER_THAN_MEMORY
                    {
                        // It would not lapse within the check; or, extended or retained as
                        // long as it already lasts, it would not outlive its claim.
                        continue;
                    }
                    let key = ctx.key(&format!("{path}-{}", lease_ttl.as_millis()))?;
                    freed.push((
                        path,
                        lease_ttl,
                        free(&ctx, path, &key, lease_ttl).await?,
                        key,
                    ));
                }
            }
            ctx.outlive_short_ttl().await;
            for (path, lease_ttl, (freed_at, trace), key) in freed {
                let kept = sabotage
                    .kept_for(&key)
                    .await
                    .map_err(|e| format!("the hook could not look at {key}: {e}"))?;
                let looked = Instant::now();
                let owed = (freed_at + trace).saturating_duration_since(looked);
                ensure!(
                    // Saturating: a hook says `Duration::MAX` for a key its storage never expires.
                    kept.is_some_and(|kept| kept.saturating_add(ctx.slack()) >= owed),
                    "{key} ({path}, a {lease_ttl:?} lease): {}; the storage keeps it {kept:?} \
                     more, the contract owes {owed:?} more",
                    standing(path, freed_at, looked, trace)
                );
            }
            Ok(())
        },
    )
    .await
}

/// How the key of `path` stood when looked at, and what it is owed from `since`, in words:
/// an extended lease is not freed yet, and a finished record is owed its retention, not a
/// trace.
fn standing(path: &str, since: Instant, looked: Instant, owed_for: Duration) -> String {
    if path == "completed" {
        let ago = looked.saturating_duration_since(since);
        return format!("finished {ago:?} ago, owed its {owed_for:?} retention");
    }
    if since > looked {
        let lapsing = since.saturating_duration_since(looked);
        return format!(
            "still held, its extended lease lapsing in {lapsing:?}, then owed a {owed_for:?} trace"
        );
    }
    let ago = looked.saturating_duration_since(since);
    format!("freed {ago:?} ago, owed a {owed_for:?} trace")
}

/// The trace TTL of a [`LONGER_THAN_MEMORY`] lease.
fn longer_trace() -> Duration {
    Duration::from_millis(trace_ttl(
        u64::try_from(LONGER_THAN_MEMORY.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// Acquires `key` under a `lease_ttl` lease and frees it by `path` (or, `"renewed"` and
/// `"reclaimed"`, extends it so that it lapses later; or, `"completed"`, finishes it with a
/// long retention): the earliest instant the key may count as freed (or finished), and
/// how long it is owed from then.
async fn free(
    ctx: &Ctx,
    path: &str,
    key: &Key,
    lease_ttl: Duration,
) -> Result<(Instant, Duration), String> {
    let claimed = Instant::now();
    let lease = ctx.acquire(key, lease_ttl).await?;
    let freeing = Instant::now();
    let lease_trace = Duration::from_millis(trace_ttl(
        u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX),
    ));
    match path {
        "lapsed" => return Ok((claimed + lease_ttl, lease_trace)),
        "renewed" => {
            // Renewed past the memory, the lease lapses at its new end and is remembered a
            // trace TTL of the new lease after that, far past what the claim first set.
            let renewing = Instant::now();
            ctx.renew(&lease, LONGER_THAN_MEMORY).await?;
            return Ok((renewing + LONGER_THAN_MEMORY, longer_trace()));
        }
        "renewed-released" => {
            // Released after a renewal past the memory: the trace is sized for the lease as
            // renewed, not as claimed.
            ctx.renew(&lease, LONGER_THAN_MEMORY).await?;
            let releasing = Instant::now();
            ctx.release(&lease).await?;
            return Ok((releasing, longer_trace()));
        }
        "completed" => {
            // Not freed: finished, with a retention past what the claim was kept for. The
            // record is owed its whole retention from the finish.
            let finishing = Instant::now();
            ctx.store
                .complete(&lease, "kept".into(), ttl(LONGER_THAN_MEMORY)?)
                .await
                .map_err(|e| format!("complete: {e:?}"))?;
            return Ok((finishing, LONGER_THAN_MEMORY));
        }
        "reclaimed" => {
            // The holder's retried claim, asking for a lease past the memory: the same
            // lease, extended as a renewal would be.
            let retry =
                ClaimRequest::new(key.clone(), ttl(LONGER_THAN_MEMORY)?).with_owner(lease.owner);
            let reclaiming = Instant::now();
            let again = ctx.acquire_with(&retry).await?;
            ensure!(
                again.fencing == lease.fencing,
                "the holder's retried claim got another lease: {again:?} after {lease:?}"
            );
            return Ok((reclaiming + LONGER_THAN_MEMORY, longer_trace()));
        }
        "released" => ctx.release(&lease).await?,
        "removed-claim" => ensure!(ctx.remove(key).await?, "removing a claim said no"),
        _ => {
            // A short retention: the trace a removal leaves is owed the whole memory, not
            // the little the record had left.
            let retention = ttl(2 * ctx.unit())?;
            ctx.store
                .complete(&lease, "done".into(), retention)
                .await
                .map_err(|e| format!("complete: {e:?}"))?;
            let freeing = Instant::now();
            ensure!(ctx.remove(key).await?, "removing a record said no");
            return Ok((freeing, FENCING_MEMORY));
        }
    }
    Ok((freeing, lease_trace))
}

/// Consuming a token whose record does not decode is `CorruptRecord` for any scope, and
/// never panics; issuing it again is refused (`TokenCollision` or `CorruptRecord`) and
/// overwrites nothing: it is still corrupt afterwards. Another token is untouched.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a call on the corrupt token
/// panics, succeeds or fails otherwise, or overwrites it, or the other token changes; or when the
/// hook or a store call the check needs fails unexpectedly.
pub async fn corrupt_token(
    sabotage: SharedTokenSabotage,
    capabilities: Capabilities,
) -> CheckResult {
    token_checks::run(
        "corrupt_token",
        sabotage.store(),
        capabilities,
        |ctx| async move {
            let neighbour = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
            let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
            sabotage
                .corrupt_token(&token)
                .await
                .map_err(|e| format!("the sabotage hook could not corrupt a token: {e}"))?;
            let other = ctx.other_scope("other")?;
            let store = Arc::clone(ctx.tokens.store());
            let consume = |scope: Scope| {
                let (store, token) = (Arc::clone(&store), token.clone());
                async move { store.consume(&token, &scope, &OwnerToken::random()).await }
            };
            for (which, scope) in [("its scope", ctx.scope.clone()), ("another", other)] {
                let got = settle("consume", consume(scope)).await?;
                expect_corrupt(&format!("consuming a corrupt token by {which}"), &got)?;
            }
            let (issuer, reissued) = (Arc::clone(&store), token.clone());
            let scope = ctx.scope.clone();
            let long = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
            let issued = settle("issue", async move {
                issuer.issue(&reissued, &scope, long).await
            })
            .await?;
            ensure!(
                matches!(
                    issued,
                    Err(Error::TokenCollision | Error::CorruptRecord { .. })
                ),
                "issuing over a corrupt token: expected TokenCollision (or CorruptRecord), got \
                 {issued:?}"
            );
            let after = settle("consume", consume(ctx.scope.clone())).await?;
            expect_corrupt("consuming a corrupt token after a refused issue", &after)?;
            let fine = ctx.consume(&ctx.scope, &neighbour).await?;
            ensure!(
                fine == Consumption::Consumed,
                "a token next to the corrupt one: got {fine:?}"
            );
            Ok(())
        },
    )
    .await
}

/// `issue` and `consume` on a token store whose server does not answer are `Unavailable`,
/// with a source, within `capabilities.unavailable_within`.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a call succeeds, fails
/// otherwise, panics or hangs; or when the hook fails.
pub async fn unavailable_token_backend(
    sabotage: SharedTokenSabotage,
    capabilities: Capabilities,
) -> CheckResult {
    token_checks::run(
        "unavailable_token_backend",
        sabotage.store(),
        capabilities,
        |ctx| async move {
            let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
            let down = sabotage
                .unreachable_store()
                .await
                .map_err(|e| format!("the sabotage hook made no unreachable token store: {e}"))?;
            let fresh: Token = ctx.fresh_token()?;
            let long = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
            let scope = ctx.scope.clone();
            let calls: Vec<(&str, Call<()>)> = vec![
                (
                    "issue",
                    boxed(clone2(&down, &fresh), move |s, t| async move {
                        s.issue(&t, &scope, long).await
                    }),
                ),
                (
                    "consume",
                    boxed(
                        clone2(&down, &(token, ctx.scope.clone())),
                        |s, (t, sc)| async move {
                            s.consume(&t, &sc, &OwnerToken::random()).await.map(drop)
                        },
                    ),
                ),
            ];
            all_unavailable(&ctx.caps, calls).await
        },
    )
    .await
}

/// A token is kept for the whole TTL it was issued with, unused or used (its used mark keeps
/// the token's own expiry), as the storage itself says through
/// [`TokenSabotage::kept_for`](crate::TokenSabotage::kept_for): tokens issued for
/// [`Tokens::DEFAULT_TTL`] (30 minutes), one left unused and one consumed, must be kept at
/// least that long from their issue, less the time since. The token checks see short TTLs
/// end to end; this sees a long one without waiting it out, so a store that cuts every
/// lifetime (or every used mark) to seconds is caught.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the storage keeps a token
/// for less than its TTL (beyond the clock slack), or not at all; or when the hook or a store
/// call the check needs fails.
pub async fn token_lifetime(
    sabotage: SharedTokenSabotage,
    capabilities: Capabilities,
) -> CheckResult {
    token_checks::run(
        "token_lifetime",
        sabotage.store(),
        capabilities,
        |ctx| async move {
            let lifetime = Tokens::<SharedTokenStore>::DEFAULT_TTL;
            let ttl = Ttl::new(lifetime).doing("ttl")?;
            let store = ctx.tokens.store();
            let (unused, used) = (ctx.fresh_token()?, ctx.fresh_token()?);
            let issued = Instant::now();
            for token in [&unused, &used] {
                store.issue(token, &ctx.scope, ttl).await.doing("issue")?;
            }
            let first = ctx.consume(&ctx.scope, &used).await?;
            ensure!(
                first == Consumption::Consumed,
                "a fresh token: got {first:?}"
            );
            for (what, token) in [("an unused", &unused), ("a used", &used)] {
                let kept = sabotage
                    .kept_for(token)
                    .await
                    .map_err(|e| format!("the hook could not look at {token}: {e}"))?;
                let owed = (issued + lifetime).saturating_duration_since(Instant::now());
                ensure!(
                    kept.is_some_and(|kept| kept.saturating_add(ctx.caps.time_slack) >= owed),
                    "{what} token issued for {lifetime:?}: the storage keeps it {kept:?} more; \
                     the contract owes {owed:?} more"
                );
            }
            Ok(())
        },
    )
    .await
}
