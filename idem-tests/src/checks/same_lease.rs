//! The pairs of "every method is atomic with respect to every other call on the same key"
//! that no takeover is part of: calls presenting one live lease racing each other, a
//! `remove` or the holder's own retried claim, and removes racing each other.

use std::sync::Arc;

use bytes::Bytes;
use idem_core::{Claim, ClaimRequest, Error, Lease, RecordState};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::context::{Ctx, LONG, RETENTION, after_gate, ensure, joined, run, ttl};
use crate::{Capabilities, CheckResult, Store};

/// How many keys each race runs on, so that on a real server some calls do overlap.
pub(super) const RACED_KEYS: usize = 32;

/// A call presenting a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Complete,
    Fail,
    Renew,
    Release,
}

impl Write {
    /// Every call presenting a lease, once each.
    pub(super) const ALL: [Write; 4] = [Write::Complete, Write::Fail, Write::Renew, Write::Release];

    pub(super) async fn apply(
        self,
        store: &Store,
        lease: &Lease,
        payload: Bytes,
    ) -> Result<(), Error> {
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
    pub(super) fn leaves(self, lease: &Lease, payload: &Bytes) -> Option<(RecordState, u64)> {
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

/// What a key reads as (state and fencing) while `lease` holds it.
pub(super) fn held(lease: &Lease) -> (RecordState, u64) {
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
pub(super) async fn live_leases(ctx: &Ctx, prefix: &str) -> Result<Vec<Lease>, String> {
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
    let (store, lease, payload) = (Arc::clone(&ctx.store), lease.clone(), payload.clone());
    after_gate(
        gate,
        async move { write.apply(&store, &lease, payload).await },
    )
}

/// One key's race between its holder's [`Write`] and a rival call on the same key.
struct HolderRace<T> {
    lease: Lease,
    write: Write,
    payload: Bytes,
    /// What the holder's write answered.
    written: Result<(), Error>,
    /// What the rival call answered.
    rival: T,
}

/// On [`RACED_KEYS`] keys `prefix-0`, `prefix-1`, ... each acquired with a long lease, the
/// holder makes one [`Write`] (each in turn) while `rival` makes its call on the same key,
/// all released by one gate; each key's race once both answered.
async fn race_the_holder<T, F>(
    ctx: &Ctx,
    prefix: &str,
    rival: impl Fn(Store, &Lease) -> Result<F, String>,
) -> Result<Vec<HolderRace<T>>, String>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let leases = live_leases(ctx, prefix).await?;
    let gate = Arc::new(Barrier::new(2 * leases.len()));
    let mut started = Vec::with_capacity(leases.len());
    for (i, lease) in leases.into_iter().enumerate() {
        let write = Write::ALL[i % Write::ALL.len()];
        let payload = Bytes::from(format!("outcome-{i}"));
        let holder = spawn_write(ctx, &gate, &lease, write, &payload);
        let other = after_gate(&gate, rival(Arc::clone(&ctx.store), &lease)?);
        started.push((lease, write, payload, holder, other));
    }
    let mut races = Vec::with_capacity(started.len());
    for (lease, write, payload, holder, other) in started {
        races.push(HolderRace {
            written: joined(holder).await?,
            rival: joined(other).await?,
            lease,
            write,
            payload,
        });
    }
    Ok(races)
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

/// On many keys, `remove` races a call presenting the key's live lease: complete, fail,
/// renew or release. Either the remove came first: it found the claim (`true`), and the
/// holder's call is `LeaseLost` and changed nothing; or the holder's call came first and
/// the remove then took away what it left (a finished record or a renewed claim: `true`;
/// after a release nothing: `false`). Whichever came first, the key ends free (it reads
/// `None`: no record comes back after a remove) and the next claim acquires it with a
/// larger fencing number.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the two answers fit no
/// order of the two calls, the key holds a record after the race, or the next claim's
/// fencing number is not larger; or when a store call the check needs fails.
pub async fn removal_races_holder(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "removal_races_holder",
        store,
        capabilities,
        |ctx| async move {
            let races = race_the_holder(&ctx, "removed-holder", |store, lease| {
                let key = lease.key.clone();
                Ok(async move { store.remove(&key).await })
            })
            .await?;
            for HolderRace {
                lease,
                write,
                written: held,
                rival: removed,
                ..
            } in races
            {
                let key = &lease.key;
                let order = match (&held, &removed) {
                    (Err(Error::LeaseLost), Ok(true)) => "the remove came first",
                    (Ok(()), Ok(true)) if write != Write::Release => "the holder came first",
                    (Ok(()), Ok(false)) if write == Write::Release => "the release came first",
                    _ => {
                        return Err(format!(
                            "{key}: {write:?} with the live lease raced a remove and got \
                             {held:?}, the remove {removed:?}: no order of the two answers so"
                        ));
                    }
                };
                let record = ctx.read(key).await?;
                ensure!(
                    record.is_none(),
                    "{key}: {write:?} with the live lease raced a remove ({order}), and the \
                     key reads {record:?}: after a remove the key is free, whichever came first"
                );
                let next = ctx.acquire(key, LONG).await?;
                ensure!(
                    next.fencing > lease.fencing,
                    "{key}: after {write:?} raced a remove ({order}), the next claim got \
                     fencing {} after the raced lease's {}",
                    next.fencing,
                    lease.fencing
                );
            }
            Ok(())
        },
    )
    .await
}

/// On many keys, the holder's own retried claim (same owner token, same request: a claim
/// whose reply was lost, sent again) races a call presenting the holder's live lease:
/// complete, fail, renew or release. The retry never takes the lease from its own call:
/// the call succeeds whichever came first. Either the retry came first (the same lease
/// again, same fencing number) or second (the stored outcome; after a release, a new
/// acquisition with a larger fencing number), and the key holds what the later of the two
/// left: the outcome byte for byte, the renewed claim, nothing after a release that came
/// second, or the new acquisition.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the holder's call fails,
/// the retried claim's answer fits no order of the two, or the key holds something other
/// than what that order leaves (a finish or release undone by the retry); or when a store
/// call the check needs fails.
pub async fn retried_claim_races_own_lease(
    store: Store,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "retried_claim_races_own_lease",
        store,
        capabilities,
        |ctx| async move {
            let races = race_the_holder(&ctx, "retried", |store, lease| {
                let retry =
                    ClaimRequest::new(lease.key.clone(), ttl(LONG)?).with_owner(lease.owner);
                Ok(async move { store.claim(&retry).await })
            })
            .await?;
            for race in races {
                judge_retry(&ctx, race).await?;
            }
            Ok(())
        },
    )
    .await
}

/// Checks one key's race between the holder's `write` and its retried claim.
async fn judge_retry(ctx: &Ctx, race: HolderRace<Result<Claim, Error>>) -> Result<(), String> {
    let HolderRace {
        lease,
        write,
        payload,
        written,
        rival: claimed,
    } = race;
    let (lease, payload) = (&lease, &payload);
    let key = &lease.key;
    let (Ok(()), Ok(claimed)) = (&written, &claimed) else {
        return Err(format!(
            "{key}: the holder's {write:?} raced its own retried claim and got {written:?}, the \
             claim {claimed:?}: a retried claim returns the same lease, so both must succeed"
        ));
    };
    let same_lease = |l: &Lease| l.owner == lease.owner && l.fencing == lease.fencing;
    let leaves = match (write, claimed) {
        // The retry came first and handed back the same lease; the call then applied.
        (_, Claim::Acquired(again)) if same_lease(again) => write.leaves(lease, payload),
        // The call came first: the retry finds its outcome, or after a release a free key.
        (Write::Complete, Claim::Completed(seen)) | (Write::Fail, Claim::Failed(seen))
            if seen == payload =>
        {
            write.leaves(lease, payload)
        }
        (Write::Release, Claim::Acquired(new))
            if new.owner == lease.owner && new.fencing > lease.fencing =>
        {
            Some(held(new))
        }
        _ => {
            return Err(format!(
                "{key}: the holder's {write:?} ({payload:?}) raced its own retried claim, \
                 which got {claimed:?}: no order of the two answers so"
            ));
        }
    };
    let record = ctx.read(key).await?;
    let state = record.as_ref().map(|r| (r.state.clone(), r.fencing));
    ensure!(
        state == leaves,
        "{key}: the holder's {write:?} raced its own retried claim ({claimed:?}), and the key \
         reads {record:?}, not {leaves:?}: one of the two was undone"
    );
    Ok(())
}

/// How many removes race on each key in [`removals_race_each_other`].
const REMOVERS: usize = 3;

/// On many keys holding a record (a live claim, a completed or a failed record), three
/// removes race. Exactly one says it found the record; the others came after it and found
/// the key free (`false`). The key then reads `None`, and the next claim acquires it with a
/// larger fencing number: a remove that found only the first one's trace kept it.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when more or fewer than one
/// remove says it found the record, the key holds a record after the race, or the next
/// claim's fencing number is not larger; or when a store call the check needs fails.
pub async fn removals_race_each_other(store: Store, capabilities: Capabilities) -> CheckResult {
    run(
        "removals_race_each_other",
        store,
        capabilities,
        |ctx| async move {
            let leases = live_leases(&ctx, "removed-twice").await?;
            for (i, lease) in leases.iter().enumerate() {
                match i % 3 {
                    1 => ctx.complete(lease, &b"completed"[..]).await?,
                    2 => ctx.fail(lease, &b"failed"[..]).await?,
                    _ => {}
                }
            }
            let gate = Arc::new(Barrier::new(REMOVERS * leases.len()));
            let races: Vec<Vec<_>> = leases
                .iter()
                .map(|lease| {
                    (0..REMOVERS)
                        .map(|_| {
                            let (store, key) = (Arc::clone(&ctx.store), lease.key.clone());
                            after_gate(&gate, async move { store.remove(&key).await })
                        })
                        .collect()
                })
                .collect();
            for (removers, lease) in races.into_iter().zip(&leases) {
                let key = &lease.key;
                let mut answers = Vec::with_capacity(REMOVERS);
                for remover in removers {
                    answers.push(joined(remover).await?);
                }
                let found = answers.iter().filter(|a| matches!(a, Ok(true))).count();
                let free = answers.iter().filter(|a| matches!(a, Ok(false))).count();
                ensure!(
                    found == 1 && free == REMOVERS - 1,
                    "{key}: {REMOVERS} removes of one record raced and answered {answers:?}: \
                     exactly one finds the record, the others find the key free"
                );
                let record = ctx.read(key).await?;
                ensure!(
                    record.is_none(),
                    "{key}: after {REMOVERS} racing removes the key reads {record:?}"
                );
                let next = ctx.acquire(key, LONG).await?;
                ensure!(
                    next.fencing > lease.fencing,
                    "{key}: after {REMOVERS} racing removes the next claim got fencing {} \
                     after the removed record's {}",
                    next.fencing,
                    lease.fencing
                );
            }
            Ok(())
        },
    )
    .await
}
