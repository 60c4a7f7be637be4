//! idem-mysql against the real server at `IDEM_MYSQL_URL`, in one test binary: the idem-tests
//! conformance suites (records, tokens, the executor), idem-sql's SQL suite, then what is
//! MySQL's own.

mod claims;
mod faults;
mod support;

use idem_mysql::{MySqlStore, MySqlTokenStore};
use idem_sql::testing::{shared_store, shared_token_store};

use support::MariaDb;

/// Every check works in a namespace of its own, so they share one table; each gets its own
/// pool of several connections.
async fn make_store() -> MySqlStore {
    shared_store::<MariaDb>().await
}

/// Every check issues fresh UUIDv7 tokens under a scope of its own, so they share one table.
async fn make_token_store() -> MySqlTokenStore {
    shared_token_store::<MariaDb>().await
}

idem_tests::conformance!(
    make_store,
    idem_tests::Capabilities {
        max_payload: support::MAX_PAYLOAD,
        ..Default::default()
    }
);

idem_tests::token_conformance!(make_token_store);

// The executor's rules (cancellation, renewal, lost replies, "ran but not recorded").
idem_tests::executor_conformance!(make_store);

idem_sql::sql_conformance!(crate::support::MariaDb);
