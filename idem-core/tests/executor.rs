//! The `Idempotency` executor proven on `MemoryStore`, rule by rule (issue 2's "done when").
//!
//! Issue 11 changed two rules pinned here: a dropped caller no longer frees the key under the
//! default `CancelPolicy::Detach` (6b now pins `Release`; the Detach rule is an executor check
//! in idem-tests), and a run whose lease was taken over gets its value back as "not recorded"
//! instead of a bare `LeaseLost` (8b).
//!
//! The rules every store must keep with the executor (one run under concurrency, a retryable
//! failure reruns, a permanent one replays, a panic frees the key, ...) are idem-tests'
//! executor checks, which idem-memory runs on `MemoryStore`; they are not repeated here.
//!
//! Real time with short leases: `MemoryStore` reads `std::time::Instant`, so paused Tokio
//! time would not move its clock. Margins are generous because CI boxes are busy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_core::attempt::CancelPolicy;
use idem_core::{
    Bytes, Claim, ClaimRequest, Config, Error, ExecuteError, Execution, Fingerprint, Idempotency,
    IdempotencyStore, InvalidInput, Key, Lease, RecordState, Retryable, Ttl, WaitPolicy,
};
use idem_memory::MemoryStore;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// An operation's error: `Transient` is retried, `Permanent` is stored and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum OpError {
    Transient(String),
    Permanent(String),
}

impl Retryable for OpError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

type Outcome<T> = Result<T, ExecuteError<OpError, T>>;
type Executed<T> = Result<Execution<T, OpError>, ExecuteError<OpError, T>>;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn key(id: &str) -> Key {
    Key::new("executor-tests", id).expect("valid key")
}

fn config(lease: Duration, wait: WaitPolicy) -> Config {
    Config::builder()
        .lease_ttl(lease)
        .wait(wait)
        .build()
        .expect("valid config")
}

fn executor(config: Config) -> Idempotency<MemoryStore> {
    Idempotency::with_config(MemoryStore::new(), config).expect("valid config")
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(runs: &AtomicUsize) -> usize {
    runs.load(Ordering::SeqCst)
}

/// An operation that counts its run in `runs` and returns `result` at once.
fn counted<T>(
    runs: &Arc<AtomicUsize>,
    result: Result<T, OpError>,
) -> impl FnOnce() -> std::future::Ready<Result<T, OpError>> {
    let runs = Arc::clone(runs);
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(result)
    }
}

/// An `execute_outcome` of [`counted`] returning `value`.
async fn run_counted<T>(
    idem: &Idempotency<MemoryStore>,
    key: &Key,
    runs: &Arc<AtomicUsize>,
    value: T,
) -> Executed<T>
where
    T: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    idem.execute_outcome(key, None, counted(runs, Ok(value)))
        .await
}

/// Starts a call whose operation holds the key for `hold`, and returns once it runs.
async fn start_slow_call(
    idem: &Idempotency<MemoryStore>,
    key: &Key,
    hold: Duration,
    value: u64,
    runs: &Arc<AtomicUsize>,
) -> JoinHandle<Outcome<u64>> {
    let (started_tx, started_rx) = oneshot::channel();
    let (idem, key, runs) = (idem.clone(), key.clone(), Arc::clone(runs));
    let call = tokio::spawn(async move {
        idem.execute(&key, None, move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = started_tx.send(());
            sleep(hold).await;
            Ok(value)
        })
        .await
    });
    started_rx.await.expect("the slow operation started");
    call
}

/// Waits until the store reports the key free, failing after `within`.
async fn await_free(store: &MemoryStore, key: &Key, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match store.read(key).await.expect("read") {
            None => return,
            Some(record) if Instant::now() >= deadline => {
                panic!("the key is still held after {within:?}: {record:?}")
            }
            Some(_) => sleep(ms(10)).await,
        }
    }
}

fn expect_in_progress<T: std::fmt::Debug>(outcome: Outcome<T>) -> Duration {
    match outcome {
        Err(ExecuteError::Idempotency(Error::InProgress { retry_after })) => retry_after,
        other => panic!("expected InProgress, got {other:?}"),
    }
}

// 4a. Fail fast: a repeat during the first run gets InProgress with the lease's time left.
#[tokio::test]
async fn fail_fast_reports_in_progress_with_retry_after() {
    let lease = ms(2_000);
    let idem = executor(config(lease, WaitPolicy::FailFast));
    let key = key("fail-fast");
    let runs = counter();
    let first = start_slow_call(&idem, &key, ms(500), 11, &runs).await;

    let retry_after = expect_in_progress(idem.execute(&key, None, || async { Ok(12u64) }).await);
    assert!(
        !retry_after.is_zero() && retry_after <= lease,
        "retry_after {retry_after:?} is not within (0, {lease:?}]"
    );
    assert_eq!(first.await.expect("no panic").expect("first value"), 11);
    assert_eq!(count(&runs), 1);
    let after = run_counted(&idem, &key, &runs, 13u64)
        .await
        .expect("replay");
    assert_eq!((after.result, after.replayed), (Ok(11), true));
}

// 4b. Wait mode: a repeat waits for the first run and gets its value without running.
#[tokio::test]
async fn wait_mode_returns_the_first_value_without_running() {
    let idem = executor(config(ms(2_000), WaitPolicy::wait(ms(10_000))));
    let key = key("wait");
    let runs = counter();
    let first = start_slow_call(&idem, &key, ms(400), 21, &runs).await;

    let repeat = run_counted(&idem, &key, &runs, 22u64)
        .await
        .expect("waited");
    assert_eq!((repeat.result, repeat.replayed), (Ok(21), true));
    assert_eq!(first.await.expect("no panic").expect("first value"), 21);
    assert_eq!(count(&runs), 1);
}

// 4c. Wait mode with a timeout shorter than the operation gives up with InProgress.
#[tokio::test]
async fn wait_mode_times_out_with_in_progress() {
    let timeout = ms(300);
    let idem = executor(config(ms(3_000), WaitPolicy::wait(timeout)));
    let key = key("wait-timeout");
    let runs = counter();
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let first = tokio::spawn({
        let (idem, key, runs, finished) = (
            idem.clone(),
            key.clone(),
            Arc::clone(&runs),
            Arc::clone(&finished),
        );
        async move {
            idem.execute(&key, None, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = started_tx.send(());
                sleep(ms(2_500)).await;
                finished.store(true, Ordering::SeqCst);
                Ok::<_, OpError>(31u64)
            })
            .await
        }
    });
    started_rx.await.expect("started");

    let began = Instant::now();
    let waited = idem.execute(&key, None, || async { Ok(32u64) }).await;
    let elapsed = began.elapsed();
    expect_in_progress(waited);
    assert!(
        elapsed >= timeout,
        "gave up after {elapsed:?}, before the timeout"
    );
    assert!(
        !finished.load(Ordering::SeqCst),
        "the waiter waited for the operation instead of timing out"
    );
    assert_eq!(first.await.expect("no panic").expect("first value"), 31);
    assert_eq!(count(&runs), 1);
}

// 5. An operation slower than three lease TTLs keeps its key through renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_operation_keeps_its_lease() {
    let lease = ms(600);
    let idem = executor(config(lease, WaitPolicy::FailFast));
    let key = key("renewed");
    let runs = counter();
    let first = start_slow_call(&idem, &key, lease * 3 + ms(400), 41, &runs).await;

    let intruder_runs = counter();
    let mut refused = 0;
    while !first.is_finished() {
        let poll = run_counted(&idem, &key, &intruder_runs, 42u64).await;
        match poll {
            Err(ExecuteError::Idempotency(Error::InProgress { retry_after })) => {
                assert!(retry_after <= lease);
                refused += 1;
            }
            // Only once the first run has finished and stored its value.
            Ok(Execution {
                result: Ok(41),
                replayed: true,
                ..
            }) => {}
            other => panic!("a repeat during the slow run got {other:?}"),
        }
        sleep(ms(50)).await;
    }
    assert_eq!(
        count(&intruder_runs),
        0,
        "a repeat took over a renewed lease"
    );
    assert!(
        refused > 10,
        "only {refused} repeats were polled during the slow run"
    );
    assert_eq!(first.await.expect("no panic").expect("stored value"), 41);
    let replay = run_counted(&idem, &key, &runs, 43u64)
        .await
        .expect("replay");
    assert_eq!((replay.result, replay.replayed), (Ok(41), true));
    assert_eq!(count(&runs), 1);
}

/// Drops `call` while its operation still runs (it runs for 30 s), then insists that the key
/// is free at once and the next call runs.
async fn expect_freed_when_dropped<T: std::fmt::Debug>(
    idem: &Idempotency<MemoryStore>,
    key: &Key,
    call: impl Future<Output = T>,
) {
    let cancelled = tokio::time::timeout(ms(100), call).await;
    assert!(
        cancelled.is_err(),
        "the operation should still have been running"
    );
    await_free(idem.store(), key, ms(5_000)).await;
    let runs = counter();
    let next = run_counted(idem, key, &runs, 61u64).await.expect("runs");
    assert_eq!((next.result, next.replayed), (Ok(61), false));
}

// 6b. Under CancelPolicy::Release, and always for `execute_scoped`, a dropped (cancelled)
// execute future frees its key. (Under the default Detach it no longer does: issue 11; that
// rule is idem-tests' `dropped_caller_runs_once`.)
#[tokio::test]
async fn cancelled_execution_frees_the_key_under_release() {
    let release = Config::builder()
        .lease_ttl(ms(20_000))
        .cancel_policy(CancelPolicy::Release)
        .build()
        .expect("valid config");
    let idem = executor(release);
    let key = key("cancelled");
    let runs = counter();
    let call = idem.execute(&key, None, {
        let runs = Arc::clone(&runs);
        || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            sleep(ms(30_000)).await;
            Ok::<u64, OpError>(0)
        }
    });
    expect_freed_when_dropped(&idem, &key, call).await;
    assert_eq!(count(&runs), 1);
}

#[tokio::test]
async fn cancelled_scoped_execution_frees_the_key() {
    let idem = executor(config(ms(20_000), WaitPolicy::FailFast));
    let key = key("cancelled-scoped");
    let borrowed = AtomicUsize::new(0);
    let call = idem.execute_scoped(&key, None, || async {
        borrowed.fetch_add(1, Ordering::SeqCst);
        sleep(ms(30_000)).await;
        Ok::<u64, OpError>(0)
    });
    expect_freed_when_dropped(&idem, &key, call).await;
    assert_eq!(count(&borrowed), 1);
}

// 7. A fingerprint mismatch is rejected and leaves the stored record as it was.
#[tokio::test]
async fn fingerprint_mismatch_is_rejected_and_changes_nothing() {
    let idem = executor(Config::default());
    let key = key("fingerprint");
    let runs = counter();
    let original = Some(Fingerprint::of(&("order-1", 100)).expect("fingerprint"));
    let other = Some(Fingerprint::of(&("order-1", 999)).expect("fingerprint"));
    let stored: u64 = idem
        .execute(&key, original, counted(&runs, Ok(71)))
        .await
        .expect("runs");
    assert_eq!(stored, 71);
    let before = idem
        .store()
        .read(&key)
        .await
        .expect("read")
        .expect("stored");

    for fingerprint in [other, None] {
        let outcome: Outcome<u64> = idem
            .execute(&key, fingerprint, counted(&runs, Ok(72)))
            .await;
        assert!(
            matches!(
                outcome,
                Err(ExecuteError::Idempotency(Error::FingerprintMismatch))
            ),
            "got {outcome:?}"
        );
    }
    let after = idem
        .store()
        .read(&key)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(
        (&after.state, after.fencing, after.fingerprint),
        (&before.state, before.fencing, before.fingerprint)
    );
    assert_eq!(count(&runs), 1);
}

// 8a. At the store: a lapsed lease taken over by another owner cannot finish the key.
#[tokio::test]
async fn stale_lease_cannot_complete() {
    let store = MemoryStore::new();
    let key = key("stale-store");
    let short = Ttl::from_millis(100).expect("ttl");
    let Claim::Acquired(stale) = store
        .claim(&ClaimRequest::new(key.clone(), short))
        .await
        .expect("claim")
    else {
        panic!("a fresh key is acquired");
    };
    sleep(ms(400)).await;
    let long = Ttl::from_secs(30).expect("ttl");
    let Claim::Acquired(current) = store
        .claim(&ClaimRequest::new(key.clone(), long))
        .await
        .expect("claim")
    else {
        panic!("a lapsed lease is taken over");
    };
    assert!(current.fencing > stale.fencing);

    let retention = Ttl::from_secs(60).expect("ttl");
    let stale_complete = store
        .complete(&stale, Bytes::from_static(b"1"), retention)
        .await;
    assert!(matches!(stale_complete, Err(Error::LeaseLost)));
    let stale_fail = store
        .fail(&stale, Bytes::from_static(b"1"), retention)
        .await;
    assert!(matches!(stale_fail, Err(Error::LeaseLost)));
    assert!(matches!(
        store.renew(&stale, long).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(store.release(&stale).await, Err(Error::LeaseLost)));
    assert_claimed_by(&store, &key, &current).await;
}

async fn assert_claimed_by(store: &MemoryStore, key: &Key, lease: &Lease) {
    let record = store.read(key).await.expect("read").expect("claimed");
    assert_eq!(
        (record.state, record.fencing),
        (RecordState::Claimed { owner: lease.owner }, lease.fencing)
    );
}

// 8b. Through the executor: a run whose lease was taken over stores nothing, and its caller
// gets the value back as "not recorded", with LeaseLost as the cause (issue 11: it used to
// get a bare LeaseLost and lose the value).
#[tokio::test]
async fn taken_over_execution_is_not_recorded() {
    let store = MemoryStore::new();
    let idem = Idempotency::with_config(store.clone(), config(ms(5_000), WaitPolicy::FailFast))
        .expect("valid config");
    let key = key("stale-executor");
    let usurper = Arc::new(Mutex::new(None));
    let outcome: Outcome<String> = idem
        .execute(&key, None, {
            let (store, key, usurper) = (store.clone(), key.clone(), Arc::clone(&usurper));
            || async move {
                assert!(store.remove(&key).await.expect("remove"));
                let request = ClaimRequest::new(key.clone(), Ttl::from_secs(30).expect("ttl"));
                let Claim::Acquired(lease) = store.claim(&request).await.expect("claim") else {
                    panic!("a removed key is free");
                };
                *usurper.lock().expect("lock") = Some(lease);
                Ok("from the stale owner".to_string())
            }
        })
        .await;
    match outcome {
        Err(ExecuteError::NotRecorded {
            result: Ok(value),
            error: Error::NotRecorded { cause },
        }) => {
            assert_eq!(value, "from the stale owner");
            assert!(matches!(*cause, Error::LeaseLost), "cause {cause:?}");
        }
        other => panic!("expected NotRecorded with the value, got {other:?}"),
    }
    let usurper = usurper.lock().expect("lock").take().expect("claimed");
    assert_claimed_by(&store, &key, &usurper).await;
}

// 9. A response over Config::max_payload: the first caller gets it, repeats get
// PayloadTooLarge, and the operation never reruns.
#[tokio::test]
async fn oversized_response_is_returned_once_then_reported() {
    let idem = executor(
        Config::builder()
            .max_payload(64)
            .build()
            .expect("valid config"),
    );
    let runs = counter();
    let big = "x".repeat(1_000);
    let key = key("too-large");
    let first = run_counted(&idem, &key, &runs, big.clone())
        .await
        .expect("runs");
    assert_eq!((first.result, first.replayed), (Ok(big.clone()), false));
    for _ in 0..2 {
        let repeat = run_counted(&idem, &key, &runs, big.clone()).await;
        assert!(
            matches!(repeat, Err(ExecuteError::Idempotency(Error::PayloadTooLarge { size, limit: 64 })) if size > 1_000),
            "got {repeat:?}"
        );
    }
    assert_eq!(count(&runs), 1);

    let failure_key = self::key("too-large-failure");
    let huge = OpError::Permanent("y".repeat(1_000));
    let first: Outcome<u64> = idem
        .execute(&failure_key, None, {
            let huge = huge.clone();
            || async move { Err(huge) }
        })
        .await;
    assert!(matches!(first, Err(ExecuteError::Operation(e)) if e == huge));
    let repeat = run_counted(&idem, &failure_key, &runs, 0u64).await;
    assert!(
        matches!(
            repeat,
            Err(ExecuteError::Idempotency(Error::PayloadTooLarge {
                limit: 64,
                ..
            }))
        ),
        "got {repeat:?}"
    );
    assert_eq!(count(&runs), 1);
}

// 9b. The same when the store's own payload limit is the smaller one.
#[tokio::test]
async fn response_over_the_store_limit_is_returned_once_then_reported() {
    let store = MemoryStore::new().with_max_payload(64);
    let idem = Idempotency::with_config(store, Config::default()).expect("valid config");
    let runs = counter();
    let big = "z".repeat(1_000);
    let key = key("too-large-for-store");
    let first = run_counted(&idem, &key, &runs, big.clone())
        .await
        .expect("runs");
    assert_eq!((first.result, first.replayed), (Ok(big.clone()), false));
    let repeat = run_counted(&idem, &key, &runs, big).await;
    assert!(
        matches!(repeat, Err(ExecuteError::Idempotency(Error::PayloadTooLarge { size, limit: 64 })) if size > 1_000),
        "got {repeat:?}"
    );
    assert_eq!(count(&runs), 1);
}

// 10. Invalid settings are rejected up front.
#[test]
fn invalid_config_is_rejected() {
    // Written into the public fields, past the builder's check: the executor checks again.
    let zero = Duration::ZERO;
    let backoff = |initial_backoff, max_backoff| WaitPolicy::Wait {
        timeout: ms(100),
        initial_backoff,
        max_backoff,
    };
    let bad: [&dyn Fn(&mut Config); 6] = [
        &|c| c.lease_ttl = zero,
        &|c| c.lease_ttl = Ttl::MAX + ms(1),
        &|c| c.success_retention = zero,
        &|c| c.failure_retention = zero,
        &|c| c.wait = backoff(zero, ms(10)),
        &|c| c.wait = backoff(ms(20), ms(10)),
    ];
    for set in bad {
        let mut config = Config::default();
        set(&mut config);
        let built = Idempotency::with_config(MemoryStore::new(), config.clone());
        assert!(
            matches!(built, Err(Error::InvalidInput(_))),
            "{config:?} was accepted"
        );
    }
    let zero_lease = Config::builder().lease_ttl(zero).build();
    assert!(matches!(
        zero_lease,
        Err(Error::InvalidInput(InvalidInput::ZeroTtl))
    ));
    assert!(Idempotency::with_config(MemoryStore::new(), Config::default()).is_ok());
}

// 10b. Huge but valid wait settings mean "wait as long as it takes", never an overflow.
#[tokio::test]
async fn unbounded_wait_settings_do_not_overflow() {
    let forever = WaitPolicy::Wait {
        timeout: Duration::MAX,
        initial_backoff: Duration::MAX,
        max_backoff: Duration::MAX,
    };
    let idem = executor(config(ms(300), forever));
    let key = key("forever");
    let runs = counter();
    let first = start_slow_call(&idem, &key, ms(100), 81, &runs).await;
    let repeat = run_counted(&idem, &key, &runs, 82u64)
        .await
        .expect("waited");
    assert_eq!(repeat.result, Ok(81));
    assert_eq!(first.await.expect("no panic").expect("first value"), 81);
    assert_eq!(count(&runs), 1);
}

// 12a. A stored success is decoded into the caller's type.
#[tokio::test]
async fn replay_decodes_into_the_callers_type() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Receipt {
        charge_id: u64,
        lines: Vec<String>,
        note: Option<String>,
    }
    let idem = executor(Config::default());
    let key = key("typed");
    let runs = counter();
    let receipt = Receipt {
        charge_id: 77,
        lines: vec!["a".into(), "ü🙂".into()],
        note: None,
    };
    let first = run_counted(&idem, &key, &runs, receipt.clone())
        .await
        .expect("runs");
    assert_eq!(first.result, Ok(receipt.clone()));
    let other = Receipt {
        charge_id: 0,
        lines: vec![],
        note: Some("never".into()),
    };
    let replay = run_counted(&idem, &key, &runs, other)
        .await
        .expect("replays");
    assert_eq!((replay.result, replay.replayed), (Ok(receipt), true));

    // Asking for another type is a typed error, not a panic and not a rerun.
    let wrong_type = run_counted(&idem, &key, &runs, 5u64).await;
    assert!(
        matches!(
            wrong_type,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {wrong_type:?}"
    );
    assert_eq!(count(&runs), 1);
}

/// A stored float replays as the very float that ran, bit for bit: `serde_json` writes the
/// shortest text that round-trips, and must read it back exactly (its default, faster float
/// parsing is off by one ulp for many values, such as these).
#[tokio::test]
async fn a_stored_float_replays_as_the_same_float() {
    let idem = executor(Config::default());
    let runs = counter();
    let floats = vec![
        15.884_001_440_776_327_f64,
        216_748.991_075_087_02,
        1.071_566_039_146_582_6e-75,
    ];
    let first = run_counted(&idem, &key("floats"), &runs, floats.clone())
        .await
        .expect("runs");
    assert_eq!(first.result, Ok(floats.clone()));
    let replay = run_counted(&idem, &key("floats"), &runs, vec![])
        .await
        .expect("replays");
    assert!(replay.replayed);
    let replayed = replay.result.expect("a success");
    let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&replayed), bits(&floats), "{replayed:?} != {floats:?}");
    assert_eq!(count(&runs), 1);
}

/// JSON has no NaN or infinity: `serde_json` writes `null`, which reads back as another value
/// (`None`, here) or not at all. The run's caller gets its value; a repeat gets a
/// serialization error, never a value that did not run.
#[tokio::test]
async fn a_non_finite_float_is_not_replayed_as_another_value() {
    let idem = executor(Config::default());
    let runs = counter();
    let first = run_counted(&idem, &key("nan"), &runs, Some(f64::NAN))
        .await
        .expect("runs");
    assert!(first.result.expect("a success").is_some_and(f64::is_nan));
    let replay = run_counted(&idem, &key("nan"), &runs, Some(1.0_f64)).await;
    assert!(
        matches!(
            replay,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {replay:?}"
    );
    // Also inside a map whose keys are not strings (which serde_json quotes).
    let map = BTreeMap::from([(7_u32, Some(f32::INFINITY))]);
    run_counted(&idem, &key("inf-map"), &runs, map.clone())
        .await
        .expect("runs");
    let replay = run_counted(&idem, &key("inf-map"), &runs, map).await;
    assert!(
        matches!(
            replay,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {replay:?}"
    );
    assert_eq!(count(&runs), 2);
}

/// `Some` of a value JSON writes as `null` (a `None`, a unit) has no JSON form of its own:
/// `serde_json` writes `null`, which reads back as the outer `None`, a value that never ran.
/// The run's caller gets its value; a repeat gets a serialization error.
#[tokio::test]
async fn a_some_written_as_null_is_not_replayed_as_none() {
    let idem = executor(Config::default());
    let runs = counter();
    let first = run_counted(&idem, &key("some-none"), &runs, Some(None::<u32>))
        .await
        .expect("runs");
    assert_eq!(first.result, Ok(Some(None)));
    let replay = run_counted(&idem, &key("some-none"), &runs, Some(Some(1_u32))).await;
    assert!(
        matches!(
            replay,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {replay:?}"
    );
    // Inside a struct field too, and with a unit inside.
    let fields = BTreeMap::from([("unit".to_owned(), Some(()))]);
    run_counted(&idem, &key("some-unit"), &runs, fields.clone())
        .await
        .expect("runs");
    let replay = run_counted(&idem, &key("some-unit"), &runs, fields).await;
    assert!(
        matches!(
            replay,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {replay:?}"
    );
    assert_eq!(count(&runs), 2);

    // A `Deserialize` that reads such a `null` as the `Some` it was gets it replayed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Patch {
        #[serde(default, deserialize_with = "null_as_some")]
        name: Option<Option<String>>,
    }
    fn null_as_some<'de, D>(deserializer: D) -> Result<Option<Option<String>>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        Option::<String>::deserialize(deserializer).map(Some)
    }
    let cleared = Patch { name: Some(None) };
    run_counted(&idem, &key("some-kept"), &runs, cleared.clone())
        .await
        .expect("runs");
    let replay = run_counted(&idem, &key("some-kept"), &runs, Patch { name: None })
        .await
        .expect("replays");
    assert_eq!((replay.result, replay.replayed), (Ok(cleared), true));
    assert_eq!(count(&runs), 3);
}

/// `serde_json` reads no JSON nested deeper than 127 arrays or objects, so an outcome nested
/// deeper has no stored form a replay can read: the run's caller gets its value; a repeat
/// gets a serialization error (not a "corrupt record": idem wrote it). One just within the
/// limit replays as itself.
#[tokio::test]
async fn an_outcome_nested_too_deep_to_read_back_is_a_serialization_error() {
    let nested = |depth: usize| {
        (0..depth).fold(serde_json::Value::Null, |inner, _| {
            serde_json::Value::Array(vec![inner])
        })
    };
    let idem = executor(Config::default());
    let runs = counter();
    let deepest = nested(127);
    run_counted(&idem, &key("deepest"), &runs, deepest.clone())
        .await
        .expect("runs");
    let replay = run_counted(&idem, &key("deepest"), &runs, nested(1))
        .await
        .expect("replays");
    assert_eq!((replay.result, replay.replayed), (Ok(deepest), true));
    let too_deep = nested(128);
    let first = run_counted(&idem, &key("too-deep"), &runs, too_deep.clone())
        .await
        .expect("runs");
    assert_eq!(first.result, Ok(too_deep));
    let replay = run_counted(&idem, &key("too-deep"), &runs, nested(1)).await;
    assert!(
        matches!(
            replay,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {replay:?}"
    );
    assert_eq!(count(&runs), 2);
}

/// A value whose `Serialize` panics: user code the executor runs after the operation returned.
#[derive(Debug, PartialEq, Deserialize)]
struct PanicsWhenWritten(u32);

impl Serialize for PanicsWhenWritten {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this Serialize panics")
    }
}

/// A `Serialize` that panics runs after the operation returned, whose effects may have
/// happened: its outcome is recorded as one that could not be stored, as one JSON cannot
/// hold. The run's caller gets its value and a repeat a serialization error; the key is not
/// left claimed, to run the operation a second time once the lease ends.
#[tokio::test]
async fn an_outcome_whose_serialize_panics_is_not_run_again() {
    let lease = ms(300);
    let idem = executor(config(lease, WaitPolicy::FailFast));
    let runs = counter();
    let first =
        tokio::spawn({
            let (idem, runs) = (idem.clone(), Arc::clone(&runs));
            async move {
                run_counted(&idem, &key("serialize-panics"), &runs, PanicsWhenWritten(7)).await
            }
        })
        .await;
    assert!(
        matches!(
            &first,
            Ok(Ok(Execution {
                result: Ok(PanicsWhenWritten(7)),
                ..
            }))
        ),
        "the run's caller gets its value: {first:?}"
    );
    // Past the lease: a key left claimed would be taken over now, and run again.
    sleep(lease * 3).await;
    let replay = run_counted(&idem, &key("serialize-panics"), &runs, PanicsWhenWritten(8)).await;
    assert!(
        matches!(
            replay,
            Err(ExecuteError::Idempotency(Error::Serialization { .. }))
        ),
        "got {replay:?}"
    );
    assert_eq!(count(&runs), 1);
}

// 12b. Garbage in the store is a CorruptRecord from execute.
#[tokio::test]
async fn stored_garbage_is_a_corrupt_record() {
    let idem = executor(Config::default());
    let store = idem.store();
    let runs = counter();
    let retention = Ttl::from_secs(60).expect("ttl");
    for (id, completed) in [("garbage-completed", true), ("garbage-failed", false)] {
        let key = key(id);
        let request = ClaimRequest::new(key.clone(), Ttl::from_secs(30).expect("ttl"));
        let Claim::Acquired(lease) = store.claim(&request).await.expect("claim") else {
            panic!("a fresh key is acquired");
        };
        let garbage = Bytes::from_static(b"\xff\x00 not json {");
        if completed {
            store
                .complete(&lease, garbage, retention)
                .await
                .expect("complete");
        } else {
            store.fail(&lease, garbage, retention).await.expect("fail");
        }
        let outcome: Outcome<u64> = idem.execute(&key, None, counted(&runs, Ok(1))).await;
        assert!(
            matches!(
                outcome,
                Err(ExecuteError::Idempotency(Error::CorruptRecord { .. }))
            ),
            "{id}: got {outcome:?}"
        );
    }
    assert_eq!(count(&runs), 0);
}

// 11. Tracing: one "idem.execute" span per execution, with the namespace and the outcome,
// recorded while the span is open, and no payloads anywhere.
mod tracing_capture {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    type Fields = BTreeMap<String, String>;

    #[derive(Debug, Clone)]
    struct SpanSeen {
        name: &'static str,
        fields: Fields,
    }

    #[derive(Default, Clone)]
    struct Capture {
        open: Arc<Mutex<HashMap<u64, SpanSeen>>>,
        closed: Arc<Mutex<Vec<SpanSeen>>>,
        events: Arc<Mutex<Vec<Fields>>>,
    }

    struct Collect<'a>(&'a mut Fields);

    impl Visit for Collect<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            let name = attrs.metadata().name();
            let seen = SpanSeen { name, fields };
            self.open.lock().expect("lock").insert(id.into_u64(), seen);
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            if let Some(span) = self.open.lock().expect("lock").get_mut(&id.into_u64()) {
                values.record(&mut Collect(&mut span.fields));
            }
        }

        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields::new();
            event.record(&mut Collect(&mut fields));
            self.events.lock().expect("lock").push(fields);
        }

        fn on_close(&self, id: Id, _: Context<'_, S>) {
            if let Some(span) = self.open.lock().expect("lock").remove(&id.into_u64()) {
                self.closed.lock().expect("lock").push(span);
            }
        }
    }

    const NAMESPACE: &str = "traced";
    const SECRET: &str = "SECRET-PAYLOAD-5f1d";

    fn traced_key(id: &str) -> Key {
        Key::new(NAMESPACE, id).expect("valid key")
    }

    /// Produces one execution of each outcome.
    async fn run_every_outcome() {
        let store = MemoryStore::new();
        let idem = Idempotency::with_config(store.clone(), config(ms(5_000), WaitPolicy::FailFast))
            .expect("valid config");
        let runs = counter();
        let done = traced_key("done");
        let fingerprint = Some(Fingerprint::from_bytes(SECRET.as_bytes()));
        let secret = || async { Ok::<_, OpError>(SECRET.to_string()) };
        idem.execute(&done, fingerprint, secret)
            .await
            .expect("executed");
        idem.execute(&done, fingerprint, secret)
            .await
            .expect("replayed");
        let mismatch = idem.execute(&done, None, secret).await;
        assert!(matches!(
            mismatch,
            Err(ExecuteError::Idempotency(Error::FingerprintMismatch))
        ));

        let busy = traced_key("busy");
        let first = start_slow_call(&idem, &busy, ms(200), 1, &runs).await;
        expect_in_progress(idem.execute(&busy, None, || async { Ok(2u64) }).await);
        first.await.expect("no panic").expect("executed");

        let stolen = traced_key("stolen");
        let lost: Outcome<String> = idem
            .execute(&stolen, None, {
                let (store, stolen) = (store.clone(), stolen.clone());
                || async move {
                    store.remove(&stolen).await.expect("remove");
                    let request =
                        ClaimRequest::new(stolen.clone(), Ttl::from_secs(30).expect("ttl"));
                    store.claim(&request).await.expect("claim");
                    Ok(SECRET.to_string())
                }
            })
            .await;
        assert!(matches!(lost, Err(ExecuteError::NotRecorded { .. })));
    }

    #[tokio::test]
    async fn execute_spans_carry_namespace_and_outcome_but_no_payload() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        {
            let _default = tracing::subscriber::set_default(subscriber);
            run_every_outcome().await;
        }
        let closed = capture.closed.lock().expect("lock").clone();
        let executions: Vec<_> = closed.iter().filter(|s| s.name == "idem.execute").collect();
        let mut outcomes: Vec<_> = executions
            .iter()
            .map(|s| {
                s.fields
                    .get("outcome")
                    .map(String::as_str)
                    .unwrap_or("<unrecorded>")
            })
            .collect();
        outcomes.sort_unstable();
        assert_eq!(
            outcomes,
            [
                "executed",
                "executed",
                "in_progress",
                "mismatch",
                "not_recorded",
                "replayed"
            ],
            "spans: {executions:?}"
        );
        for span in &executions {
            assert_eq!(
                span.fields.get("namespace").map(String::as_str),
                Some(NAMESPACE)
            );
        }
        let events = capture.events.lock().expect("lock").clone();
        let all_values = closed
            .iter()
            .flat_map(|s| s.fields.values())
            .chain(events.iter().flat_map(|e| e.values()));
        for value in all_values {
            assert!(
                !value.contains(SECRET),
                "a payload reached tracing: {value}"
            );
        }
    }
}

/// What the caller prints and chains: the operation's own error is named as such and is the
/// source; the executor's errors read as themselves.
#[test]
fn execute_errors_display_and_chain_their_cause() {
    use std::error::Error as _;
    let io = || std::io::Error::other("disk on fire");
    let operation: ExecuteError<std::io::Error, u32> = ExecuteError::Operation(io());
    assert_eq!(operation.to_string(), "operation failed: disk on fire");
    assert_eq!(
        operation.source().map(ToString::to_string),
        Some("disk on fire".to_owned())
    );
    let idempotency: ExecuteError<std::io::Error, u32> = Error::LeaseLost.into();
    assert_eq!(idempotency.to_string(), Error::LeaseLost.to_string());
    assert!(matches!(
        idempotency.source().and_then(|e| e.downcast_ref::<Error>()),
        Some(Error::LeaseLost)
    ));
    let not_recorded: ExecuteError<std::io::Error, u32> = ExecuteError::NotRecorded {
        result: Ok(7),
        error: Error::LeaseLost,
    };
    assert_eq!(not_recorded.to_string(), Error::LeaseLost.to_string());
    assert!(not_recorded.source().is_some());
    let shown = format!("{:?}", executor(Config::default()));
    assert!(
        shown.starts_with("Idempotency {") && shown.contains("settings"),
        "{shown}"
    );
}

/// An execute on a store behind `Arc<dyn IdempotencyStore>` can be spawned: its future is
/// `Send` for rustc too, though the engine calls the store's unboxed steps (which a trait
/// object does not have; it falls back on the boxed ones).
#[tokio::test]
async fn an_execute_on_a_store_trait_object_can_be_spawned() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
    let idem = Idempotency::new(store);
    let key = Key::new("executor", "dyn-spawned").expect("a valid key");
    let call = tokio::spawn({
        let (idem, key) = (idem.clone(), key.clone());
        async move {
            idem.execute(&key, None, || async { Ok::<_, OpError>(5_u32) })
                .await
                .map_err(|e| format!("{e:?}"))
        }
    });
    assert_eq!(call.await.expect("no panic"), Ok(5));
    let replay = idem
        .execute(&key, None, || async { Ok::<_, OpError>(6_u32) })
        .await
        .map_err(|e| format!("{e:?}"));
    assert_eq!(replay, Ok(5), "the stored outcome replays");
}

/// An operation that panics as it is called, before it gives its future (a closure that
/// validates its input with `unwrap` before its `async` block), releases its key like one
/// that panics in its future: the next request runs, instead of finding the key in
/// progress until the lease ends.
#[tokio::test]
async fn an_operation_that_panics_before_giving_its_future_frees_the_key() {
    let idem = Arc::new(Idempotency::new(MemoryStore::new()));
    let first = tokio::spawn({
        let idem = Arc::clone(&idem);
        async move {
            idem.execute(
                &key("panics-when-called"),
                None,
                || -> std::future::Ready<Result<u32, OpError>> {
                    panic!("the input did not validate")
                },
            )
            .await
        }
    });
    assert!(
        first.await.is_err_and(|e| e.is_panic()),
        "the panic reaches the caller"
    );
    let mut answer = None;
    for _ in 0..100 {
        match idem
            .execute(&key("panics-when-called"), None, || async {
                Ok::<u32, OpError>(2)
            })
            .await
        {
            Err(ExecuteError::Idempotency(Error::InProgress { .. })) => sleep(ms(10)).await,
            other => {
                answer = Some(other);
                break;
            }
        }
    }
    assert!(
        matches!(answer, Some(Ok(2))),
        "the key is still in progress a second after the panic: {answer:?}"
    );
}

/// A store whose claims are applied but whose replies are lost on the way: never answered
/// while `hang` is set (a connection hangs), answered `Unavailable` while `lost` counts down
/// (a client timeout fires). With `refuse_again` set, a claim after one was applied is
/// refused with a `Backend` error, unapplied (the server failing otherwise on the resend).
/// `released` counts the releases sent to it.
#[derive(Debug, Default)]
struct ClaimReplyHangs {
    inner: MemoryStore,
    hang: AtomicBool,
    lost: std::sync::atomic::AtomicU32,
    applied: AtomicUsize,
    refuse_again: AtomicBool,
    released: AtomicUsize,
}

#[idem_core::async_trait]
impl IdempotencyStore for ClaimReplyHangs {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        if self.refuse_again.load(Ordering::SeqCst) && self.applied.load(Ordering::SeqCst) > 0 {
            return Err(Error::backend(std::io::Error::other("refused")));
        }
        let claim = self.inner.claim(request).await;
        self.applied.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self
            .lost
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            return Err(Error::unavailable(std::io::Error::other("reply lost")));
        }
        claim
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.released.fetch_add(1, Ordering::SeqCst);
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// A caller that goes away while its claim is in flight (applied by the store, the reply not
/// back yet) never started the operation: its key is freed at once, as for a caller gone
/// before its operation's first poll, not left "in progress" for the whole lease with no
/// one running it.
#[tokio::test]
async fn a_caller_gone_while_its_claim_is_in_flight_frees_the_key() {
    let store = ClaimReplyHangs {
        hang: AtomicBool::new(true),
        ..ClaimReplyHangs::default()
    };
    let idem = Idempotency::with_config(store, config(ms(30_000), WaitPolicy::FailFast))
        .expect("valid config");
    let key = key("claim-in-flight");
    let runs = counter();
    let call = idem.execute(&key, None, counted(&runs, Ok(1_u64)));
    let gone = tokio::time::timeout(ms(100), call).await;
    assert!(gone.is_err(), "the claim's reply never came: {gone:?}");
    assert_eq!(idem.store().applied.load(Ordering::SeqCst), 1, "claimed");
    assert_eq!(count(&runs), 0, "the operation never started");
    idem.store().hang.store(false, Ordering::SeqCst);
    await_free(&idem.store().inner, &key, ms(5_000)).await;
    let next = idem
        .execute_outcome(&key, None, counted(&runs, Ok(2_u64)))
        .await
        .expect("runs");
    assert_eq!((next.result, next.replayed), (Ok(2), false));
}

/// A caller that goes away while its claim is in flight, on a key another caller holds,
/// frees nothing: the key shows another owner, so no release is sent for it (one would
/// present a lease the caller never held, the other owner's fencing number with its own
/// token, and only the store's owner check would stand between it and the other caller's
/// key). The other caller's lease is untouched and finishes the key.
#[tokio::test]
async fn a_caller_gone_while_its_claim_is_in_flight_sends_no_release_for_another_owners_key() {
    let idem = Idempotency::with_config(
        ClaimReplyHangs::default(),
        config(ms(30_000), WaitPolicy::FailFast),
    )
    .expect("valid config");
    let key = key("claim-in-flight-held-elsewhere");
    let holder = ClaimRequest::new(key.clone(), Ttl::from_secs(30).expect("ttl"));
    let Ok(Claim::Acquired(held)) = idem.store().inner.claim(&holder).await else {
        panic!("a fresh key is acquired");
    };
    idem.store().hang.store(true, Ordering::SeqCst);
    let runs = counter();
    let call = idem.execute(&key, None, counted(&runs, Ok(1_u64)));
    let gone = tokio::time::timeout(ms(100), call).await;
    assert!(gone.is_err(), "the claim's reply never came: {gone:?}");
    // The freeing runs on a task of this (single-threaded) runtime: let it run to its end.
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..1_000 {
        if metrics.num_alive_tasks() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), 0, "the freeing never ended");
    assert_eq!(
        idem.store().released.load(Ordering::SeqCst),
        0,
        "a release was sent"
    );
    assert_eq!(count(&runs), 0, "the operation never started");
    assert_claimed_by(&idem.store().inner, &key, &held).await;
    idem.store()
        .inner
        .complete(
            &held,
            Bytes::from_static(b"1"),
            Ttl::from_secs(60).expect("ttl"),
        )
        .await
        .expect("the holder finishes the key");
}

/// A claim whose every send was applied but answered `Unavailable` (the replies lost) holds
/// the key for an owner that gives up: the caller gets `Unavailable` and the operation never
/// starts, so the key is freed at once, not left "in progress" until the lease ends.
#[tokio::test]
async fn a_claim_given_up_as_unavailable_frees_the_key_it_was_granted() {
    let store = ClaimReplyHangs {
        lost: u32::MAX.into(),
        ..ClaimReplyHangs::default()
    };
    let idem = Idempotency::with_config(store, config(ms(30_000), WaitPolicy::FailFast))
        .expect("valid config");
    let key = key("claim-given-up");
    let runs = counter();
    let outcome = idem.execute(&key, None, counted(&runs, Ok(1_u64))).await;
    assert!(
        matches!(
            outcome,
            Err(ExecuteError::Idempotency(Error::Unavailable { .. }))
        ),
        "{outcome:?}"
    );
    assert!(idem.store().applied.load(Ordering::SeqCst) > 0, "claimed");
    assert_eq!(count(&runs), 0, "the operation never started");
    idem.store().lost.store(0, Ordering::SeqCst);
    await_free(&idem.store().inner, &key, ms(5_000)).await;
    let next = idem
        .execute_outcome(&key, None, counted(&runs, Ok(2_u64)))
        .await
        .expect("runs");
    assert_eq!((next.result, next.replayed), (Ok(2), false));
}

/// A claim applied but answered `Unavailable` (its reply lost), whose resend then fails
/// otherwise (a `Backend` error), holds the key for an owner that gives up just the same:
/// the operation never starts, so the key is freed at once, not left "in progress" until
/// the lease ends.
#[tokio::test]
async fn a_claim_whose_resend_fails_frees_the_key_its_first_send_was_granted() {
    let store = ClaimReplyHangs {
        lost: 1.into(),
        refuse_again: true.into(),
        ..ClaimReplyHangs::default()
    };
    let idem = Idempotency::with_config(store, config(ms(30_000), WaitPolicy::FailFast))
        .expect("valid config");
    let key = key("claim-resend-fails");
    let runs = counter();
    let outcome = idem.execute(&key, None, counted(&runs, Ok(1_u64))).await;
    assert!(
        matches!(
            outcome,
            Err(ExecuteError::Idempotency(Error::Backend { .. }))
        ),
        "{outcome:?}"
    );
    assert_eq!(
        idem.store().applied.load(Ordering::SeqCst),
        1,
        "claimed once"
    );
    assert_eq!(count(&runs), 0, "the operation never started");
    idem.store().refuse_again.store(false, Ordering::SeqCst);
    await_free(&idem.store().inner, &key, ms(5_000)).await;
    let next = idem
        .execute_outcome(&key, None, counted(&runs, Ok(2_u64)))
        .await
        .expect("runs");
    assert_eq!((next.result, next.replayed), (Ok(2), false));
}

/// A store whose outcome writes take `delay` before they reach the store.
#[derive(Debug)]
struct SlowWrites {
    inner: MemoryStore,
    delay: Duration,
}

#[idem_core::async_trait]
impl IdempotencyStore for SlowWrites {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        sleep(self.delay).await;
        self.inner.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        sleep(self.delay).await;
        self.inner.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// A caller that goes away while its outcome is written, where the attempt runs in the
/// caller's future (`execute_scoped`, `CancelPolicy::Release`), does not cancel the write:
/// the operation returned, its effects happened, and an outcome left unstored would let it
/// run a second time once the lease ends. The outcome is stored and replayed.
#[tokio::test]
async fn a_caller_gone_during_the_outcome_write_leaves_the_outcome_stored() {
    let release = Config::builder()
        .lease_ttl(ms(30_000))
        .cancel_policy(CancelPolicy::Release)
        .build()
        .expect("valid config");
    let store = SlowWrites {
        inner: MemoryStore::new(),
        delay: ms(300),
    };
    let idem = Idempotency::with_config(store, release).expect("valid config");
    for (id, scoped) in [
        ("gone-writing-scoped", true),
        ("gone-writing-release", false),
    ] {
        let key = key(id);
        let runs = counter();
        let gone = if scoped {
            let call = idem.execute_scoped(&key, None, counted(&runs, Ok(5_u64)));
            tokio::time::timeout(ms(100), call).await.is_err()
        } else {
            let call = idem.execute(&key, None, counted(&runs, Ok(5_u64)));
            tokio::time::timeout(ms(100), call).await.is_err()
        };
        assert!(gone, "{id}: the write was still under way");
        assert_eq!(count(&runs), 1, "{id}: the operation returned");
        let deadline = Instant::now() + ms(5_000);
        loop {
            let record = idem.store().inner.read(&key).await.expect("read");
            match record.map(|r| r.state) {
                Some(RecordState::Completed { .. }) => break,
                state if Instant::now() >= deadline => {
                    panic!("{id}: the outcome is not stored 5 s after the caller went: {state:?}")
                }
                _ => sleep(ms(10)).await,
            }
        }
        let replay = idem
            .execute_outcome(&key, None, counted(&runs, Ok(6_u64)))
            .await
            .expect("replays");
        assert_eq!((replay.result, replay.replayed), (Ok(5), true), "{id}");
        assert_eq!(count(&runs), 1, "{id}: ran once");
    }
}

/// A runtime shutting down while a detached attempt writes its outcome (the operation
/// returned: its effects happened) does not drop the write: it is finished elsewhere, and the
/// outcome is replayed, instead of the key lapsing at the lease's end and the operation
/// running a second time.
#[test]
fn a_runtime_shut_down_during_the_outcome_write_leaves_the_outcome_stored() {
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    };
    let store = SlowWrites {
        inner: MemoryStore::new(),
        delay: ms(300),
    };
    let idem = Idempotency::with_config(store, config(ms(30_000), WaitPolicy::FailFast))
        .expect("valid config");
    let key = key("runtime-gone-writing");
    let runs = counter();
    let dying = rt();
    dying.block_on(async {
        let call = idem.execute(&key, None, counted(&runs, Ok(5_u64)));
        let gone = tokio::time::timeout(ms(100), call).await;
        assert!(gone.is_err(), "the write was still under way");
    });
    assert_eq!(count(&runs), 1, "the operation returned");
    drop(dying);
    rt().block_on(async {
        let deadline = Instant::now() + ms(5_000);
        loop {
            let record = idem.store().inner.read(&key).await.expect("read");
            match record.map(|r| r.state) {
                Some(RecordState::Completed { .. }) => break,
                state if Instant::now() >= deadline => {
                    panic!("the outcome is not stored 5 s after its runtime shut down: {state:?}")
                }
                _ => sleep(ms(10)).await,
            }
        }
        let replay = idem
            .execute_outcome(&key, None, counted(&runs, Ok(6_u64)))
            .await
            .expect("replays");
        assert_eq!((replay.result, replay.replayed), (Ok(5), true));
    });
    assert_eq!(count(&runs), 1, "ran once");
}

/// A store whose outcome writes are not answered at their first poll, as a network store's
/// never are: they yield once, without a timer.
#[derive(Debug, Default)]
struct YieldingWrites {
    inner: MemoryStore,
}

#[idem_core::async_trait]
impl IdempotencyStore for YieldingWrites {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        tokio::task::yield_now().await;
        self.inner.complete(lease, response, retention).await
    }
    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        tokio::task::yield_now().await;
        self.inner.fail(lease, failure, retention).await
    }
    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// The engine needs timers (renewals, retries, the outcome write's deadline). On a runtime
/// built without them it refuses the attempt before the operation runs, and frees the key:
/// it used to run the operation and then panic in the outcome write, leaving the key claimed,
/// to run the operation a second time once the lease ended.
#[test]
fn a_runtime_without_timers_is_refused_before_the_operation_runs() {
    let idem = Idempotency::new(YieldingWrites::default());
    let key = key("no-timers");
    let runs = counter();
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let call = no_timers.spawn({
        let (idem, key, runs) = (idem.clone(), key.clone(), Arc::clone(&runs));
        async move {
            let run = move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, OpError>(5_u64)
            };
            idem.execute(&key, None, run).await
        }
    });
    let joined = no_timers.block_on(call);
    assert!(joined.is_err_and(|e| e.is_panic()), "the caller is told");
    assert_eq!(count(&runs), 0, "the operation ran, its outcome unstored");
    drop(no_timers);
    let timers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    timers.block_on(async {
        await_free(&idem.store().inner, &key, ms(5_000)).await;
        let next = idem
            .execute_outcome(&key, None, counted(&runs, Ok(6_u64)))
            .await
            .expect("runs");
        assert_eq!((next.result, next.replayed), (Ok(6), false));
    });
}
