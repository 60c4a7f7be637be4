//! The campaign's short mode, in the test suite: every scenario against private servers,
//! each judged by the campaign's own history check.

use idem_chaos::{Mode, Scenario};

/// Scenarios whose defects are being fixed on other branches (issue 16): their unexplained
/// second runs are printed but do not fail the suite yet. Panics, wrong replays and
/// fencing numbers going backwards fail them like any other. Empty this list as the fixes
/// land.
const PENDING: &[(Scenario, &str)] = &[];

fn seed() -> u64 {
    std::env::var("IDEM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

#[test]
fn the_short_campaign_finds_no_unexplained_double_run() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a runtime");
    let seed = seed();
    let mut failures = Vec::new();
    for scenario in Scenario::ALL {
        let summary = runtime.block_on(scenario.run(Mode::Short, seed));
        println!("{summary}");
        for example in summary.examples.iter().take(5) {
            println!("    {example}");
        }
        let pending = PENDING.iter().find(|(s, _)| *s == scenario);
        let hard_failure = summary.panics > 0
            || summary.wrong_replays > 0
            || summary.fencing_back > 0
            || summary.setup_error.is_some();
        if hard_failure || (!summary.passed() && pending.is_none()) {
            failures.push(summary.to_string());
        } else if let Some((_, why)) = pending.filter(|_| !summary.passed()) {
            println!("    (pending: {why})");
        }
    }
    assert!(
        failures.is_empty(),
        "the campaign (seed {seed}) failed:\n{}",
        failures.join("\n")
    );
}
