//! idem-postgres against the real server at `IDEM_POSTGRES_URL`, in one test binary: the
//! idem-tests conformance suites (records, tokens, the executor), idem-sql's SQL suite, then
//! what is PostgreSQL's own.

mod claims;
mod faults;
mod support;
mod transactional;

use idem_postgres::{PgStore, PgTokenStore};
use idem_sql::testing::{shared_store, shared_token_store};

use support::PostgreSql;

/// Every check works in a namespace of its own, so they share one table; each gets its own
/// pool of several connections.
async fn make_store() -> PgStore {
    shared_store::<PostgreSql>().await
}

/// Every token check issues fresh tokens under a scope of its own.
async fn make_token_store() -> PgTokenStore {
    shared_token_store::<PostgreSql>().await
}

idem_tests::conformance!(
    make_store,
    idem_tests::Capabilities {
        max_payload: support::MAX_PAYLOAD,
        ..Default::default()
    }
);

idem_tests::token_conformance!(make_token_store);

// The executor's rules (cancellation, renewal, lost replies) on PostgreSQL.
idem_tests::executor_conformance!(make_store);

idem_sql::sql_conformance!(crate::support::PostgreSql);
