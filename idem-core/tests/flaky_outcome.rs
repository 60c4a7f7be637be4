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

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum OpError {
    /// Permanent: stored and replayed.
    Refused,
}

impl Retryable for OpError {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// How the next outcome writes (`complete` or `fail`) go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blink {
    /// Refused: nothing written.
    Refused,
    /// Written, but the reply is lost.
    ReplyLost,
    /// Refused, and meanwhile the key was freed and another owner finished it with the same
    /// payload: the key holds that outcome, under another fencing number.
    TakenOver,
    /// Written after a pause, with no error.
    Slow,
    /// Written, but the reply never comes (a connection that hangs).
    ReplyHangs,
}

#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    blink: Blink,
    failures_left: AtomicU32,
    completes: AtomicU32,
    fails: AtomicU32,
    releases: AtomicU32,
    /// Reads answered `Unavailable` before the store reads again.
    reads_failing: AtomicU32,
}

impl FlakyStore {
    fn new(blink: Blink, failures: u32) -> Self {
        Self {
            inner: MemoryStore::new(),
            blink,
            failures_left: AtomicU32::new(failures),
            completes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            releases: AtomicU32::new(0),
            reads_failing: AtomicU32::new(0),
        }
    }

    /// One outcome write, `complete` or `fail` as `finished` says, gone wrong as planned.
    async fn write(
        &self,
        lease: &Lease,
        payload: Bytes,
        retention: Ttl,
        finished: Finished,
    ) -> Result<(), Error> {
        let write = |lease: Lease, payload: Bytes| async move {
            match finished {
                Finished::Completed => self.inner.complete(&lease, payload, retention).await,
                Finished::Failed => self.inner.fail(&lease, payload, retention).await,
            }
        };
        let blinking = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        match (blinking, self.blink) {
            (false, _) => write(lease.clone(), payload).await,
            (true, Blink::Refused) => Err(outage()),
            (true, Blink::ReplyLost) => {
                write(lease.clone(), payload).await?;
                Err(outage())
            }
            (true, Blink::TakenOver) => {
                assert!(self.inner.remove(&lease.key).await?, "the key was held");
                let request = ClaimRequest::new(lease.key.clone(), retention);
                let Claim::Acquired(next) = self.inner.claim(&request).await? else {
                    panic!("a removed key is free");
                };
                assert!(next.fencing > lease.fencing);
                write(next, payload).await?;
                Err(outage())
            }
            (true, Blink::ReplyHangs) => {
                write(lease.clone(), payload).await?;
                std::future::pending().await
            }
            (true, Blink::Slow) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                write(lease.clone(), payload).await
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Finished {
    Completed,
    Failed,
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
        self.write(lease, response, retention, Finished::Completed)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.fails.fetch_add(1, Ordering::SeqCst);
        self.write(lease, failure, retention, Finished::Failed)
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.inner.release(lease).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        let failing = self
            .reads_failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if failing {
            return Err(outage());
        }
        self.inner.read(key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

type Outcome = Result<u32, ExecuteError<OpError, u32>>;

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
                Ok::<_, OpError>(7)
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
    let config = Config::builder()
        .lease_ttl(std::time::Duration::from_secs(2))
        .build()
        .expect("valid config");
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

/// Runs a request whose operation fails permanently, twice.
async fn failing_twice(
    store: FlakyStore,
) -> (
    Arc<FlakyStore>,
    Vec<Result<u32, ExecuteError<OpError, u32>>>,
    usize,
) {
    let store = Arc::new(store);
    let idem = Idempotency::new(Arc::clone(&store));
    let key = Key::new("flaky", "order-2").expect("valid key");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut results = Vec::new();
    for _ in 0..2 {
        let runs = Arc::clone(&runs);
        let result = idem
            .execute(&key, None, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Err::<u32, _>(OpError::Refused)
            })
            .await;
        results.push(result);
    }
    (store, results, runs.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_failure_write_whose_reply_was_lost_is_recognised() {
    let (store, results, runs) = failing_twice(FlakyStore::new(Blink::ReplyLost, 1)).await;
    assert!(
        matches!(
            results[..],
            [
                Err(ExecuteError::Operation(OpError::Refused)),
                Err(ExecuteError::Operation(OpError::Refused))
            ]
        ),
        "{results:?}"
    );
    assert_eq!(runs, 1, "the operation ran again");
    assert_eq!(store.fails.load(Ordering::SeqCst), 2, "the retry found it");
}

/// The retried write meets the key finished by another owner, with the very same payload:
/// that is not this attempt's outcome (another fencing number), so the caller is told its
/// outcome was not recorded.
#[tokio::test]
async fn a_retried_write_that_meets_a_takeover_is_not_recorded() {
    let (store, results, runs) =
        repeatedly(FlakyStore::new(Blink::TakenOver, 1), Config::default(), 1).await;
    match &results[..] {
        [
            Err(ExecuteError::NotRecorded {
                result: Ok(7),
                error: Error::NotRecorded { cause },
            }),
        ] => assert!(matches!(**cause, Error::LeaseLost), "cause {cause:?}"),
        other => panic!("expected NotRecorded with the value, got {other:?}"),
    }
    assert_eq!(runs, 1);
    assert_eq!(store.completes.load(Ordering::SeqCst), 2);
    let (_, failures, _) = failing_twice(FlakyStore::new(Blink::TakenOver, 1)).await;
    assert!(
        matches!(
            &failures[0],
            Err(ExecuteError::NotRecorded {
                result: Err(OpError::Refused),
                error: Error::NotRecorded { .. }
            })
        ),
        "{failures:?}"
    );
}

/// The guard that frees the key of an abandoned operation is disarmed when the operation
/// returns: a slow outcome write is never raced by a release.
#[tokio::test]
async fn a_returned_operation_is_never_released() {
    let (store, results, runs) = twice(FlakyStore::new(Blink::Slow, 1)).await;
    assert!(matches!(results[..], [Ok(7), Ok(7)]), "{results:?}");
    assert_eq!(runs, 1);
    assert_eq!(
        store.releases.load(Ordering::SeqCst),
        0,
        "the key was released"
    );
}

/// The read that recognises a write whose reply was lost meets the same blinking store: it
/// is read again, and the write is recognised, instead of telling the caller its outcome
/// was not recorded while the key holds it.
#[tokio::test]
async fn a_lost_reply_is_recognised_when_the_read_back_blinks_too() {
    let store = FlakyStore::new(Blink::ReplyLost, 1);
    store.reads_failing.store(1, Ordering::SeqCst);
    let (store, results, runs) = twice(store).await;
    assert!(matches!(results[..], [Ok(7), Ok(7)]), "{results:?}");
    assert_eq!(runs, 1, "the operation ran again");
    assert_eq!(store.completes.load(Ordering::SeqCst), 2);
}

/// A write applied whose reply never comes (a connection that hangs) is a lost reply too: it
/// is given up on by the lease's end at the latest, tried again, and recognised by reading
/// the key back. The caller gets its value, and the repeat the replay, instead of the first
/// call waiting forever.
#[tokio::test]
async fn a_write_whose_reply_never_comes_is_recognised() {
    let config = Config::builder()
        .lease_ttl(std::time::Duration::from_secs(2))
        .build()
        .expect("valid config");
    let store = FlakyStore::new(Blink::ReplyHangs, 1);
    let called = repeatedly(store, config, 2);
    let (store, results, runs) = tokio::time::timeout(std::time::Duration::from_secs(20), called)
        .await
        .expect("the first call still waits for the reply that never comes");
    assert!(matches!(results[..], [Ok(7), Ok(7)]), "{results:?}");
    assert_eq!(runs, 1, "the operation ran again");
    assert_eq!(
        store.completes.load(Ordering::SeqCst),
        2,
        "the retry found the key finished"
    );
}

/// The read that would recognise a write whose reply was lost meets a store that stays
/// down: it is read again while the lease lasts (at least three times), then given up on,
/// and the caller gets its value back as not recorded, instead of waiting for the store for
/// ever, past the lease's end.
#[tokio::test(start_paused = true)]
async fn a_read_back_that_stays_down_is_given_up_on_as_the_lease_ends() {
    let config = Config::builder()
        .lease_ttl(std::time::Duration::from_secs(2))
        .build()
        .expect("valid config");
    let store = FlakyStore::new(Blink::ReplyLost, 1);
    store.reads_failing.store(u32::MAX, Ordering::SeqCst);
    let called = repeatedly(store, config, 1);
    // Paused time: the lease's 2 s pass at once; 20 s is only the bound of a hang.
    let (store, results, runs) = tokio::time::timeout(std::time::Duration::from_secs(20), called)
        .await
        .expect("the caller still waits, past the lease, for a read the store never answers");
    match &results[..] {
        [
            Err(ExecuteError::NotRecorded {
                result: Ok(7),
                error: Error::NotRecorded { cause },
            }),
        ] => assert!(matches!(**cause, Error::LeaseLost), "cause {cause:?}"),
        other => panic!("expected NotRecorded with the value, got {other:?}"),
    }
    assert_eq!(runs, 1);
    let reads = u32::MAX - store.reads_failing.load(Ordering::SeqCst);
    assert!(reads >= 3, "the key was read back only {reads} times");
}

/// An outcome written at the first try is written once: the write that ended in its
/// caller's future is not handed on to be carried out again (as a write dropped before it
/// ended is), which would send every outcome to the store twice.
#[tokio::test(start_paused = true)]
async fn an_outcome_written_at_once_is_sent_once() {
    let (store, results, runs) = twice(FlakyStore::new(Blink::Refused, 0)).await;
    assert!(matches!(results[..], [Ok(7), Ok(7)]), "{results:?}");
    assert_eq!(runs, 1);
    // Paused time: every task the attempt left (a write handed on, the renewal supervisor)
    // runs to its end while this sleeps past the lease.
    tokio::time::sleep(Config::default().lease_ttl * 2).await;
    assert_eq!(
        store.completes.load(Ordering::SeqCst),
        1,
        "the outcome was sent again"
    );
    assert_eq!(
        store.releases.load(Ordering::SeqCst),
        0,
        "the key was released"
    );
}
