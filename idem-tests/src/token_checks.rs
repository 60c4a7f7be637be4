//! The token flow's rules as checks, for every [`TokenStore`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem_core::{
    Consumption, Error, InvalidInput, OwnerToken, Rejection, Scope, Token, TokenGenerator,
    TokenStore, Tokens, Ttl, UuidV7Tokens, async_trait,
};
use tokio::sync::Barrier;

use crate::context::{Doing, ensure, named, unique_name};
use crate::{Capabilities, CheckResult, SharedTokenStore};

/// A check's tokens service and a scope of its own.
pub(crate) struct Ctx {
    pub(crate) tokens: Tokens<SharedTokenStore>,
    pub(crate) caps: Capabilities,
    pub(crate) scope: Scope,
}

/// Runs a token check body under a fresh scope and names the check in its failure.
pub(crate) async fn run<F, Fut>(
    check: &'static str,
    store: SharedTokenStore,
    caps: Capabilities,
    body: F,
) -> CheckResult
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    named(check, async move {
        let scope = Scope::new(unique_name(check)).doing("scope")?;
        body(Ctx {
            tokens: Tokens::new(store),
            caps,
            scope,
        })
        .await
    })
    .await
}

impl Ctx {
    pub(crate) fn other_scope(&self, suffix: &str) -> Result<Scope, String> {
        Scope::new(format!("{}.{suffix}", self.scope.as_str())).doing("scope")
    }

    /// A well-formed token never issued.
    pub(crate) fn fresh_token(&self) -> Result<Token, String> {
        self.tokens.parse(&UuidV7Tokens.generate()).doing("parse")
    }

    pub(crate) async fn consume(
        &self,
        scope: &Scope,
        token: &Token,
    ) -> Result<Consumption, String> {
        self.tokens
            .consume(scope, token.as_str())
            .await
            .doing("consume")
    }
}

/// Of `capabilities.concurrency` concurrent consumes of one token, exactly one consumes it;
/// the others are told it was already used.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when more or fewer than one consume wins, or a loser is not
/// told `AlreadyUsed`; or when a store call the check needs fails unexpectedly.
pub async fn exclusive_consume(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("exclusive_consume", store, capabilities, |ctx| async move {
        let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
        let barrier = Arc::new(Barrier::new(ctx.caps.concurrency));
        let ctx = Arc::new(ctx);
        let tasks: Vec<_> = (0..ctx.caps.concurrency)
            .map(|_| {
                let (ctx, barrier, token) = (Arc::clone(&ctx), Arc::clone(&barrier), token.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    ctx.tokens
                        .store()
                        .consume(&token, &ctx.scope, &OwnerToken::random())
                        .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(
                task.await
                    .map_err(|e| format!("a consuming task panicked: {e}"))?
                    .doing("consume")?,
            );
        }
        let consumed = answers
            .iter()
            .filter(|a| **a == Consumption::Consumed)
            .count();
        let used = answers
            .iter()
            .filter(|a| **a == Consumption::Rejected(Rejection::AlreadyUsed))
            .count();
        ensure!(
            consumed == 1,
            "{consumed} of {} concurrent consumes used the token up",
            answers.len()
        );
        ensure!(
            used == answers.len() - 1,
            "the others should be AlreadyUsed: {answers:?}"
        );
        Ok(())
    })
    .await
}

/// A consume sent again by its consumer (its reply was lost: a timeout, a dropped
/// connection, and [`Tokens::consume`] sends it again as the same consumer) is answered
/// `Consumed` again, as often as it comes, before and after other consumers tried; every
/// other consumer is refused `AlreadyUsed`, and so is the consumer asking for another
/// scope. A store that keeps no consumer refuses the resend, and the client's token is lost
/// to its own first send though the business never ran.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when the consumer's resend is
/// not `Consumed`, or another consumer is not refused; or when a store call the check needs
/// fails unexpectedly.
pub async fn consume_resend(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("consume_resend", store, capabilities, |ctx| async move {
        let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
        let (consumer, other) = (OwnerToken::random(), OwnerToken::random());
        let consume = |scope: &Scope, consumer: &OwnerToken| {
            let (store, token, scope, consumer) =
                (ctx.tokens.store(), token.clone(), scope.clone(), *consumer);
            async move {
                store
                    .consume(&token, &scope, &consumer)
                    .await
                    .doing("consume")
            }
        };
        let first = consume(&ctx.scope, &consumer).await?;
        ensure!(
            first == Consumption::Consumed,
            "the first consume got {first:?}"
        );
        let resend = consume(&ctx.scope, &consumer).await?;
        ensure!(
            resend == Consumption::Consumed,
            "the consumer's resend should be Consumed again, got {resend:?}"
        );
        let another = consume(&ctx.scope, &other).await?;
        ensure!(
            another == Consumption::Rejected(Rejection::AlreadyUsed),
            "another consumer should be AlreadyUsed, got {another:?}"
        );
        let again = consume(&ctx.scope, &consumer).await?;
        ensure!(
            again == Consumption::Consumed,
            "the consumer's resend after another consumer's try should be Consumed, got \
             {again:?}"
        );
        let elsewhere = consume(&ctx.other_scope("resend")?, &consumer).await?;
        ensure!(
            elsewhere == Consumption::Rejected(Rejection::AlreadyUsed),
            "the consumer asking for another scope should be AlreadyUsed, got {elsewhere:?}"
        );
        let fresh = ctx.consume(&ctx.scope, &token).await?;
        ensure!(
            fresh == Consumption::Rejected(Rejection::AlreadyUsed),
            "a later request (another consumer) should be AlreadyUsed, got {fresh:?}"
        );
        Ok(())
    })
    .await
}

/// A token is usable within its TTL and unknown after it; a used token's mark expires
/// with it too (it is kept only to tell repeats "already used" meanwhile). Unknown means
/// not stored: the ID of an expired token, used or not, is issued afresh, to another scope,
/// which alone can use it then. And not before its TTL ends: a token issued for whole
/// seconds and a fraction is still usable past its whole seconds (seen where the clock
/// slack is under that fraction).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a token is refused within its TTL or accepted after
/// it, or its used mark outlives it, or its ID cannot be issued again once it expired; or when
/// a store call the check needs fails unexpectedly.
pub async fn token_expiry(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("token_expiry", store, capabilities, |ctx| async move {
        let short = Ttl::new(ctx.caps.short_ttl).doing("ttl")?;
        let store = ctx.tokens.store();
        let used = ctx.fresh_token()?;
        let stale = ctx.fresh_token()?;
        store.issue(&used, &ctx.scope, short).await.doing("issue")?;
        store
            .issue(&stale, &ctx.scope, short)
            .await
            .doing("issue")?;
        let now = ctx.consume(&ctx.scope, &used).await?;
        ensure!(
            now == Consumption::Consumed,
            "a token within its TTL: expected Consumed, got {now:?}"
        );
        let repeat = ctx.consume(&ctx.scope, &used).await?;
        ensure!(
            repeat == Consumption::Rejected(Rejection::AlreadyUsed),
            "a used token within its TTL: expected Rejected(AlreadyUsed), got {repeat:?}"
        );
        tokio::time::sleep(ctx.caps.short_ttl + ctx.caps.time_slack).await;
        for (what, token) in [("an unused", &stale), ("a used", &used)] {
            let late = ctx.consume(&ctx.scope, token).await?;
            ensure!(
                late == Consumption::Rejected(Rejection::Unknown),
                "{what} token past its TTL: expected Rejected(Unknown), got {late:?}"
            );
        }
        let next = ctx.other_scope("next")?;
        for (what, token) in [("an unused", &stale), ("a used", &used)] {
            store
                .issue(token, &next, short)
                .await
                .map_err(|e| format!("issuing {what} token afresh past its TTL: {e:?}"))?;
            let old = ctx.consume(&ctx.scope, token).await?;
            ensure!(
                old == Consumption::Rejected(Rejection::WrongScope),
                "{what} token issued afresh to another scope, presented by its old one: \
                 expected Rejected(WrongScope), got {old:?}"
            );
            let again = ctx.consume(&next, token).await?;
            ensure!(
                again == Consumption::Consumed,
                "{what} token issued afresh past its TTL: expected Consumed, got {again:?}"
            );
        }
        lives_its_fraction(&ctx).await
    })
    .await
}

/// A TTL of one second and a fraction of one.
const FRACTIONAL_TTL: Duration = Duration::from_millis(1_990);

/// A token issued for [`FRACTIONAL_TTL`] is still consumed a clock slack before its end. A
/// store keeping TTLs in whole seconds (Redis's `EX`, an integer `INTERVAL`) drops it after
/// one second, and refuses its holder's request as `Unknown`.
async fn lives_its_fraction(ctx: &Ctx) -> Result<(), String> {
    let token = ctx.fresh_token()?;
    let asked = Instant::now();
    ctx.tokens
        .store()
        .issue(&token, &ctx.scope, Ttl::new(FRACTIONAL_TTL).doing("ttl")?)
        .await
        .doing("issue")?;
    let before_end = FRACTIONAL_TTL.saturating_sub(ctx.caps.time_slack);
    tokio::time::sleep(before_end.saturating_sub(asked.elapsed())).await;
    let late = ctx.consume(&ctx.scope, &token).await?;
    ensure!(
        late == Consumption::Consumed,
        "{:?} into a {FRACTIONAL_TTL:?} TTL, the token should be consumed, got {late:?}",
        asked.elapsed()
    );
    Ok(())
}

/// A token issued for one scope is rejected for another, and the attempt does not use it up.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when another scope's consume is accepted or uses the token
/// up; or when a store call the check needs fails unexpectedly.
pub async fn scope_binding(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("scope_binding", store, capabilities, |ctx| async move {
        let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
        let intruder = ctx.other_scope("intruder")?;
        for attempt in 0..2 {
            let answer = ctx.consume(&intruder, &token).await?;
            ensure!(
                answer == Consumption::Rejected(Rejection::WrongScope),
                "attempt {attempt} by another scope: expected Rejected(WrongScope), got {answer:?}"
            );
        }
        let owner = ctx.consume(&ctx.scope, &token).await?;
        ensure!(
            owner == Consumption::Consumed,
            "after another scope tried, the owner got {owner:?}"
        );
        Ok(())
    })
    .await
}

/// Malformed tokens are refused with a typed error before the store is asked; a
/// well-formed token never issued is unknown.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a malformed token is accepted or reaches the store, or
/// a token never issued is not `Unknown`; or when a store call the check needs fails unexpectedly.
pub async fn malformed_tokens(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("malformed_tokens", store, capabilities, |ctx| async move {
        let counting = Arc::new(CountingStore {
            inner: Arc::clone(ctx.tokens.store()),
            calls: AtomicUsize::new(0),
        });
        let tokens = Tokens::new(Arc::clone(&counting));
        let valid = UuidV7Tokens.generate();
        let too_long = "a".repeat(idem_core::MAX_TOKEN_LEN + 1);
        let malformed = [
            String::new(),
            too_long,
            "not-a-token".to_owned(),
            valid.to_uppercase(),
            format!("{valid} "),
            format!("{}\n", &valid[..31]),
            uuid::Uuid::new_v4().simple().to_string(),
        ];
        for raw in &malformed {
            let answer = tokens.consume(&ctx.scope, raw).await;
            ensure!(
                matches!(
                    answer,
                    Err(Error::InvalidInput(InvalidInput::MalformedToken { .. }))
                ),
                "consuming {raw:?}: expected MalformedToken, got {answer:?}"
            );
        }
        ensure!(
            counting.calls.load(Ordering::SeqCst) == 0,
            "malformed tokens reached the store"
        );
        let unknown = tokens.consume(&ctx.scope, &valid).await.doing("consume")?;
        ensure!(
            unknown == Consumption::Rejected(Rejection::Unknown),
            "a token never issued: got {unknown:?}"
        );
        Ok(())
    })
    .await
}

/// Issuing a token that is live already (for another scope) is `TokenCollision`, and the
/// original token still consumes in its own scope.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when two tokens are equal, or an issue overwrote a live
/// token; or when a store call the check needs fails unexpectedly.
pub async fn issue_never_overwrites(
    store: SharedTokenStore,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "issue_never_overwrites",
        store,
        capabilities,
        |ctx| async move {
            let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
            let thief = ctx.other_scope("thief")?;
            let ttl = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
            let again = ctx.tokens.store().issue(&token, &thief, ttl).await;
            ensure!(
                matches!(again, Err(Error::TokenCollision)),
                "issuing a live token again: expected TokenCollision, got {again:?}"
            );
            let owner = ctx.consume(&ctx.scope, &token).await?;
            ensure!(
                owner == Consumption::Consumed,
                "the original owner lost its token to a second issue: {owner:?}"
            );
            Ok(())
        },
    )
    .await
}

/// 2,048 tokens issued through the store (32 at a time) are all distinct, and the last one
/// of each of the 32 issuing tasks was stored (it consumes). The default generator's own
/// distinctness over 10,000 IDs is idem-core's unit test; here the store path is checked
/// (2,048 rather than 10,000: on a SQL store each issue is a committed insert, and the
/// larger count was the longest check of a backend's suite, 12 s, while a generator with
/// a space small enough for 10,000 draws to collide, about 2^24 or less, collides within
/// 2,048 too).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when two tokens are equal, or one was not stored; or when a
/// store call the check needs fails unexpectedly.
pub async fn distinct_tokens(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    /// Tasks issuing at once, and tokens each issues.
    const ISSUERS: usize = 32;
    const PER_ISSUER: usize = 64;
    run("distinct_tokens", store, capabilities, |ctx| async move {
        let ctx = Arc::new(ctx);
        let workers: Vec<_> = (0..ISSUERS)
            .map(|_| {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    let mut issued = Vec::with_capacity(PER_ISSUER);
                    for _ in 0..PER_ISSUER {
                        issued.push(ctx.tokens.issue(&ctx.scope).await?);
                    }
                    Ok::<_, Error>(issued)
                })
            })
            .collect();
        let mut all = HashSet::new();
        let mut count = 0;
        let mut lasts = Vec::with_capacity(ISSUERS);
        for worker in workers {
            let mut issued = worker
                .await
                .map_err(|e| format!("an issuing task panicked: {e}"))?
                .doing("issue")?;
            count += issued.len();
            lasts.extend(issued.pop());
            all.extend(issued);
        }
        let distinct = all.len() + lasts.iter().filter(|t| !all.contains(*t)).count();
        let lasts_distinct = lasts.iter().collect::<HashSet<_>>().len() == lasts.len();
        ensure!(
            distinct == count && lasts_distinct && count == ISSUERS * PER_ISSUER,
            "{count} tokens issued, {distinct} distinct"
        );
        for last in &lasts {
            let answer = ctx.consume(&ctx.scope, last).await?;
            ensure!(
                answer == Consumption::Consumed,
                "an issued token was not stored: {answer:?}"
            );
        }
        Ok(())
    })
    .await
}

/// Accepts any text [`Token::parse`] accepts, for tokens of another generator's format.
#[derive(Debug)]
pub(crate) struct AnyTokenText;

impl TokenGenerator for AnyTokenText {
    fn generate(&self) -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    fn is_well_formed(&self, _raw: &str) -> bool {
        true
    }
}

/// Tokens are stored as given: two tokens of another generator's format that a plausible
/// encoding would merge (case, the last byte of [`MAX_TOKEN_LEN`](idem_core::MAX_TOKEN_LEN),
/// an escape and the text it stands for, Unicode normalization) are two tokens. The second
/// is issued for another scope without `TokenCollision`, and each is consumed by its own.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when issuing the second token
/// collides with the first, or either is not consumed by its own scope; or when a store call
/// the check needs fails unexpectedly.
pub async fn token_fidelity(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("token_fidelity", store, capabilities, |ctx| async move {
        let store = ctx.tokens.store();
        let other = ctx.other_scope("other")?;
        let ttl = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
        // A prefix of the check's own, so that runs in parallel never share a token.
        let own = format!("t{}", uuid::Uuid::new_v4().simple());
        let longest = format!("{own:x<width$}", width = idem_core::MAX_TOKEN_LEN);
        let pairs = [
            (own.clone(), own.to_uppercase()),
            (format!("{}y", &longest[..longest.len() - 1]), longest),
            (format!("{own}{{x}}%"), format!("{own}%7Bx%7D%25")),
            (format!("{own}.caf\u{e9}"), format!("{own}.cafe\u{301}")),
        ];
        for (first, second) in pairs {
            let first = Token::parse(&first, &AnyTokenText).doing("parse")?;
            let second = Token::parse(&second, &AnyTokenText).doing("parse")?;
            store.issue(&first, &ctx.scope, ttl).await.doing("issue")?;
            let issued = store.issue(&second, &other, ttl).await;
            ensure!(
                issued.is_ok(),
                "{second:?} after {first:?} was issued: expected a token of its own, got \
                 {issued:?}"
            );
            for (token, scope) in [(&first, &ctx.scope), (&second, &other)] {
                let answer = store
                    .consume(token, scope, &OwnerToken::random())
                    .await
                    .doing("consume")?;
                ensure!(
                    answer == Consumption::Consumed,
                    "{token:?} by its own scope, next to {first:?} and {second:?}: expected \
                     Consumed, got {answer:?}"
                );
            }
        }
        Ok(())
    })
    .await
}

/// Counts the calls that reach the store.
#[derive(Debug)]
struct CountingStore {
    inner: SharedTokenStore,
    calls: AtomicUsize,
}

#[async_trait]
impl TokenStore for CountingStore {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.issue(token, scope, ttl).await
    }

    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.consume(token, scope, consumer).await
    }
}

/// Scopes are compared exactly: a scope that differs in case, spacing, a prefix or suffix,
/// Unicode normalization, a character of four UTF-8 bytes, or only the last byte of
/// [`MAX_KEY_LEN`](idem_core::MAX_KEY_LEN) is `WrongScope`, and the token stays usable by
/// its own scope.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a scope that differs is accepted, or the attempt used
/// the token up; or when a store call the check needs fails unexpectedly.
pub async fn scope_compared_exactly(
    store: SharedTokenStore,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "scope_compared_exactly",
        store,
        capabilities,
        |ctx| async move {
            let own = ctx.scope.as_str().to_owned();
            let composed = ctx.other_scope("caf\u{e9}")?;
            let mut cases = vec![
                (ctx.scope.clone(), own.to_uppercase()),
                (ctx.scope.clone(), format!("{own} ")),
                (ctx.scope.clone(), format!(" {own}")),
                (ctx.scope.clone(), own[..own.len() - 1].to_owned()),
                (ctx.scope.clone(), format!("{own}x")),
                (ctx.scope.clone(), format!("{own}%")),
            ];
            cases.push((composed.clone(), format!("{own}.cafe\u{301}")));
            cases.push((composed, format!("{own}.CAF\u{c9}")));
            // Characters of four UTF-8 bytes, which a three-byte character set (MySQL's
            // `utf8`) cannot hold and keeps as `?`.
            let astral = ctx.other_scope("\u{1F600}")?;
            cases.push((astral.clone(), format!("{own}.\u{1F601}")));
            cases.push((astral, format!("{own}.?")));
            // Scopes of the longest length, differing in their last byte only: kept and
            // compared whole, not cut to a shorter column's size.
            let longest = format!("{own:x<width$}", width = idem_core::MAX_KEY_LEN);
            let last_byte_differs = format!("{}y", &longest[..longest.len() - 1]);
            cases.push((Scope::new(longest).doing("scope")?, last_byte_differs));
            for (issued_to, presented) in cases {
                let token = ctx.tokens.issue(&issued_to).await.doing("issue")?;
                let presented = Scope::new(presented).doing("scope")?;
                let answer = ctx.consume(&presented, &token).await?;
                ensure!(
                    answer == Consumption::Rejected(Rejection::WrongScope),
                    "a token of {issued_to:?} presented by {presented:?}: expected \
                     Rejected(WrongScope), got {answer:?}"
                );
                let owner = ctx.consume(&issued_to, &token).await?;
                ensure!(
                    owner == Consumption::Consumed,
                    "after {presented:?} tried, the owner {issued_to:?} got {owner:?}"
                );
            }
            Ok(())
        },
    )
    .await
}

/// Every rejection reason on every path, in the core's order (`TokenRecord::consume`):
/// never issued or expired (used or not) is `Unknown` for any scope; used and live is
/// `AlreadyUsed` for any scope; unused and live, for another scope, is `WrongScope`.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a rejection names another reason than the core's order
/// gives; or when a store call the check needs fails unexpectedly.
pub async fn rejection_reasons(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("rejection_reasons", store, capabilities, |ctx| async move {
        let other = ctx.other_scope("other")?;
        let store = ctx.tokens.store();
        let short = Ttl::new(ctx.caps.short_ttl).doing("ttl")?;
        let never = ctx.fresh_token()?;
        let used = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
        let lapsed_unused = ctx.fresh_token()?;
        let lapsed_used = ctx.fresh_token()?;
        for token in [&lapsed_unused, &lapsed_used] {
            store.issue(token, &ctx.scope, short).await.doing("issue")?;
        }
        for token in [&used, &lapsed_used] {
            let first = ctx.consume(&ctx.scope, token).await?;
            ensure!(
                first == Consumption::Consumed,
                "a fresh token: got {first:?}"
            );
        }
        let expect = |what: &str, got: Consumption, reason: Rejection| {
            if got == Consumption::Rejected(reason) {
                Ok(())
            } else {
                Err(format!(
                    "{what}: expected Rejected({reason:?}), got {got:?}"
                ))
            }
        };
        for (scope, whose) in [(&ctx.scope, "its own scope"), (&other, "another scope")] {
            let got = ctx.consume(scope, &never).await?;
            expect(
                &format!("never issued, by {whose}"),
                got,
                Rejection::Unknown,
            )?;
            let got = ctx.consume(scope, &used).await?;
            expect(&format!("used, by {whose}"), got, Rejection::AlreadyUsed)?;
        }
        tokio::time::sleep(ctx.caps.short_ttl + ctx.caps.time_slack).await;
        for (scope, whose) in [(&other, "another scope"), (&ctx.scope, "its own scope")] {
            for (token, what) in [
                (&lapsed_unused, "expired unused"),
                (&lapsed_used, "expired used"),
            ] {
                let got = ctx.consume(scope, token).await?;
                expect(&format!("{what}, by {whose}"), got, Rejection::Unknown)?;
            }
        }
        Ok(())
    })
    .await
}

/// A used token's mark lasts exactly as long as the token would have: repeats late in its
/// TTL are still `AlreadyUsed` and the consumer's own resend still `Consumed`, and neither
/// consuming nor the resend restarts the TTL (after the token's own expiry a repeat and the
/// resend are `Unknown`).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a repeat is not
/// `AlreadyUsed` or the resend not `Consumed` within the token's TTL, or either is not
/// `Unknown` after it; or when a store call the check needs fails unexpectedly.
pub async fn used_mark_lifetime(
    store: SharedTokenStore,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "used_mark_lifetime",
        store,
        capabilities,
        |ctx| async move {
            let unit = ctx.caps.short_ttl + ctx.caps.time_slack;
            let lifetime = 3 * unit;
            let token = ctx.fresh_token()?;
            let issued = Instant::now();
            ctx.tokens
                .store()
                .issue(&token, &ctx.scope, Ttl::new(lifetime).doing("ttl")?)
                .await
                .doing("issue")?;
            let consumer = OwnerToken::random();
            let consume_as = |consumer: OwnerToken| {
                let (store, token, scope) = (ctx.tokens.store(), token.clone(), ctx.scope.clone());
                async move {
                    store
                        .consume(&token, &scope, &consumer)
                        .await
                        .doing("consume")
                }
            };
            tokio::time::sleep(lifetime / 2).await;
            let first = consume_as(consumer).await?;
            ensure!(
                first == Consumption::Consumed,
                "halfway through its TTL: got {first:?}"
            );
            tokio::time::sleep_until((issued + lifetime - ctx.caps.time_slack).into()).await;
            let late = ctx.consume(&ctx.scope, &token).await?;
            ensure!(
                late == Consumption::Rejected(Rejection::AlreadyUsed),
                "late in its TTL a used token should still be AlreadyUsed, got {late:?}"
            );
            let resend = consume_as(consumer).await?;
            ensure!(
                resend == Consumption::Consumed,
                "late in its TTL the consumer's resend should still be Consumed, got {resend:?}"
            );
            tokio::time::sleep_until((Instant::now() + 2 * ctx.caps.time_slack).into()).await;
            let after = ctx.consume(&ctx.scope, &token).await?;
            ensure!(
                after == Consumption::Rejected(Rejection::Unknown),
                "past the token's own TTL its used mark should be gone (consuming, or the \
                 consumer's resend, must not restart the TTL), got {after:?}"
            );
            let resend_after = consume_as(consumer).await?;
            ensure!(
                resend_after == Consumption::Rejected(Rejection::Unknown),
                "past the token's own TTL the consumer's resend should be Unknown, got \
                 {resend_after:?}"
            );
            Ok(())
        },
    )
    .await
}

/// Issuing against a used token (still marked) fails with `TokenCollision` and leaves the
/// mark; issuing against an expired one stores it afresh.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when issuing against a used token is not `TokenCollision`
/// or removed its mark, or an expired one is not stored afresh; or when a store call the check
/// needs fails unexpectedly.
pub async fn issue_against_used(
    store: SharedTokenStore,
    capabilities: Capabilities,
) -> CheckResult {
    run("issue_against_used", store, capabilities, |ctx| async move {
        let store = ctx.tokens.store();
        let ttl = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
        let token = ctx.tokens.issue(&ctx.scope).await.doing("issue")?;
        let first = ctx.consume(&ctx.scope, &token).await?;
        ensure!(first == Consumption::Consumed, "a fresh token: got {first:?}");
        for scope in [ctx.scope.clone(), ctx.other_scope("reissuer")?] {
            let again = store.issue(&token, &scope, ttl).await;
            ensure!(
                matches!(again, Err(Error::TokenCollision)),
                "issuing a used token again for {scope:?}: expected TokenCollision, got {again:?}"
            );
            let repeat = ctx.consume(&scope, &token).await?;
            ensure!(
                repeat == Consumption::Rejected(Rejection::AlreadyUsed),
                "after a refused reissue the used mark must stay, got {repeat:?}"
            );
        }
        let short = Ttl::new(ctx.caps.short_ttl).doing("ttl")?;
        let expiring = ctx.fresh_token()?;
        store.issue(&expiring, &ctx.scope, short).await.doing("issue")?;
        ctx.consume(&ctx.scope, &expiring).await?;
        tokio::time::sleep(ctx.caps.short_ttl + ctx.caps.time_slack).await;
        store
            .issue(&expiring, &ctx.scope, ttl)
            .await
            .map_err(|e| format!("issuing an expired token afresh: {e:?}"))?;
        let fresh = ctx.consume(&ctx.scope, &expiring).await?;
        ensure!(fresh == Consumption::Consumed, "a token issued afresh: got {fresh:?}");
        Ok(())
    })
    .await
}

/// An issue refused with `TokenCollision` leaves the token's expiry as it was, unused or
/// used: a token issued for a short TTL and then issued again for a long one is `Unknown`
/// once the short TTL has passed, and its ID can be issued afresh.
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when a colliding issue is not
/// `TokenCollision`, or a token outlives its own TTL after one; or when a store call the
/// check needs fails unexpectedly.
pub async fn collision_keeps_expiry(
    store: SharedTokenStore,
    capabilities: Capabilities,
) -> CheckResult {
    run(
        "collision_keeps_expiry",
        store,
        capabilities,
        |ctx| async move {
            let store = ctx.tokens.store();
            let short = Ttl::new(ctx.caps.short_ttl).doing("ttl")?;
            let long = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
            let (unused, used) = (ctx.fresh_token()?, ctx.fresh_token()?);
            for token in [&unused, &used] {
                store.issue(token, &ctx.scope, short).await.doing("issue")?;
            }
            let first = ctx.consume(&ctx.scope, &used).await?;
            ensure!(
                first == Consumption::Consumed,
                "a fresh token: got {first:?}"
            );
            for (what, token) in [("an unused", &unused), ("a used", &used)] {
                let again = store.issue(token, &ctx.scope, long).await;
                ensure!(
                    matches!(again, Err(Error::TokenCollision)),
                    "issuing {what} live token again: expected TokenCollision, got {again:?}"
                );
            }
            tokio::time::sleep(ctx.caps.short_ttl + ctx.caps.time_slack).await;
            for (what, token) in [("an unused", &unused), ("a used", &used)] {
                let late = ctx.consume(&ctx.scope, token).await?;
                ensure!(
                    late == Consumption::Rejected(Rejection::Unknown),
                    "{what} token past its own TTL, after a refused issue with a longer one: \
                     expected Rejected(Unknown), got {late:?}"
                );
            }
            Ok(())
        },
    )
    .await
}

/// How many tokens [`issue_races`] races on, so that on a real server some calls overlap.
const RACED_TOKENS: usize = 32;

/// On many fresh tokens, two issues of one token race (for two scopes), or an issue races a
/// consume. Of two issues exactly one stores the token and the other is `TokenCollision`:
/// the token then belongs to the winner's scope alone. A consume racing the issue either
/// came first (`Unknown`, and the token is then usable once) or second (`Consumed`, and the
/// token is then `AlreadyUsed`).
///
/// # Errors
///
/// A [`CheckFailure`](crate::CheckFailure) naming this check when both or neither of two issues succeed, the token
/// does not belong to the winner, or a consume's answer disagrees with what the token shows
/// afterwards; or when a store call the check needs fails unexpectedly.
pub async fn issue_races(store: SharedTokenStore, capabilities: Capabilities) -> CheckResult {
    run("issue_races", store, capabilities, |ctx| async move {
        let rival = ctx.other_scope("rival")?;
        let ttl = Ttl::new(Tokens::<SharedTokenStore>::DEFAULT_TTL).doing("ttl")?;
        let gate = Arc::new(Barrier::new(2 * RACED_TOKENS));
        let store = ctx.tokens.store();
        let mut races = Vec::new();
        for i in 0..RACED_TOKENS {
            let token = ctx.fresh_token()?;
            let issue = |scope: Scope| {
                let (store, gate, token) = (Arc::clone(store), Arc::clone(&gate), token.clone());
                tokio::spawn(async move {
                    gate.wait().await;
                    store.issue(&token, &scope, ttl).await.map(|()| None)
                })
            };
            let first = issue(ctx.scope.clone());
            let second = if i % 2 == 0 {
                issue(rival.clone())
            } else {
                let (store, gate, token) = (Arc::clone(store), Arc::clone(&gate), token.clone());
                let scope = ctx.scope.clone();
                tokio::spawn(async move {
                    gate.wait().await;
                    store
                        .consume(&token, &scope, &OwnerToken::random())
                        .await
                        .map(Some)
                })
            };
            races.push((token, first, second));
        }
        for (token, first, second) in races {
            let first = first.await.map_err(|e| format!("a task panicked: {e}"))?;
            let second = second.await.map_err(|e| format!("a task panicked: {e}"))?;
            match second {
                Ok(Some(consumed)) => {
                    ensure!(first.is_ok(), "an issue racing a consume failed: {first:?}");
                    judge_issue_and_consume(&ctx, &token, consumed).await?;
                }
                second => judge_two_issues(&ctx, &rival, &token, first, second).await?,
            }
        }
        Ok(())
    })
    .await
}

type Issued = Result<Option<Consumption>, Error>;

async fn judge_two_issues(
    ctx: &Ctx,
    rival: &Scope,
    token: &Token,
    first: Issued,
    second: Issued,
) -> Result<(), String> {
    let (winner, loser) = match (&first, &second) {
        (Ok(None), Err(Error::TokenCollision)) => (&ctx.scope, rival),
        (Err(Error::TokenCollision), Ok(None)) => (rival, &ctx.scope),
        _ => {
            return Err(format!(
                "two issues of one token raced: got {first:?} and {second:?}; exactly one \
                 must store it and the other be TokenCollision"
            ));
        }
    };
    let refused = ctx.consume(loser, token).await?;
    ensure!(
        refused == Consumption::Rejected(Rejection::WrongScope),
        "the losing issuer's scope consumed the winner's token: {refused:?}"
    );
    let used = ctx.consume(winner, token).await?;
    ensure!(
        used == Consumption::Consumed,
        "the winning issuer's scope could not use its token: {used:?}"
    );
    Ok(())
}

async fn judge_issue_and_consume(
    ctx: &Ctx,
    token: &Token,
    raced: Consumption,
) -> Result<(), String> {
    let again = ctx.consume(&ctx.scope, token).await?;
    let expected = match raced {
        Consumption::Rejected(Rejection::Unknown) => Consumption::Consumed,
        Consumption::Consumed => Consumption::Rejected(Rejection::AlreadyUsed),
        other => {
            return Err(format!(
                "a consume racing the token's issue got {other:?}: it came first (Unknown) or \
                 second (Consumed)"
            ));
        }
    };
    ensure!(
        again == expected,
        "a consume racing the issue got {raced:?}, then the next consume got {again:?}"
    );
    Ok(())
}
