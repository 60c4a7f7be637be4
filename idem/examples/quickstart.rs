//! A payment endpoint made idempotent on the in-memory store.
//!
//! Run with `cargo run --example quickstart`. A client sends the same payment three times
//! (a double click, then a retry after a timeout): the charge runs once, and the repeats get
//! the first receipt back. A different payment reusing the key is refused.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use idem::{BoxError, Error, ExecuteError, Fingerprint, Idempotency, Key, MemoryStore, Retryable};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
struct Payment {
    account: &'static str,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    charge_id: u32,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum ChargeError {
    Declined,
}

impl Retryable for ChargeError {
    fn is_retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the card was declined")
    }
}

impl std::error::Error for ChargeError {}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let idem = Idempotency::new(MemoryStore::new());
    let charges = Arc::new(AtomicU32::new(0));

    // The client's Idempotency-Key header, scoped to this endpoint.
    let key = Key::new("payments", "7c0e3a5e-2b1d-4f7a-9d55-1a0c3f1b8e42")?;
    let payment = Payment {
        account: "acct-17",
        cents: 4_999,
    };
    let fingerprint = Some(Fingerprint::of(&payment)?);

    for attempt in 1..=3 {
        let outcome = idem
            .execute_outcome(&key, fingerprint, || {
                let charges = Arc::clone(&charges);
                async move {
                    let charge_id = charges.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok::<_, ChargeError>(Receipt {
                        charge_id,
                        cents: payment.cents,
                    })
                }
            })
            // In progress elsewhere, store unavailable, ran but not recorded, ...
            .await?;
        let receipt = outcome.result?;
        let how = if outcome.replayed {
            "replayed"
        } else {
            "executed"
        };
        println!(
            "attempt {attempt}: {how}: charge #{} of {} cents",
            receipt.charge_id, receipt.cents
        );
    }
    println!(
        "the card was charged {} time(s)",
        charges.load(Ordering::SeqCst)
    );

    // The same key with a different payment is refused, not answered with the wrong receipt.
    let other = Payment {
        account: "acct-17",
        cents: 1,
    };
    let result = idem
        .execute(&key, Some(Fingerprint::of(&other)?), || async move {
            Ok::<Receipt, ChargeError>(Receipt {
                charge_id: 0,
                cents: other.cents,
            })
        })
        .await;
    match result {
        Err(ExecuteError::Idempotency(Error::FingerprintMismatch)) => {
            println!("a different payment with the same key: refused (fingerprint mismatch)")
        }
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
