//! The executor keeps an operation that ran from running again when the store blinks while
//! its outcome is written: it retries, and recognises a write that was applied but whose
//! reply was lost. Since issue 16 the write is retried for as long as the lease lasts (it
//! used to give up after three attempts, ~150 ms), and a store that stays down past that
//! gives the caller its value back as "not recorded".

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use idem_core::{
    Bytes, Claim, ClaimRequest, Config, Error, ExecuteError, Idempotency, IdempotencyStore, Key,
    Lease, Record, Retryable, Ttl, async_trait,
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

type Outcome = Result<u32, ExecuteError<Never, u32>>;

/// Runs the same request `times`; returns the results and how often the operation ran.
async fn repeatedly(
    store: FlakyStore,
    config: Config,
    times: usize,
) -> (Arc<FlakyStore>, Vec<Outcome>, usize) {
    let store = Arc::new(store);
    let idem = Idempotency::with_config(Arc::clone(&store), config).expect("valid config");
    let key = Key::new("flaky", "order-1").expect("valid key");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut results = Vec::new();
    for _ in 0..times {
        let runs = Arc::clone(&runs);
        let result = idem
            .execute(&key, None, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(7)
            })
            .await;
        results.push(result);
    }
    (store, results, runs.load(Ordering::SeqCst))
}

async fn twice(store: FlakyStore) -> (Arc<FlakyStore>, Vec<Outcome>, usize) {
    repeatedly(store, Config::default(), 2).await
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
async fn a_store_that_stays_down_is_retried_while_the_lease_lasts_then_not_recorded() {
    let config = Config {
        lease_ttl: std::time::Duration::from_secs(2),
        ..Config::default()
    };
    let (store, results, runs) =
        repeatedly(FlakyStore::new(Blink::Refused, u32::MAX), config, 1).await;
    match &results[..] {
        [
            Err(ExecuteError::NotRecorded {
                result: Ok(7),
                error: Error::NotRecorded { cause },
            }),
        ] => assert!(
            matches!(**cause, Error::Unavailable { .. }),
            "cause {cause:?}"
        ),
        other => panic!("expected NotRecorded with the value, got {other:?}"),
    }
    assert_eq!(runs, 1);
    // More than the three attempts of old: the 2 s lease leaves time for several pauses.
    let completes = store.completes.load(Ordering::SeqCst);
    assert!(
        completes >= 4,
        "only {completes} attempts to store the outcome"
    );
}
