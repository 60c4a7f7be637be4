//! The model-based randomized check: random operations by three owners over three keys,
//! each answer compared with what [`idem_core::backend::lifecycle`] says.
//!
//! Time is cut into windows of one quantum Q. The model's clock is the window's start;
//! every TTL is a whole number of quanta plus half of one, so every deadline falls in the
//! middle of a window; operations start only in a window's first third and must end
//! before its middle; time moves on only to the next window's start. So the store's clock
//! and the model's agree on every expiry however the store counts, and no operation ever
//! lands near a TTL boundary: real servers can run it. An operation that ends late (a busy
//! machine) cannot be judged exactly: the run moves on to three fresh keys instead.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use idem_core::backend::lifecycle::{self, Entry, Phase, Step, Write};
use idem_core::{Claim, ClaimRequest, Error, Fingerprint, Key, Lease, OwnerToken, Record, Ttl};

use crate::context::{Ctx, ensure, run};
use crate::{Capabilities, CheckResult, Store};

/// The environment variable that replays one seed.
pub const SEED_VAR: &str = "IDEM_MODEL_SEED";
/// The environment variable that sets the number of steps (default [`STEPS`]).
pub const STEPS_VAR: &str = "IDEM_MODEL_STEPS";
/// Steps per run unless [`STEPS_VAR`] says otherwise.
pub const STEPS: usize = 2_000;
/// How many models run side by side, each with three keys and three owners of its own and
/// a share of the steps. Steps wait for windows of time far from every TTL boundary, so the
/// run's length is its windows: four lanes take a quarter of one lane's time.
const LANES: u64 = 4;

/// Random claim, complete, fail, renew, release, remove and read calls by three owners
/// over three keys (in four independent lanes at once, each with keys and owners of its
/// own), with time moving on between them, checked step by step against
/// `idem_core::backend::lifecycle` (the reference state machine): every answer, every fencing number
/// (growing, and the holder's own), every record read. A failure names its seed; set
/// `IDEM_MODEL_SEED` to replay it (and `IDEM_MODEL_STEPS` to run more or fewer steps).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when an answer, a fencing number or a
/// record read differs from the reference state machine's; the message names the seed and the step;
/// or when a store call the check needs fails unexpectedly.
pub async fn model(store: Store, capabilities: Capabilities) -> CheckResult {
    run("model", store, capabilities, |ctx| async move {
        let seed = match std::env::var(SEED_VAR) {
            Ok(raw) => raw
                .trim()
                .parse()
                .map_err(|e| format!("{SEED_VAR}={raw:?} is not a u64: {e}"))?,
            Err(_) => uuid::Uuid::new_v4().as_u64_pair().0,
        };
        let steps = match std::env::var(STEPS_VAR) {
            Ok(raw) => raw
                .trim()
                .parse()
                .map_err(|e| format!("{STEPS_VAR}={raw:?} is not a count: {e}"))?,
            Err(_) => STEPS,
        };
        let share = steps.div_ceil(LANES as usize);
        let lane = |lane| run_lane(&ctx, seed, lane, share);
        let lanes = tokio::join!(lane(0), lane(1), lane(2), lane(3));
        lanes.0.and(lanes.1).and(lanes.2).and(lanes.3)
    })
    .await
}

/// One lane of the model check: `steps` steps from the lane's own seed (derived from
/// `seed`, so one seed replays every lane).
async fn run_lane(ctx: &Ctx, seed: u64, lane: u64, steps: usize) -> Result<(), String> {
    let mut model = Model::new(ctx, seed, lane)?;
    match model.run(steps).await {
        Ok(()) => Ok(()),
        Err(message) => {
            let failure = format!(
                "lane {lane}: {message}\nlast steps:\n{}seed {seed}: replay with \
                 {SEED_VAR}={seed}",
                model.history.join("")
            );
            eprintln!("idem-tests model check failed: {failure}");
            Err(failure)
        }
    }
}

/// A small, fast, seedable generator (SplitMix64): the sequence is the seed's alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Model<'a> {
    ctx: &'a Ctx,
    rng: Rng,
    /// Which lane this model is, to name its keys.
    lane: u64,
    keys: Vec<Key>,
    owners: Vec<OwnerToken>,
    fingerprints: Vec<Option<Fingerprint>>,
    /// The model's entries, with the store's own fencing numbers.
    entries: HashMap<usize, Entry>,
    /// The leases each (owner, key) was handed, oldest first.
    leases: HashMap<(usize, usize), Vec<Lease>>,
    /// The largest fencing number seen per key.
    highest: HashMap<usize, u64>,
    quantum: Duration,
    origin: Instant,
    window: u64,
    /// How many times the keys were replaced (after a step that ended late).
    generation: u32,
    /// Steps that ended too late to be judged.
    late: usize,
    history: Vec<String>,
}

impl<'a> Model<'a> {
    fn new(ctx: &'a Ctx, seed: u64, lane: u64) -> Result<Self, String> {
        let keys = (0..3)
            .map(|i| ctx.key(&format!("model-{lane}-0-{i}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ctx,
            // Lanes step apart by the generator's own increment: disjoint sequences.
            rng: Rng(seed.wrapping_add(lane.wrapping_mul(0x5851_f42d_4c95_7f2d))),
            lane,
            keys,
            owners: (0..3).map(|_| OwnerToken::random()).collect(),
            fingerprints: vec![
                None,
                Some(Fingerprint::from_bytes(b"model request a")),
                Some(Fingerprint::from_bytes(b"model request b")),
            ],
            entries: HashMap::new(),
            leases: HashMap::new(),
            highest: HashMap::new(),
            quantum: ctx.caps.short_ttl.max(Duration::from_millis(200)),
            origin: Instant::now(),
            window: 0,
            generation: 0,
            late: 0,
            history: Vec::new(),
        })
    }

    /// The model's clock: the current window's start, in milliseconds.
    fn now(&self) -> u64 {
        self.window * self.quantum.as_millis() as u64
    }

    fn window_start(&self) -> Instant {
        self.origin + self.quantum * self.window as u32
    }

    /// Moves to the next window that has not started yet, and waits for it.
    async fn tick(&mut self) {
        let elapsed = self.origin.elapsed().as_nanos() / self.quantum.as_nanos();
        self.window = (elapsed as u64 + 1).max(self.window + 1);
        tokio::time::sleep_until(self.window_start().into()).await;
    }

    /// A TTL of one to `most` quanta, plus half of one: it ends mid-window.
    fn quanta(&mut self, most: usize) -> Result<Ttl, String> {
        let n = 1 + self.rng.below(most) as u32;
        Ttl::new(self.quantum * n + self.quantum / 2).map_err(|e| format!("TTL: {e}"))
    }

    /// Forgets the keys in play and moves to three fresh ones.
    fn start_over(&mut self) -> Result<(), String> {
        self.generation += 1;
        self.keys = (0..3)
            .map(|i| {
                let (lane, generation) = (self.lane, self.generation);
                self.ctx.key(&format!("model-{lane}-{generation}-{i}"))
            })
            .collect::<Result<_, _>>()?;
        self.entries.clear();
        self.leases.clear();
        self.highest.clear();
        Ok(())
    }

    fn note(&mut self, step: usize, what: String) {
        if self.history.len() == 16 {
            self.history.remove(0);
        }
        self.history
            .push(format!("  {step:>5} t={:>6}ms {what}\n", self.now()));
    }

    async fn run(&mut self, steps: usize) -> Result<(), String> {
        for step in 0..steps {
            if self.rng.chance(2) {
                self.tick().await;
                self.note(step, "time moves on one window".into());
                continue;
            }
            // Operations start in a window's first third and end before its middle, where
            // deadlines fall: their instants stay far from every boundary.
            if Instant::now() > self.window_start() + self.quantum / 3 {
                self.tick().await;
            }
            let result = self.step(step).await;
            if Instant::now() >= self.window_start() + self.quantum / 2 {
                self.late += 1;
                self.note(step, "ended late: starting over on fresh keys".into());
                self.start_over()?;
                self.tick().await;
                continue;
            }
            result?;
        }
        ensure!(
            self.late * 10 <= steps,
            "{} of {steps} steps ended too late in their window of {:?} to be judged: the \
             store (or the machine) is too slow for this quantum",
            self.late,
            self.quantum
        );
        Ok(())
    }

    async fn step(&mut self, step: usize) -> Result<(), String> {
        let k = self.rng.below(3);
        let o = self.rng.below(3);
        match self.rng.below(100) {
            0..=34 => self.claim(step, k, o).await,
            35..=49 => self.finish(step, k, o, true).await,
            50..=56 => self.finish(step, k, o, false).await,
            57..=67 => self.renew(step, k, o).await,
            68..=76 => self.release(step, k, o).await,
            77..=81 => self.remove(step, k).await,
            _ => self.read(step, k).await,
        }
    }

    /// A lease owner `o` may present for key `k`: mostly its latest, sometimes an older
    /// one, sometimes one it never got.
    fn lease_of(&mut self, k: usize, o: usize) -> Lease {
        let forged = Lease::new(
            self.keys[k].clone(),
            self.owners[o],
            1 + self.rng.below(4) as u64,
        );
        let pick = self.rng.below(10);
        match self.leases.get(&(k, o)) {
            Some(leases) if !leases.is_empty() && pick < 9 => {
                if pick < 7 {
                    leases[leases.len() - 1].clone()
                } else {
                    leases[self.rng.below(leases.len())].clone()
                }
            }
            _ => forged,
        }
    }

    fn current(&self, k: usize) -> Option<&Entry> {
        let now = self.now();
        self.entries.get(&k).filter(|e| !e.is_expired(now))
    }

    fn apply(&mut self, k: usize, write: Write) {
        match write {
            Write::Keep => {}
            Write::Put(entry) => {
                self.entries.insert(k, entry);
            }
            Write::Remove => {
                self.entries.remove(&k);
            }
        }
    }

    async fn claim(&mut self, step: usize, k: usize, o: usize) -> Result<(), String> {
        let fingerprint = self.fingerprints[self.rng.below(3)];
        let lease_ttl = self.quanta(3)?;
        let request = ClaimRequest::new(self.keys[k].clone(), lease_ttl)
            .with_owner(self.owners[o])
            .with_fingerprint(fingerprint);
        let holder_ttl = match self.current(k).map(|e| &e.phase) {
            Some(Phase::Claimed { lease_ttl, .. }) => Duration::from_millis(*lease_ttl),
            _ => Duration::ZERO,
        };
        let expected: Step<Claim> = lifecycle::claim(self.current(k), &request, self.now());
        let got = self.ctx.store.claim(&request).await;
        self.note(
            step,
            format!("owner {o} claims key {k} ({fingerprint:?}, {lease_ttl:?}) -> {got:?}"),
        );
        match (&expected.answer, &got) {
            (Ok(Claim::Acquired(model)), Ok(Claim::Acquired(real))) => {
                ensure!(
                    real.key == model.key && real.owner == model.owner,
                    "step {step}: the lease names another key or owner: {real:?}"
                );
                // A key the store may have forgotten (never seen, or its record outlived
                // its retention) may start over; one it remembers must count up.
                let remembered = self.current(k).is_some();
                let highest = if remembered {
                    self.highest.get(&k).copied().unwrap_or(0)
                } else {
                    0
                };
                let retry = self.current(k).is_some_and(|e| e.is_held_by(model));
                if retry {
                    ensure!(
                        real.fencing == model.fencing,
                        "step {step}: the holder's retried claim should get its lease {model:?} \
                         back, got {real:?}"
                    );
                } else {
                    ensure!(
                        real.fencing > highest,
                        "step {step}: an acquisition got fencing {} but {highest} was issued \
                         before for this key",
                        real.fencing
                    );
                }
                let Write::Put(mut entry) = expected.write else {
                    return Err(format!("step {step}: the model acquired without a write"));
                };
                entry.fencing = real.fencing;
                self.entries.insert(k, entry);
                self.highest.insert(k, real.fencing.max(highest));
                self.leases.entry((k, o)).or_default().push(real.clone());
                Ok(())
            }
            (
                Ok(Claim::InProgress { retry_after: model }),
                Ok(Claim::InProgress { retry_after }),
            ) => {
                ensure!(
                    !retry_after.is_zero()
                        && *retry_after <= holder_ttl
                        && retry_after.abs_diff(*model) <= self.quantum,
                    "step {step}: retry_after {retry_after:?}, but the holder's {holder_ttl:?} \
                     lease has {model:?} left"
                );
                Ok(())
            }
            (Ok(model), Ok(real)) if model == real => Ok(()),
            (Err(model), Err(real)) if same_error(model, real) => Ok(()),
            _ => Err(format!(
                "step {step}: owner {o} claiming key {k}: the lifecycle says {:?}, the store \
                 answered {got:?}",
                expected.answer
            )),
        }
    }

    async fn finish(
        &mut self,
        step: usize,
        k: usize,
        o: usize,
        completed: bool,
    ) -> Result<(), String> {
        let lease = self.lease_of(k, o);
        let retention = self.quanta(4)?;
        let payload = Bytes::from(format!("step {step}"));
        let now = self.now();
        let (expected, got, what) = if completed {
            let expected =
                lifecycle::complete(self.current(k), &lease, payload.clone(), retention, now);
            let got = self.ctx.store.complete(&lease, payload, retention).await;
            (expected, got, "completes")
        } else {
            let expected =
                lifecycle::fail(self.current(k), &lease, payload.clone(), retention, now);
            let got = self.ctx.store.fail(&lease, payload, retention).await;
            (expected, got, "fails")
        };
        self.note(
            step,
            format!(
                "owner {o} {what} key {k} with fencing {} ({retention:?}) -> {got:?}",
                lease.fencing
            ),
        );
        self.compare_transition(step, k, expected, got, what)
    }

    async fn renew(&mut self, step: usize, k: usize, o: usize) -> Result<(), String> {
        let lease = self.lease_of(k, o);
        let ttl = self.quanta(3)?;
        let expected = lifecycle::renew(self.current(k), &lease, ttl, self.now());
        let got = self.ctx.store.renew(&lease, ttl).await;
        self.note(
            step,
            format!(
                "owner {o} renews key {k} with fencing {} ({ttl:?}) -> {got:?}",
                lease.fencing
            ),
        );
        self.compare_transition(step, k, expected, got, "renews")
    }

    async fn release(&mut self, step: usize, k: usize, o: usize) -> Result<(), String> {
        let lease = self.lease_of(k, o);
        let expected = lifecycle::release(self.current(k), &lease, self.now());
        let got = self.ctx.store.release(&lease).await;
        self.note(
            step,
            format!(
                "owner {o} releases key {k} with fencing {} -> {got:?}",
                lease.fencing
            ),
        );
        self.compare_transition(step, k, expected, got, "releases")
    }

    fn compare_transition(
        &mut self,
        step: usize,
        k: usize,
        expected: Step<()>,
        got: Result<(), Error>,
        what: &str,
    ) -> Result<(), String> {
        let agree = match (&expected.answer, &got) {
            (Ok(()), Ok(())) => true,
            (Err(model), Err(real)) => same_error(model, real),
            _ => false,
        };
        ensure!(
            agree,
            "step {step}: a lease {what} key {k}: the lifecycle says {:?}, the store answered \
             {got:?}",
            expected.answer
        );
        self.apply(k, expected.write);
        Ok(())
    }

    async fn remove(&mut self, step: usize, k: usize) -> Result<(), String> {
        let key = self.keys[k].clone();
        let expected = lifecycle::remove(self.current(k), &key, self.now());
        let got = self.ctx.store.remove(&key).await;
        self.note(step, format!("remove key {k} -> {got:?}"));
        ensure!(
            matches!((&expected.answer, &got), (Ok(a), Ok(b)) if a == b),
            "step {step}: removing key {k}: the lifecycle says {:?}, the store answered {got:?}",
            expected.answer
        );
        self.apply(k, expected.write);
        Ok(())
    }

    async fn read(&mut self, step: usize, k: usize) -> Result<(), String> {
        let key = self.keys[k].clone();
        let expected = self.current(k).and_then(|e| e.record(&key, self.now()));
        let got = self.ctx.store.read(&key).await;
        self.note(step, format!("read key {k} -> {}", describe(&got)));
        let got = got.map_err(|e| format!("step {step}: read: unexpected error {e:?}"))?;
        let agree = match (&expected, &got) {
            (None, None) => true,
            (Some(model), Some(real)) => {
                model.key == real.key
                    && model.state == real.state
                    && model.fencing == real.fencing
                    && model.fingerprint == real.fingerprint
                    && model.expires_in.abs_diff(real.expires_in) <= self.quantum
            }
            _ => false,
        };
        ensure!(
            agree,
            "step {step}: reading key {k}: the lifecycle says {expected:?}, the store read {got:?}"
        );
        Ok(())
    }
}

fn same_error(model: &Error, real: &Error) -> bool {
    matches!(
        (model, real),
        (Error::FingerprintMismatch, Error::FingerprintMismatch)
            | (Error::LeaseLost, Error::LeaseLost)
    )
}

fn describe(read: &Result<Option<Record>, Error>) -> String {
    let mut out = String::new();
    match read {
        Ok(Some(r)) => {
            let _ = write!(
                out,
                "{:?} fencing {} left {:?}",
                r.state, r.fencing, r.expires_in
            );
        }
        other => {
            let _ = write!(out, "{other:?}");
        }
    }
    out
}
