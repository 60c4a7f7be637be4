//! What a free key looks like, however it became free.

use idem_core::{Claim, Fingerprint};

use crate::context::{LONG, ensure, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// A free key (never seen, lapsed, released, retention ended, removed) reads as `None`,
/// removes as `false`, and is acquired by a claim with any fingerprint (another digest or
/// none), after which a fresh owner sees it in progress.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a free key reads as a record,
/// removes as `true`, or is not acquired by the next claim; or when a store call the check needs
/// fails unexpectedly.
pub async fn free_key(store: Store, capabilities: Capabilities) -> CheckResult {
    run("free_key", store, capabilities, |ctx| async move {
        let stored = Fingerprint::from_bytes(b"the first request");
        let paths = [
            "never-seen",
            "lapsed",
            "released",
            "retention-ended",
            "removed",
        ];
        let mut keys = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            for (j, presented) in [Some(Fingerprint::from_bytes(b"another request")), None]
                .into_iter()
                .enumerate()
            {
                let key = ctx.key(&format!("{path}-{j}"))?;
                let lease_ttl = if *path == "lapsed" { ctx.short() } else { LONG };
                if i > 0 {
                    let request = ctx.request(&key, lease_ttl)?.with_fingerprint(stored);
                    let lease = ctx.acquire_with(&request).await?;
                    match *path {
                        "released" => ctx.release(&lease).await?,
                        "retention-ended" => ctx
                            .store
                            .complete(&lease, "short".into(), ttl(ctx.short())?)
                            .await
                            .map_err(|e| format!("complete: {e:?}"))?,
                        "removed" => {
                            ensure!(ctx.remove(&key).await?, "removing a claim said no")
                        }
                        _ => {}
                    }
                }
                keys.push((*path, key, presented));
            }
        }
        ctx.outlive_short_ttl().await;
        for (path, key, presented) in &keys {
            let read = ctx.read(key).await?;
            ensure!(read.is_none(), "{key} ({path}) is free but reads {read:?}");
            ensure!(
                !ctx.remove(key).await?,
                "{key} ({path}) is free but removing it said there was a record"
            );
            let request = ctx.request(key, LONG)?.with_fingerprint(*presented);
            let lease = ctx.acquire_with(&request).await.map_err(|e| {
                format!("{key} ({path}) is free: a claim with fingerprint {presented:?}: {e}")
            })?;
            let other = ctx
                .claim(&ctx.request(key, LONG)?.with_fingerprint(*presented))
                .await?;
            ensure!(
                matches!(other, Claim::InProgress { .. }),
                "{key} ({path}): after the claim another owner got {other:?}"
            );
            ctx.complete(&lease, &b"ok"[..]).await?;
        }
        Ok(())
    })
    .await
}
