//! What the benchmarks expect of idem's answers, shared by every backend's rows.

use idem::{Claim, ClaimRequest, Error, Idempotency, IdempotencyStore, Key, Lease, Retryable, Ttl};

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

/// The idem side of "execute": a no-op run once under `key`.
pub async fn execute_noop<S: IdempotencyStore>(
    idem: &Idempotency<S>,
    key: Key,
) -> Result<(), Error> {
    idem.execute(&key, None, || async { Ok::<_, Never>(()) })
        .await
        .map_err(|e| Error::backend(format!("{e:?}")))
}
