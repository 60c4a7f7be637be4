use std::time::Duration;

use idem_core::{Claim, Fingerprint, RecordState};

use crate::context::{Doing, LONG, RETENTION, ensure, expect_lease_lost, run};
use crate::{Capabilities, CheckResult, Store};

/// Reading a record shows its state, fencing number, fingerprint and time left; removing it
/// frees the key and takes the lease from its holder.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a read shows the wrong state,
/// fencing, fingerprint or time left, or a removal leaves the key held; or when a store call the
/// check needs fails unexpectedly.
pub async fn inspection_and_removal(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "inspection_and_removal",
        store,
        capabilities,
        |ctx| async move {
            let key = ctx.key("inspected")?;
            ensure!(
                ctx.read(&key).await?.is_none(),
                "an unseen key should read as None"
            );
            let fingerprint = Fingerprint::from_bytes(b"inspected request");
            let request = ctx.request(&key, LONG)?.with_fingerprint(fingerprint);
            let lease = ctx.acquire_with(&request).await?;

            let claimed = ctx.read(&key).await?.ok_or("a claimed key reads as None")?;
            ensure!(
                claimed.key == key,
                "read returned another key: {:?}",
                claimed.key
            );
            ensure!(
                claimed.state == RecordState::Claimed { owner: lease.owner },
                "claimed state: {:?}",
                claimed.state
            );
            ensure!(
                claimed.fencing == lease.fencing,
                "fencing {} read, {} leased",
                claimed.fencing,
                lease.fencing
            );
            ensure!(
                claimed.fingerprint == Some(fingerprint),
                "fingerprint read: {:?}",
                claimed.fingerprint
            );
            within("lease", claimed.expires_in, LONG)?;

            ctx.complete(&lease, &b"body"[..]).await?;
            let completed = ctx
                .read(&key)
                .await?
                .ok_or("a completed key reads as None")?;
            ensure!(
                completed.state
                    == RecordState::Completed {
                        response: (&b"body"[..]).into()
                    },
                "completed state: {:?}",
                completed.state
            );
            ensure!(
                completed.fencing == lease.fencing,
                "completion changed the fencing number"
            );
            within("retention", completed.expires_in, RETENTION)?;

            ensure!(
                ctx.store.remove(&key).await.doing("remove")?,
                "removing a completed key should say it was there"
            );
            ensure!(ctx.read(&key).await?.is_none(), "a removed key still reads");
            ensure!(
                !ctx.store.remove(&key).await.doing("remove")?,
                "removing an absent key should say it was not there"
            );

            let holder = ctx
                .acquire(&key, LONG)
                .await
                .map_err(|e| format!("after removal: {e}"))?;
            ensure!(
                ctx.store.remove(&key).await.doing("remove")?,
                "removing a claimed key should say it was there"
            );
            expect_lease_lost(
                "complete after removal",
                ctx.store
                    .complete(&holder, "x".into(), crate::context::ttl(RETENTION)?)
                    .await,
            )?;
            let after = ctx.probe(&key).await?;
            ensure!(
                matches!(after, Claim::Acquired(_)),
                "after removing a claim the key should be free, got {after:?}"
            );
            Ok(())
        },
    )
    .await
}

/// Time left must be positive, no more than the TTL, and not far below it (read at once).
fn within(what: &str, left: Duration, ttl: Duration) -> Result<(), String> {
    ensure!(
        left <= ttl && left + Duration::from_secs(10) >= ttl,
        "{what} time left {left:?} is not within 10 s under its TTL {ttl:?}"
    );
    Ok(())
}
