//! The documented policy when full: never evict, refuse claims of new keys.

use idem_core::{Claim, ClaimRequest, Error, IdempotencyStore, Key, Ttl};
use idem_memory::{MemoryStore, StoreFull};

fn request(i: usize) -> ClaimRequest {
    let key = Key::new("capacity", format!("key-{i}")).expect("valid key");
    ClaimRequest::new(key, Ttl::from_secs(30).expect("valid ttl"))
}

#[tokio::test]
async fn a_full_store_refuses_new_keys_and_keeps_serving_held_ones() {
    let store = MemoryStore::with_capacity(4 * 1024);
    let mut leases = Vec::new();
    let refused_at = loop {
        let i = leases.len();
        assert!(i < 1000, "a 4 KiB store accepted 1000 claims");
        match store.claim(&request(i)).await {
            Ok(Claim::Acquired(lease)) => leases.push(lease),
            Err(Error::Unavailable { source }) => {
                let full = source.downcast_ref::<StoreFull>();
                assert_eq!(
                    full.map(|full| full.capacity),
                    Some(4 * 1024),
                    "refused with another cause: {source}"
                );
                break i;
            }
            other => panic!("claim {i}: {other:?}"),
        }
        // Let moka's housekeeping account for the write, as it does on its own over time.
        store.run_pending_tasks().await;
    };
    assert!(refused_at > 0, "refused before anything was stored");

    // Nothing held was evicted: every claim can still be completed and replayed.
    let retention = Ttl::from_millis(300).expect("valid ttl");
    for (i, lease) in leases.iter().enumerate() {
        store
            .complete(lease, format!("r{i}").into(), retention)
            .await
            .expect("complete a held key");
        let replay = store.claim(&request(i)).await.expect("replay");
        assert_eq!(
            replay,
            Claim::Completed(format!("r{i}").into()),
            "key {i} lost its record"
        );
    }

    // Room made by records outliving their retention lets new keys in again. (Removing
    // would not do: a removed key leaves its fencing trace, as a released one does.)
    // (moka's timer wheel ticks about once a second, so give it a few.)
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    store.run_pending_tasks().await;
    let again = store.claim(&request(refused_at)).await;
    assert!(
        matches!(again, Ok(Claim::Acquired(_))),
        "after freeing room: {again:?}"
    );
}

/// The capacity holds without anyone running moka's housekeeping: records finished one
/// after another, each admitted while the store was below its capacity, stop at the
/// capacity (give or take the one claim in flight), not at what moka last counted.
#[tokio::test]
async fn finished_records_count_against_the_capacity_at_once() {
    const CAPACITY: u64 = 64 * 1024;
    const PAYLOAD: usize = 8 * 1024;
    let store = MemoryStore::with_capacity(CAPACITY);
    let retention = Ttl::from_secs(60).expect("valid ttl");
    let mut finished = 0_u64;
    for i in 0..200 {
        match store.claim(&request(i)).await {
            Ok(Claim::Acquired(lease)) => {
                store
                    .complete(&lease, vec![b'r'; PAYLOAD].into(), retention)
                    .await
                    .expect("complete a held key");
                finished += 1;
            }
            Err(Error::Unavailable { .. }) => break,
            other => panic!("claim {i}: {other:?}"),
        }
    }
    store.run_pending_tasks().await;
    let record = PAYLOAD as u64 + idem_memory::RECORD_OVERHEAD + 64;
    assert!(
        store.held_bytes() <= CAPACITY + record,
        "a {CAPACITY}-byte store took {finished} records of {PAYLOAD} bytes: {} bytes held",
        store.held_bytes()
    );
}

/// Waits until `gone` says the last record stored has outlived its retention, as its
/// readers see it (exactly, by its own expiry); bounded, so a record that never expires
/// fails here instead of hanging the run.
async fn until_expired(mut gone: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !gone().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the record never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A store full of finished records takes new keys as soon as they have outlived their
/// retention. moka counts an expired record until its timer wheel (1.07 s buckets) ticks
/// past it, and the store refused new keys for up to a second after every replay of them
/// was already gone.
#[tokio::test]
async fn a_full_store_takes_new_keys_once_its_records_expire() {
    let store = MemoryStore::with_capacity(4 * 1024);
    let retention = Ttl::from_millis(200).expect("valid ttl");
    let mut last = 0;
    for i in 0.. {
        assert!(i < 1000, "a 4 KiB store accepted 1000 claims");
        match store.claim(&request(i)).await {
            Ok(Claim::Acquired(lease)) => {
                store
                    .complete(&lease, format!("r{i}").into(), retention)
                    .await
                    .expect("complete");
                last = i;
            }
            Err(Error::Unavailable { .. }) => break,
            other => panic!("claim {i}: {other:?}"),
        }
    }
    assert!(last > 0, "the premise: the store filled with records");
    let key = request(last).key;
    until_expired(async || store.read(&key).await.expect("read").is_none()).await;
    let again = store.claim(&request(last + 1)).await;
    assert!(
        matches!(again, Ok(Claim::Acquired(_))),
        "a store whose records all expired refused a new key: {again:?}"
    );
}

/// The same for tokens: a full token store issues again as soon as its tokens expire.
#[tokio::test]
async fn a_full_token_store_issues_once_its_tokens_expire() {
    use idem_core::{Consumption, Rejection, Scope, Tokens};
    use idem_memory::MemoryTokenStore;

    let tokens = Tokens::new(MemoryTokenStore::with_capacity(4 * 1024))
        .with_ttl(std::time::Duration::from_millis(200))
        .expect("valid ttl");
    let scope = Scope::new("user:full").expect("valid scope");
    let mut last = None;
    for i in 0.. {
        assert!(i < 1000, "a 4 KiB store issued 1000 tokens");
        match tokens.issue(&scope).await {
            Ok(token) => last = Some(token),
            Err(Error::Unavailable { .. }) => break,
            other => panic!("issue {i}: {other:?}"),
        }
    }
    let last = last.expect("the premise: the store filled with tokens");
    // The last token is used up by the first consume (kept, marked, until it expires),
    // and is unknown once expired.
    until_expired(async || {
        tokens
            .consume(&scope, last.as_str())
            .await
            .expect("consume")
            == Consumption::Rejected(Rejection::Unknown)
    })
    .await;
    let again = tokens.issue(&scope).await;
    assert!(
        again.is_ok(),
        "a store whose tokens all expired refused to issue: {again:?}"
    );
}
