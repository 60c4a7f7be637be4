//! The suite proves it can fail: every deliberately broken store is caught by the checks
//! meant to catch it, every check catches something, and the correct store passes all.

use std::collections::BTreeSet;
use std::sync::Arc;

use idem_memory::{MemoryStore, MemoryTokenStore};
use idem_tests::broken::Defect;
use idem_tests::broken::tokens::TokenDefect;
use idem_tests::{
    CHECKS, Capabilities, CheckFailure, SharedTokenStore, Store, TOKEN_CHECKS, run_all,
    run_all_tokens,
};

fn capabilities() -> Capabilities {
    Capabilities::default()
}

/// Runs the suite against every broken store at once; lists each expected check a defect
/// passed.
async fn uncaught<D, F>(
    defects: &[D],
    caught_by: fn(D) -> &'static [&'static str],
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
    let mut uncaught = Vec::new();
    for (defect, first) in runs {
        let failures = first.await.expect("the suite itself must not panic");
        let mut failed: BTreeSet<_> = failures.iter().map(|f| f.check).collect();
        // Races are caught by timing: a defect that slipped through on a machine busy with
        // every other defect's suite gets a second run of its own.
        if caught_by(defect)
            .iter()
            .any(|check| !failed.contains(check))
        {
            let again = tokio::spawn(run(defect)).await;
            let again = again.expect("the suite itself must not panic");
            eprintln!("{defect:?} ran twice; the first run missed some of its checks");
            failed.extend(again.iter().map(|f| f.check));
        }
        eprintln!("{defect:?} is caught by {failed:?}");
        uncaught.extend(
            caught_by(defect)
                .iter()
                .filter(|check| !failed.contains(*check))
                .map(|check| format!("{defect:?} passed `{check}` (failed: {failed:?})")),
        );
    }
    uncaught
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_defect_is_caught_by_its_checks() {
    let max_payload = capabilities().max_payload;
    let missed = uncaught(Defect::ALL, Defect::caught_by, |defect| {
        let store: Store = Arc::new(defect.store(max_payload));
        run_all(store, capabilities())
    })
    .await;
    assert!(
        missed.is_empty(),
        "the suite missed defects:\n{}",
        missed.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_token_defect_is_caught_by_its_checks() {
    let missed = uncaught(TokenDefect::ALL, TokenDefect::caught_by, |defect| {
        let store: SharedTokenStore = Arc::new(defect.store());
        run_all_tokens(store, capabilities())
    })
    .await;
    assert!(
        missed.is_empty(),
        "the token suite missed defects:\n{}",
        missed.join("\n")
    );
}

#[test]
fn every_check_is_proven_by_some_defect() {
    let proven: BTreeSet<_> = Defect::ALL
        .iter()
        .flat_map(|d| d.caught_by().iter().copied())
        .collect();
    let unproven: Vec<_> = CHECKS
        .iter()
        .map(|c| c.name)
        .filter(|name| !proven.contains(name))
        .collect();
    assert!(
        unproven.is_empty(),
        "checks no broken store proves able to fail: {unproven:?}"
    );
    for name in &proven {
        assert!(
            CHECKS.iter().any(|c| c.name == *name),
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
