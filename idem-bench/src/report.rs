//! Rows of the result table, their medians over rounds, and printing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::measure::{Figure, Mode, median};

/// One comparison: idem and its floor, the raw client doing the same steps.
#[derive(Debug, Clone)]
pub struct Row {
    /// The section (store or layer) measured.
    pub backend: &'static str,
    /// What idem does.
    pub operation: &'static str,
    /// What the floor side does, in a few words (`SET NX PX GET`).
    pub floor: &'static str,
    /// One task or many.
    pub mode: Mode,
    /// idem's figure.
    pub idem: Figure,
    /// The floor's figure.
    pub raw: Figure,
    /// The least acceptable idem/floor ratio, where the issue sets one.
    pub target: Option<f64>,
}

impl Row {
    /// idem's speed over the floor's: >1 means idem is faster.
    pub fn ratio(&self) -> f64 {
        match self.mode {
            Mode::Latency => self.raw.p50.as_secs_f64() / self.idem.p50.as_secs_f64(),
            Mode::Throughput(_) => self.idem.per_sec / self.raw.per_sec,
        }
    }
}

/// Folds the rows of several rounds into one row each, with median figures and ratio.
pub fn medians(rounds: &[Vec<Row>]) -> Vec<(Row, f64)> {
    let mut grouped: BTreeMap<(&str, &str, Mode), Vec<&Row>> = BTreeMap::new();
    let mut order = Vec::new();
    for row in rounds.iter().flatten() {
        let id = (row.backend, row.operation, row.mode);
        if !grouped.contains_key(&id) {
            order.push(id);
        }
        grouped.entry(id).or_default().push(row);
    }
    order
        .into_iter()
        .filter_map(|id| {
            let rows = grouped.remove(&id)?;
            let first = rows.first()?;
            let pick = |f: fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
            let figure = |which: fn(&Row) -> Figure| Figure {
                p50: Duration::from_secs_f64(median(
                    rows.iter().map(|r| which(r).p50.as_secs_f64()).collect(),
                )),
                p99: Duration::from_secs_f64(median(
                    rows.iter().map(|r| which(r).p99.as_secs_f64()).collect(),
                )),
                per_sec: median(rows.iter().map(|r| which(r).per_sec).collect()),
            };
            let row = Row {
                idem: figure(|r| r.idem),
                raw: figure(|r| r.raw),
                ..(*first).clone()
            };
            Some((row, pick(Row::ratio)))
        })
        .collect()
}

fn describe(mode: Mode, figure: &Figure) -> String {
    match mode {
        Mode::Latency => format!(
            "p50 {:>7.1}µs p99 {:>7.1}µs",
            micros(figure.p50),
            micros(figure.p99)
        ),
        Mode::Throughput(_) => format!("{:>10.0} ops/s", figure.per_sec),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints the table; returns how many rows missed their target.
pub fn print(rows: &[(Row, f64)], rounds: usize) -> usize {
    println!(
        "\n{:<14} {:<16} {:<5} {:<30} {:<30} {:>6} {:>6}  {:<7} floor",
        "operation", "backend", "tasks", "idem", "floor", "ratio", "target", "verdict"
    );
    let mut missed = 0;
    for (row, ratio) in rows {
        let tasks = match row.mode {
            Mode::Latency => "1".to_owned(),
            Mode::Throughput(n) => n.to_string(),
        };
        let (verdict, target) = match row.target {
            Some(target) if *ratio >= target => ("ok", format!("{target:.2}")),
            Some(target) => ("MISSED", format!("{target:.2}")),
            None => ("-", "-".to_owned()),
        };
        missed += usize::from(verdict == "MISSED");
        println!(
            "{:<14} {:<16} {:<5} {:<30} {:<30} {:>6.2} {:>6}  {verdict:<7} {}",
            row.operation,
            row.backend,
            tasks,
            describe(row.mode, &row.idem),
            describe(row.mode, &row.raw),
            ratio,
            target,
            row.floor,
        );
    }
    println!(
        "\nratio = idem speed / floor speed (floor p50 / idem p50 at 1 task; idem ops/s / floor ops/s at many), median of {rounds} rounds; \
         the floor is the raw client doing the same steps"
    );
    missed
}
