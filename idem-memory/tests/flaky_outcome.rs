//! The executor keeps an operation that ran from running again when the store blinks while
//! its outcome is written: it retries, and recognises a write that was applied but whose
//! reply was lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use idem_core::{
    Bytes, Claim, ClaimRequest, Error, ExecuteError, Idempotency, IdempotencyStore, Key, Lease,
    Record, Retryable, Ttl, async_trait,
};
use idem_memory::MemoryStore;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Never;

impl Retryable for Never {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// How the next `complete` calls go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blink {
    /// Refused: nothing written.
    Refused,
    /// Written, but the reply is lost.
    ReplyLost,
}

#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    blink: Blink,
    failures_left: AtomicU32,
    completes: AtomicU32,
}

impl FlakyStore {
    fn new(blink: Blink, failures: u32) -> Self {
        Self {
            inner: MemoryStore::new(),
            blink,
            failures_left: AtomicU32::new(failures),
            completes: AtomicU32::new(0),
        }
    }
}

fn outage() -> Error {
    Error::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset",
    ))
}

#[async_trait]
impl IdempotencyStore for FlakyStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        let blinking = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        match (blinking, self.blink) {
            (false, _) => self.inner.complete(lease, response, retention).await,
            (true, Blink::Refused) => Err(outage()),
            (true, Blink::ReplyLost) => {
                self.inner.complete(lease, response, retention).await?;
                Err(outage())
            }
        }
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, failure, retention).await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        self.inner.read(key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// Runs the same request twice; returns both results and how often the operation ran.
async fn twice(
    store: FlakyStore,
) -> (
    Arc<FlakyStore>,
    Vec<Result<u32, ExecuteError<Never>>>,
    usize,
) {
    let store = Arc::new(store);
    let idem = Idempotency::from_arc(Arc::clone(&store));
    let key = Key::new("flaky", "order-1").expect("valid key");
    let runs = AtomicUsize::new(0);
    let mut results = Vec::new();
    for _ in 0..2 {
        let result = idem
            .execute(&key, None, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(7)
            })
            .await;
        results.push(result);
    }
    (store, results, runs.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_refused_write_is_retried() {
    let (store, results, runs) = twice(FlakyStore::new(Blink::Refused, 2)).await;
    assert!(matches!(results[..], [Ok(7), Ok(7)]), "{results:?}");
    assert_eq!(runs, 1, "the operation ran again");
    assert_eq!(
        store.completes.load(Ordering::SeqCst),
        3,
        "two refusals, then the write"
    );
}

#[tokio::test]
async fn a_write_whose_reply_was_lost_is_recognised() {
    let (store, results, runs) = twice(FlakyStore::new(Blink::ReplyLost, 1)).await;
    assert!(matches!(results[..], [Ok(7), Ok(7)]), "{results:?}");
    assert_eq!(runs, 1, "the operation ran again");
    assert_eq!(
        store.completes.load(Ordering::SeqCst),
        2,
        "the retry found the key finished"
    );
}

#[tokio::test]
async fn a_store_that_stays_down_is_reported_after_bounded_attempts() {
    let (store, results, _) = twice(FlakyStore::new(Blink::Refused, u32::MAX)).await;
    assert!(
        matches!(
            results[0],
            Err(ExecuteError::Idempotency(Error::Unavailable { .. }))
        ),
        "{results:?}"
    );
    // The first call tried 3 times; the second found the key still claimed (in progress).
    assert_eq!(store.completes.load(Ordering::SeqCst), 3);
    assert!(
        matches!(
            results[1],
            Err(ExecuteError::Idempotency(Error::InProgress { .. }))
        ),
        "{results:?}"
    );
}
