//! What the benchmarks expect of idem's answers, shared by every backend's rows.

use idem::{Claim, Error, Lease, Retryable};

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
