//! The idem-tests token suite against MariaDB/MySQL at IDEM_MYSQL_URL.
//!
//! Every check issues fresh UUIDv7 tokens under a scope of its own, so they share one
//! table; each gets its own pool of several connections.

#[allow(dead_code)]
#[path = "mysql/support.rs"]
mod support;

use idem_mysql::MySqlTokenStore;

/// The token table the checks share.
const SHARED_TOKEN_TABLE: &str = "idem_test_tokens";

async fn make_token_store() -> MySqlTokenStore {
    let store = MySqlTokenStore::from_pool(support::pool(8).await)
        .with_table(SHARED_TOKEN_TABLE)
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

idem_tests::token_conformance!(make_token_store);
