//! The suite proves it can fail: every deliberately broken store is caught by exactly the
//! checks its table lists (so the table of what catches what is true), every check catches
//! something, and the correct store passes all; every executor check fails on the broken
//! stores that break what it guards, and passes on the memory store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use idem_memory::{MemoryStore, MemoryTokenStore};
use idem_tests::broken::Defect;
use idem_tests::broken::tokens::TokenDefect;
use std::time::Duration;

use idem_core::{BoxError, Key, async_trait};
use idem_tests::executor_checks::EXECUTOR_CHECKS;
use idem_tests::{
    CHECKS, Capabilities, Check, CheckFailure, FAULT_CHECKS, Sabotage, SharedSabotage,
    SharedTokenSabotage, SharedTokenStore, Store, TOKEN_CHECKS, TOKEN_FAULT_CHECKS, TYPED_CHECKS,
    checks, run_all, run_all_faults, run_all_token_faults, run_all_tokens, sabotage_checks,
};

fn capabilities() -> Capabilities {
    Capabilities {
        // The broken stores answer at once when down: a short bound catches the one that
        // hangs without holding the proof up.
        unavailable_within: Duration::from_secs(2),
        ..Capabilities::default()
    }
}

/// The randomized check: whether its random steps reach a given defect is chance, so it may
/// catch a defect its table does not list (never the other way: where it is listed it must
/// fail).
const BY_CHANCE: &[&str] = &["model"];

/// Runs the suite against every broken store at once and compares the checks that failed
/// with each defect's table, both ways: every listed check fails, and (for an exact table)
/// no other does. Lists what disagrees.
async fn disagreements<D, F>(
    defects: &[D],
    caught_by: fn(D) -> &'static [&'static str],
    is_exact: fn(D) -> bool,
    run: impl Fn(D) -> F,
) -> Vec<String>
where
    D: Copy + std::fmt::Debug,
    F: std::future::Future<Output = Vec<CheckFailure>> + Send + 'static,
{
    let runs: Vec<_> = defects
        .iter()
        .map(|defect| (*defect, tokio::spawn(run(*defect))))
        .collect();
    let mut disagreements = Vec::new();
    for (defect, first) in runs {
        let expected: BTreeSet<&str> = caught_by(defect).iter().copied().collect();
        let exact = is_exact(defect);
        let failed = failures_by_check(first.await.expect("the suite itself must not panic"));
        let agrees = |failed: &BTreeMap<&'static str, String>| {
            expected.iter().all(|check| failed.contains_key(check))
                && failed
                    .keys()
                    .all(|check| !exact || expected.contains(check) || BY_CHANCE.contains(check))
        };
        if agrees(&failed) {
            eprintln!("{defect:?} is caught by exactly {:?}", failed.keys());
            continue;
        }
        // Checks run against timing: with every defect's suite running at once on a busy
        // machine, a check may miss a defect it catches, or trip over a stall on one it
        // does not. Only what disagrees again, in a run of its own, counts.
        let again = tokio::spawn(run(defect)).await;
        let again = failures_by_check(again.expect("the suite itself must not panic"));
        eprintln!(
            "{defect:?} ran twice: first failed {:?}, then {:?}",
            failed.keys(),
            again.keys()
        );
        for check in &expected {
            if !failed.contains_key(check) && !again.contains_key(check) {
                disagreements.push(format!(
                    "{defect:?} passed `{check}`, which its table lists"
                ));
            }
        }
        for (check, message) in &again {
            if exact
                && failed.contains_key(check)
                && !expected.contains(check)
                && !BY_CHANCE.contains(check)
            {
                disagreements.push(format!(
                    "{defect:?} also failed `{check}`, which its table does not list: {message}"
                ));
            }
        }
    }
    disagreements
}

fn failures_by_check(failures: Vec<CheckFailure>) -> BTreeMap<&'static str, String> {
    failures.into_iter().map(|f| (f.check, f.message)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_defect_is_caught_by_exactly_its_checks() {
    let max_payload = capabilities().max_payload;
    let wrong = disagreements(Defect::ALL, Defect::caught_by, Defect::is_exact, |defect| {
        let store = Arc::new(defect.store(max_payload));
        let sabotage: SharedSabotage = Arc::new(Arc::clone(&store));
        async move {
            let typed = checks::unboxed_steps(Arc::clone(&store), capabilities()).await;
            let mut failures = run_all(store, capabilities()).await;
            failures.extend(run_all_faults(sabotage, capabilities()).await);
            failures.extend(typed.err());
            failures
        }
    })
    .await;
    assert!(
        wrong.is_empty(),
        "the suite disagrees with the defects' tables:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_token_defect_is_caught_by_exactly_its_checks() {
    let wrong = disagreements(
        TokenDefect::ALL,
        TokenDefect::caught_by,
        TokenDefect::is_exact,
        |defect| {
            let store = Arc::new(defect.store());
            let sabotage: SharedTokenSabotage = Arc::new(Arc::clone(&store));
            async move {
                let mut failures = run_all_tokens(store, capabilities()).await;
                failures.extend(run_all_token_faults(sabotage, capabilities()).await);
                failures
            }
        },
    )
    .await;
    assert!(
        wrong.is_empty(),
        "the token suite disagrees with the defects' tables:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_check_is_proven_by_some_defect() {
    let proven: BTreeSet<_> = Defect::ALL
        .iter()
        .flat_map(|d| d.caught_by().iter().copied())
        .collect();
    let checks: Vec<&str> = CHECKS
        .iter()
        .map(|c| c.name)
        .chain(FAULT_CHECKS.iter().map(|c| c.name))
        .chain(TYPED_CHECKS.iter().copied())
        .collect();
    let unproven: Vec<_> = checks
        .iter()
        .filter(|name| !proven.contains(*name))
        .collect();
    assert!(
        unproven.is_empty(),
        "checks no broken store proves able to fail: {unproven:?}"
    );
    for name in &proven {
        assert!(
            checks.contains(name),
            "caught_by names an unknown check `{name}`"
        );
    }
}

#[test]
fn every_token_check_is_proven_by_some_defect() {
    let proven: BTreeSet<_> = TokenDefect::ALL
        .iter()
        .flat_map(|d| d.caught_by().iter().copied())
        .collect();
    let unproven: Vec<_> = TOKEN_CHECKS
        .iter()
        .map(|c| c.name)
        .chain(TOKEN_FAULT_CHECKS.iter().map(|c| c.name))
        .filter(|name| !proven.contains(name))
        .collect();
    // Malformed tokens are refused by `Tokens` before any store is asked, and token IDs come
    // from the generator: no store can break those two rules, so no defect exists for them.
    let store_independent = ["malformed_tokens", "distinct_tokens"];
    let unexpected: Vec<_> = unproven
        .iter()
        .filter(|name| !store_independent.contains(name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "token checks no broken store proves able to fail: {unexpected:?}"
    );
}

/// For each executor check, the broken stores that break what it guards, so must fail it:
/// its proof that it can fail. Not an exact table (running every executor check against
/// every defect would take a minute): each check runs only against its own.
const EXECUTOR_PROOFS: &[(&str, &[Defect])] = &[
    // A second caller acquires too, and the operation runs twice.
    ("one_run_under_concurrency", &[Defect::TwoWinners]),
    // The released key stays claimed: the next call is "in progress", not a rerun.
    ("retryable_failure_reruns", &[Defect::NoopRelease]),
    // The failure is stored as a success: a repeat does not replay the failure.
    (
        "permanent_failure_replays",
        &[Defect::FailRecordsCompletion],
    ),
    // The panicking attempt's release leaves the key held for the whole lease.
    ("panic_frees_the_key", &[Defect::NoopRelease]),
    // A repeat while the dropped caller's operation runs acquires and runs again.
    ("dropped_caller_runs_once", &[Defect::TwoWinners]),
    // A repeat after the drop during the write acquires instead of being "in progress".
    ("cancel_during_write_keeps_the_key", &[Defect::TwoWinners]),
    // Release from the helper thread leaves the key locked for the lease.
    ("drop_outside_runtime", &[Defect::NoopRelease]),
    // Renewals change nothing: the lease lapses and a repeat takes the key over.
    ("blocking_operation_keeps_its_key", &[Defect::NoopRenew]),
    ("long_operation_keeps_its_key", &[Defect::NoopRenew]),
    // Renewal ignores the owner: it renews the new owner's claim, so the loss is never told.
    (
        "lost_lease_is_told_and_not_recorded",
        &[Defect::IgnoresOwner],
    ),
    // The key read back after the lost reply looks free: the write is not recognised.
    ("lost_write_reply_is_recognised", &[Defect::ReadsNothing]),
    // The owner's retried claim is "in progress" instead of its own lease back.
    (
        "unavailable_claim_is_retried_by_its_owner",
        &[Defect::ForgetsOwnClaim],
    ),
];

/// The stores one executor check runs against: its broken stores, then the memory store.
fn executor_runs(check: Check) -> impl Iterator<Item = (Check, Option<Defect>)> {
    let defects = EXECUTOR_PROOFS
        .iter()
        .filter(move |(name, _)| *name == check.name)
        .flat_map(|(_, defects)| defects.iter().copied().map(Some));
    defects.chain([None]).map(move |defect| (check, defect))
}

/// Runs `check` on the defect's store (or the memory store, for `None`); what disagrees
/// with the proof: a broken store passing, the memory store failing.
async fn executor_disagreement(check: Check, defect: Option<Defect>) -> Option<String> {
    let store: Store = match defect {
        Some(defect) => Arc::new(defect.store(capabilities().max_payload)),
        None => Arc::new(MemoryStore::new()),
    };
    let result = tokio::spawn((check.run)(store, capabilities())).await;
    match (defect, result) {
        (Some(defect), Ok(Ok(()))) => Some(format!(
            "`{}` passed on {defect:?}, which breaks what it guards",
            check.name
        )),
        (None, Ok(Err(failure))) => Some(format!("the memory store fails {failure}")),
        (_, Err(panic)) => Some(format!("`{}` panicked: {panic}", check.name)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_executor_check_fails_on_its_broken_stores() {
    let unproven: Vec<_> = EXECUTOR_CHECKS
        .iter()
        .filter(|check| !EXECUTOR_PROOFS.iter().any(|(name, _)| *name == check.name))
        .collect();
    assert!(
        unproven.is_empty(),
        "executor checks no broken store proves able to fail: {unproven:?}"
    );
    let runs: Vec<_> = EXECUTOR_CHECKS
        .iter()
        .flat_map(|check| executor_runs(*check))
        .map(|(check, defect)| {
            let run = tokio::spawn(executor_disagreement(check, defect));
            (check, defect, run)
        })
        .collect();
    let mut wrong = Vec::new();
    for (check, defect, run) in runs {
        if run
            .await
            .expect("the proof itself must not panic")
            .is_none()
        {
            continue;
        }
        // All at once on a busy machine, a check may trip over a stall: only what disagrees
        // again, in a run of its own, counts.
        wrong.extend(executor_disagreement(check, defect).await);
    }
    assert!(
        wrong.is_empty(),
        "the executor checks disagree with their proof:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_passes_every_check() {
    let store: Store = Arc::new(MemoryStore::new().with_max_payload(capabilities().max_payload));
    let failures = run_all(store, capabilities()).await;
    assert!(
        failures.is_empty(),
        "the reference store fails: {failures:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_token_store_passes_every_token_check() {
    let store: SharedTokenStore = Arc::new(MemoryTokenStore::new());
    let failures = run_all_tokens(store, capabilities()).await;
    assert!(
        failures.is_empty(),
        "the reference token store fails: {failures:#?}"
    );
}

/// The in-memory store seen through a hook whose storage never expires anything, as
/// `Sabotage::kept_for` lets a hook say with `Duration::MAX`.
#[derive(Debug)]
struct KeptForever(Store);

#[async_trait]
impl Sabotage for KeptForever {
    fn store(&self) -> Store {
        Arc::clone(&self.0)
    }

    async fn corrupt_record(&self, _key: &Key) -> Result<(), BoxError> {
        Err("not needed by trace_lifetime".into())
    }

    async fn unreachable_store(&self) -> Result<Store, BoxError> {
        Err("not needed by trace_lifetime".into())
    }

    async fn kept_for(&self, _key: &Key) -> Result<Option<Duration>, BoxError> {
        Ok(Some(Duration::MAX))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_lifetime_passes_a_storage_that_never_expires() {
    let store: Store = Arc::new(MemoryStore::new());
    let sabotage: SharedSabotage = Arc::new(KeptForever(store));
    let checked = tokio::spawn(sabotage_checks::trace_lifetime(sabotage, capabilities())).await;
    let result = checked.expect("trace_lifetime must not panic on a key kept forever");
    assert!(
        result.is_ok(),
        "a key the storage never expires is kept long enough: {result:?}"
    );
}

/// The contract's own text, whose Gaps section must own up to what needs the hook.
const CONTRACT: &str = include_str!("../src/contract.rs");

#[test]
fn every_defect_only_a_hook_catches_is_named_in_the_gaps() {
    let gaps = CONTRACT
        .split_once("//! ## Gaps")
        .map(|(_, gaps)| gaps)
        .expect("the contract has a Gaps section");
    let fault_check = |name: &&str| FAULT_CHECKS.iter().any(|c| c.name == *name);
    let unnamed: Vec<_> = Defect::ALL
        .iter()
        .filter(|defect| defect.caught_by().iter().all(fault_check))
        .filter(|defect| !gaps.contains(&format!("`{defect:?}`")))
        .collect();
    assert!(
        unnamed.is_empty(),
        "defects that only the Sabotage hook's checks catch (so a store without the hook \
         passes with them), not named in the contract's Gaps: {unnamed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_lifetime_says_how_the_key_it_fails_stands() {
    // Each of these stores fails the check first on a key that is not freed when looked at:
    // a lease extended past the memory (still held), a record finished with a long retention.
    let expected = [
        (Defect::ReclaimKeepsExpiry, "still held"),
        (Defect::RenewKeepsExpiry, "still held"),
        (Defect::FinishKeepsShorterExpiry, "retention"),
    ];
    for (defect, says) in expected {
        let store = Arc::new(defect.store(capabilities().max_payload));
        let sabotage: SharedSabotage = Arc::new(Arc::clone(&store));
        let failure = sabotage_checks::trace_lifetime(sabotage, capabilities())
            .await
            .expect_err("trace_lifetime catches the defect");
        assert!(
            failure.message.contains(says) && !failure.message.contains("freed"),
            "{defect:?}: the message should say the key is {says:?}, not freed: {}",
            failure.message
        );
    }
}
