//! The idem-tests conformance suite against MariaDB/MySQL at IDEM_MYSQL_URL.
//!
//! Every check works in a namespace of its own, so they share one table; each gets its own
//! pool of several connections.

#[allow(dead_code)]
#[path = "mysql/support.rs"]
mod support;

use idem_mysql::MySqlStore;

async fn make_store() -> MySqlStore {
    support::shared_store().await
}

idem_tests::conformance!(
    make_store,
    idem_tests::Capabilities {
        max_payload: support::MAX_PAYLOAD,
        ..Default::default()
    }
);
