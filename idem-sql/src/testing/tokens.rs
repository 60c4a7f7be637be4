//! The token store where the SQL matters: reissuing expired rows under a race, the order of
//! the consume checks, the consumer kept for its resend, purging, rows that do not decode,
//! a server that is not there.

use std::sync::Arc;
use std::time::Duration;

use idem_core::{
    Consumption, Error, OwnerToken, Rejection, Scope, Token, TokenGenerator, TokenStore, Tokens,
    UuidV7Tokens,
};
use tokio::sync::Barrier;

use super::*;

/// Long enough that a loaded machine runs the steps that need the token live inside it.
const SHORT: Duration = Duration::from_millis(1_500);
/// Long enough past [`SHORT`] for the server's clock to have passed it.
const PAST_SHORT: Duration = Duration::from_millis(2_000);

const REJECTED_USED: Consumption = Consumption::Rejected(Rejection::AlreadyUsed);

/// A fresh token in the default generator's format, as [`Tokens::issue`] would make.
pub fn new_token<D: SqlDialect>(store: &SqlTokenStore<D>) -> Token {
    Tokens::new(store.clone())
        .parse(&UuidV7Tokens.generate())
        .expect("a generated token is well formed")
}

/// A scope no other check uses.
pub fn scope<S: TestServer>(name: &str) -> Scope {
    Scope::new(namespace::<S>(name)).expect("valid scope")
}

fn is_collision(outcome: &Result<(), Error>) -> bool {
    matches!(outcome, Err(Error::TokenCollision))
}

async fn drop_own<S: TestServer>(store: &SqlTokenStore<S::Dialect>) {
    drop_table::<S>(store.pool(), store.table()).await;
}

/// An expired token is reissued once and a live one never overwritten.
pub async fn an_expired_token_is_reissued_once_and_a_live_one_never_overwritten<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(8).await).await;
    let token = new_token(&store);
    let first = scope::<S>("first");
    store
        .issue(&token, &first, ttl(SHORT))
        .await
        .expect("issue");
    let used = store
        .consume(&token, &first, &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(used, Consumption::Consumed);
    tokio::time::sleep(PAST_SHORT).await;

    // Sixteen issuers race for the expired token, each for a scope of its own.
    const RACERS: usize = 16;
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, token, barrier) = (store.clone(), token.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mine = scope::<S>(&format!("racer-{i}"));
                barrier.wait().await;
                let outcome = store.issue(&token, &mine, ttl(LONG)).await;
                (mine, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for racer in racers {
        let (mine, outcome) = racer.await.expect("a racer panicked");
        match outcome {
            Ok(()) => winners.push(mine),
            Err(_) if is_collision(&outcome) => losers.push(mine),
            Err(other) => panic!("an issue failed: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "one reissue wins, the others are refused");
    assert_eq!(losers.len(), RACERS - 1);

    // The winner's token is fresh and unused: the others' scopes cannot use it up.
    let intruder = store
        .consume(&token, &losers[0], &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(intruder, Consumption::Rejected(Rejection::WrongScope));
    let owner = store
        .consume(&token, &winners[0], &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(owner, Consumption::Consumed);
    let stale = store
        .consume(&token, &first, &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(stale, REJECTED_USED, "used comes before the scope");
    drop_own::<S>(&store).await;
}

/// A live token is refused to another scope, whether issued or consumed; once expired it is
/// reissued to that scope, and a purge then takes only what expired.
pub async fn expired_tokens_are_reissued_purged_and_live_ones_never_overwritten<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    let (alice, bob) = (scope::<S>("alice"), scope::<S>("bob"));
    let token = new_token(&store);
    store
        .issue(&token, &alice, ttl(SHORT))
        .await
        .expect("issue");
    let again = store.issue(&token, &bob, ttl(LONG)).await;
    assert!(is_collision(&again), "{again:?}");
    assert_eq!(
        store
            .consume(&token, &bob, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::WrongScope)
    );
    tokio::time::sleep(PAST_SHORT).await;
    // Expired: reissued for bob, and now only bob can use it.
    store
        .issue(&token, &bob, ttl(LONG))
        .await
        .expect("reissue an expired token");
    assert_eq!(
        store
            .consume(&token, &bob, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Consumed
    );

    let short = new_token(&store);
    store
        .issue(&short, &alice, ttl(Duration::from_millis(50)))
        .await
        .expect("issue");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.purge_expired(100).await.expect("purge"), 1);
    assert_eq!(
        count_rows::<S>(store.pool(), store.table()).await,
        1,
        "the used, live token stays until it expires"
    );
    drop_own::<S>(&store).await;
}

/// Consume checks in the core's order.
pub async fn consume_checks_in_the_cores_order<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    let (alice, bob) = (scope::<S>("alice"), scope::<S>("bob"));
    let token = new_token(&store);
    let never = store
        .consume(&token, &alice, &idem_core::OwnerToken::random())
        .await
        .expect("consume");
    assert_eq!(never, Consumption::Rejected(Rejection::Unknown));

    store
        .issue(&token, &alice, ttl(SHORT))
        .await
        .expect("issue");
    let used = new_token(&store);
    store.issue(&used, &alice, ttl(SHORT)).await.expect("issue");
    assert_eq!(
        store
            .consume(&used, &alice, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    // A used token is used for everyone, its owner's scope or another.
    assert_eq!(
        store
            .consume(&used, &bob, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        REJECTED_USED
    );
    assert_eq!(
        store
            .consume(&token, &bob, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Rejected(Rejection::WrongScope)
    );
    tokio::time::sleep(PAST_SHORT).await;
    // Expired is unknown, whether it was used or not, and whoever asks.
    for (t, s) in [(&token, &alice), (&token, &bob), (&used, &alice)] {
        let late = store
            .consume(t, s, &idem_core::OwnerToken::random())
            .await
            .expect("consume");
        assert_eq!(late, Consumption::Rejected(Rejection::Unknown));
    }
    drop_own::<S>(&store).await;
}

/// Purging removes only expired tokens.
pub async fn purging_removes_only_expired_tokens<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    let alice = scope::<S>("alice");
    let live = new_token(&store);
    store.issue(&live, &alice, ttl(LONG)).await.expect("issue");
    for i in 0..5 {
        let short = new_token(&store);
        store
            .issue(&short, &alice, ttl(SHORT))
            .await
            .expect("issue");
        if i % 2 == 0 {
            store
                .consume(&short, &alice, &idem_core::OwnerToken::random())
                .await
                .expect("consume");
        }
    }
    tokio::time::sleep(PAST_SHORT).await;
    let zero = store.purge_expired(0).await;
    assert!(matches!(zero, Err(Error::InvalidInput(_))), "{zero:?}");
    assert_eq!(store.purge_expired(2).await.expect("purge"), 5);
    assert_eq!(store.purge_expired(2).await.expect("purge"), 0);
    assert_eq!(
        count_rows::<S>(store.pool(), store.table()).await,
        1,
        "the live token stays"
    );
    assert_eq!(
        store
            .consume(&live, &alice, &idem_core::OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    drop_own::<S>(&store).await;
}

/// A stored scope that does not decode is corrupt.
pub async fn a_stored_scope_that_does_not_decode_is_corrupt<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    let token = new_token(&store);
    S::exec(
        store.pool(),
        S::undecodable_scope(store.table(), token.as_str()),
    )
    .await;
    let answer = store
        .consume(
            &token,
            &scope::<S>("alice"),
            &idem_core::OwnerToken::random(),
        )
        .await;
    assert!(
        matches!(answer, Err(Error::CorruptRecord { .. })),
        "{answer:?}"
    );
    drop_own::<S>(&store).await;
}

/// A token's raw row, every column as one text; `None` when it has none.
pub async fn raw_token_row<S: TestServer>(
    store: &SqlTokenStore<S::Dialect>,
    token: &Token,
) -> Option<String> {
    let args = [Arg::Bytes(token.as_str().as_bytes())];
    read_text::<S>(store.pool(), S::raw_token_row(store.table()), &args).await
}

/// Who the table says used a token, as lowercase hex (`-`: no one kept).
pub async fn stored_consumer<S: TestServer>(
    store: &SqlTokenStore<S::Dialect>,
    token: &Token,
) -> String {
    let args = [Arg::Bytes(token.as_str().as_bytes())];
    read_text::<S>(store.pool(), S::token_consumer_hex(store.table()), &args)
        .await
        .expect("the token's row")
}

/// The consumer that used a token up is answered `Consumed` again when it sends the same
/// consume (its first reply lost), and the row stays as that consume left it, expiry
/// included; any other consumer, or the same one for another scope, is refused as used.
pub async fn a_consumers_resend_is_consumed_again_and_changes_nothing<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    let (alice, bob) = (scope::<S>("alice"), scope::<S>("bob"));
    let (first, other) = (OwnerToken::random(), OwnerToken::random());
    let token = new_token(&store);
    store.issue(&token, &alice, ttl(LONG)).await.expect("issue");
    assert_eq!(
        store
            .consume(&token, &alice, &first)
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    assert_eq!(
        stored_consumer::<S>(&store, &token).await,
        hex(first.as_bytes()),
        "the consume wrote its consumer"
    );
    let used = raw_token_row::<S>(&store, &token).await.expect("a row");
    // Later than the first consume's clock reading, so a rewrite would show.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..2 {
        assert_eq!(
            store.consume(&token, &alice, &first).await.expect("resend"),
            Consumption::Consumed,
            "the consumer's own resend"
        );
    }
    assert_eq!(
        raw_token_row::<S>(&store, &token).await.as_ref(),
        Some(&used),
        "a resend writes nothing: not the time it was used, not its expiry"
    );
    for (who, whose) in [(&other, &alice), (&other, &bob), (&first, &bob)] {
        assert_eq!(
            store.consume(&token, whose, who).await.expect("consume"),
            REJECTED_USED,
            "another consumer, or another scope"
        );
    }
    assert_eq!(
        raw_token_row::<S>(&store, &token).await.as_ref(),
        Some(&used),
        "a refusal writes nothing"
    );
    drop_own::<S>(&store).await;
}

/// A stored consumer that is not 16 bytes is corrupt, whoever asks.
pub async fn a_stored_consumer_that_is_not_sixteen_bytes_is_corrupt<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    if let Some(ddl) = S::prepare_token_corruption(store.table()) {
        S::exec(store.pool(), ddl).await;
    }
    let alice = scope::<S>("alice");
    let consumer = OwnerToken::random();
    let plant = format!(
        "UPDATE {} SET used_at = expires_at, used_by = {} WHERE token = {}",
        quoted::<S>(store.table()),
        S::placeholder(1),
        S::placeholder(2)
    );
    let short = &consumer.as_bytes()[..15];
    let long = [consumer.as_bytes().as_slice(), &[0]].concat();
    for stored in [short, long.as_slice(), &[]] {
        let token = new_token(&store);
        store.issue(&token, &alice, ttl(LONG)).await.expect("issue");
        let args = [Arg::Bytes(stored), Arg::Bytes(token.as_str().as_bytes())];
        assert_eq!(execute::<S>(store.pool(), plant.clone(), &args).await, 1);
        for who in [&consumer, &OwnerToken::random()] {
            let answer = store.consume(&token, &alice, who).await;
            assert!(
                matches!(answer, Err(Error::CorruptRecord { .. })),
                "a consumer of {} bytes: {answer:?}",
                stored.len()
            );
        }
    }
    drop_own::<S>(&store).await;
}

/// An INSERT the server refuses for another reason than the token's row (here a CHECK
/// constraint on the scope's length) is that error, not [`Error::TokenCollision`]: only a
/// duplicate key means the token is taken. Nothing is written, and the table keeps
/// issuing other tokens.
pub async fn an_insert_refused_otherwise_is_its_error_not_a_collision<S: TestServer>() {
    let store = own_token_store::<S>(S::pool(2).await).await;
    S::exec(
        store.pool(),
        format!(
            "ALTER TABLE {} ADD CONSTRAINT short_scopes CHECK (LENGTH(scope) < 200)",
            quoted::<S>(store.table())
        ),
    )
    .await;
    let long = Scope::new(format!("{}.{}", namespace::<S>("long"), "s".repeat(200)))
        .expect("a valid scope");
    let token = new_token(&store);
    let refused = store.issue(&token, &long, ttl(LONG)).await;
    assert!(
        refused.is_err() && !is_collision(&refused),
        "an INSERT refused by a CHECK constraint: {refused:?}"
    );
    assert_eq!(raw_token_row::<S>(&store, &token).await, None);
    let alice = scope::<S>("alice");
    store.issue(&token, &alice, ttl(LONG)).await.expect("issue");
    assert_eq!(
        store
            .consume(&token, &alice, &OwnerToken::random())
            .await
            .expect("consume"),
        Consumption::Consumed
    );
    drop_own::<S>(&store).await;
}

/// An unreachable server is unavailable.
pub async fn an_unreachable_server_is_unavailable<S: TestServer>() {
    let store = SqlTokenStore::<S::Dialect>::from_pool(S::unreachable_pool());
    let token = new_token(&store);
    let alice = scope::<S>("alice");
    let issued = store.issue(&token, &alice, ttl(LONG)).await;
    let consumed = store
        .consume(&token, &alice, &idem_core::OwnerToken::random())
        .await;
    for error in [issued.err(), consumed.err()] {
        match error {
            Some(Error::Unavailable { source }) => {
                assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
