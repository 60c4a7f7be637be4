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
