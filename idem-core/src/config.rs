//! How the executor behaves: lease and retention times, payload limit, waiting, and what a
//! caller that goes away does.

use std::time::Duration;

use crate::attempt::{CancelPolicy, WaitPolicy};
use crate::error::{Error, InvalidInput};
use crate::ttl::Ttl;

const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The executor's settings. [`Config::default`] gives what most services want;
/// [`Config::builder`] changes what a service needs, and checks it.
///
/// ```
/// use std::time::Duration;
/// use idem_core::{Config, WaitPolicy};
///
/// let config = Config::builder()
///     .lease_ttl(Duration::from_secs(10))
///     .wait(WaitPolicy::wait(Duration::from_secs(5)))
///     .build()?;
/// assert_eq!(config.lease_ttl, Duration::from_secs(10));
/// # Ok::<(), idem_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// How long a claim holds its key before another request may take it over. The
    /// executor renews the lease while the operation runs, so this bounds how long a crashed
    /// owner blocks the key, not how long an operation may take.
    pub lease_ttl: Duration,
    /// How long a success is replayed.
    pub success_retention: Duration,
    /// How long a permanent failure is replayed.
    pub failure_retention: Duration,
    /// The largest serialized response or failure the executor stores, in bytes.
    pub max_payload: usize,
    /// What a repeat does while the first request is still running.
    pub wait: WaitPolicy,
    /// What happens when the caller of [`Idempotency::execute`](crate::Idempotency::execute)
    /// goes away (its future is dropped) while the operation runs.
    pub cancel_policy: CancelPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ttl: DEFAULT_LEASE_TTL,
            success_retention: DEFAULT_RETENTION,
            failure_retention: DEFAULT_RETENTION,
            max_payload: DEFAULT_MAX_PAYLOAD,
            wait: WaitPolicy::FailFast,
            cancel_policy: CancelPolicy::Detach,
        }
    }
}

impl Config {
    /// Starts a [`ConfigBuilder`] from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

/// Builds a [`Config`]: every setting has a default, and [`build`](Self::build) is the one
/// fallible step.
#[must_use = "a builder does nothing until it builds"]
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Starts from the defaults, as [`Config::builder`] does.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how long a claim holds its key before another request may take it over. The
    /// executor renews the lease while the operation runs, so this bounds how long a crashed
    /// owner blocks the key, not how long an operation may take. Longer than zero and at
    /// most [`Ttl::MAX`] (checked by `build`); kept in whole milliseconds, a fraction rounded
    /// up.
    ///
    /// Default: 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// Sets how long a success is replayed. Longer than zero and at most [`Ttl::MAX`]
    /// (checked by `build`); kept in whole milliseconds, a fraction rounded up.
    ///
    /// Default: 24 h (Stripe keeps keys 24 hours).
    pub fn success_retention(mut self, retention: Duration) -> Self {
        self.config.success_retention = retention;
        self
    }

    /// Sets how long a permanent failure is replayed. Longer than zero and at most
    /// [`Ttl::MAX`] (checked by `build`); kept in whole milliseconds, a fraction rounded up.
    ///
    /// Default: 24 h.
    pub fn failure_retention(mut self, retention: Duration) -> Self {
        self.config.failure_retention = retention;
        self
    }

    /// Sets the largest serialized response or failure the executor stores, in bytes. For a
    /// larger one it stores a marker instead, and repeats get [`Error::PayloadTooLarge`].
    ///
    /// Default: 1 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self
    }

    /// Sets what a repeat does while the first request is still running. A
    /// [`WaitPolicy::Wait`] needs a positive initial backoff no longer than its maximum
    /// (checked by `build`).
    ///
    /// Default: [`WaitPolicy::FailFast`].
    pub fn wait(mut self, wait: WaitPolicy) -> Self {
        self.config.wait = wait;
        self
    }

    /// Sets what happens when the caller of
    /// [`Idempotency::execute`](crate::Idempotency::execute) goes away (its future is
    /// dropped) while the operation runs.
    /// [`Idempotency::execute_scoped`](crate::Idempotency::execute_scoped) always releases.
    ///
    /// Default: [`CancelPolicy::Detach`]: the operation finishes on a task of its own and
    /// its outcome is stored.
    pub fn cancel_policy(mut self, policy: CancelPolicy) -> Self {
        self.config.cancel_policy = policy;
        self
    }

    /// The checked [`Config`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when a TTL is zero or out of range, or the wait backoff is
    /// not usable.
    pub fn build(self) -> Result<Config, Error> {
        Settings::try_from(self.config.clone())?;
        Ok(self.config)
    }
}

/// [`Config`] checked once, in the units stores take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) lease_ttl: Ttl,
    pub(crate) success_retention: Ttl,
    pub(crate) failure_retention: Ttl,
    pub(crate) max_payload: usize,
    pub(crate) wait: WaitPolicy,
    pub(crate) cancel_policy: CancelPolicy,
}

/// [`Config::default`], checked at compile time.
impl Default for Settings {
    fn default() -> Self {
        const fn ttl(duration: Duration) -> Ttl {
            Ttl::from_millis_clamped(duration.as_millis() as u64)
        }
        Self {
            lease_ttl: ttl(DEFAULT_LEASE_TTL),
            success_retention: ttl(DEFAULT_RETENTION),
            failure_retention: ttl(DEFAULT_RETENTION),
            max_payload: DEFAULT_MAX_PAYLOAD,
            wait: WaitPolicy::FailFast,
            cancel_policy: CancelPolicy::Detach,
        }
    }
}

impl TryFrom<Config> for Settings {
    type Error = Error;

    fn try_from(config: Config) -> Result<Self, Error> {
        let lease_ttl = Ttl::new(config.lease_ttl)?;
        if let WaitPolicy::Wait {
            initial_backoff,
            max_backoff,
            ..
        } = config.wait
            && (initial_backoff.is_zero() || max_backoff < initial_backoff)
        {
            return Err(InvalidInput::Other(
                "wait backoff must be positive and max_backoff at least initial_backoff",
            )
            .into());
        }
        Ok(Self {
            lease_ttl,
            success_retention: Ttl::new(config.success_retention)?,
            failure_retention: Ttl::new(config.failure_retention)?,
            max_payload: config.max_payload,
            wait: config.wait,
            cancel_policy: config.cancel_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_refuses_what_the_executor_would() {
        let zero = Config::builder().lease_ttl(Duration::ZERO).build();
        assert!(matches!(zero, Err(Error::InvalidInput(_))), "{zero:?}");
        let backoff = Config::builder()
            .wait(WaitPolicy::Wait {
                timeout: Duration::from_secs(1),
                initial_backoff: Duration::ZERO,
                max_backoff: Duration::from_secs(1),
            })
            .build();
        assert!(
            matches!(backoff, Err(Error::InvalidInput(_))),
            "{backoff:?}"
        );
        assert_eq!(Config::builder().build().ok(), Some(Config::default()));
    }

    #[test]
    fn default_settings_are_the_default_config_checked() {
        assert_eq!(
            Settings::try_from(Config::default()).ok(),
            Some(Settings::default())
        );
    }
}
