//! A token used as the idempotency key of the request it guards (`Token::key`): each scope
//! that presents it runs under a key of its own.

use std::fmt;

use idem_core::{Consumption, Idempotency, Retryable, Scope, Token, Tokens};
use idem_memory::{MemoryStore, MemoryTokenStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order(u64);

/// The token was refused: a permanent answer, stored like any other.
#[derive(Debug, Serialize, Deserialize)]
struct Refused;

impl Retryable for Refused {
    fn is_retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the token was refused")
    }
}

/// Submits the order `who` placed with `token`, keyed by `Token::key`: its outcome, and
/// whether it was replayed.
async fn submit(
    idem: &Idempotency<MemoryStore>,
    tokens: &Tokens<MemoryTokenStore>,
    who: &Scope,
    token: &Token,
) -> (Result<Order, String>, bool) {
    let key = token.key("orders", who).expect("a valid key");
    let (tokens, who, token) = (tokens.clone(), who.clone(), token.clone());
    let outcome = idem
        .execute_outcome(&key, None, || async move {
            match tokens.consume(&who, token.as_str()).await {
                Ok(Consumption::Consumed) => Ok(Order(1001)),
                _ => Err(Refused),
            }
        })
        .await
        .expect("executed or replayed");
    (outcome.result.map_err(|e| e.to_string()), outcome.replayed)
}

/// Another scope presenting the token first neither burns it nor stores an answer its
/// owner's request gets: keyed by the token alone, the owner got the stored refusal.
#[tokio::test]
async fn another_scope_presenting_a_token_first_does_not_refuse_its_owner() {
    let tokens = Tokens::new(MemoryTokenStore::new());
    let idem = Idempotency::new(MemoryStore::new());
    let alice = Scope::new("user:alice").expect("valid");
    let mallory = Scope::new("user:mallory").expect("valid");
    let token = tokens.issue(&alice).await.expect("issued");

    let (stolen, _) = submit(&idem, &tokens, &mallory, &token).await;
    assert!(stolen.is_err(), "mallory cannot spend alice's token");
    let (owned, replayed) = submit(&idem, &tokens, &alice, &token).await;
    assert_eq!(owned, Ok(Order(1001)), "alice's own submission is placed");
    assert!(!replayed, "run, not replayed");
}

/// Another scope presenting a used token after its owner does not get the owner's stored
/// response.
#[tokio::test]
async fn another_scope_presenting_a_used_token_does_not_get_its_owners_response() {
    let tokens = Tokens::new(MemoryTokenStore::new());
    let idem = Idempotency::new(MemoryStore::new());
    let alice = Scope::new("user:alice").expect("valid");
    let mallory = Scope::new("user:mallory").expect("valid");
    let token = tokens.issue(&alice).await.expect("issued");

    assert_eq!(
        submit(&idem, &tokens, &alice, &token).await,
        (Ok(Order(1001)), false)
    );
    let (stolen, _) = submit(&idem, &tokens, &mallory, &token).await;
    assert!(
        stolen.is_err(),
        "mallory gets no order of alice's: {stolen:?}"
    );
    assert_eq!(
        submit(&idem, &tokens, &alice, &token).await,
        (Ok(Order(1001)), true),
        "alice's repeat gets her response back"
    );
}
