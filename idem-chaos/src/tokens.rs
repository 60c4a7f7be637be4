//! One-time tokens combined with keys, under Redis faults: the token is the idempotency key,
//! and the consume runs inside the execution under it, as one consumer for every attempt
//! (`Tokens::consume_for`). What that flow promises is checked per token: its business ran
//! exactly once, no submission was told the token was refused, and every submission that
//! got an answer got the same order.
//!
//! The faults are the ones that lose a consume's reply after the consume was applied:
//! `CLIENT PAUSE WRITE` windows, some longer than the consume's resends (four sends within
//! a second), so a consume queued at the start of one is applied when it ends and every
//! reply is long given up; and `CLIENT KILL` of the store's connections, with calls on
//! them. A fresh consumer per attempt turns the first kind into tokens refused as used by
//! their own request, whose business never ran.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use idem::redis::{RedisStore, RedisTokenStore};
use idem::{
    Consumption, Error, ExecuteError, Execution, Idempotency, Key, OwnerToken, Retryable, Scope,
    Token, TokenStore, Tokens, Ttl,
};
use serde::{Deserialize, Serialize};

use crate::history::{Answer, ErrorKind, Fault, History};
use crate::run::{Outcome, executor, pause_ms};
use crate::scenarios::redis_store;
use crate::servers::RedisServer;
use crate::workload::Workload;

/// The namespace of the token keys.
const NAMESPACE: &str = "chaos-orders";

/// The scopes tokens are issued for, in turn.
const SCOPES: u32 = 4;

/// The lease: longer than the longest write pause plus a third of itself (the executor
/// renews every third), so an outcome write held by a pause still lands while the lease is
/// the writer's. A double run would otherwise be the executor's documented one (ran, not
/// recorded), not the token flow's.
const LEASE: Duration = Duration::from_secs(3);

/// How long the long write pauses last, in milliseconds: past a consume's resends (a second
/// from its first send, each waiting out the 500 ms response timeout), so a consume queued
/// in the first part of one is applied with no reply left waiting for it.
const LONG_PAUSE_MS: std::ops::Range<u64> = 1200..1800;

/// What the flow promised, per token, and what the faults did to it.
#[derive(Debug, Default, Clone)]
pub struct TokenTally {
    /// Tokens issued.
    pub tokens: usize,
    /// Submissions made (2 or 3 per token, at once: a double click).
    pub submissions: usize,
    /// Runs of the business, over every token.
    pub runs: usize,
    /// Submissions answered from the store.
    pub replays: usize,
    /// Calls of `consume_for`.
    pub consumes: usize,
    /// Consume sends beyond each call's first: the same consumer asking again after a
    /// reply it did not get.
    pub resends: usize,
    /// Attempts whose consume stayed unavailable through its resends (failed retryably,
    /// key freed).
    pub consume_unavailable: usize,
    /// Tokens consumed by an attempt after one whose consume stayed unavailable: where a
    /// consume applied with its reply lost is recovered by the next attempt.
    pub consumed_after_unavailable: usize,
    /// Attempts that ran the business and could not store the outcome (`NotRecorded`).
    pub not_recorded: usize,
    /// Second runs of a token after a `NotRecorded` of it: documented, not a failure.
    pub explained_doubles: usize,
    /// Submissions that got no answer before their deadline.
    pub gave_up: usize,
    /// Tokens whose business never ran.
    pub unrun: usize,
    /// Final answers that refused the token.
    pub refused: usize,
    /// Second runs of a token that no `NotRecorded` explains.
    pub doubles: usize,
    /// Tokens whose submissions got different orders, or an order no run of it made.
    pub split: usize,
}

impl TokenTally {
    /// Whether the flow kept its promise: every token ran once (or again only after a
    /// documented `NotRecorded`), nothing was refused, every answer was the token's one order.
    #[must_use]
    pub fn held(&self) -> bool {
        self.unrun == 0 && self.refused == 0 && self.doubles == 0 && self.split == 0
    }
}

/// The order a run of a token's business places: which token, and which of its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    token: u32,
    run: u32,
}

/// Why an order was not placed (as `idem/examples/token_flow.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum NotPlaced {
    /// The token was refused: stored and replayed.
    Refused(String),
    /// The consume stayed unavailable: nothing stored, the key is freed.
    TokensUnavailable,
}

impl Retryable for NotPlaced {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::TokensUnavailable)
    }
}

/// A submission's last answer.
#[derive(Debug, Clone)]
enum Final {
    Placed(Order),
    Refused(String),
    GaveUp,
}

/// What happened to one token.
#[derive(Debug, Default)]
struct TokenLog {
    runs: u32,
    not_recorded: u32,
    /// A consume of it stayed unavailable, and none has consumed it since.
    unavailable_pending: bool,
    consumed_after_unavailable: bool,
    finals: Vec<Final>,
}

/// Every token's log, and the counts of consume calls and sends.
#[derive(Debug)]
struct Ledger {
    tokens: Mutex<Vec<TokenLog>>,
    consumes: AtomicUsize,
    sends: Arc<AtomicUsize>,
    consume_unavailable: AtomicUsize,
    not_recorded: AtomicUsize,
    replays: AtomicUsize,
}

impl Ledger {
    fn new(tokens: usize, sends: Arc<AtomicUsize>) -> Self {
        Self {
            tokens: Mutex::new((0..tokens).map(|_| TokenLog::default()).collect()),
            consumes: AtomicUsize::new(0),
            sends,
            consume_unavailable: AtomicUsize::new(0),
            not_recorded: AtomicUsize::new(0),
            replays: AtomicUsize::new(0),
        }
    }

    fn logs(&self) -> MutexGuard<'_, Vec<TokenLog>> {
        // A panicking submission is counted, not propagated: keep using the data.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with<R>(&self, n: u32, f: impl FnOnce(&mut TokenLog) -> R) -> Option<R> {
        self.logs().get_mut(n as usize).map(f)
    }

    /// The business of token `n` ran: the order it placed.
    fn ran(&self, n: u32) -> Order {
        let run = self
            .with(n, |log| {
                log.runs += 1;
                if log.unavailable_pending {
                    log.consumed_after_unavailable = true;
                }
                log.runs
            })
            .unwrap_or(0);
        Order { token: n, run }
    }

    fn consume_unavailable(&self, n: u32) {
        self.consume_unavailable.fetch_add(1, Ordering::SeqCst);
        self.with(n, |log| log.unavailable_pending = true);
    }

    fn not_recorded(&self, n: u32) {
        self.not_recorded.fetch_add(1, Ordering::SeqCst);
        self.with(n, |log| log.not_recorded += 1);
    }

    fn finished(&self, n: u32, last: Final) {
        self.with(n, |log| log.finals.push(last));
    }

    /// The tally, and an example per broken token (up to `limit`).
    fn tally(&self, limit: usize) -> (TokenTally, Vec<String>) {
        let logs = self.logs();
        let consumes = self.consumes.load(Ordering::SeqCst);
        let mut tally = TokenTally {
            tokens: logs.len(),
            consumes,
            resends: self.sends.load(Ordering::SeqCst).saturating_sub(consumes),
            consume_unavailable: self.consume_unavailable.load(Ordering::SeqCst),
            not_recorded: self.not_recorded.load(Ordering::SeqCst),
            replays: self.replays.load(Ordering::SeqCst),
            ..TokenTally::default()
        };
        let mut examples = Vec::new();
        for (n, log) in logs.iter().enumerate() {
            tally.submissions += log.finals.len();
            tally.runs += log.runs as usize;
            tally.consumed_after_unavailable += usize::from(log.consumed_after_unavailable);
            let mut broken = Vec::new();
            let again = log.runs.saturating_sub(1);
            let explained = again.min(log.not_recorded);
            tally.explained_doubles += explained as usize;
            if again > explained {
                tally.doubles += (again - explained) as usize;
                broken.push(format!("ran {} times", log.runs));
            }
            if log.runs == 0 {
                tally.unrun += 1;
                broken.push("never ran".to_owned());
            }
            let mut orders = BTreeSet::new();
            for last in &log.finals {
                match last {
                    Final::Placed(order) => {
                        orders.insert((order.token, order.run));
                    }
                    Final::Refused(reason) => {
                        tally.refused += 1;
                        broken.push(format!("refused ({reason})"));
                    }
                    Final::GaveUp => tally.gave_up += 1,
                }
            }
            let foreign = orders
                .iter()
                .any(|&(token, run)| token as usize != n || run == 0 || run > log.runs);
            if orders.len() > 1 || foreign {
                tally.split += 1;
                broken.push(format!("answered with orders {orders:?}"));
            }
            if !broken.is_empty() && examples.len() < limit {
                examples.push(format!(
                    "token {n}: {} (runs {}, not recorded {}, a consume unavailable before: {})",
                    broken.join(", "),
                    log.runs,
                    log.not_recorded,
                    log.unavailable_pending || log.consumed_after_unavailable
                ));
            }
        }
        (tally, examples)
    }
}

/// A token store that counts the consumes sent to it, resends included.
#[derive(Debug)]
struct Counted<S> {
    store: S,
    sends: Arc<AtomicUsize>,
}

#[idem::async_trait]
impl<S: TokenStore> TokenStore for Counted<S> {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.store.issue(token, scope, ttl).await
    }

    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        self.store.consume(token, scope, consumer).await
    }
}

/// The scenario's token store: its consumes counted.
type CountedTokens = Tokens<Counted<RedisTokenStore>>;

/// Everything a submission shares with the others.
struct Ground {
    idem: Idempotency<RedisStore>,
    tokens: CountedTokens,
    ledger: Ledger,
    history: Arc<History>,
    deadline: Duration,
}

/// A token issued for the scenario: its number, the token, its scope and its key.
type Issued = (u32, Token, Scope, Key);

/// Tokens on `server`, giving up as quickly as the records' store ([`redis_store`]), with
/// every consume sent counted into `sends`.
async fn token_store(
    server: &RedisServer,
    sends: &Arc<AtomicUsize>,
) -> Result<CountedTokens, Error> {
    let store = RedisTokenStore::builder()
        .prefix("chaos:token:")
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
        .connect(&server.url())
        .await?;
    Ok(Tokens::new(Counted {
        store,
        sends: Arc::clone(sends),
    }))
}

/// Issues `count` tokens over [`SCOPES`] scopes, before any fault: issuing is not what the
/// scenario checks.
async fn issue(tokens: &CountedTokens, count: u32) -> Result<Vec<Issued>, Error> {
    let mut issued = Vec::new();
    for n in 0..count {
        let scope = Scope::new(format!("user:{}", n % SCOPES))?;
        let token = tokens.issue(&scope).await?;
        let key = token.key(NAMESPACE, &scope)?;
        issued.push((n, token, scope, key));
    }
    Ok(issued)
}

/// The scenario: tokens issued before any fault, then every token submitted two or three
/// times at once, each submission retried as a client would, while the server pauses
/// writes and closes the store's connections.
///
/// Judged by its own ledger, per token, rather than by the history's runs per key: what
/// breaks here is a token refused though nothing ran, which no second run shows. The
/// history keeps the faults and the error kinds.
pub(crate) async fn redis_tokens(workload: &Workload) -> Outcome {
    let workload = Workload {
        lease: LEASE,
        ..workload.clone()
    };
    let server = RedisServer::start(&["--appendonly", "no"])?;
    let store = redis_store(&server).await?;
    let sends = Arc::new(AtomicUsize::new(0));
    let tokens = token_store(&server, &sends).await?;
    let issued = issue(&tokens, (workload.keys / 5).max(1)).await?;
    let history = Arc::new(History::new(workload.lease));
    let ground = Arc::new(Ground {
        idem: executor(store, &workload)?,
        tokens,
        ledger: Ledger::new(issued.len(), sends),
        history: Arc::clone(&history),
        deadline: workload.deadline,
    });
    let mut admin = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let injector = {
        let (stop, history, seed) = (Arc::clone(&stop), Arc::clone(&history), workload.seed);
        tokio::spawn(async move {
            let _server = server;
            inject(&mut admin, &history, &stop, seed).await;
        })
    };
    submit_all(&ground, issued, workload.seed).await;
    stop.store(true, Ordering::SeqCst);
    if injector.await.is_err() {
        history.panicked();
    }

    let mut summary = history.check("");
    summary.flag_kinds(&[ErrorKind::Backend, ErrorKind::Corrupt]);
    let (tally, examples) = ground.ledger.tally(10);
    summary.requests = tally.submissions;
    summary.gave_up = tally.gave_up;
    summary.keys = tally.tokens;
    summary.runs = tally.runs;
    summary.replays = tally.replays;
    summary.examples.extend(examples);
    summary.tokens = Some(tally);
    Ok(summary)
}

/// Submits every token two or three times at once, tokens arriving one after another over
/// at least 1.5 s (so that a short run meets a long pause too); returns when every
/// submission got its answer or gave up.
async fn submit_all(ground: &Arc<Ground>, issued: Vec<Issued>, seed: u64) {
    let count = u32::try_from(issued.len()).unwrap_or(u32::MAX).max(1);
    let spacing = Duration::from_millis(10).max(Duration::from_millis(1500) / count);
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x70c);
    let mut submissions = Vec::new();
    for (n, token, scope, key) in issued {
        let arrival = started + spacing * n;
        for _ in 0..rng.u32(2..=3) {
            let ground = Arc::clone(ground);
            let (token, scope, key) = (token.clone(), scope.clone(), key.clone());
            let (click, seed) = (Duration::from_millis(rng.u64(0..30)), rng.u64(..));
            submissions.push(tokio::spawn(async move {
                tokio::time::sleep_until((arrival + click).into()).await;
                ground.submit(n, token, scope, key, seed).await;
            }));
        }
    }
    for submission in submissions {
        // Spawned, so a panic is caught and counted.
        if submission.await.is_err() {
            ground.history.panicked();
        }
    }
}

impl Ground {
    /// One submission of token `n`, retried until it gets an answer (an order or a refusal)
    /// or its deadline passes.
    async fn submit(self: Arc<Self>, n: u32, token: Token, scope: Scope, key: Key, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let deadline = Instant::now() + self.deadline;
        while Instant::now() < deadline {
            let before = Duration::from_millis(rng.u64(0..150));
            let attempt = Arc::clone(&self).attempt(n, &token, &scope, &key, before);
            if let Some(last) = attempt.await {
                self.ledger.finished(n, last);
                return;
            }
            pause_ms(&mut rng, 20..120).await;
        }
        self.ledger.finished(n, Final::GaveUp);
    }

    /// One call of the executor, whose operation waits `before` (the handler's own work:
    /// parsing, validating the form; the window in which a pause that begins after the claim
    /// catches the consume), then consumes the token as the request. The final answer, or
    /// `None` to try again.
    async fn attempt(
        self: Arc<Self>,
        n: u32,
        token: &Token,
        scope: &Scope,
        key: &Key,
        before: Duration,
    ) -> Option<Final> {
        // The operation owns what it uses: the executor may finish it on a task of its own.
        let (ground, token, scope, request) =
            (Arc::clone(&self), token.clone(), scope.clone(), key.clone());
        let outcome = self
            .idem
            .execute_outcome(key, None, || async move {
                tokio::time::sleep(before).await;
                ground.ledger.consumes.fetch_add(1, Ordering::SeqCst);
                match ground
                    .tokens
                    .consume_for(&request, &scope, token.as_str())
                    .await
                {
                    Ok(Consumption::Consumed) => Ok(ground.ledger.ran(n)),
                    Ok(Consumption::Rejected(reason)) => {
                        Err(NotPlaced::Refused(format!("{reason:?}")))
                    }
                    Err(_) => {
                        ground.ledger.consume_unavailable(n);
                        Err(NotPlaced::TokensUnavailable)
                    }
                }
            })
            .await;
        let error = match outcome {
            Ok(Execution {
                result, replayed, ..
            }) => {
                if replayed {
                    self.ledger.replays.fetch_add(1, Ordering::SeqCst);
                }
                return match result {
                    Ok(order) => Some(Final::Placed(order)),
                    Err(NotPlaced::Refused(reason)) => Some(Final::Refused(reason)),
                    Err(NotPlaced::TokensUnavailable) => None,
                };
            }
            Err(error) => error,
        };
        let answer = match &error {
            ExecuteError::NotRecorded { result, error } => {
                // The business ran and its order is not stored: the next attempt may run
                // it again, as the executor documents. Counted as that token's explained
                // double, should one follow.
                if result.is_ok() {
                    self.ledger.not_recorded(n);
                }
                match error {
                    Error::NotRecorded { cause } => Answer::RanUnstored(ErrorKind::of(cause)),
                    other => Answer::RanUnstored(ErrorKind::of(other)),
                }
            }
            ExecuteError::Idempotency(error) => Answer::Error(ErrorKind::of(error)),
            _ => Answer::Error(ErrorKind::Other),
        };
        if let Answer::Error(kind) | Answer::RanUnstored(kind) = answer
            && matches!(
                kind,
                ErrorKind::Backend | ErrorKind::Corrupt | ErrorKind::Other
            )
        {
            self.history.note(format!("{kind:?}: {error:?}"));
        }
        self.history.answered(n, 0, answer);
        None
    }
}

/// Until `stop`: long write pauses, connection kills and short write pauses in turn, a few
/// hundred milliseconds apart.
async fn inject(
    admin: &mut redis::aio::MultiplexedConnection,
    history: &History,
    stop: &AtomicBool,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x70c5);
    let mut turn = 0_u32;
    while !stop.load(Ordering::SeqCst) {
        pause_ms(&mut rng, 100..400).await;
        match turn % 4 {
            0 => write_pause(admin, history, rng.u64(LONG_PAUSE_MS), "long-write-pause").await,
            2 => write_pause(admin, history, rng.u64(50..600), "write-pause").await,
            _ => client_kill(admin, history).await,
        }
        turn += 1;
    }
}

/// `CLIENT PAUSE ms WRITE`: writes (the token consume, claims, outcome writes) wait in the
/// server until it ends, and are then applied, whether anyone still waits for the reply.
async fn write_pause(
    admin: &mut redis::aio::MultiplexedConnection,
    history: &History,
    ms: u64,
    what: &'static str,
) {
    let from = Instant::now();
    let paused: Result<(), _> = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(admin)
        .await;
    if let Err(error) = paused {
        eprintln!("client pause: {error}");
        return;
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
    history.fault(Fault::Outage {
        what,
        key: None,
        from,
        to: Instant::now(),
    });
}

/// `CLIENT KILL` of every connection but the injector's: calls on them lose their replies,
/// whether or not the server applied them.
async fn client_kill(admin: &mut redis::aio::MultiplexedConnection, history: &History) {
    let killed: Result<u64, _> = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(admin)
        .await;
    match killed {
        Ok(n) if n > 0 => history.fault(Fault::Instant {
            what: "client-kill",
        }),
        Ok(_) => {}
        Err(error) => eprintln!("client kill: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger of `tokens` tokens, with no consume sent.
    fn ledger(tokens: usize) -> Ledger {
        Ledger::new(tokens, Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn a_token_run_once_and_answered_with_its_order_holds() {
        let ledger = ledger(1);
        let order = ledger.ran(0);
        ledger.finished(0, Final::Placed(order));
        ledger.finished(0, Final::Placed(order));
        let (tally, examples) = ledger.tally(5);
        assert!(tally.held(), "{examples:?}");
        assert_eq!((tally.runs, tally.submissions), (1, 2));
    }

    /// What the consume variant gives: the token used by a consume whose reply was lost,
    /// and every later submission refused though nothing ran.
    #[test]
    fn a_token_refused_though_it_never_ran_breaks_it() {
        let ledger = ledger(1);
        ledger.consume_unavailable(0);
        ledger.finished(0, Final::Refused("AlreadyUsed".to_owned()));
        ledger.finished(0, Final::Refused("AlreadyUsed".to_owned()));
        let (tally, examples) = ledger.tally(5);
        assert!(!tally.held());
        assert_eq!((tally.unrun, tally.refused), (1, 2));
        assert_eq!(examples.len(), 1, "one example per token");
    }

    #[test]
    fn a_second_run_is_explained_only_by_a_not_recorded_one() {
        let ledger = ledger(2);
        for n in 0..2 {
            ledger.ran(n);
            let again = ledger.ran(n);
            ledger.finished(n, Final::Placed(again));
        }
        ledger.not_recorded(0);
        let (tally, _) = ledger.tally(5);
        assert_eq!((tally.explained_doubles, tally.doubles), (1, 1));
        assert!(!tally.held());
    }

    #[test]
    fn submissions_answered_with_different_orders_break_it() {
        let ledger = ledger(2);
        let first = ledger.ran(0);
        ledger.finished(0, Final::Placed(first));
        ledger.finished(0, Final::Placed(Order { token: 0, run: 2 }));
        let other = ledger.ran(1);
        ledger.finished(1, Final::Placed(Order { token: 0, ..other }));
        let (tally, _) = ledger.tally(5);
        assert_eq!(
            tally.split, 2,
            "an order no run made, another token's order"
        );
    }

    #[test]
    fn a_token_whose_every_submission_gave_up_never_ran() {
        let ledger = ledger(1);
        ledger.finished(0, Final::GaveUp);
        let (tally, _) = ledger.tally(5);
        assert_eq!((tally.unrun, tally.gave_up), (1, 1));
        assert!(!tally.held());
    }
}
