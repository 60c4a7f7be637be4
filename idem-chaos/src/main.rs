//! `cargo run --release -p idem-chaos -- all`: the fault campaign, one line per scenario.

use std::process::ExitCode;

use idem_chaos::{Mode, Scenario};

const USAGE: &str = "usage: idem-chaos [--short] [--seed N] <all | SCENARIO...>

Runs the fault campaign against private servers it starts itself on free loopback ports
(redis-server, mariadbd + mariadb-install-db must be installed, and valkey-server, built by
`bash .ci/services valkey`), prints one line per scenario, and exits 1 on any unexplained
double execution, wrong replay, fencing number going backwards or panic, or (redis-tokens)
a token whose business did not run exactly once or that was refused.

options:
  --short     the small load the test suite runs
  --seed N    the seed of every random choice (default: the current time)

environment:
  IDEM_CHAOS_EXAMPLES=N   examples printed per scenario (default 5)

scenarios:";

fn main() -> ExitCode {
    let mut mode = Mode::Full;
    let mut seed = None;
    let mut scenarios = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print_usage();
                return ExitCode::SUCCESS;
            }
            "--short" => mode = Mode::Short,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) => seed = Some(n),
                None => return usage_error("--seed takes a number"),
            },
            "all" => scenarios.extend(Scenario::ALL),
            name => match Scenario::from_name(name) {
                Some(scenario) => scenarios.push(scenario),
                None => return usage_error(&format!("unknown scenario {name:?}")),
            },
        }
    }
    if scenarios.is_empty() {
        return usage_error("name a scenario, or all");
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idem-chaos: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // How many examples of what went wrong each scenario prints.
    let examples = std::env::var("IDEM_CHAOS_EXAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    println!("idem-chaos seed={seed} mode={mode:?}");
    let mut failed = false;
    for scenario in scenarios {
        let summary = runtime.block_on(scenario.run(mode, seed));
        println!("{summary}");
        for example in summary.examples.iter().take(examples) {
            println!("    {example}");
        }
        failed |= !summary.passed();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_usage() {
    println!("{USAGE}");
    for scenario in Scenario::ALL {
        println!("  {:<14} {}", scenario.name(), scenario.about());
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("idem-chaos: {message}\n");
    print_usage();
    ExitCode::from(2)
}
