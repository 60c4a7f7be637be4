//! Benchmarks of idem's stores against their raw clients, measured in the same run.
//!
//! `cargo run --release -p idem-bench` prints one table: each operation of each backend, idem
//! next to the raw client doing the same round trips, the ratio, and the target it must meet.
//! Options: `--ops N` (operations per latency measurement, default 2000; throughput uses 4N),
//! `--rounds R` (default 3; medians are reported), `--tasks T` (default 64),
//! `--backends memory,redis,mysql`, `--records N` for the memory footprint (default
//! 1,000,000; 0 skips it).

mod claims;
mod measure;
mod memory;
mod mysql;
mod redis;
mod report;

use std::process::ExitCode;

use report::Mode;

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ops: usize,
    pub(crate) rounds: usize,
    pub(crate) tasks: usize,
    pub(crate) backends: Vec<String>,
    pub(crate) records: usize,
    /// Internal: measure one footprint in this process and print it (`idem` or `raw`).
    footprint_of: Option<String>,
}

impl Settings {
    fn from_args() -> Result<Self, String> {
        let mut settings = Settings {
            ops: 2000,
            rounds: 3,
            tasks: 64,
            backends: vec!["memory".into(), "redis".into(), "mysql".into()],
            records: 1_000_000,
            footprint_of: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--ops" => settings.ops = number()?.max(100),
                "--rounds" => settings.rounds = number()?.max(1),
                "--tasks" => settings.tasks = number()?.max(2),
                "--records" => settings.records = number()?,
                "--backends" => settings.backends = value.split(',').map(str::to_owned).collect(),
                "--footprint-of" => settings.footprint_of = Some(value),
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(settings)
    }

    /// One task for latency, then many for throughput.
    pub(crate) fn modes(&self) -> [Mode; 2] {
        [Mode::Latency, Mode::Throughput(self.tasks)]
    }

    fn wants(&self, backend: &str) -> bool {
        self.backends.iter().any(|b| b == backend)
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_args() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("idem-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idem-bench: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(kind) = &settings.footprint_of {
        let bytes = runtime.block_on(memory::footprint(kind, settings.records));
        return match bytes {
            Ok(bytes) => {
                println!("{bytes}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("idem-bench: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(&settings)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(missed) => {
            eprintln!("{missed} row(s) missed their target");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("idem-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings) -> Result<usize, String> {
    let mut rounds = Vec::new();
    for round in 1..=settings.rounds {
        eprintln!("round {round} of {}", settings.rounds);
        let mut rows = Vec::new();
        if settings.wants("memory") {
            rows.extend(
                memory::run(settings)
                    .await
                    .map_err(|e| format!("memory: {e}"))?,
            );
        }
        if settings.wants("redis") {
            rows.extend(
                redis::run(settings)
                    .await
                    .map_err(|e| format!("redis: {e}"))?,
            );
        }
        if settings.wants("mysql") {
            rows.extend(
                mysql::run(settings)
                    .await
                    .map_err(|e| format!("mysql: {e}"))?,
            );
        }
        rounds.push(rows);
    }
    let missed = report::print(&report::medians(&rounds), settings.rounds);
    if settings.wants("memory") && settings.records > 0 {
        let per_record = footprint_in_child("idem", settings.records)?;
        let raw = footprint_in_child("raw", settings.records)?;
        let verdict = if per_record < 400.0 { "ok" } else { "MISSED" };
        println!(
            "memory footprint: {per_record:.0} bytes per completed record with a 100-byte payload \
             (bare moka with per-entry expiry: {raw:.0}; {} records; target < 400)  {verdict}",
            settings.records
        );
        return Ok(missed + usize::from(per_record >= 400.0));
    }
    Ok(missed)
}

/// Measures a footprint in a fresh process of this binary, so one measurement's freed memory
/// cannot be reused by the next and hide its growth.
fn footprint_in_child(kind: &str, records: usize) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let output = std::process::Command::new(exe)
        .args(["--footprint-of", kind, "--records", &records.to_string()])
        .output()
        .map_err(|e| format!("running the footprint child: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|e| {
        format!(
            "the footprint child printed {text:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
