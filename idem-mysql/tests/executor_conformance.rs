//! The idem-tests executor checks against MariaDB/MySQL at `IDEM_MYSQL_URL`: the executor's
//! rules (cancellation, renewal, lost replies, "ran but not recorded") hold on it.

#[allow(dead_code)]
#[path = "mysql/support.rs"]
mod support;

use idem_mysql::MySqlStore;

async fn make_store() -> MySqlStore {
    support::shared_store().await
}

idem_tests::executor_conformance!(make_store);
