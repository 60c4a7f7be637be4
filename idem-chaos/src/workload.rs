//! The callers: many concurrent requests over keys that are each requested several times,
//! through the public executor, retrying as a client would until served or out of time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem::attempt::CancelPolicy;
use idem::{
    Error, ExecuteError, Execution, Fingerprint, Idempotency, IdempotencyStore, Key, Retryable,
};
use serde::{Deserialize, Serialize};

use crate::history::{Answer, ErrorKind, History, RunId};

/// How the callers behave.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Distinct keys.
    pub keys: u32,
    /// Requests per key; the duplicates of a key are sent close together.
    pub requests_per_key: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The longest an operation takes (each takes a random time up to this).
    pub op_time: Duration,
    /// Percent of operations that take longer than the lease (the executor must renew it).
    pub slow_percent: u32,
    /// Percent of runs that fail permanently (the failure is stored and replayed).
    pub decline_percent: u32,
    /// Percent of runs that fail retryably, with no effect (the key is released).
    pub transient_percent: u32,
    /// Percent of attempts whose caller goes away at a random moment.
    pub cancel_percent: u32,
    /// How long a request is retried before its caller gives up.
    pub deadline: Duration,
    /// The lease the executor takes.
    pub lease: Duration,
    /// What a caller going away does to its attempt. Under [`CancelPolicy::Release`] each
    /// operation marks [`commit`](idem::attempt::LeaseHandle::commit) just before its
    /// effect and goes on for a while after it, as an HTTP handler whose body still
    /// streams: a caller gone before the mark frees the key with no effect, one gone after
    /// it must leave the operation to finish and its outcome stored.
    pub cancel_policy: CancelPolicy,
    /// The seed of every random choice.
    pub seed: u64,
}

impl Workload {
    /// The full campaign's load.
    #[must_use]
    pub fn full(seed: u64) -> Self {
        Self {
            keys: 3000,
            requests_per_key: 4,
            concurrency: 64,
            op_time: Duration::from_millis(40),
            slow_percent: 1,
            decline_percent: 10,
            transient_percent: 5,
            cancel_percent: 3,
            deadline: Duration::from_secs(20),
            lease: Duration::from_secs(1),
            cancel_policy: CancelPolicy::Detach,
            seed,
        }
    }

    /// A smaller load for the test suite.
    #[must_use]
    pub fn short(seed: u64) -> Self {
        Self {
            keys: 200,
            requests_per_key: 3,
            concurrency: 24,
            deadline: Duration::from_secs(15),
            ..Self::full(seed)
        }
    }
}

/// What an operation returns: the run it was, so a replay tells which run it replays.
pub type Receipt = RunId;

/// The operation's failures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpError {
    /// A permanent failure, stored and replayed.
    Declined(RunId),
    /// A retryable failure before any effect: the key is released.
    Transient,
}

impl Retryable for OpError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient)
    }
}

/// The namespace of the campaign's keys.
pub const NAMESPACE: &str = "chaos";

/// The key of key number `n` in a run of the campaign.
pub fn key(run: &str, n: u32) -> Result<Key, Error> {
    Key::new(NAMESPACE, format!("{run}-{n}"))
}

/// Sends every request of `workload` through `idem`, recording into `history`; returns
/// when every request was served or gave up.
pub async fn drive<S: IdempotencyStore>(
    idem: Idempotency<S>,
    workload: &Workload,
    run: &str,
    history: &Arc<History>,
) {
    let queue = Arc::new(Mutex::new(requests(workload)));
    let workers: Vec<_> = (0..workload.concurrency)
        .map(|worker| {
            let caller = Caller {
                idem: idem.clone(),
                workload: workload.clone(),
                run: run.to_owned(),
                history: Arc::clone(history),
                rng: fastrand::Rng::with_seed(workload.seed ^ (worker as u64 + 1) << 32),
            };
            let queue = Arc::clone(&queue);
            tokio::spawn(caller.work(queue))
        })
        .collect();
    for worker in workers {
        if worker.await.is_err() {
            history.panicked();
        }
    }
}

/// Every (key, request number) pair, shuffled so a key's duplicates stay close together.
fn requests(workload: &Workload) -> VecDeque<(u32, u64)> {
    let mut rng = fastrand::Rng::with_seed(workload.seed);
    let mut all: Vec<(u64, u32, u64)> = Vec::new();
    let mut request = 0;
    for key in 0..workload.keys {
        for _ in 0..workload.requests_per_key {
            request += 1;
            let when = u64::from(key) * 4 + rng.u64(0..16);
            all.push((when, key, request));
        }
    }
    all.sort_unstable();
    all.into_iter()
        .map(|(_, key, request)| (key, request))
        .collect()
}

struct Caller<S> {
    idem: Idempotency<S>,
    workload: Workload,
    run: String,
    history: Arc<History>,
    rng: fastrand::Rng,
}

impl<S: IdempotencyStore> Caller<S> {
    async fn work(mut self, queue: Arc<Mutex<VecDeque<(u32, u64)>>>) {
        loop {
            let next = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front();
            let Some((key, request)) = next else {
                return;
            };
            let served = self.request(key, request).await;
            self.history.request_done(served);
        }
    }

    /// One client request, retried until served or past its deadline.
    async fn request(&mut self, n: u32, request: u64) -> bool {
        let Ok(key) = key(&self.run, n) else {
            return false;
        };
        let fingerprint = Fingerprint::of(&(n, "chaos")).ok();
        let deadline = Instant::now() + self.workload.deadline;
        while Instant::now() < deadline {
            match self.attempt(&key, n, request, fingerprint).await {
                Some(Answer::Executed(_) | Answer::Replayed(_)) => return true,
                Some(Answer::Error(ErrorKind::InProgress)) | None => {
                    tokio::time::sleep(Duration::from_millis(self.rng.u64(20..100))).await;
                }
                Some(_) => {
                    tokio::time::sleep(Duration::from_millis(self.rng.u64(30..150))).await;
                }
            }
        }
        false
    }

    /// One call of the executor; `None` after a retryable failure of the operation.
    async fn attempt(
        &mut self,
        key: &Key,
        n: u32,
        request: u64,
        fingerprint: Option<Fingerprint>,
    ) -> Option<Answer> {
        let ran = Arc::new(AtomicBool::new(false));
        let plan = self.plan();
        let history = Arc::clone(&self.history);
        let ran_inside = Arc::clone(&ran);
        let (idem, key) = (self.idem.clone(), key.clone());
        let commits = self.workload.cancel_policy == CancelPolicy::Release;
        // Spawned, so a panic is caught and counted; a caller that goes away has its future
        // dropped at a random moment.
        let handle = tokio::spawn(async move {
            let called = Instant::now();
            let call = idem.execute_with_lease(&key, fingerprint, move |lease| async move {
                let started = Instant::now();
                tokio::time::sleep(plan.duration).await;
                if plan.transient {
                    return Err(OpError::Transient);
                }
                let id = RunId {
                    key: n,
                    request,
                    fencing: lease.fencing,
                };
                if commits {
                    // No await between the mark and the effect: an effect implies the mark.
                    lease.commit();
                }
                // The effect: from here on the operation has taken place.
                history.ran(id, called, started);
                ran_inside.store(true, Ordering::SeqCst);
                if commits {
                    // The rest of the operation after its effect, which a caller going
                    // away must not cut short.
                    tokio::time::sleep(plan.after_effect).await;
                    history.returned(id);
                }
                if plan.decline {
                    Err(OpError::Declined(id))
                } else {
                    Ok::<Receipt, OpError>(id)
                }
            });
            match plan.cancel_after {
                Some(after) => tokio::time::timeout(after, call).await.ok(),
                None => Some(call.await),
            }
        });
        let outcome = match handle.await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.history.panicked();
                return Some(Answer::Error(ErrorKind::Other));
            }
        };
        let answer = match outcome {
            None => Answer::Cancelled,
            Some(Ok(Execution {
                result, replayed, ..
            })) => {
                let id = match result {
                    Ok(id) | Err(OpError::Declined(id)) => id,
                    Err(OpError::Transient) => return None,
                };
                if replayed {
                    Answer::Replayed(id)
                } else {
                    Answer::Executed(id)
                }
            }
            Some(Err(error)) => {
                let kind = execute_error_kind(&error);
                if matches!(
                    kind,
                    ErrorKind::Backend | ErrorKind::Corrupt | ErrorKind::Other
                ) {
                    self.history.note(format!("{kind:?}: {error:?}"));
                }
                if ran.load(Ordering::SeqCst) {
                    Answer::RanUnstored(kind)
                } else {
                    Answer::Error(kind)
                }
            }
        };
        self.history.answered(n, request, answer);
        Some(answer)
    }

    fn plan(&mut self) -> Plan {
        let w = self.workload.clone();
        let duration = if self.rng.u32(0..100) < w.slow_percent {
            w.lease + w.lease / 2
        } else {
            self.op_duration()
        };
        // Drawn only where it is used, so the other scenarios keep their seeds' sequences.
        let after_effect = if w.cancel_policy == CancelPolicy::Release {
            self.op_duration()
        } else {
            Duration::ZERO
        };
        let cancel_after = (self.rng.u32(0..100) < w.cancel_percent).then(|| {
            let whole = millis(duration) + millis(after_effect);
            Duration::from_millis(self.rng.u64(0..=whole * 2 + 1))
        });
        Plan {
            duration,
            after_effect,
            transient: self.rng.u32(0..100) < w.transient_percent,
            decline: self.rng.u32(0..100) < w.decline_percent,
            cancel_after,
        }
    }

    fn op_duration(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(0..=millis(self.workload.op_time)))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What one attempt's operation will do.
#[derive(Debug, Clone, Copy)]
struct Plan {
    duration: Duration,
    /// How long the operation goes on after its effect, under [`CancelPolicy::Release`].
    after_effect: Duration,
    transient: bool,
    decline: bool,
    cancel_after: Option<Duration>,
}

/// The kind of idem's error behind an execution; for "ran but not recorded", its cause's.
fn execute_error_kind<T>(error: &ExecuteError<OpError, T>) -> ErrorKind {
    match error {
        ExecuteError::Idempotency(error) => ErrorKind::of(error),
        ExecuteError::NotRecorded {
            error: Error::NotRecorded { cause },
            ..
        } => ErrorKind::of(cause),
        _ => ErrorKind::Other,
    }
}
