//! The store of the engine's own tests, set up to answer as each test needs (writes
//! unavailable until an instant, then answered or finding the key taken over; outcome
//! writes that take a while, or refuse payloads over a size; reads that show a finished
//! record), and recording what it was sent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::check_payload;
use crate::claim::{Claim, ClaimRequest};
use crate::error::Error;
use crate::key::Key;
use crate::lease::Lease;
use crate::record::{Record, RecordState};
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// Answers every write at once and reads every key as free, unless set otherwise.
#[derive(Debug)]
pub(super) struct TestStore {
    /// Writes (complete, fail, renew) sent before this are `Unavailable`.
    pub(super) back: Instant,
    /// From `back` on, every write is `LeaseLost`: another owner has the key.
    taken_over: bool,
    /// How long an accepted complete or fail takes to answer.
    write_takes: Duration,
    /// Completes and fails of payloads over this many bytes are refused at once.
    limit: usize,
    /// What `read` shows of any key: completed with this response, at fencing number 1.
    shows_completed: Option<Bytes>,
    /// When each write was sent, refused ones included.
    pub(super) tries: Mutex<Vec<Instant>>,
    /// The fencing number of each renewal sent.
    pub(super) renewals: Mutex<Vec<u64>>,
    /// The payloads completed or failed, in order.
    pub(super) stored: Mutex<Vec<Bytes>>,
    /// How many reads it answered.
    pub(super) reads: AtomicU32,
}

impl TestStore {
    pub(super) fn new() -> Self {
        Self {
            back: Instant::now(),
            taken_over: false,
            write_takes: Duration::ZERO,
            limit: usize::MAX,
            shows_completed: None,
            tries: Mutex::default(),
            renewals: Mutex::default(),
            stored: Mutex::default(),
            reads: AtomicU32::new(0),
        }
    }

    /// Writes are `Unavailable` until `back`.
    pub(super) fn back_at(self, back: Instant) -> Self {
        Self { back, ..self }
    }

    /// Writes are `LeaseLost` once the store is back.
    pub(super) fn taken_over(self) -> Self {
        Self {
            taken_over: true,
            ..self
        }
    }

    /// Accepted completes and fails take `write_takes` to answer.
    pub(super) fn writes_take(self, write_takes: Duration) -> Self {
        Self {
            write_takes,
            ..self
        }
    }

    /// Completes and fails of payloads over `limit` bytes are refused.
    pub(super) fn limit(self, limit: usize) -> Self {
        Self { limit, ..self }
    }

    /// Every key reads as completed with `response`.
    pub(super) fn showing_completed(self, response: &'static [u8]) -> Self {
        Self {
            shows_completed: Some(Bytes::from_static(response)),
            ..self
        }
    }

    pub(super) fn renewals_of(&self, fencing: u64) -> usize {
        let renewals = self.renewals.lock().expect("not poisoned");
        renewals.iter().filter(|&&f| f == fencing).count()
    }

    /// Records a write sent now, and answers whether the store takes it.
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

    async fn finish(&self, payload: Bytes) -> Result<(), Error> {
        self.tried()?;
        check_payload(payload.len(), self.limit)?;
        tokio::time::sleep(self.write_takes).await;
        self.stored.lock().expect("not poisoned").push(payload);
        Ok(())
    }
}

#[async_trait]
impl IdempotencyStore for TestStore {
    async fn claim(&self, _: &ClaimRequest) -> Result<Claim, Error> {
        unimplemented!("the engine's tests start from a lease")
    }
    async fn complete(&self, _: &Lease, response: Bytes, _: Ttl) -> Result<(), Error> {
        self.finish(response).await
    }
    async fn fail(&self, _: &Lease, failure: Bytes, _: Ttl) -> Result<(), Error> {
        self.finish(failure).await
    }
    async fn renew(&self, lease: &Lease, _: Ttl) -> Result<(), Error> {
        self.renewals
            .lock()
            .expect("not poisoned")
            .push(lease.fencing);
        self.tried()
    }
    async fn release(&self, _: &Lease) -> Result<(), Error> {
        Ok(())
    }
    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.shows_completed.clone().map(|response| {
            Record::new(
                key.clone(),
                RecordState::Completed { response },
                1,
                None,
                Duration::from_secs(60),
            )
        }))
    }
    async fn remove(&self, _: &Key) -> Result<bool, Error> {
        Ok(false)
    }
}
