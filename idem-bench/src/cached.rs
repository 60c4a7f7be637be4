//! The replay cache (idem-memory's `ReplayCache`) in front of a shared store, against the
//! raw client of that store: replays should no longer cost a round trip.

use idem::memory::ReplayCache;
use idem::{Error, Ttl};

use crate::backend::{BenchBackend, Operation};
use crate::measure::Mode;
use crate::redis::Redis;
use crate::settings::Settings;

/// A backend with the replay cache in front of its store; the floor is the backend's own.
pub struct Cached<B: BenchBackend> {
    backend: B,
    store: ReplayCache<B::Store>,
}

impl BenchBackend for Cached<Redis> {
    type Store = ReplayCache<<Redis as BenchBackend>::Store>;
    const NAME: &'static str = "redis+cache";
    /// Replays from memory take microseconds.
    const THROUGHPUT_SCALE: usize = 4;

    async fn connect(settings: &Settings) -> Result<Self, Error> {
        let backend = Redis::connect(settings).await?;
        let store = ReplayCache::new(backend.store().clone());
        Ok(Self { backend, store })
    }

    fn store(&self) -> &Self::Store {
        &self.store
    }

    fn ttl(&self) -> Ttl {
        self.backend.ttl()
    }

    fn floor(&self, operation: Operation) -> &'static str {
        self.backend.floor(operation)
    }

    /// Replays from memory at ten times a Redis replay; the rest only passes through.
    fn target(&self, operation: Operation, _: Mode) -> Option<f64> {
        match operation {
            Operation::Replay => Some(10.0),
            _ => None,
        }
    }

    async fn raw_claim_new(&self, tag: &str, i: usize) -> Result<(), Error> {
        self.backend.raw_claim_new(tag, i).await
    }

    async fn raw_seed_replay(&self, tag: &str) -> Result<(), Error> {
        self.backend.raw_seed_replay(tag).await
    }

    async fn raw_replay(&self, tag: &str) -> Result<(), Error> {
        self.backend.raw_replay(tag).await
    }

    async fn raw_seed_claimed(&self, tag: &str, count: usize) -> Result<(), Error> {
        self.backend.raw_seed_claimed(tag, count).await
    }

    async fn raw_complete(&self, tag: &str, i: usize) -> Result<(), Error> {
        self.backend.raw_complete(tag, i).await
    }

    async fn close(&self) -> Result<(), Error> {
        self.backend.close().await
    }
}
