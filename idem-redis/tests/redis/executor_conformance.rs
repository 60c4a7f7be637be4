//! The idem-tests executor checks against the real server: the executor's rules
//! (cancellation, renewal, lost replies, "ran but not recorded") hold on Redis.

use crate::common;

use idem_redis::RedisStore;

async fn make_store() -> RedisStore {
    common::store().await
}

idem_tests::executor_conformance!(make_store);
