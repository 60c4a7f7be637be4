#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{IdempotencyStore, TokenStore};

#[cfg(feature = "proof")]
pub mod broken;
pub mod checks;
mod context;
pub mod contract;
pub mod executor_checks;
mod sabotage;
pub mod sabotage_checks;
pub mod token_checks;

pub use sabotage::{Sabotage, SharedSabotage, SharedTokenSabotage, TokenSabotage};

/// The store under test, shared by the tasks of a check.
pub type Store = Arc<dyn IdempotencyStore>;

/// The token store under test, shared by the tasks of a check.
pub type SharedTokenStore = Arc<dyn TokenStore>;

/// What a store declares about itself, so checks neither demand the impossible nor skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The largest payload the store under test accepts; one byte more must be refused with
    /// `PayloadTooLarge`. At least 1 MiB (the replay check stores 1 MiB). Default 4 MiB.
    pub max_payload: usize,
    /// The lease and retention TTL time-dependent checks use. Default 300 ms.
    pub short_ttl: Duration,
    /// How much longer than `short_ttl` checks wait for something to expire: clock
    /// granularity, a busy machine. Default 700 ms.
    pub time_slack: Duration,
    /// How many tasks race for one key in the exclusivity check. Default 64.
    pub concurrency: usize,
    /// How long a call on a store whose server does not answer may take before it counts
    /// as hung, in the [`sabotage_checks`]. Default 10 s.
    pub unavailable_within: Duration,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            max_payload: 4 * 1024 * 1024,
            short_ttl: Duration::from_millis(300),
            time_slack: Duration::from_millis(700),
            concurrency: 64,
            unavailable_within: Duration::from_secs(10),
        }
    }
}

/// A broken rule: which check, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckFailure {
    /// The check's name, as in [`CHECKS`].
    pub check: &'static str,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance check `{}` failed: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for CheckFailure {}

/// What a check returns.
pub type CheckResult = Result<(), CheckFailure>;

/// A running check, boxed so checks fit in one list.
pub type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// A check as a value, to run the suite in a loop.
pub struct Check<S = Store> {
    /// The rule's name.
    pub name: &'static str,
    /// Runs the check.
    pub run: fn(S, Capabilities) -> CheckFuture,
}

impl<S> Clone for Check<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Check<S> {}

impl<S> fmt::Debug for Check<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Stamps out one `#[test]` per check in a `conformance` module; see the crate docs.
#[macro_export]
macro_rules! conformance {
    ($factory:expr $(,)?) => {
        $crate::conformance!($factory, $crate::Capabilities::default());
    };
    ($factory:expr, $capabilities:expr $(,)?) => {
        $crate::__with_check_names!(__conformance_tests {
            conformance checks ($factory) ($capabilities) unboxed_steps
        });
    };
}

/// Stamps out one `#[test]` per token check in a `token_conformance` module, for a
/// [`TokenStore`]: `idem_tests::token_conformance!(make_token_store);`.
#[macro_export]
macro_rules! token_conformance {
    ($factory:expr $(,)?) => {
        $crate::token_conformance!($factory, $crate::Capabilities::default());
    };
    ($factory:expr, $capabilities:expr $(,)?) => {
        $crate::__with_token_check_names!(__conformance_tests {
            token_conformance token_checks ($factory) ($capabilities)
        });
    };
}

/// Calls back `$callback!` with the arguments given and the name of every store check: the
/// one list both [`CHECKS`] and [`conformance!`] are made from.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_check_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { [$($args)*]
            exclusive_claim
            exclusive_claim_many_keys
            exclusive_takeover
            exclusive_every_path
            finish_races_takeover
            freeing_races_takeover
            finishes_race_each_other
            removal_races_holder
            removals_race_each_other
            retried_claim_races_own_lease
            retried_claim_races_takeover
            reads_race_writes
            reads_race_claims_and_removals
            uncertain_claim
            own_retry_after_takeover
            in_progress_retry_after
            replay_fidelity
            lease_expiry
            stale_lease
            spent_lease
            lease_identity
            renewal
            renewal_from_now
            lapsed_lease_still_finishes
            failures
            fingerprints
            claim_fingerprint_decides
            granted_lease
            free_key
            retention
            retention_from_finish
            namespace_isolation
            key_fidelity
            bad_input
            inspection_and_removal
            removal_fencing
            fencing_memory
            model
        }
    };
}

/// The same for token checks: [`TOKEN_CHECKS`] and [`token_conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __with_token_check_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { [$($args)*]
            exclusive_consume
            consume_resend
            token_expiry
            scope_binding
            malformed_tokens
            issue_never_overwrites
            distinct_tokens
            scope_compared_exactly
            token_fidelity
            rejection_reasons
            used_mark_lifetime
            issue_against_used
            collision_keeps_expiry
            issue_races
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ([$module:ident $checks:ident ($factory:expr) ($capabilities:expr) $($typed:ident)*]
     $($name:ident)*) => {
        /// The idem-tests conformance suite, one test per rule.
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::run_check($crate::$checks::$name, $factory, $capabilities);
                }
            )*
            $(
                #[test]
                fn $typed() {
                    $crate::run_typed_check($crate::$checks::$typed, $factory, $capabilities);
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __check_list {
    ([$list:ident $store:ty, $checks:ident, $doc:literal] $($name:ident)*) => {
        #[doc = $doc]
        pub const $list: &[$crate::Check<$store>] = &[$($crate::Check {
            name: stringify!($name),
            run: |store, capabilities| Box::pin($crate::$checks::$name(store, capabilities)),
        }),*];
    };
}

__with_check_names!(__check_list { CHECKS Store, checks, "Every store check, in order." });

/// The store checks that need the store's type, not the trait object (they call the steps a
/// store hands back unboxed): [`conformance!`] runs them beside [`CHECKS`], [`run_all`]
/// cannot.
pub const TYPED_CHECKS: &[&str] = &["unboxed_steps"];
__with_token_check_names!(__check_list {
    TOKEN_CHECKS SharedTokenStore, token_checks, "Every token check, in order."
});
__with_fault_check_names!(__check_list {
    FAULT_CHECKS SharedSabotage, sabotage_checks, "Every fault check of a store, in order."
});
__with_token_fault_check_names!(__check_list {
    TOKEN_FAULT_CHECKS SharedTokenSabotage, sabotage_checks,
    "Every fault check of a token store, in order."
});

/// Runs every store check against one store, concurrently; returns the failures.
pub async fn run_all(store: Store, capabilities: Capabilities) -> Vec<CheckFailure> {
    run_checks(CHECKS, store, capabilities).await
}

/// Runs every token check against one token store, concurrently; returns the failures.
pub async fn run_all_tokens(
    store: SharedTokenStore,
    capabilities: Capabilities,
) -> Vec<CheckFailure> {
    run_checks(TOKEN_CHECKS, store, capabilities).await
}

/// Runs every fault check against one store's [`Sabotage`], concurrently; returns the
/// failures.
pub async fn run_all_faults(
    sabotage: SharedSabotage,
    capabilities: Capabilities,
) -> Vec<CheckFailure> {
    run_checks(FAULT_CHECKS, sabotage, capabilities).await
}

/// Runs every token fault check against one token store's [`TokenSabotage`], concurrently;
/// returns the failures.
pub async fn run_all_token_faults(
    sabotage: SharedTokenSabotage,
    capabilities: Capabilities,
) -> Vec<CheckFailure> {
    run_checks(TOKEN_FAULT_CHECKS, sabotage, capabilities).await
}

async fn run_checks<S: Clone + Send + 'static>(
    checks: &[Check<S>],
    store: S,
    capabilities: Capabilities,
) -> Vec<CheckFailure> {
    let runs: Vec<_> = checks
        .iter()
        .map(|check| tokio::spawn((check.run)(store.clone(), capabilities.clone())))
        .collect();
    let mut failures = Vec::new();
    for (check, run) in checks.iter().zip(runs) {
        match run.await {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => failures.push(failure),
            Err(panic) => failures.push(CheckFailure {
                check: check.name,
                message: format!("the check panicked: {panic}"),
            }),
        }
    }
    failures
}

/// The longest one check may take before it counts as hung.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// What a check's factory builds, shared as what the check takes: a store as [`Store`], a
/// token store as [`SharedTokenStore`], a hook as [`SharedSabotage`] or
/// [`SharedTokenSabotage`]. Lets [`run_check`] run every kind of check.
pub trait Shared<T> {
    /// Shares it between the check's tasks.
    fn shared(self) -> T;
}

impl<S: IdempotencyStore> Shared<Store> for S {
    fn shared(self) -> Store {
        Arc::new(self)
    }
}

impl<S: TokenStore> Shared<SharedTokenStore> for S {
    fn shared(self) -> SharedTokenStore {
        Arc::new(self)
    }
}

impl<S: Sabotage> Shared<SharedSabotage> for S {
    fn shared(self) -> SharedSabotage {
        Arc::new(self)
    }
}

impl<S: TokenSabotage> Shared<SharedTokenSabotage> for S {
    fn shared(self) -> SharedTokenSabotage {
        Arc::new(self)
    }
}

/// Runs one check (of a store, a token store, the executor or a hook) on what `factory`
/// builds, on a fresh multi-threaded runtime, and panics with its failure. Used by
/// [`conformance!`] and its siblings; call it yourself to run a single check in a `#[test]`.
pub fn run_check<T, C, CFut, F, FFut, S>(check: C, factory: F, capabilities: Capabilities)
where
    C: FnOnce(T, Capabilities) -> CFut,
    CFut: Future<Output = CheckResult>,
    F: FnOnce() -> FFut,
    FFut: Future<Output = S>,
    S: Shared<T>,
{
    block_on_check(async { check(factory().await.shared(), capabilities).await });
}

/// Runs one of the [`TYPED_CHECKS`] on what `factory` builds, given by its type, as
/// [`run_check`] runs the others; [`conformance!`] calls it.
pub fn run_typed_check<S, C, CFut, F, FFut>(check: C, factory: F, capabilities: Capabilities)
where
    C: FnOnce(Arc<S>, Capabilities) -> CFut,
    CFut: Future<Output = CheckResult>,
    F: FnOnce() -> FFut,
    FFut: Future<Output = S>,
{
    block_on_check(async { check(Arc::new(factory().await), capabilities).await });
}

fn block_on_check(check: impl Future<Output = CheckResult>) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("could not start a Tokio runtime for the check: {error}"),
    };
    match runtime.block_on(async { tokio::time::timeout(CHECK_TIMEOUT, check).await }) {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(_) => panic!("the check did not finish within {CHECK_TIMEOUT:?}: a hung store call?"),
    }
}
