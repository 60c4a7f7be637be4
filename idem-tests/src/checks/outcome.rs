use idem_core::{Claim, Error, InvalidInput, Key, RecordState, Ttl};

use crate::context::{Doing, LONG, RETENTION, ensure, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// A released key (a retryable failure) is free at once and its next lease has a larger
/// fencing number; a permanent failure is stored and replayed.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a released key is not free at
/// once, its next fencing number does not grow, or a permanent failure is not replayed; or when a
/// store call the check needs fails unexpectedly.
pub async fn failures(store: Store, capabilities: Capabilities) -> CheckResult {
    run("failures", store, capabilities, |ctx| async move {
        let key = ctx.key("flaky")?;
        let first = ctx.acquire(&key, LONG).await?;
        ctx.store.release(&first).await.doing("release")?;
        ensure!(
            ctx.read(&key).await?.is_none(),
            "a released key should read as free"
        );
        let second = ctx
            .acquire(&key, LONG)
            .await
            .map_err(|e| format!("right after a release: {e}"))?;
        ensure!(
            second.fencing > first.fencing,
            "fencing must grow after a release: {} then {}",
            first.fencing,
            second.fencing
        );

        let failure = &b"{\"declined\":\"insufficient funds\"}"[..];
        ctx.store
            .fail(&second, failure.into(), ttl(RETENTION)?)
            .await
            .doing("fail")?;
        let replay = ctx.probe(&key).await?;
        ensure!(
            replay == Claim::Failed(failure.into()),
            "a permanent failure should replay, got {replay:?}"
        );
        Ok(())
    })
    .await
}

/// A finished record past its retention is gone and the key can be acquired again.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a record past its retention is
/// still read or replayed, or its key is not acquired again; or when a store call the check needs
/// fails unexpectedly.
pub async fn retention(store: Store, capabilities: Capabilities) -> CheckResult {
    run("retention", store, capabilities, |ctx| async move {
        let short = ttl(ctx.short())?;
        let completed = ctx.key("completed")?;
        let lease = ctx.acquire(&completed, LONG).await?;
        ctx.store
            .complete(&lease, "done".into(), short)
            .await
            .doing("complete")?;
        let failed = ctx.key("failed")?;
        let lease = ctx.acquire(&failed, LONG).await?;
        ctx.store
            .fail(&lease, "no".into(), short)
            .await
            .doing("fail")?;

        let before = (ctx.probe(&completed).await?, ctx.probe(&failed).await?);
        ensure!(
            before == (Claim::Completed("done".into()), Claim::Failed("no".into())),
            "within retention both should replay, got {before:?}"
        );
        ctx.outlive_short_ttl().await;
        for key in [&completed, &failed] {
            ensure!(
                ctx.read(key).await?.is_none(),
                "{key} outlived its retention"
            );
            ctx.acquire(key, LONG)
                .await
                .map_err(|e| format!("after retention: {e}"))?;
        }
        Ok(())
    })
    .await
}

/// Bad input gets a typed error and writes nothing: payloads over the declared limit are
/// refused and the claim stays as it was; a payload of exactly the limit is accepted.
/// (Keys and TTLs cannot reach a store malformed: `Key` and `Ttl` refuse them at
/// construction, which is asserted here too so the rule stays written down.)
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when an over-limit payload is not
/// `PayloadTooLarge` or was written, a payload of exactly the limit is refused, or a bad key or TTL
/// is accepted; or when a store call the check needs fails unexpectedly.
pub async fn bad_input(store: Store, capabilities: Capabilities) -> CheckResult {
    run("bad_input", store, capabilities, |ctx| async move {
        ensure!(
            matches!(Key::new(ctx.namespace.clone(), ""), Err(Error::InvalidInput(InvalidInput::Empty { .. }))),
            "an empty key must be refused"
        );
        ensure!(
            matches!(Key::new(ctx.namespace.clone(), "a\nb"), Err(Error::InvalidInput(InvalidInput::ControlCharacter { .. }))),
            "a key with a control character must be refused"
        );
        ensure!(
            matches!(Ttl::new(std::time::Duration::ZERO), Err(Error::InvalidInput(InvalidInput::ZeroTtl))),
            "a zero TTL must be refused"
        );

        let limit = ctx.caps.max_payload;
        let key = ctx.key("oversized")?;
        let lease = ctx.acquire(&key, LONG).await?;
        let too_big = bytes::Bytes::from(vec![7u8; limit + 1]);
        let retention = ttl(RETENTION)?;
        for (what, result) in [
            ("complete", ctx.store.complete(&lease, too_big.clone(), retention).await),
            ("fail", ctx.store.fail(&lease, too_big.clone(), retention).await),
        ] {
            ensure!(
                matches!(result, Err(Error::PayloadTooLarge { size, limit: l }) if size == limit + 1 && l == limit),
                "{what} with {} bytes over a declared limit of {limit}: expected PayloadTooLarge, got {result:?}",
                limit + 1
            );
        }
        let record = ctx.read(&key).await?.ok_or("the claim vanished after a refused payload")?;
        ensure!(
            record.state == RecordState::Claimed { owner: lease.owner },
            "a refused payload changed the record: {:?}",
            record.state
        );
        let at_limit = bytes::Bytes::from(vec![9u8; limit]);
        ctx.complete(&lease, at_limit.clone()).await?;
        let replay = ctx.probe(&key).await?;
        ensure!(replay == Claim::Completed(at_limit), "a payload of exactly the limit should be stored and replayed");
        Ok(())
    })
    .await
}
