//! Timing: latency at one task, throughput at many, and the figures of a run.
//!
//! Figures only: the table they end up in is [`report`](crate::report)'s, which reads this
//! module and is never read by it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem::Error;

use crate::settings::Settings;

/// Whether a row was timed at one task (latency) or many (throughput).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// One task: p50 latency compared.
    Latency,
    /// Many tasks: operations per second compared.
    Throughput(usize),
}

/// The modes every row is measured in: one task for latency, then many for throughput.
pub fn modes(settings: &Settings) -> [Mode; 2] {
    [Mode::Latency, Mode::Throughput(settings.tasks)]
}

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Median latency of one operation (one task).
    pub p50: Duration,
    /// 99th percentile latency (one task).
    pub p99: Duration,
    /// Operations per second (all tasks).
    pub per_sec: f64,
}

/// Runs `op(0..ops)` from `tasks` concurrent tasks sharing one counter.
pub async fn throughput<F, Fut, E>(ops: usize, tasks: usize, op: F) -> Result<Figure, E>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        return Ok(());
                    }
                    op(i).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        if let Ok(Err(e)) = worker.await {
            return Err(e);
        }
    }
    let per_sec = ops as f64 / started.elapsed().as_secs_f64();
    Ok(Figure {
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        per_sec,
    })
}

/// The median of some numbers (the middle one of an odd count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// How many distinct key numbers one side uses in `mode`: the measured ones and the warm-up.
pub fn keys_needed(settings: &Settings, mode: Mode) -> usize {
    let measured = measured_ops(settings, mode);
    measured + measured / 10
}

/// How many operations one side times in `mode`.
pub fn measured_ops(settings: &Settings, mode: Mode) -> usize {
    match mode {
        Mode::Latency => settings.ops,
        Mode::Throughput(_) => settings.ops * 4 * settings.throughput_scale,
    }
}

/// Times `idem` and `raw` in `mode`, after a warm-up of each on key numbers past the
/// measured ones.
///
/// The measured operations are cut into [`SLICES`] slices that the two sides take in turns
/// (idem, raw, then raw, idem, ...), so both see the same server: the shared MariaDB's
/// state drifts within a run (its flushing, its buffer pool, other clients' load), and
/// one side timed wholly after the other picks up that drift as a difference.
pub async fn compare<I, R, IF, RF>(
    settings: &Settings,
    mode: Mode,
    idem: I,
    raw: R,
) -> Result<(Figure, Figure), Error>
where
    I: Fn(usize) -> IF + Clone + Send + Sync + 'static,
    IF: Future<Output = Result<(), Error>> + Send,
    R: Fn(usize) -> RF + Clone + Send + Sync + 'static,
    RF: Future<Output = Result<(), Error>> + Send,
{
    let ops = measured_ops(settings, mode);
    let warm_up = 0..ops / 10;
    Timing::default()
        .slice(mode, ops, warm_up.clone(), &idem)
        .await?;
    Timing::default().slice(mode, ops, warm_up, &raw).await?;
    let (mut idem_timing, mut raw_timing) = (Timing::default(), Timing::default());
    let per_slice = ops.div_ceil(SLICES);
    for (n, start) in (0..ops).step_by(per_slice).enumerate() {
        let range = start..(start + per_slice).min(ops);
        if n % 2 == 0 {
            idem_timing.slice(mode, 0, range.clone(), &idem).await?;
            raw_timing.slice(mode, 0, range, &raw).await?;
        } else {
            raw_timing.slice(mode, 0, range.clone(), &raw).await?;
            idem_timing.slice(mode, 0, range, &idem).await?;
        }
    }
    Ok((idem_timing.figure(), raw_timing.figure()))
}

/// How many turns each side takes in one measurement; even, so each side goes first
/// equally often.
pub const SLICES: usize = 8;

/// One side's measurement, gathered over its slices.
#[derive(Default)]
struct Timing {
    /// Latency of every operation (one task only).
    samples: Vec<Duration>,
    ops: usize,
    elapsed: Duration,
}

impl Timing {
    /// Runs `op(offset + i)` for `i` in `range`: one at a time, each timed, at one task;
    /// from `tasks` tasks with [`throughput`] at many.
    async fn slice<F, Fut>(
        &mut self,
        mode: Mode,
        offset: usize,
        range: std::ops::Range<usize>,
        op: &F,
    ) -> Result<(), Error>
    where
        F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send,
    {
        let count = range.len();
        match mode {
            Mode::Latency => {
                // Timed inside a worker task, as a request handler runs: from the main
                // thread's `block_on` every round trip would pay two cross-thread wake-ups.
                let (op, first) = (op.clone(), offset + range.start);
                let timed = tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(count);
                    let started = Instant::now();
                    for i in 0..count {
                        let t = Instant::now();
                        op(first + i).await?;
                        samples.push(t.elapsed());
                    }
                    Ok::<_, Error>((samples, started.elapsed()))
                });
                let (samples, elapsed) = timed
                    .await
                    .map_err(|e| Error::backend(format!("latency task: {e}")))??;
                self.samples.extend(samples);
                self.elapsed += elapsed;
            }
            Mode::Throughput(tasks) => {
                let (op, first) = (op.clone(), offset + range.start);
                let figure = throughput(count, tasks, move |i| op(first + i)).await?;
                self.elapsed += Duration::from_secs_f64(count as f64 / figure.per_sec);
            }
        }
        self.ops += count;
        Ok(())
    }

    fn figure(mut self) -> Figure {
        self.samples.sort_unstable();
        let at = |share: usize| {
            self.samples
                .get(self.samples.len() * share / 100)
                .copied()
                .unwrap_or_default()
        };
        Figure {
            p50: at(50),
            p99: at(99),
            per_sec: self.ops as f64 / self.elapsed.as_secs_f64(),
        }
    }
}
