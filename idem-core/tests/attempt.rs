//! The engine (`idem_core::attempt`) used directly, as the HTTP layer and consumers use it:
//! settlements it carries out, and the store refusing a payload.

use std::sync::Arc;
use std::time::Duration;

use idem_core::attempt::{AttemptError, Engine, Settle, Settlement};
use idem_core::{Bytes, Claim, ClaimRequest, Error, IdempotencyStore, Key, RecordState, Ttl};
use idem_memory::MemoryStore;

fn ttl(secs: u64) -> Ttl {
    Ttl::from_secs(secs).expect("ttl")
}

async fn acquired(engine: &Engine<MemoryStore>, id: &str) -> idem_core::Lease {
    let key = Key::new("attempt-tests", id).expect("key");
    match engine
        .claim(&ClaimRequest::new(key, engine.lease_ttl()))
        .await
    {
        Ok(Claim::Acquired(lease)) => lease,
        other => panic!("a fresh key is acquired, got {other:?}"),
    }
}

fn complete(bytes: &'static [u8]) -> impl FnMut(&u32) -> Settlement + Send + 'static {
    move |_| Settlement::Complete {
        payload: Bytes::from_static(bytes),
        retention: ttl(60),
    }
}

#[tokio::test]
async fn a_settlement_is_carried_out_and_the_output_returned() {
    let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30));
    let lease = acquired(&engine, "complete").await;
    let output = engine
        .attempt(lease.clone())
        .run(async { 7u32 }, complete(b"seven"))
        .await
        .expect("stored");
    assert_eq!(output, 7);
    let record = engine.store().read(&lease.key).await.expect("read");
    assert_eq!(
        record.map(|r| r.state),
        Some(RecordState::Completed {
            response: Bytes::from_static(b"seven")
        })
    );

    let released = acquired(&engine, "release").await;
    let output = engine
        .attempt(released.clone())
        .run(async { 8u32 }, |_: &u32| Settlement::Release)
        .await
        .expect("released");
    assert_eq!(output, 8);
    assert_eq!(
        engine.store().read(&released.key).await.expect("read"),
        None
    );
}

#[tokio::test]
async fn a_refused_payload_without_a_fallback_is_not_recorded() {
    let store = Arc::new(MemoryStore::new().with_max_payload(4));
    let engine = Engine::new(store, ttl(30));
    let lease = acquired(&engine, "too-large").await;
    let ran = engine
        .attempt(lease.clone())
        .run(async { 9u32 }, complete(b"far too large"))
        .await;
    match ran {
        Err(AttemptError::NotRecorded {
            output: 9,
            error: Error::NotRecorded { cause },
        }) => assert!(matches!(*cause, Error::PayloadTooLarge { limit: 4, .. })),
        other => panic!("expected NotRecorded(PayloadTooLarge) with the output, got {other:?}"),
    }
    // Not released either: the operation ran, so the key waits for its lease to end.
    let record = engine.store().read(&lease.key).await.expect("read");
    assert!(matches!(
        record.map(|r| r.state),
        Some(RecordState::Claimed { .. })
    ));
}

/// A settle step with a fallback for refused payloads.
struct WithMarker;

impl Settle<u32> for WithMarker {
    fn settle(&mut self, _: &u32) -> Settlement {
        Settlement::Complete {
            payload: Bytes::from_static(b"far too large"),
            retention: ttl(60),
        }
    }

    fn too_large(&mut self, size: usize, limit: usize) -> Option<Settlement> {
        assert!(size > limit);
        Some(Settlement::Fail {
            payload: Bytes::from_static(b"big"),
            retention: ttl(60),
        })
    }
}

#[tokio::test]
async fn a_refused_payload_is_replaced_by_the_fallback() {
    let store = Arc::new(MemoryStore::new().with_max_payload(4));
    let engine = Engine::new(store, ttl(30));
    let lease = acquired(&engine, "marker").await;
    let output = engine
        .attempt(lease.clone())
        .run_scoped(async { 10u32 }, WithMarker)
        .await
        .expect("the marker is stored");
    assert_eq!(output, 10);
    let record = engine.store().read(&lease.key).await.expect("read");
    assert_eq!(
        record.map(|r| r.state),
        Some(RecordState::Failed {
            failure: Bytes::from_static(b"big")
        })
    );
}

#[tokio::test]
async fn lost_resolves_only_on_loss() {
    let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30));
    let lease = acquired(&engine, "not-lost").await;
    let attempt = engine.attempt(lease);
    let handle = attempt.lease_handle();
    attempt
        .run(async { 1u32 }, complete(b"one"))
        .await
        .expect("stored");
    assert!(!handle.is_lost());
    let lost = tokio::time::timeout(Duration::from_millis(200), handle.lost()).await;
    assert!(
        lost.is_err(),
        "lost() resolved for a lease that was never lost"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An attempt whose caller waits for it runs in the caller's future, and its lease is
/// watched by the engine's one supervisor: no task is spawned for it (a task per attempt,
/// plus a renewal task, cost two task switches per request).
#[test]
fn an_attempt_whose_caller_stays_spawns_no_task() {
    runtime().block_on(async {
        let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30));
        // The first attempt starts the engine's supervisor on this runtime.
        let lease = acquired(&engine, "first").await;
        engine
            .attempt(lease)
            .run(async { 1u32 }, complete(b"one"))
            .await
            .expect("stored");
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let lease = acquired(&engine, "second").await;
        let during = engine
            .attempt(lease)
            .run(async move { metrics.num_alive_tasks() }, |_: &usize| {
                Settlement::Complete {
                    payload: Bytes::from_static(b"two"),
                    retention: ttl(60),
                }
            })
            .await
            .expect("stored");
        assert_eq!(before, 1, "the supervisor, alone");
        assert_eq!(during, before, "tasks alive while a quick operation ran");
    });
}

/// The supervisor that starts renewals runs per runtime: an engine shared by two runtimes
/// keeps renewing the leases of one after the other shut down.
#[test]
fn a_runtime_shutting_down_leaves_the_other_runtimes_leases_renewed() {
    let lease_ttl = Ttl::from_millis(300).expect("ttl");
    let engine = Engine::new(Arc::new(MemoryStore::new()), lease_ttl);
    let first = runtime();
    first.block_on(async {
        let lease = acquired(&engine, "on-the-first").await;
        engine
            .attempt(lease)
            .run(async { 1u32 }, complete(b"one"))
            .await
            .expect("stored");
    });
    let second = runtime();
    let lease = second.block_on(acquired(&engine, "on-the-second"));
    let key = lease.key.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let long = second.spawn({
        let attempt = engine.attempt(lease);
        async move {
            attempt
                .run(
                    async {
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                    },
                    |_: &()| Settlement::Complete {
                        payload: Bytes::from_static(b"done"),
                        retention: ttl(60),
                    },
                )
                .await
        }
    });
    // The first runtime goes away while the attempt on the second runs.
    second.block_on(started_rx).expect("the operation started");
    drop(first);
    second.block_on(async {
        while !long.is_finished() {
            let rival = ClaimRequest::new(key.clone(), lease_ttl);
            match engine.store().claim(&rival).await {
                Ok(Claim::InProgress { .. } | Claim::Completed(_)) => {}
                other => panic!("a rival claim during the long operation got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        long.await.expect("joined").expect("stored");
        let record = engine.store().read(&key).await.expect("read");
        assert_eq!(
            record.map(|r| r.state),
            Some(RecordState::Completed {
                response: Bytes::from_static(b"done")
            })
        );
    });
}

/// A lost lease whose operation asks only to free the key: nothing to free (the key is no
/// longer ours) and nothing lost, so the output comes back as a success.
#[tokio::test]
async fn a_lost_lease_that_only_frees_returns_the_output() {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(Arc::clone(&store), Ttl::from_millis(600).expect("ttl"));
    let lease = acquired(&engine, "lost-release").await;
    let attempt = engine.attempt(lease.clone());
    let handle = attempt.lease_handle();
    let output = attempt
        .run(
            async move {
                assert!(store.remove(&lease.key).await.expect("removed"));
                tokio::time::timeout(Duration::from_secs(10), handle.lost())
                    .await
                    .expect("the renewal notices the loss");
                assert!(handle.is_lost());
                5u32
            },
            |_: &u32| Settlement::Release,
        )
        .await;
    assert!(matches!(output, Ok(5)), "{output:?}");
}

/// What a caller prints and chains, and what the engine shows of itself.
#[tokio::test]
async fn attempt_errors_and_the_engine_describe_themselves() {
    use std::error::Error as _;
    let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30))
        .with_cancel_policy(idem_core::attempt::CancelPolicy::Release);
    assert_eq!(
        engine.cancel_policy(),
        idem_core::attempt::CancelPolicy::Release
    );
    let shown = format!("{engine:?}");
    assert!(
        shown.starts_with("Engine {") && shown.contains("Release"),
        "{shown}"
    );
    let attempt = engine.attempt(acquired(&engine, "debug").await);
    let shown = format!("{attempt:?}");
    assert!(
        shown.starts_with("Attempt {") && shown.contains("lease"),
        "{shown}"
    );

    let not_recorded: AttemptError<u32> = AttemptError::NotRecorded {
        output: 1,
        error: Error::not_recorded(Error::LeaseLost),
    };
    assert_eq!(
        not_recorded.to_string(),
        Error::not_recorded(Error::LeaseLost).to_string()
    );
    assert!(not_recorded.source().is_some());
}

/// A store whose claims are `Unavailable` a given number of times, counting them; each claim
/// answers after `delay`. It notes when each claim and each renewal is sent.
#[derive(Debug)]
struct Blinking {
    inner: MemoryStore,
    outages: std::sync::atomic::AtomicU32,
    claims: std::sync::atomic::AtomicU32,
    delay: Duration,
    claims_sent: std::sync::Mutex<Vec<tokio::time::Instant>>,
    renewals: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

impl Blinking {
    fn new(outages: u32, delay: Duration) -> Self {
        Self {
            inner: MemoryStore::new(),
            outages: outages.into(),
            claims: 0.into(),
            delay,
            claims_sent: std::sync::Mutex::default(),
            renewals: std::sync::Mutex::default(),
        }
    }
}

#[idem_core::async_trait]
impl IdempotencyStore for Blinking {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        self.claims.fetch_add(1, SeqCst);
        let now = tokio::time::Instant::now();
        self.claims_sent.lock().expect("not poisoned").push(now);
        tokio::time::sleep(self.delay).await;
        if self
            .outages
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
            .is_ok()
        {
            return Err(Error::unavailable(std::io::Error::other("down")));
        }
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &idem_core::Lease, r: Bytes, t: Ttl) -> Result<(), Error> {
        self.inner.complete(lease, r, t).await
    }
    async fn fail(&self, lease: &idem_core::Lease, f: Bytes, t: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, f, t).await
    }
    async fn renew(&self, lease: &idem_core::Lease, t: Ttl) -> Result<(), Error> {
        let now = tokio::time::Instant::now();
        self.renewals.lock().expect("not poisoned").push(now);
        self.inner.renew(lease, t).await
    }
    async fn release(&self, lease: &idem_core::Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// An unavailable claim is sent again by the same owner, four times at most, and an answer
/// after an outage is the claim's.
#[tokio::test(start_paused = true)]
async fn an_unavailable_claim_is_retried_four_times_at_most() {
    use std::sync::atomic::Ordering::SeqCst;
    for (outages, claims, acquires) in [(2, 3, true), (3, 4, true), (u32::MAX, 4, false)] {
        let store = Arc::new(Blinking::new(outages, Duration::ZERO));
        let engine = Engine::new(Arc::clone(&store), ttl(30));
        let key = Key::new("attempt-tests", "blinking").expect("key");
        let answer = engine.claim(&ClaimRequest::new(key, ttl(30))).await;
        assert_eq!(
            matches!(answer, Ok(Claim::Acquired(_))),
            acquires,
            "{outages} outages: {answer:?}"
        );
        if !acquires {
            assert!(
                matches!(answer, Err(Error::Unavailable { .. })),
                "{answer:?}"
            );
        }
        assert_eq!(store.claims.load(SeqCst), claims, "{outages} outages");
    }
}

/// No claim is sent again once the pause before it would end past the claim window (1 s
/// from the first claim), however few attempts were made: a caller waits about a second in
/// all for an unavailable store, also when each of its answers is slow.
#[tokio::test(start_paused = true)]
async fn no_claim_is_sent_again_past_the_claim_window() {
    use std::sync::atomic::Ordering::SeqCst;
    // The first answer comes 990 ms in; the first pause (10 to 20 ms) would end at or past
    // the window.
    let store = Arc::new(Blinking::new(u32::MAX, Duration::from_millis(990)));
    let engine = Engine::new(Arc::clone(&store), ttl(30));
    let key = Key::new("attempt-tests", "slow-outage").expect("key");
    let started = tokio::time::Instant::now();
    let answer = engine.claim(&ClaimRequest::new(key, ttl(30))).await;
    assert!(
        matches!(answer, Err(Error::Unavailable { .. })),
        "{answer:?}"
    );
    assert_eq!(store.claims.load(SeqCst), 1, "a second claim was sent");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(990),
        "no pause was slept"
    );
}

/// A lease counts from when its claim was sent, not from when the answer came: a claim
/// that took 2.7 s of a 3 s lease is renewed at once, before the store lets the lease lapse
/// (counted from the claim's arrival, no earlier than its send). Counting from the answer,
/// the first renewal went half a second after the lapse, and a takeover could run the
/// operation a second time.
#[tokio::test(start_paused = true)]
async fn a_lease_acquired_by_a_slow_claim_is_renewed_before_it_lapses() {
    let store = Arc::new(Blinking::new(0, Duration::from_millis(2700)));
    let engine = Engine::new(Arc::clone(&store), ttl(3));
    let key = Key::new("attempt-tests", "slow-claim").expect("key");
    let sent = tokio::time::Instant::now();
    let Ok(Claim::Acquired(lease)) = engine.claim(&ClaimRequest::new(key, ttl(3))).await else {
        panic!("a fresh key is acquired");
    };
    assert_eq!(lease.claim_sent(), Some(sent));
    let output = engine
        .attempt(lease)
        .run(
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                7
            },
            complete(b"7"),
        )
        .await
        .expect("stored");
    assert_eq!(output, 7);
    let renewals = store.renewals.lock().expect("not poisoned").clone();
    let lapse = sent + Duration::from_secs(3);
    assert!(
        renewals.first().is_some_and(|first| *first < lapse),
        "the lease lapses {:?} after the claim was sent; renewals at {:?}",
        lapse - sent,
        renewals.iter().map(|at| *at - sent).collect::<Vec<_>>()
    );
}

/// A lease granted by a retried claim counts from that retry's send, the one the store
/// applied: not from the first send (an outage's earlier, refused claims granted nothing,
/// and counting from them would renew too early by the outages and pauses), nor from the
/// answer.
#[tokio::test(start_paused = true)]
async fn a_lease_granted_by_a_retried_claim_counts_from_the_retrys_send() {
    let store = Arc::new(Blinking::new(2, Duration::from_millis(100)));
    let engine = Engine::new(Arc::clone(&store), ttl(3));
    let key = Key::new("attempt-tests", "retried-claim").expect("key");
    let Ok(Claim::Acquired(lease)) = engine.claim(&ClaimRequest::new(key, ttl(3))).await else {
        panic!("the third claim acquires the fresh key");
    };
    let sends = store.claims_sent.lock().expect("not poisoned").clone();
    assert_eq!(sends.len(), 3, "two outages, then the claim that acquired");
    assert!(sends[0] < sends[1] && sends[1] < sends[2], "{sends:?}");
    assert_eq!(lease.claim_sent(), Some(sends[2]), "sends at {sends:?}");
}

/// A Release attempt dropped where no runtime runs (its future moved out of the runtime and
/// dropped on a plain thread) still frees its key at once, from a helper thread, instead of
/// leaving it held until the lease ends.
#[test]
fn a_release_attempt_dropped_outside_a_runtime_frees_its_key() {
    let rt = runtime();
    let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30))
        .with_cancel_policy(idem_core::attempt::CancelPolicy::Release);
    let (key, running) = rt.block_on(async {
        let lease = acquired(&engine, "dropped-outside").await;
        let key = lease.key.clone();
        let mut running = Box::pin(
            engine
                .attempt(lease)
                .run(std::future::pending::<u32>(), complete(b"never")),
        );
        let started = tokio::time::timeout(Duration::from_millis(50), &mut running).await;
        assert!(started.is_err(), "the operation never returns");
        (key, running)
    });
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "dropped outside any runtime"
    );
    drop(running);
    let freed = rt.block_on(async {
        for _ in 0..100 {
            if engine.store().read(&key).await.expect("read").is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(
        freed,
        "the key is still held 5 s after its attempt was dropped"
    );
}

/// An attempt's future dropped before its first poll never started the operation: it frees
/// the key at once (the release runs on a task), under either policy and from `run_scoped`,
/// instead of leaving it in progress until the lease ends.
#[tokio::test]
async fn an_attempt_dropped_before_its_first_poll_frees_its_key() {
    use idem_core::attempt::CancelPolicy;
    for (policy, scoped) in [
        (CancelPolicy::Detach, false),
        (CancelPolicy::Release, false),
        (CancelPolicy::Release, true),
    ] {
        let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30)).with_cancel_policy(policy);
        let lease = acquired(&engine, "dropped-unpolled").await;
        let key = lease.key.clone();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let operation = {
            let ran = Arc::clone(&ran);
            async move { ran.store(true, std::sync::atomic::Ordering::SeqCst) }
        };
        let settle = |_: &()| Settlement::Release;
        if scoped {
            drop(engine.attempt(lease).run_scoped(operation, settle));
        } else {
            drop(engine.attempt(lease).run(operation, settle));
        }
        let mut freed = false;
        for _ in 0..100 {
            if engine.store().read(&key).await.expect("read").is_none() {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "{policy:?}, scoped {scoped}: the key is still held");
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "{policy:?}, scoped {scoped}: the operation ran"
        );
    }
}

/// Under `Release`, an operation that said through its lease handle that its effects may
/// have happened (`commit`: a payment sent) is not dropped with a caller that goes away
/// after it: it runs to the end and its outcome is stored, rather than its key being freed
/// for a second run of what already took effect.
#[tokio::test]
async fn under_release_an_operation_that_committed_outlives_its_caller() {
    use idem_core::attempt::CancelPolicy;
    use tokio::sync::oneshot;
    let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30))
        .with_cancel_policy(CancelPolicy::Release);
    let lease = acquired(&engine, "committed-then-dropped").await;
    let key = lease.key.clone();
    let attempt = engine.attempt(lease);
    let handle = attempt.lease_handle();
    let (committed, has_committed) = oneshot::channel();
    let (go, wait) = oneshot::channel::<()>();
    let mut caller = Box::pin(attempt.run(
        async move {
            handle.commit(); // the payment is sent from here on
            let _ = committed.send(());
            let _ = wait.await;
            7u32
        },
        complete(b"charged"),
    ));
    tokio::select! {
        output = &mut caller => panic!("the operation waits for `go`, got {output:?}"),
        sent = has_committed => sent.expect("the operation commits"),
    }
    drop(caller);
    go.send(())
        .expect("the committed operation runs on after its caller went away");
    let mut state = None;
    for _ in 0..100 {
        state = engine
            .store()
            .read(&key)
            .await
            .expect("read")
            .map(|r| r.state);
        if matches!(state, Some(RecordState::Completed { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        state,
        Some(RecordState::Completed {
            response: Bytes::from_static(b"charged")
        }),
        "the committed operation's outcome is stored"
    );
}

/// An attempt whose operation had not returned when its runtime shut down (its task dropped
/// with the runtime) frees its key, as one dropped outside a runtime does: the release
/// cannot run on the runtime that is going away, so it must not be spawned there.
#[test]
fn an_attempt_dropped_with_its_runtime_frees_its_key() {
    use idem_core::attempt::CancelPolicy;
    for policy in [CancelPolicy::Release, CancelPolicy::Detach] {
        let engine = Engine::new(Arc::new(MemoryStore::new()), ttl(30)).with_cancel_policy(policy);
        let dying = runtime();
        let key = dying.block_on(async {
            let lease = acquired(&engine, "runtime-gone").await;
            let key = lease.key.clone();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let running = engine.attempt(lease).run(
                async move {
                    let _ = started_tx.send(());
                    std::future::pending::<u32>().await
                },
                complete(b"never"),
            );
            tokio::spawn(running);
            started_rx.await.expect("the operation started");
            key
        });
        drop(dying);
        let freed = runtime().block_on(async {
            for _ in 0..100 {
                if engine.store().read(&key).await.expect("read").is_none() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        });
        assert!(
            freed,
            "{policy:?}: the key is still held 5 s after its runtime shut down"
        );
    }
}

/// A lease whose claim was slow gets its renewal task at once, and that task must run even
/// when the operation then blocks its thread: left in the worker's next-task slot (which
/// other workers do not steal from), it ran only once the operation returned, after the
/// lease had lapsed and a rival had taken the key over.
#[test]
fn a_slow_claims_renewal_runs_while_the_operation_blocks_its_thread() {
    let rt = runtime();
    let lease_ttl = Ttl::from_millis(1200).expect("ttl");
    // A claim answered after 300 ms: overdue (a sixth of the TTL is 200 ms) when it runs.
    let store = Arc::new(Blinking::new(0, Duration::from_millis(300)));
    let engine = Engine::new(Arc::clone(&store), lease_ttl);
    // A long attempt keeps the runtime's supervisor running, so the blocking attempt below
    // starts no new one (and so does not yield before its operation).
    let keeper = rt.spawn({
        let engine = engine.clone();
        async move {
            let key = Key::new("attempt-tests", "keeper").expect("key");
            let Ok(Claim::Acquired(lease)) = engine.claim(&ClaimRequest::new(key, lease_ttl)).await
            else {
                panic!("a fresh key is acquired");
            };
            engine
                .attempt(lease)
                .run(tokio::time::sleep(Duration::from_secs(3)), |_: &()| {
                    Settlement::Release
                })
                .await
                .expect("released");
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let key = Key::new("attempt-tests", "blocking").expect("key");
    let blocking = rt.spawn({
        let (engine, key) = (engine.clone(), key.clone());
        async move {
            let Ok(Claim::Acquired(lease)) = engine.claim(&ClaimRequest::new(key, lease_ttl)).await
            else {
                panic!("a fresh key is acquired");
            };
            engine
                .attempt(lease)
                .run(
                    async { std::thread::sleep(Duration::from_millis(2000)) },
                    |_: &()| Settlement::Release,
                )
                .await
                .expect("released");
        }
    });
    let rival = rt.block_on(async {
        // The rival claims on the store itself, with no delay, once the lease would have
        // lapsed unrenewed (it began at most 1.5 s ago).
        tokio::time::sleep(Duration::from_millis(1800)).await;
        store
            .inner
            .claim(&ClaimRequest::new(key, lease_ttl))
            .await
            .expect("claimed")
    });
    assert!(
        matches!(rival, Claim::InProgress { .. }),
        "a rival took the key over while its operation ran: {rival:?}"
    );
    rt.block_on(async {
        blocking.await.expect("joined");
        keeper.await.expect("joined");
    });
}

/// A store whose first `hung` renewals are applied but never answered (the reply lost on
/// the way, a connection that hangs).
#[derive(Debug, Default)]
struct RenewalReplyLost {
    inner: MemoryStore,
    hung: std::sync::atomic::AtomicU32,
}

#[idem_core::async_trait]
impl IdempotencyStore for RenewalReplyLost {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &idem_core::Lease, r: Bytes, t: Ttl) -> Result<(), Error> {
        self.inner.complete(lease, r, t).await
    }
    async fn fail(&self, lease: &idem_core::Lease, f: Bytes, t: Ttl) -> Result<(), Error> {
        self.inner.fail(lease, f, t).await
    }
    async fn renew(&self, lease: &idem_core::Lease, t: Ttl) -> Result<(), Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let renewed = self.inner.renew(lease, t).await;
        if self
            .hung
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        renewed
    }
    async fn release(&self, lease: &idem_core::Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// A renewal whose reply never comes does not stop the renewals after it: the lease is
/// still renewed while the operation runs, so a rival that claims long after the lease
/// would have lapsed finds the key in progress, instead of taking it over and running the
/// operation a second time.
#[tokio::test]
async fn a_renewal_whose_reply_never_comes_does_not_stop_the_renewals() {
    let lease_ttl = Ttl::from_millis(900).expect("ttl");
    let store = Arc::new(RenewalReplyLost {
        hung: 1.into(),
        ..RenewalReplyLost::default()
    });
    let engine = Engine::new(Arc::clone(&store), lease_ttl);
    let key = Key::new("attempt-tests", "renewal-reply-lost").expect("key");
    let request = ClaimRequest::new(key.clone(), lease_ttl);
    let Ok(Claim::Acquired(lease)) = engine.claim(&request).await else {
        panic!("a fresh key is acquired");
    };
    let running = tokio::spawn(
        engine
            .attempt(lease)
            .run(tokio::time::sleep(Duration::from_millis(2500)), |_: &()| {
                Settlement::Release
            }),
    );
    // Well past the lease's end had it been renewed only by the renewal that hung.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let rival = store
        .inner
        .claim(&ClaimRequest::new(key, lease_ttl))
        .await
        .expect("claimed");
    assert!(
        matches!(rival, Claim::InProgress { .. }),
        "a rival took the key over while its operation ran: {rival:?}"
    );
    running.await.expect("joined").expect("released");
}

/// A congested store: every claim, renewal and outcome write waits `delay` before it
/// reaches the store (queued behind other work), then takes effect.
#[derive(Debug, Default)]
struct Congested {
    inner: MemoryStore,
    delay: Duration,
}

#[idem_core::async_trait]
impl IdempotencyStore for Congested {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        tokio::time::sleep(self.delay).await;
        self.inner.claim(request).await
    }
    async fn complete(&self, lease: &idem_core::Lease, r: Bytes, t: Ttl) -> Result<(), Error> {
        tokio::time::sleep(self.delay).await;
        self.inner.complete(lease, r, t).await
    }
    async fn fail(&self, lease: &idem_core::Lease, f: Bytes, t: Ttl) -> Result<(), Error> {
        tokio::time::sleep(self.delay).await;
        self.inner.fail(lease, f, t).await
    }
    async fn renew(&self, lease: &idem_core::Lease, t: Ttl) -> Result<(), Error> {
        tokio::time::sleep(self.delay).await;
        self.inner.renew(lease, t).await
    }
    async fn release(&self, lease: &idem_core::Lease) -> Result<(), Error> {
        self.inner.release(lease).await
    }
    async fn read(&self, key: &Key) -> Result<Option<idem_core::Record>, Error> {
        self.inner.read(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        self.inner.remove(key).await
    }
}

/// An outcome write is awaited for at least a second, however little of the lease the
/// attempt knows is left: on a store where every call takes 700 ms, under a 1 s lease, the
/// claim's answer leaves 300 ms, and the write that answers 700 ms later is still stored
/// (the store keeps a lapsed lease nobody took over able to finish). A write given up on
/// once the lease's end passed was cut off unanswered, every retry too, and the run ended
/// "not recorded", free to run a second time once the lease ended.
#[tokio::test(start_paused = true)]
async fn an_outcome_write_slower_than_the_lease_left_is_still_awaited() {
    let lease_ttl = ttl(1);
    let store = Arc::new(Congested {
        delay: Duration::from_millis(700),
        ..Congested::default()
    });
    let engine = Engine::new(Arc::clone(&store), lease_ttl);
    let key = Key::new("attempt-tests", "congested-write").expect("key");
    let Ok(Claim::Acquired(lease)) = engine
        .claim(&ClaimRequest::new(key.clone(), lease_ttl))
        .await
    else {
        panic!("a fresh key is acquired");
    };
    let output = engine
        .attempt(lease)
        .run(async { 7_u32 }, complete(b"7"))
        .await;
    assert!(matches!(output, Ok(7)), "{output:?}");
    let record = store.inner.read(&key).await.expect("read").map(|r| r.state);
    assert_eq!(
        record,
        Some(RecordState::Completed {
            response: Bytes::from_static(b"7")
        })
    );
}
