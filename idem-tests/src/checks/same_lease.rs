//! Calls presenting one live lease, racing each other and racing reads: the pairs of
//! "every method is atomic with respect to every other call on the same key" that no
//! takeover is part of.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use idem_core::{Error, Lease, RecordState};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::context::{Ctx, LONG, RETENTION, ensure, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// How many keys each race runs on, so that on a real server some calls do overlap.
const RACED_KEYS: usize = 32;

/// The most reads one reader makes while its key's write runs.
const MAX_READS: usize = 1_000;

/// A call presenting a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Complete,
    Fail,
    Renew,
    Release,
}

impl Write {
    async fn apply(self, store: &Store, lease: &Lease, payload: Bytes) -> Result<(), Error> {
        let retention = ttl(RETENTION).map_err(Error::backend)?;
        match self {
            Write::Complete => store.complete(lease, payload, retention).await,
            Write::Fail => store.fail(lease, payload, retention).await,
            Write::Renew => store.renew(lease, ttl(LONG).map_err(Error::backend)?).await,
            Write::Release => store.release(lease).await,
        }
    }

    /// Whether the write ends the lease (so a second one must find it lost).
    fn ends_lease(self) -> bool {
        self != Write::Renew
    }

    /// What the key reads as (state and fencing) once this write applied.
    fn leaves(self, lease: &Lease, payload: &Bytes) -> Option<(RecordState, u64)> {
        match self {
            Write::Complete => Some((
                RecordState::Completed {
                    response: payload.clone(),
                },
                lease.fencing,
            )),
            Write::Fail => Some((
                RecordState::Failed {
                    failure: payload.clone(),
                },
                lease.fencing,
            )),
            Write::Renew => Some(held(lease)),
            Write::Release => None,
        }
    }
}

fn held(lease: &Lease) -> (RecordState, u64) {
    (RecordState::Claimed { owner: lease.owner }, lease.fencing)
}

/// The pairs raced on one lease: every two that end it, and renew against each of those.
const PAIRS: [(Write, Write); 9] = [
    (Write::Complete, Write::Complete),
    (Write::Complete, Write::Fail),
    (Write::Fail, Write::Fail),
    (Write::Complete, Write::Release),
    (Write::Fail, Write::Release),
    (Write::Release, Write::Release),
    (Write::Renew, Write::Complete),
    (Write::Renew, Write::Fail),
    (Write::Renew, Write::Release),
];

/// [`RACED_KEYS`] keys `prefix-0`, `prefix-1`, ... each acquired with a long lease.
async fn live_leases(ctx: &Ctx, prefix: &str) -> Result<Vec<Lease>, String> {
    let mut leases = Vec::with_capacity(RACED_KEYS);
    for i in 0..RACED_KEYS {
        leases.push(
            ctx.acquire(&ctx.key(&format!("{prefix}-{i}"))?, LONG)
                .await?,
        );
    }
    Ok(leases)
}

/// Starts `write` with `lease` once `gate` opens.
fn spawn_write(
    ctx: &Ctx,
    gate: &Arc<Barrier>,
    lease: &Lease,
    write: Write,
    payload: &Bytes,
) -> JoinHandle<Result<(), Error>> {
    let (store, gate, lease, payload) = (
        Arc::clone(&ctx.store),
        Arc::clone(gate),
        lease.clone(),
        payload.clone(),
    );
    tokio::spawn(async move {
        gate.wait().await;
        write.apply(&store, &lease, payload).await
    })
}

async fn joined<T>(task: JoinHandle<T>) -> Result<T, String> {
    task.await
        .map_err(|e| format!("a racing task panicked: {e}"))
}

/// On many keys, two calls presenting the same live lease race: two finishes, a finish and
/// a release, two releases, a renewal and any of those. Of two calls that end the lease
/// exactly one succeeds and the other is `LeaseLost`; a renewal never keeps the other call
/// from succeeding (it is `LeaseLost` only if it came second). The key then holds the
/// winner's doing: its outcome byte for byte with the lease's fencing number, or nothing
/// after a release.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when both or neither of two
/// lease-ending calls succeed, a renewal makes a finish fail or undoes it, or the key holds
/// something other than the winner's doing; or when a store call the check needs fails.
pub async fn finishes_race_each_other(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "finishes_race_each_other",
        store,
        capabilities,
        |ctx| async move {
            let leases = live_leases(&ctx, "same-lease").await?;
            let gate = Arc::new(Barrier::new(2 * leases.len()));
            let mut races = Vec::new();
            for (i, lease) in leases.iter().enumerate() {
                let (a, b) = PAIRS[i % PAIRS.len()];
                let payloads = (Bytes::from(format!("a-{i}")), Bytes::from(format!("b-{i}")));
                let tasks = (
                    spawn_write(&ctx, &gate, lease, a, &payloads.0),
                    spawn_write(&ctx, &gate, lease, b, &payloads.1),
                );
                races.push(((a, b), payloads, tasks));
            }
            for (((a, b), (pa, pb), (ta, tb)), lease) in races.into_iter().zip(&leases) {
                let (ra, rb) = (joined(ta).await?, joined(tb).await?);
                let key = &lease.key;
                // Every pair's second call ends the lease; the first may be a renewal, which
                // leaves the lease to the other call whichever came first.
                let winner = match (a.ends_lease(), &ra, &rb) {
                    (true, Ok(()), Err(Error::LeaseLost)) => (a, &pa),
                    (true, Err(Error::LeaseLost), Ok(())) => (b, &pb),
                    (false, Ok(()) | Err(Error::LeaseLost), Ok(())) => (b, &pb),
                    _ => {
                        return Err(format!(
                            "{key}: {a:?} and {b:?} with one lease raced: got {ra:?} and \
                             {rb:?}; exactly one call ending the lease must win, and a \
                             renewal must not stop it"
                        ));
                    }
                };
                let record = ctx.read(key).await?;
                let state = record.as_ref().map(|r| (r.state.clone(), r.fencing));
                ensure!(
                    state == winner.0.leaves(lease, winner.1),
                    "{key}: {a:?} raced {b:?} and {:?} won, but the key reads {record:?}",
                    winner.0
                );
            }
            Ok(())
        },
    )
    .await
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
        const READERS: usize = 2;
        const WRITES: [Write; 4] = [Write::Complete, Write::Fail, Write::Renew, Write::Release];
        let leases = live_leases(&ctx, "read-write").await?;
        let gate = Arc::new(Barrier::new(leases.len() * (1 + READERS)));
        let mut races = Vec::new();
        for (i, lease) in leases.iter().enumerate() {
            let write = WRITES[i % WRITES.len()];
            let payload = Bytes::from(format!("outcome-{i}"));
            let written = Arc::new(AtomicBool::new(false));
            let (store, gate_w, lease_w, payload_w, done) = (
                Arc::clone(&ctx.store),
                Arc::clone(&gate),
                lease.clone(),
                payload.clone(),
                Arc::clone(&written),
            );
            let writer = tokio::spawn(async move {
                gate_w.wait().await;
                let result = write.apply(&store, &lease_w, payload_w).await;
                done.store(true, Ordering::SeqCst);
                result
            });
            let readers: Vec<_> = (0..READERS)
                .map(|_| {
                    let (store, gate, key, done) = (
                        Arc::clone(&ctx.store),
                        Arc::clone(&gate),
                        lease.key.clone(),
                        Arc::clone(&written),
                    );
                    tokio::spawn(async move {
                        gate.wait().await;
                        let mut seen = Vec::new();
                        // Read until the write is over, then once more.
                        for _ in 0..MAX_READS {
                            let over = done.load(Ordering::SeqCst);
                            let record = store.read(&key).await?;
                            seen.push(record.map(|r| (r.state, r.fencing)));
                            if over {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                        Ok::<_, Error>(seen)
                    })
                })
                .collect();
            races.push((write, payload, writer, readers));
        }
        for ((write, payload, writer, readers), lease) in races.into_iter().zip(&leases) {
            let key = &lease.key;
            let written = joined(writer).await?;
            ensure!(
                written.is_ok(),
                "{key}: {write:?} with its live lease failed: {written:?}"
            );
            let possible = [Some(held(lease)), write.leaves(lease, &payload)];
            for reader in readers {
                let seen = joined(reader)
                    .await?
                    .map_err(|e| format!("{key}: a read racing {write:?} failed: {e:?}"))?;
                if let Some(odd) = seen.iter().find(|s| !possible.contains(s)) {
                    return Err(format!(
                        "{key}: a read racing {write:?} saw {odd:?}, a state the key was never \
                         in (before: {:?}, after: {:?})",
                        possible[0], possible[1]
                    ));
                }
            }
        }
        Ok(())
    })
    .await
}
