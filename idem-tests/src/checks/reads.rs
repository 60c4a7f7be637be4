//! Reads racing the calls that change a key: a read shows the key as it was before the
//! call or as the call left it, never a state in between.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use idem_core::{Claim, Error, Key, RecordState};
use tokio::sync::Barrier;

use super::races::{PATHS, free_by};
use super::same_lease::{RACED_KEYS, Write, held, live_leases};
use crate::context::{Ctx, LONG, after_gate, ensure, joined, run};
use crate::{Capabilities, CheckResult, Store};

/// How many readers read each key while its call runs.
const READERS: usize = 2;

/// The most reads one reader makes while its key's call runs.
const MAX_READS: usize = 1_000;

/// What a read shows of a key: its state and fencing number, or nothing (free).
type Seen = Option<(RecordState, u64)>;

/// A call that changes a key; it answers what the key reads once it applied.
type Change = Pin<Box<dyn Future<Output = Result<Seen, String>> + Send>>;

/// One key raced by readers: what it reads before `change`, and the change.
struct ReadRace {
    key: Key,
    /// The call, for messages.
    what: String,
    before: Seen,
    change: Change,
}

/// Runs every race at once (each change with [`READERS`] readers reading its key again and
/// again until the change is over, then once more) and fails on the first read that shows
/// neither the key's state before its change nor the one after, or on a change that fails.
async fn reads_race(ctx: &Ctx, races: Vec<ReadRace>) -> Result<(), String> {
    let gate = Arc::new(Barrier::new(races.len() * (1 + READERS)));
    let mut running = Vec::new();
    for race in races {
        let over = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&over);
        let change = race.change;
        let changer = after_gate(&gate, async move {
            let after = change.await;
            done.store(true, Ordering::SeqCst);
            after
        });
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (store, key, over) =
                    (Arc::clone(&ctx.store), race.key.clone(), Arc::clone(&over));
                after_gate(&gate, read_until(store, key, over))
            })
            .collect();
        running.push((race.key, race.what, race.before, changer, readers));
    }
    for (key, what, before, changer, readers) in running {
        let after = joined(changer)
            .await?
            .map_err(|e| format!("{key}: {what}: {e}"))?;
        let possible = [before, after];
        for reader in readers {
            let seen = joined(reader)
                .await?
                .map_err(|e| format!("{key}: a read racing {what} failed: {e:?}"))?;
            if let Some(odd) = seen.iter().find(|s| !possible.contains(s)) {
                return Err(format!(
                    "{key}: a read racing {what} saw {odd:?}, a state the key was never in \
                     (before: {:?}, after: {:?})",
                    possible[0], possible[1]
                ));
            }
        }
        let last = ctx.read(&key).await?.map(|r| (r.state, r.fencing));
        ensure!(
            last == possible[1],
            "{key}: after {what} the key reads {last:?}, not {:?}",
            possible[1]
        );
    }
    Ok(())
}

/// Reads `key` until `over` is set, then once more: what each read showed.
async fn read_until(store: Store, key: Key, over: Arc<AtomicBool>) -> Result<Vec<Seen>, Error> {
    let mut seen = Vec::new();
    for _ in 0..MAX_READS {
        let last = over.load(Ordering::SeqCst);
        let record = store.read(&key).await?;
        seen.push(record.map(|r| (r.state, r.fencing)));
        if last {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(seen)
}

/// On many keys, one call presenting the live lease (complete, fail, renew or release) runs
/// while readers read the key again and again: every read shows the key as it was before
/// the write (claimed by the lease) or as the write left it, never a mix of the two (a
/// finished state without its payload, another fencing number, another owner).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a read shows a state the key
/// was never in; or when a store call the check needs fails.
pub async fn reads_race_writes(store: Store, capabilities: Capabilities) -> CheckResult {
    run("reads_race_writes", store, capabilities, |ctx| async move {
        let leases = live_leases(&ctx, "read-write").await?;
        let races = leases
            .into_iter()
            .enumerate()
            .map(|(i, lease)| {
                let write = Write::ALL[i % Write::ALL.len()];
                let payload = Bytes::from(format!("outcome-{i}"));
                let store = Arc::clone(&ctx.store);
                let before = Some(held(&lease));
                let key = lease.key.clone();
                let change: Change = Box::pin(async move {
                    write
                        .apply(&store, &lease, payload.clone())
                        .await
                        .map_err(|e| format!("the write with its live lease failed: {e:?}"))?;
                    Ok(write.leaves(&lease, &payload))
                });
                ReadRace {
                    key,
                    what: format!("{write:?}"),
                    before,
                    change,
                }
            })
            .collect();
        reads_race(&ctx, races).await
    })
    .await
}

/// On many keys, readers race a claim and a `remove`. A new owner claims keys freed by
/// every path (never seen, released, lapsed, retention ended, removed): every read shows
/// the key free (`None`) or held by the new owner with the fencing number its lease got,
/// never the claim half written (another fencing number, another owner). Keys held by a
/// live lease, completed or failed are removed: every read shows the record as it was or
/// nothing, never a record half removed (a finished state without its payload).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a read shows a state the
/// key was never in, a claim of a free key does not acquire it, or a remove does not find
/// the record; or when a store call the check needs fails.
pub async fn reads_race_claims_and_removals(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "reads_race_claims_and_removals",
        store,
        capabilities,
        |ctx| async move {
            let mut races = Vec::with_capacity(RACED_KEYS);
            for (i, path) in PATHS.iter().cycle().take(RACED_KEYS / 2).enumerate() {
                let key = ctx.key(&format!("claimed-{path}-{i}"))?;
                free_by(&ctx, path, &key).await?;
                races.push(claim_race(&ctx, key, path)?);
            }
            for i in 0..RACED_KEYS / 2 {
                let key = ctx.key(&format!("removed-{i}"))?;
                races.push(removal_race(&ctx, key, i).await?);
            }
            ctx.outlive_short_ttl().await;
            reads_race(&ctx, races).await
        },
    )
    .await
}

/// A new owner's claim of `key`, freed by `path`: free before, held by the claim after.
fn claim_race(ctx: &Ctx, key: Key, path: &str) -> Result<ReadRace, String> {
    let request = ctx.request(&key, LONG)?;
    let store = Arc::clone(&ctx.store);
    let change: Change = Box::pin(async move {
        match store.claim(&request).await {
            Ok(Claim::Acquired(lease)) => Ok(Some(held(&lease))),
            other => Err(format!(
                "a claim of the free key got {other:?}, not the key"
            )),
        }
    });
    Ok(ReadRace {
        key,
        what: format!("a claim of a key freed by {path}"),
        before: None,
        change,
    })
}

/// A `remove` of `key`, set up claimed, completed or failed by `i`: the record before,
/// nothing after.
async fn removal_race(ctx: &Ctx, key: Key, i: usize) -> Result<ReadRace, String> {
    let lease = ctx.acquire(&key, LONG).await?;
    let payload = Bytes::from(format!("removed-{i}"));
    let (what, before) = match i % 3 {
        0 => ("a claimed", held(&lease)),
        1 => {
            ctx.complete(&lease, payload.clone()).await?;
            let state = RecordState::Completed { response: payload };
            ("a completed", (state, lease.fencing))
        }
        _ => {
            ctx.fail(&lease, payload.clone()).await?;
            let state = RecordState::Failed { failure: payload };
            ("a failed", (state, lease.fencing))
        }
    };
    let store = Arc::clone(&ctx.store);
    let removed_key = key.clone();
    let change: Change = Box::pin(async move {
        match store.remove(&removed_key).await {
            Ok(true) => Ok(None),
            other => Err(format!("removing the record got {other:?}, not true")),
        }
    });
    Ok(ReadRace {
        key,
        what: format!("a remove of {what} key"),
        before: Some(before),
        change,
    })
}
