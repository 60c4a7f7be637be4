//! Stored outcomes the executor did not write, replayed: a value or a typed error, the
//! operation never run again, never a panic.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::{
    Claim, ClaimRequest, Error, ExecuteError, Idempotency, IdempotencyStore, Key, Lease, Record,
    Retryable, Ttl,
};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

/// A store whose every claim finds the fuzzer's bytes stored.
#[derive(Debug)]
struct Planted(Claim);

#[async_trait]
impl IdempotencyStore for Planted {
    async fn claim(&self, _: &ClaimRequest) -> Result<Claim, Error> {
        Ok(self.0.clone())
    }
    async fn complete(&self, _: &Lease, _: Bytes, _: Ttl) -> Result<(), Error> {
        Err(Error::LeaseLost)
    }
    async fn fail(&self, _: &Lease, _: Bytes, _: Ttl) -> Result<(), Error> {
        Err(Error::LeaseLost)
    }
    async fn renew(&self, _: &Lease, _: Ttl) -> Result<(), Error> {
        Err(Error::LeaseLost)
    }
    async fn release(&self, _: &Lease) -> Result<(), Error> {
        Err(Error::LeaseLost)
    }
    async fn read(&self, _: &Key) -> Result<Option<Record>, Error> {
        Ok(None)
    }
    async fn remove(&self, _: &Key) -> Result<bool, Error> {
        Ok(false)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    id: u64,
    note: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum Declined {
    Card { code: u16 },
    Timeout,
}

impl Retryable for Declined {
    fn is_retryable(&self) -> bool {
        matches!(self, Declined::Timeout)
    }
}

fuzz_target!(|input: (bool, &[u8])| {
    let (completed, bytes) = input;
    let bytes = Bytes::copy_from_slice(bytes);
    let claim = if completed {
        Claim::Completed(bytes)
    } else {
        Claim::Failed(bytes)
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    let Ok(key) = Key::new("fuzz", "k") else {
        return;
    };
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let idem = Idempotency::new(Planted(claim));
    let result = runtime.block_on(idem.execute_outcome(&key, None, move || async move {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Declined>(Receipt {
            id: 0,
            note: String::new(),
        })
    }));
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a stored outcome ran again");
    match result {
        Ok(execution) => assert!(execution.replayed),
        Err(ExecuteError::Idempotency(
            Error::CorruptRecord { .. }
            | Error::Serialization { .. }
            | Error::PayloadTooLarge { .. },
        )) => {}
        Err(other) => panic!("a stored outcome replayed as {other:?}"),
    }
});
