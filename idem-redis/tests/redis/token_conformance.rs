//! The idem-tests token checks against the real server, one test per rule, each check in a
//! token store of its own prefix.

use crate::common;

use idem_redis::RedisTokenStore;

async fn make_token_store() -> RedisTokenStore {
    common::token_store().await
}

idem_tests::token_conformance!(make_token_store);
