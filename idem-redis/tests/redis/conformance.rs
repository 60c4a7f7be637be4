//! The idem-tests conformance suite against the real server, one test per rule, each
//! check in a store of its own prefix.

use crate::common;

use idem_redis::RedisStore;

async fn make_store() -> RedisStore {
    common::store().await
}

idem_tests::conformance!(make_store, common::capabilities());
