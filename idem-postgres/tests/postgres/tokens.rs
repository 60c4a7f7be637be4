//! Tokens where PostgreSQL differs: a `timestamptz` expiry can hold `infinity`.

use idem_core::{Error, Scope, Token, TokenGenerator, TokenStore, UuidV7Tokens};
use idem_sql::testing::{TestServer, quoted, shared_token_store};

use crate::support::*;

/// `timestamptz` can hold `infinity`, which the token store never writes (a `Ttl` is at
/// most ten years; an operator's "keep forever", say): such a token is no token of the
/// store's, and one that was consumed would be kept, marked, forever, never purged. As an
/// infinite time in the records table, it is a `CorruptRecord` for any scope and is not
/// used up; issuing it again is refused.
#[tokio::test]
async fn a_token_with_an_infinite_expiry_is_a_corrupt_record() {
    let store = shared_token_store::<PostgreSql>().await;
    let owner = Scope::new(namespace::<PostgreSql>("token-infinite")).expect("scope");
    let other = Scope::new(format!("{}.other", owner.as_str())).expect("scope");
    let token = Token::parse(&UuidV7Tokens.generate(), &UuidV7Tokens).expect("token");
    store
        .issue(&token, &owner, ttl(RETENTION))
        .await
        .expect("issue");
    let (pool, table) = (store.pool(), quoted::<PostgreSql>(store.table()));
    // Tokens are the generator's hex digits: safe as a literal.
    let this = format!("token = '{}'::bytea", token.as_str());
    let set = format!("UPDATE {table} SET expires_at = 'infinity' WHERE {this}");
    assert_eq!(PostgreSql::exec(pool, set).await, 1, "the issued row");
    let mut consumed = Vec::new();
    for scope in [&owner, &other, &owner] {
        consumed.push((
            scope,
            store
                .consume(&token, scope, &idem_core::OwnerToken::random())
                .await,
        ));
    }
    let issued = store.issue(&token, &owner, ttl(RETENTION)).await;
    // The row goes before anything is asserted: a failing run leaves no row behind.
    let unused = format!("DELETE FROM {table} WHERE {this} AND used_at IS NULL");
    let left_unused = PostgreSql::exec(pool, unused).await;
    PostgreSql::exec(pool, format!("DELETE FROM {table} WHERE {this}")).await;
    for (scope, consumed) in consumed {
        assert!(
            matches!(consumed, Err(Error::CorruptRecord { .. })),
            "consuming a token that never expires by {scope:?}: {consumed:?}"
        );
    }
    assert!(
        matches!(
            issued,
            Err(Error::TokenCollision | Error::CorruptRecord { .. })
        ),
        "issuing over it: {issued:?}"
    );
    assert_eq!(left_unused, 1, "the corrupt token was used up");
}
