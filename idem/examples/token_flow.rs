//! The token flow on the in-memory store: the client asks for a token before it submits,
//! the server consumes the token atomically and runs the business only if that succeeded.
//!
//! Run with `cargo run --example token_flow`.

use std::fmt;

use idem::memory::MemoryTokenStore;
use idem::{BoxError, Consumption, Idempotency, MemoryStore, Rejection, Retryable, Scope, Tokens};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
}

/// Why an order was not placed.
#[derive(Debug, Serialize, Deserialize)]
enum NotPlaced {
    /// The token was refused: a permanent answer, stored and replayed.
    Refused(String),
    /// The token store could not say: nothing is stored, and the next submission tries again.
    TokensUnavailable,
}

impl Retryable for NotPlaced {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::TokensUnavailable)
    }
}

impl fmt::Display for NotPlaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(reason) => write!(f, "the token was refused: {reason}"),
            Self::TokensUnavailable => f.write_str("the token store is unavailable"),
        }
    }
}

impl std::error::Error for NotPlaced {}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let tokens = Tokens::new(MemoryTokenStore::new());
    let alice = Scope::new("user:alice")?;

    // 1. The form is rendered with a fresh token.
    let token = tokens.issue(&alice).await?;
    println!("issued token {token}");

    // 2. The user double-clicks "Place order": two submissions carry the same token.
    for submission in 1..=2 {
        match tokens.consume(&alice, token.as_str()).await? {
            Consumption::Consumed => {
                println!("submission {submission}: token consumed, order placed")
            }
            Consumption::Rejected(Rejection::AlreadyUsed) => {
                println!(
                    "submission {submission}: rejected, the token was already used (order already placed)"
                )
            }
            Consumption::Rejected(reason) => {
                println!("submission {submission}: rejected: {reason:?}")
            }
        }
    }

    // 3. Another user cannot spend Alice's token, and trying does not burn it.
    let mallory = Scope::new("user:mallory")?;
    let alices = tokens.issue(&alice).await?;
    let stolen = tokens.consume(&mallory, alices.as_str()).await?;
    println!("mallory presenting alice's token: {stolen:?}");
    println!(
        "alice presenting it after: {:?}",
        tokens.consume(&alice, alices.as_str()).await?
    );

    // 4. Tokens and keys combine: with the token as the idempotency key, the repeat of a
    //    request gets the first response back instead of a bare rejection. The key holds
    //    the scope that presents the token, so another user's attempt is stored apart and
    //    never answers (or refuses) Alice's. `consume_for` makes every attempt at the key
    //    one consumer: an attempt after one whose consume reply was lost (it failed as
    //    `TokensUnavailable`, and the key was freed) finds the token used by its own
    //    request, and places the order instead of storing a refusal.
    let idem = Idempotency::new(MemoryStore::new());
    let token = tokens.issue(&alice).await?;
    let key = token.key("orders", &alice)?;
    for submission in 1..=2 {
        // The operation owns what it uses: it may finish on its own task if we go away.
        let (tokens, alice, token, request) =
            (tokens.clone(), alice.clone(), token.clone(), key.clone());
        let outcome = idem
            .execute_outcome(&key, None, || async move {
                match tokens.consume_for(&request, &alice, token.as_str()).await {
                    Ok(Consumption::Consumed) => Ok(Order { id: 1001 }),
                    Ok(Consumption::Rejected(reason)) => {
                        Err(NotPlaced::Refused(format!("{reason:?}")))
                    }
                    Err(_) => Err(NotPlaced::TokensUnavailable),
                }
            })
            // In progress elsewhere, store unavailable, ran but not recorded, ...
            .await?;
        let how = if outcome.replayed {
            "replayed"
        } else {
            "executed"
        };
        println!("keyed submission {submission}: {how}: {:?}", outcome.result);
    }
    Ok(())
}
