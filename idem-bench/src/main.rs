#![doc = include_str!("../README.md")]

mod backend;
mod cached;
mod claims;
mod consumer;
mod http;
mod keys;
mod measure;
mod memory;
mod mysql;
mod postgres;
mod redis;
mod report;
mod settings;
mod sql;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use idem::Error;

use report::Row;
use settings::{Command, HELP, Settings};

/// A section's rows for one round.
type Rows<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, Error>> + Send + 'a>>;

/// A section: measures its rows for one round.
type Section = fn(&Settings) -> Rows<'_>;

/// Everything that can run, by its `--backends` name, in table order. A store adds one line
/// with `backend::rows::<Its>`; a section that is not a store (an HTTP layer, a consumer)
/// adds a function of its own returning rows.
const SECTIONS: &[(&str, Section)] = &[
    ("memory", |s| Box::pin(backend::rows::<memory::Memory>(s))),
    ("redis", |s| Box::pin(backend::rows::<redis::Redis>(s))),
    ("valkey", |s| Box::pin(backend::rows::<redis::Valkey>(s))),
    ("mysql", |s| Box::pin(backend::rows::<mysql::Mysql>(s))),
    ("postgres", |s| Box::pin(backend::rows::<postgres::Pg>(s))),
    ("redis+cache", |s| {
        Box::pin(backend::rows::<cached::Cached<redis::Redis>>(s))
    }),
    ("http", |s| Box::pin(http::rows(s))),
    ("amqp", |s| Box::pin(consumer::amqp_rows(s))),
    ("nats", |s| Box::pin(consumer::nats_rows(s))),
];

fn main() -> ExitCode {
    let settings = match Settings::parse(std::env::args().skip(1)) {
        Ok(Command::Run(settings)) => settings,
        Ok(Command::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("idem-bench: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(unknown) = settings
        .backends
        .iter()
        .find(|b| !SECTIONS.iter().any(|(name, _)| name == b))
    {
        eprintln!("idem-bench: unknown section {unknown} (see --help)");
        return ExitCode::from(2);
    }
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
    if let Some(store) = &settings.serve_http {
        return match runtime.block_on(http::serve(store)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("idem-bench --serve-http: {error}");
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
        for (name, section) in SECTIONS {
            if settings.wants(name) {
                rows.extend(
                    section(settings)
                        .await
                        .map_err(|e| format!("{name}: {e}"))?,
                );
            }
        }
        rounds.push(rows);
    }
    let missed = report::print(&report::medians(&rounds), settings.rounds);
    if settings.wants("memory") && settings.records > 0 {
        return Ok(missed + footprint(settings.records)?);
    }
    Ok(missed)
}

/// Prints the memory footprint line; 1 when it misses its target (at most 1.1× bare moka).
fn footprint(records: usize) -> Result<usize, String> {
    let per_record = footprint_in_child("idem", records)?;
    let raw = footprint_in_child("raw", records)?;
    let ratio = per_record / raw;
    let missed = ratio > 1.1;
    println!(
        "memory footprint: {per_record:.0} bytes per completed record with a 100-byte payload; \
         bare moka with per-entry expiry: {raw:.0} ({ratio:.2}×; {records} records; target ≤ 1.10×)  {}",
        if missed { "MISSED" } else { "ok" }
    );
    Ok(usize::from(missed))
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
