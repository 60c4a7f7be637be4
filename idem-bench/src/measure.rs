//! Timing: latency at one task, throughput at many, and the figures of a run.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// Runs `op(0..ops)` one at a time, after `ops / 10` warm-up calls, and times each.
pub async fn latency<F, Fut, E>(ops: usize, op: F) -> Result<Figure, E>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    for i in 0..ops / 10 {
        op(ops + i).await?;
    }
    let mut samples = Vec::with_capacity(ops);
    let started = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        op(i).await?;
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    samples.sort_unstable();
    Ok(Figure {
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
        per_sec: ops as f64 / total.as_secs_f64(),
    })
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
