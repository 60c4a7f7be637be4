//! idem-postgres against the real server at `IDEM_POSTGRES_URL`, in one test binary: the
//! whole conformance suite, then what it does not cover, or covers only in general terms.

mod claims;
mod faults;
mod maintenance;
mod schema;
mod statements;
mod support;
mod tokens;
mod transactional;

use idem_postgres::{PgStore, PgTokenStore};

/// Every check works in a namespace of its own, so they share one table; each gets its own
/// pool of several connections.
async fn make_store() -> PgStore {
    support::shared_store().await
}

/// Every token check issues fresh tokens under a scope of its own.
async fn make_token_store() -> PgTokenStore {
    support::shared_token_store().await
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
