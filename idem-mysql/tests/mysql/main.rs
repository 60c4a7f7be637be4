//! idem-mysql against the real server at `IDEM_MYSQL_URL`, in one test binary: the whole
//! conformance suite (records and tokens), then what it does not cover, or covers only in
//! general terms.

mod claims;
mod faults;
mod maintenance;
mod schema;
mod statements;
mod support;
mod tokens;
mod transactional;

use idem_mysql::{MySqlStore, MySqlTokenStore, PurgeExpired};

/// Every check works in a namespace of its own, so they share one table; each gets its own
/// pool of several connections.
async fn make_store() -> MySqlStore {
    support::shared_store().await
}

/// The token table the checks share.
const SHARED_TOKEN_TABLE: &str = "idem_test_tokens";

/// Every check issues fresh UUIDv7 tokens under a scope of its own, so they share one table.
async fn make_token_store() -> MySqlTokenStore {
    let store = MySqlTokenStore::builder()
        .table(SHARED_TOKEN_TABLE)
        .build(support::pool(8).await)
        .expect("valid table name");
    store
        .migrate()
        .await
        .expect("migrate the shared token table");
    // Keeps the shared table small; expired tokens already count as unknown to every check.
    store
        .purge_expired(10_000)
        .await
        .expect("purge the shared token table");
    store
}

idem_tests::conformance!(
    make_store,
    idem_tests::Capabilities {
        max_payload: support::MAX_PAYLOAD,
        ..Default::default()
    }
);

idem_tests::token_conformance!(make_token_store);
