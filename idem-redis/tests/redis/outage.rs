//! What the outage tests of both stores share: short timeouts, the bound a failing call must
//! stay under, and how a call during an outage must fail.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use idem_core::Error;
use idem_redis::{RedisStoreBuilder, redis::RedisError};

use crate::common::{free_port, unique_prefix};

/// Far above the stores' bound (300 ms to connect + 500 ms to answer): catches a hang, not a
/// slow machine.
pub const NO_HANG: Duration = Duration::from_secs(5);

/// A builder of either store with a fresh prefix and short timeouts.
pub fn builder<S>() -> RedisStoreBuilder<S>
where
    RedisStoreBuilder<S>: Default,
{
    RedisStoreBuilder::default()
        .prefix(unique_prefix())
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
}

/// `Unavailable`, with the driver's error as its source.
pub fn is_unavailable<T>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Unavailable { source }) if source.is::<RedisError>())
}

/// A Redis URL on a free port where nothing listens.
pub fn nothing_listening() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

/// `call`, which must end well before [`NO_HANG`].
pub async fn timed<T>(call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    let started = Instant::now();
    let result = call.await;
    assert!(started.elapsed() < NO_HANG, "took {:?}", started.elapsed());
    result
}

/// What `call` gives once the restarted server answers: `Unavailable` is retried for up to
/// 10 s, anything else fails the test.
pub async fn once_back<T: Debug, F: Future<Output = Result<T, Error>>>(
    mut call: impl FnMut() -> F,
) -> T {
    let back = Instant::now();
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(Error::Unavailable { .. }) if back.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the store did not recover: {err:?}"),
        }
    }
}
