use idem_core::{Claim, ClaimRequest, Error, Fingerprint, Key, Lease};

use crate::context::{Ctx, Doing, LONG, RETENTION, ensure, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// A claim with a different fingerprint gets `FingerprintMismatch` in every state (in progress,
/// completed, failed) and changes nothing, including the holder's own retried claim; the
/// same fingerprint is answered as usual.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a different fingerprint is not
/// `FingerprintMismatch` in some state, or the mismatching claim changed the record; or when a
/// store call the check needs fails unexpectedly.
pub async fn fingerprints(store: Store, capabilities: Capabilities) -> CheckResult {
    run("fingerprints", store, capabilities, |ctx| async move {
        let original = Fingerprint::from_bytes(b"POST /transfers amount=100");

        let key = ctx.key("in-progress")?;
        let lease = acquire_with(&ctx, &key, Some(original)).await?;
        expect_mismatches(&ctx, &key, Some(original)).await?;
        let same = ctx.claim(&request(&ctx, &key, Some(original))?).await?;
        ensure!(
            matches!(same, Claim::InProgress { .. }),
            "same fingerprint while in progress: expected InProgress, got {same:?}"
        );
        let record = ctx.read(&key).await?.ok_or("the claim vanished")?;
        ensure!(
            record.fingerprint == Some(original) && record.fencing == lease.fencing,
            "a mismatched claim changed the record: {record:?}"
        );
        ctx.complete(&lease, &b"receipt"[..]).await?;
        expect_mismatches(&ctx, &key, Some(original)).await?;
        let replay = ctx.claim(&request(&ctx, &key, Some(original))?).await?;
        ensure!(
            replay == Claim::Completed((&b"receipt"[..]).into()),
            "same fingerprint after completion: got {replay:?}"
        );

        let failed = ctx.key("failed")?;
        let lease = acquire_with(&ctx, &failed, Some(original)).await?;
        ctx.store
            .fail(&lease, "declined".into(), ttl(RETENTION)?)
            .await
            .doing("fail")?;
        expect_mismatches(&ctx, &failed, Some(original)).await?;
        let replay = ctx.claim(&request(&ctx, &failed, Some(original))?).await?;
        ensure!(
            replay == Claim::Failed("declined".into()),
            "same fingerprint after failure: got {replay:?}"
        );

        // No fingerprint is a fingerprint too: it does not match a stored one, nor the reverse.
        let bare = ctx.key("without")?;
        acquire_with(&ctx, &bare, None).await?;
        expect_mismatches(&ctx, &bare, None).await?;

        // The holder's own retried claim is compared too: same owner, another request.
        for stored in [Some(original), None] {
            let key = ctx.key(&format!("retried-{}", stored.is_some()))?;
            let first = request(&ctx, &key, stored)?;
            let lease = ctx.acquire_with(&first).await?;
            for other in [Some(Fingerprint::from_bytes(b"x")), None] {
                if other == stored {
                    continue;
                }
                let retried = ctx
                    .store
                    .claim(&first.clone().with_fingerprint(other))
                    .await;
                ensure!(
                    matches!(retried, Err(Error::FingerprintMismatch)),
                    "the holder retried its claim stored with {stored:?} using {other:?}: \
                     expected FingerprintMismatch, got {retried:?}"
                );
            }
            let again = ctx.claim(&first).await?;
            ensure!(
                again == Claim::Acquired(lease.clone()),
                "the holder's exact retry after a mismatch: expected its lease, got {again:?}"
            );
        }
        Ok(())
    })
    .await
}

fn request(ctx: &Ctx, key: &Key, fingerprint: Option<Fingerprint>) -> Result<ClaimRequest, String> {
    Ok(ctx.request(key, LONG)?.with_fingerprint(fingerprint))
}

async fn acquire_with(
    ctx: &Ctx,
    key: &Key,
    fingerprint: Option<Fingerprint>,
) -> Result<Lease, String> {
    ctx.acquire_with(&request(ctx, key, fingerprint)?).await
}

/// Every fingerprint other than `stored` (another digest, or none) is refused, and the
/// record reads the same before and after.
async fn expect_mismatches(
    ctx: &Ctx,
    key: &Key,
    stored: Option<Fingerprint>,
) -> Result<(), String> {
    let before = ctx.read(key).await?;
    let others = [
        Some(Fingerprint::from_bytes(b"POST /transfers amount=999")),
        None,
        Some(Fingerprint::from_bytes(b"x")),
    ];
    for fingerprint in others.into_iter().filter(|f| *f != stored) {
        let result = ctx.store.claim(&request(ctx, key, fingerprint)?).await;
        ensure!(
            matches!(result, Err(Error::FingerprintMismatch)),
            "{key} stored with {stored:?}, claimed with {fingerprint:?}: expected FingerprintMismatch, got {result:?}"
        );
    }
    let after = ctx.read(key).await?;
    ensure!(
        before
            .as_ref()
            .map(|r| (&r.state, r.fencing, r.fingerprint))
            == after.as_ref().map(|r| (&r.state, r.fencing, r.fingerprint)),
        "mismatched claims changed the record: {before:?} -> {after:?}"
    );
    Ok(())
}

/// The fingerprint a lease carries is not the record's: the store keeps the claim's own
/// copy, and that copy decides. A lease rebuilt from its key, owner and fencing number
/// (`Lease::new`: no fingerprint), or one carrying another fingerprint, still completes,
/// fails and renews its claim, and the key keeps the fingerprint it was claimed with: it
/// reads it, a repeat with it replays the outcome, and a claim with the lease's is
/// `FingerprintMismatch`.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a lease whose fingerprint
/// differs from its claim's is refused, or the key then holds, replays to or compares
/// another fingerprint than the claim's; or when a store call the check needs fails
/// unexpectedly.
pub async fn claim_fingerprint_decides(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "claim_fingerprint_decides",
        store,
        capabilities,
        |ctx| async move {
            let claimed = Fingerprint::from_bytes(b"POST /transfers amount=100");
            let other = Fingerprint::from_bytes(b"POST /transfers amount=999");
            let pairs = [
                (Some(claimed), None),
                (None, Some(other)),
                (Some(claimed), Some(other)),
            ];
            for what in ["complete", "fail", "renew"] {
                for (i, (stored, carried)) in pairs.into_iter().enumerate() {
                    let key = ctx.key(&format!("{what}-{i}"))?;
                    let lease = acquire_with(&ctx, &key, stored).await?;
                    let presented = Lease::new(key.clone(), lease.owner, lease.fencing)
                        .with_fingerprint(carried);
                    let payload = format!("{what} {i}");
                    let done = match what {
                        "complete" => ctx.complete(&presented, payload.clone()).await,
                        "fail" => ctx.fail(&presented, payload.clone()).await,
                        _ => ctx.renew(&presented, LONG).await,
                    };
                    done.map_err(|e| {
                        format!(
                            "{key} claimed with {stored:?}: {what} with the claim's lease \
                             carrying {carried:?}: {e}"
                        )
                    })?;
                    let record = ctx.read(&key).await?;
                    ensure!(
                        record.as_ref().is_some_and(|r| r.fingerprint == stored),
                        "{key} claimed with {stored:?}, after {what} with the lease carrying \
                         {carried:?} reads {record:?}"
                    );
                    let outcome = match what {
                        "fail" => Claim::Failed(payload.into()),
                        "complete" => Claim::Completed(payload.into()),
                        _ => {
                            ctx.complete(&lease, payload.clone()).await?;
                            Claim::Completed(payload.into())
                        }
                    };
                    let repeat = ctx.claim(&request(&ctx, &key, stored)?).await?;
                    ensure!(
                        repeat == outcome,
                        "{key} claimed with {stored:?}, {what} with the lease carrying \
                         {carried:?}: a repeat with the claim's fingerprint got {repeat:?}"
                    );
                    let theirs = ctx.store.claim(&request(&ctx, &key, carried)?).await;
                    ensure!(
                        matches!(theirs, Err(Error::FingerprintMismatch)),
                        "{key} claimed with {stored:?}, {what} with the lease carrying \
                         {carried:?}: a claim with the lease's fingerprint got {theirs:?}"
                    );
                }
            }
            Ok(())
        },
    )
    .await
}

/// The lease a claim is granted is the claim's own (`ClaimRequest::lease`): its key, its
/// owner and the fingerprint of the claim that acquired it, or none if it had none. So on
/// a key never seen, on a key taken over after a release, and on the holder's retried
/// claim, with a fingerprint and without.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when an acquired lease names
/// another key or owner, or carries another fingerprint than its claim's; or when a store
/// call the check needs fails unexpectedly.
pub async fn granted_lease(store: Store, capabilities: Capabilities) -> CheckResult {
    run("granted_lease", store, capabilities, |ctx| async move {
        let fingerprint = Fingerprint::from_bytes(b"POST /transfers amount=100");
        for stored in [Some(fingerprint), None] {
            let key = ctx.key(&format!("granted-{}", stored.is_some()))?;
            let first = request(&ctx, &key, stored)?;
            let lease = ctx.acquire_with(&first).await?;
            expect_granted("a new key", &first, &lease)?;
            let again = ctx.acquire_with(&first).await?;
            expect_granted("the holder's retried claim", &first, &again)?;
            ctx.release(&lease).await?;
            let next = request(&ctx, &key, stored)?;
            let taken = ctx.acquire_with(&next).await?;
            expect_granted("a takeover after a release", &next, &taken)?;
            ctx.complete(&taken, &b"ok"[..]).await?;
        }
        Ok(())
    })
    .await
}

fn expect_granted(what: &str, request: &ClaimRequest, lease: &Lease) -> Result<(), String> {
    let granted = request.lease(lease.fencing);
    ensure!(
        *lease == granted,
        "{what}: claimed with fingerprint {:?}, the store granted {lease:?} (fingerprint {:?}) \
         instead of the claim's own lease {granted:?}",
        request.fingerprint,
        lease.fingerprint
    );
    Ok(())
}
