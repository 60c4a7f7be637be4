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

/// A row folded over its rounds: median figures, and the ratio's median and range.
#[derive(Debug, Clone)]
pub struct Folded {
    /// The row, with the median of each figure.
    pub row: Row,
    /// The median of the rounds' ratios: what the verdict is judged on.
    pub ratio: f64,
    /// The lowest and highest of the rounds' ratios: how far one run's ratio moves with
    /// the machine, shown so that a verdict within that range is read as such.
    pub range: (f64, f64),
}

/// Folds the rows of several rounds into one row each, with median figures and ratio.
pub fn medians(rounds: &[Vec<Row>]) -> Vec<Folded> {
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
            let ratios: Vec<f64> = rows.iter().map(|r| r.ratio()).collect();
            let range = ratios
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &r| {
                    (low.min(r), high.max(r))
                });
            Some(Folded {
                row,
                ratio: median(ratios),
                range,
            })
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

/// The rounds' range of ratios, `-` with one round (it would only repeat the ratio).
fn describe_range(rounds: usize, (low, high): (f64, f64)) -> String {
    if rounds < 2 {
        return "-".to_owned();
    }
    let digits = if high >= 10.0 { 1 } else { 2 };
    format!("{low:.digits$}-{high:.digits$}")
}

/// Prints the table; returns how many rows missed their target.
pub fn print(rows: &[Folded], rounds: usize) -> usize {
    println!(
        "\n{:<14} {:<16} {:<5} {:<30} {:<30} {:>6} {:>11} {:>6}  {:<7} floor",
        "operation", "backend", "tasks", "idem", "floor", "ratio", "rounds", "target", "verdict"
    );
    let mut missed = 0;
    for Folded { row, ratio, range } in rows {
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
            "{:<14} {:<16} {:<5} {:<30} {:<30} {:>6.2} {:>11} {:>6}  {verdict:<7} {}",
            row.operation,
            row.backend,
            tasks,
            describe(row.mode, &row.idem),
            describe(row.mode, &row.raw),
            ratio,
            describe_range(rounds, *range),
            target,
            row.floor,
        );
    }
    println!(
        "\nratio = idem speed / floor speed (floor p50 / idem p50 at 1 task; idem ops/s / floor ops/s at many), median of {rounds} rounds; \
         rounds = the lowest and highest of the rounds' ratios; the verdict is the median's; \
         the floor is the raw client doing the same steps"
    );
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &'static str, idem_per_sec: f64) -> Row {
        let figure = |per_sec| Figure {
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            per_sec,
        };
        Row {
            backend,
            operation: "execute",
            floor: "raw",
            mode: Mode::Throughput(64),
            idem: figure(idem_per_sec),
            raw: figure(100.0),
            target: Some(0.9),
        }
    }

    /// Each row is folded over its rounds, in the order first met: the verdict's ratio is
    /// the median round's, and the range spans the lowest and highest rounds.
    #[test]
    fn rows_fold_to_their_median_and_range() {
        let rounds = [
            vec![row("b", 95.0), row("a", 50.0)],
            vec![row("b", 80.0), row("a", 60.0)],
            vec![row("b", 91.0), row("a", 40.0)],
        ];
        let folded = medians(&rounds);
        let seen: Vec<_> = folded
            .iter()
            .map(|f| (f.row.backend, f.ratio, f.range))
            .collect();
        assert_eq!(seen, [("b", 0.91, (0.80, 0.95)), ("a", 0.50, (0.40, 0.60))]);
        assert_eq!(describe_range(3, (0.80, 0.95)), "0.80-0.95");
        assert_eq!(describe_range(3, (9.6, 13.4)), "9.6-13.4");
        assert_eq!(describe_range(1, (0.80, 0.80)), "-");
    }
}
