//! What the benchmarks expect of idem's answers, shared by every backend's rows.

use std::sync::{Arc, Mutex};

use idem::{Claim, ClaimRequest, Error, Idempotency, IdempotencyStore, Key, Lease, Retryable, Ttl};

use crate::keys::key;
use crate::measure::throughput;

/// What the executor's operation returns: serialized, 100 bytes, as the floor's payload.
const RESPONSE: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The executor's operations never fail in the benchmark.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Never;

impl Retryable for Never {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// The lease of a claim that must have acquired its (fresh) key.
pub fn expect_lease(claim: Claim) -> Result<Lease, Error> {
    match claim {
        Claim::Acquired(lease) => Ok(lease),
        other => Err(Error::backend(format!("expected Acquired, got {other:?}"))),
    }
}

/// The idem side of "claim new": claims a fresh key and insists on acquiring it.
pub async fn acquire_fresh(store: &impl IdempotencyStore, key: Key, ttl: Ttl) -> Result<(), Error> {
    expect_lease(store.claim(&ClaimRequest::new(key, ttl)).await?).map(drop)
}

/// The idem side of "replay claim": claims a completed key and insists on its replay.
pub async fn claim_replay(store: &impl IdempotencyStore, key: Key, ttl: Ttl) -> Result<(), Error> {
    match store.claim(&ClaimRequest::new(key, ttl)).await? {
        Claim::Completed(_) => Ok(()),
        other => Err(Error::backend(format!(
            "replay expected Completed, got {other:?}"
        ))),
    }
}

/// The idem side of "execute": an operation answering a 100-byte response, run once under
/// `key`.
pub async fn execute_noop<S: IdempotencyStore>(
    idem: &Idempotency<S>,
    key: Key,
) -> Result<(), Error> {
    idem.execute(&key, None, || async {
        Ok::<_, Never>(std::borrow::Cow::Borrowed(RESPONSE))
    })
    .await
    .map(drop)
    .map_err(|e| Error::backend(format!("{e:?}")))
}

/// Claims keys `0..count` of the measurement `tag`, `tasks` at a time (a pooled store would
/// wait past its acquire timeout on more), and hands back their leases in order.
pub async fn claim_all<S: IdempotencyStore + Clone>(
    store: &S,
    tag: &Arc<str>,
    count: usize,
    tasks: usize,
    ttl: Ttl,
) -> Result<Vec<Lease>, Error> {
    let slots = Arc::new(Mutex::new(vec![None; count]));
    let (store, t, s) = (store.clone(), Arc::clone(tag), Arc::clone(&slots));
    throughput(count, tasks, move |i| {
        let (store, k, s) = (store.clone(), key(&t, i), Arc::clone(&s));
        async move {
            let lease = expect_lease(store.claim(&ClaimRequest::new(k?, ttl)).await?)?;
            let mut slots = s
                .lock()
                .map_err(|_| Error::backend("a claim task panicked"))?;
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(lease);
            }
            Ok::<_, Error>(())
        }
    })
    .await?;
    let slots = std::mem::take(
        &mut *slots
            .lock()
            .map_err(|_| Error::backend("a claim task panicked"))?,
    );
    slots
        .into_iter()
        .map(|slot| slot.ok_or_else(|| Error::backend("a key was not claimed")))
        .collect()
}
