//! A store for the engine's own tests: unavailable until an instant, then answering (or
//! finding the lease taken over), and recording when each write (complete or renew) was sent.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::claim::{Claim, ClaimRequest};
use crate::error::Error;
use crate::key::Key;
use crate::lease::Lease;
use crate::record::Record;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// Completes and renewals are `Unavailable` before `back` and succeed from then on (or, once
/// the key was [`taken_over`](Self::taken_over), are `LeaseLost`); `tries` holds when each
/// was sent.
#[derive(Debug)]
pub(super) struct BackAt {
    pub(super) back: Instant,
    pub(super) tries: Mutex<Vec<Instant>>,
    taken_over: bool,
}

impl BackAt {
    pub(super) fn new(back: Instant) -> Self {
        Self {
            back,
            tries: Mutex::new(Vec::new()),
            taken_over: false,
        }
    }

    /// Back at `back` with the key held by another owner: every write from then on is
    /// `LeaseLost`.
    pub(super) fn taken_over(back: Instant) -> Self {
        Self {
            taken_over: true,
            ..Self::new(back)
        }
    }

    /// Records a write sent now, and answers it.
    fn tried(&self) -> Result<(), Error> {
        let now = Instant::now();
        self.tries.lock().expect("not poisoned").push(now);
        if now < self.back {
            return Err(Error::unavailable("not back yet"));
        }
        if self.taken_over {
            return Err(Error::LeaseLost);
        }
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for BackAt {
    async fn claim(&self, _: &ClaimRequest) -> Result<Claim, Error> {
        unimplemented!("not claimed in these tests")
    }
    async fn complete(&self, _: &Lease, _: Bytes, _: Ttl) -> Result<(), Error> {
        self.tried()
    }
    async fn fail(&self, _: &Lease, _: Bytes, _: Ttl) -> Result<(), Error> {
        unimplemented!("not failed in these tests")
    }
    async fn renew(&self, _: &Lease, _: Ttl) -> Result<(), Error> {
        self.tried()
    }
    async fn release(&self, _: &Lease) -> Result<(), Error> {
        Ok(())
    }
    async fn read(&self, _: &Key) -> Result<Option<Record>, Error> {
        Ok(None)
    }
    async fn remove(&self, _: &Key) -> Result<bool, Error> {
        Ok(false)
    }
}
