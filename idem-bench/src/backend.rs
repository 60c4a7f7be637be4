//! The one row set every store gets, and the trait a store implements to get it.
//!
//! A backend says how to connect, which store idem runs on, and what its floor does: the
//! raw client performing the same steps as idem (one round trip per lifecycle step, two for
//! execute). [`rows`] then measures the same four operations, at one task and at many, for
//! every backend. A backend with rows of its own (a native command path, a cache in front)
//! returns them from [`BenchBackend::extra_rows`], built with [`row`].

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use idem::{ClaimRequest, Error, Idempotency, IdempotencyStore, Ttl};

use crate::claims::{acquire_fresh, claim_all, claim_replay, execute_noop, expect_lease};
use crate::keys::{fresh_tag, key};
use crate::measure::{Mode, compare, keys_needed, modes};
use crate::report::Row;
use crate::settings::Settings;

/// What a completed record holds: 100 bytes, as a small JSON response.
pub fn payload() -> Bytes {
    Bytes::from(vec![b'x'; 100])
}

/// The operations of the common row set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Claim a key never seen.
    ClaimNew,
    /// Claim a completed key: the replay.
    Replay,
    /// Complete a claimed key.
    Complete,
    /// Claim and complete a new key through the executor (two steps).
    Execute,
}

impl Operation {
    /// The row's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClaimNew => "claim new",
            Self::Replay => "replay claim",
            Self::Complete => "complete",
            Self::Execute => "execute",
        }
    }
}

/// A store measured against its raw client. Keys are named by a measurement's `tag` (fresh
/// per measurement) and a number `i`; the idem side uses [`key`]`(tag, i)` and the floor
/// side any key of its own built from the same two.
pub trait BenchBackend: Send + Sync + Sized + 'static {
    /// The store idem runs on.
    type Store: IdempotencyStore + Clone;

    /// The name in `--backends` and in the table.
    const NAME: &'static str;

    /// How many times more operations than the others this backend's throughput rows time
    /// ([`Settings::throughput_scale`]). A store whose operations take a microsecond or two
    /// (memory) sets more, so its rows last a good fraction of a second rather than a few
    /// milliseconds, which the machine's load would swing.
    const THROUGHPUT_SCALE: usize = 1;

    /// Connects both sides (each with a client of its own, set up the same way) and creates
    /// what the run needs.
    fn connect(settings: &Settings) -> impl Future<Output = Result<Self, Error>> + Send;

    /// The store under test.
    fn store(&self) -> &Self::Store;

    /// The lease TTL and retention of every record.
    fn ttl(&self) -> Ttl;

    /// What the floor of `operation` does, in a few words.
    fn floor(&self, operation: Operation) -> &'static str;

    /// The least acceptable idem/floor ratio of `operation` in `mode`, if any.
    fn target(&self, operation: Operation, mode: Mode) -> Option<f64>;

    /// Floor of "claim new": takes the new key `(tag, i)`, failing if it was there.
    fn raw_claim_new(&self, tag: &str, i: usize) -> impl Future<Output = Result<(), Error>> + Send;

    /// Writes the finished record `(tag, 0)` that [`raw_replay`](Self::raw_replay) reads.
    fn raw_seed_replay(&self, tag: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Floor of "replay claim": claims `(tag, 0)` and gets its finished record back.
    fn raw_replay(&self, tag: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Writes claimed records `(tag, 0..count)` that [`raw_complete`](Self::raw_complete)
    /// finishes.
    fn raw_seed_claimed(
        &self,
        tag: &str,
        count: usize,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Floor of "complete": finishes `(tag, i)` if the raw owner still holds it.
    fn raw_complete(&self, tag: &str, i: usize) -> impl Future<Output = Result<(), Error>> + Send;

    /// Floor of "execute": [`raw_claim_new`](Self::raw_claim_new) then
    /// [`raw_complete`](Self::raw_complete) of the same new key, the two-step protocol.
    fn raw_execute(&self, tag: &str, i: usize) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            self.raw_claim_new(tag, i).await?;
            self.raw_complete(tag, i).await
        }
    }

    /// Rows beyond the common set; none by default.
    fn extra_rows(
        self: &Arc<Self>,
        settings: &Settings,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send {
        let _ = settings;
        async { Ok(Vec::new()) }
    }

    /// Deletes what the run wrote and closes the clients; runs even when a measurement
    /// failed.
    fn close(&self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A row of `backend` from the figures of one [`compare`].
pub fn row<B: BenchBackend>(
    backend: &B,
    operation: Operation,
    mode: Mode,
    figures: (crate::measure::Figure, crate::measure::Figure),
) -> Row {
    Row {
        backend: B::NAME,
        operation: operation.name(),
        floor: backend.floor(operation),
        mode,
        idem: figures.0,
        raw: figures.1,
        target: backend.target(operation, mode),
    }
}

/// Connects `B`, measures the common rows and its own, and closes it whatever happened.
pub async fn rows<B: BenchBackend>(settings: &Settings) -> Result<Vec<Row>, Error> {
    let settings = &Settings {
        throughput_scale: B::THROUGHPUT_SCALE,
        ..settings.clone()
    };
    let backend = Arc::new(B::connect(settings).await?);
    let rows = measure_all(&backend, settings).await;
    let closed = backend.close().await;
    let rows = rows?;
    closed?;
    Ok(rows)
}

async fn measure_all<B: BenchBackend>(
    backend: &Arc<B>,
    settings: &Settings,
) -> Result<Vec<Row>, Error> {
    let idem = Arc::new(Idempotency::new(backend.store().clone()));
    let mut rows = Vec::new();
    for mode in modes(settings) {
        rows.push(claim_new(backend, settings, mode).await?);
        rows.push(replay(backend, settings, mode).await?);
        rows.push(complete(backend, settings, mode).await?);
        rows.push(execute(backend, &idem, settings, mode).await?);
    }
    rows.extend(backend.extra_rows(settings).await?);
    Ok(rows)
}

async fn claim_new<B: BenchBackend>(
    backend: &Arc<B>,
    settings: &Settings,
    mode: Mode,
) -> Result<Row, Error> {
    let tag = fresh_tag();
    let (b, r, tag_i, tag_r) = (Arc::clone(backend), Arc::clone(backend), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, k) = (Arc::clone(&b), key(&tag_i, i));
            async move { acquire_fresh(b.store(), k?, b.ttl()).await }
        },
        move |i| {
            let (r, t) = (Arc::clone(&r), Arc::clone(&tag_r));
            async move { r.raw_claim_new(&t, i).await }
        },
    )
    .await?;
    Ok(row(backend.as_ref(), Operation::ClaimNew, mode, figures))
}

async fn replay<B: BenchBackend>(
    backend: &Arc<B>,
    settings: &Settings,
    mode: Mode,
) -> Result<Row, Error> {
    let tag = fresh_tag();
    let store = backend.store();
    let lease = expect_lease(
        store
            .claim(&ClaimRequest::new(key(&tag, 0)?, backend.ttl()))
            .await?,
    )?;
    store.complete(&lease, payload(), backend.ttl()).await?;
    backend.raw_seed_replay(&tag).await?;
    let (b, r, tag_i, tag_r) = (Arc::clone(backend), Arc::clone(backend), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |_| {
            // Both sides build their key per call, as a request handler would.
            let (b, k) = (Arc::clone(&b), key(&tag_i, 0));
            async move { claim_replay(b.store(), k?, b.ttl()).await }
        },
        move |_| {
            let (r, t) = (Arc::clone(&r), Arc::clone(&tag_r));
            async move { r.raw_replay(&t).await }
        },
    )
    .await?;
    Ok(row(backend.as_ref(), Operation::Replay, mode, figures))
}

async fn complete<B: BenchBackend>(
    backend: &Arc<B>,
    settings: &Settings,
    mode: Mode,
) -> Result<Row, Error> {
    let tag = fresh_tag();
    let needed = keys_needed(settings, mode);
    let leases =
        Arc::new(claim_all(backend.store(), &tag, needed, settings.tasks, backend.ttl()).await?);
    backend.raw_seed_claimed(&tag, needed).await?;
    let (b, r) = (Arc::clone(backend), Arc::clone(backend));
    let figures = compare(
        settings,
        mode,
        move |i| {
            let (b, leases) = (Arc::clone(&b), Arc::clone(&leases));
            async move {
                let lease = leases.get(i).ok_or_else(|| Error::backend("no lease"))?;
                b.store().complete(lease, payload(), b.ttl()).await
            }
        },
        move |i| {
            let (r, t) = (Arc::clone(&r), Arc::clone(&tag));
            async move { r.raw_complete(&t, i).await }
        },
    )
    .await?;
    Ok(row(backend.as_ref(), Operation::Complete, mode, figures))
}

async fn execute<B: BenchBackend>(
    backend: &Arc<B>,
    idem: &Arc<Idempotency<B::Store>>,
    settings: &Settings,
    mode: Mode,
) -> Result<Row, Error> {
    let tag = fresh_tag();
    let (i, r, tag_i, tag_r) = (Arc::clone(idem), Arc::clone(backend), tag.clone(), tag);
    let figures = compare(
        settings,
        mode,
        move |n| {
            let (i, k) = (Arc::clone(&i), key(&tag_i, n));
            async move { execute_noop(&i, k?).await }
        },
        move |n| {
            let (r, t) = (Arc::clone(&r), Arc::clone(&tag_r));
            async move { r.raw_execute(&t, n).await }
        },
    )
    .await?;
    Ok(row(backend.as_ref(), Operation::Execute, mode, figures))
}
