//! Token stores with one deliberate defect each, for the token checks' proof.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use idem_core::backend::TokenRecord;
use idem_core::{Consumption, Error, OwnerToken, Rejection, Scope, Token, TokenStore, Ttl};

use crate::token_checks::AnyTokenText;

/// One way a token store can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenDefect {
    /// Consume checks, then marks in a second step: concurrent consumes both win.
    CheckThenMark,
    /// Consume ignores the scope: anyone's token works for anybody.
    IgnoresScope,
    /// A consume by the wrong scope uses the token up.
    BurnsOnWrongScope,
    /// Tokens never expire.
    NeverExpires,
    /// A used token's mark never expires (its TTL is dropped when it is marked).
    UsedMarkNeverExpires,
    /// Issuing overwrites a token already issued.
    Overwrites,
    /// Scopes are compared ignoring case and surrounding spaces (a case-folding collation).
    ScopeFoldsCase,
    /// Scopes are compared on their first 128 bytes only (a column sized like the token's):
    /// two long scopes that share those are one owner.
    TruncatesScopes,
    /// Characters outside the Basic Multilingual Plane (emoji: four bytes of UTF-8) in a
    /// scope are kept as `?`, as a MySQL `utf8` (utf8mb3) column converts what it cannot
    /// hold: scopes that differ only there are one owner.
    ScopeReplacesAstralChars,
    /// Tokens are kept under their lowercase text (a case-insensitive column): a token
    /// and its uppercase twin are one token.
    FoldsTokenCase,
    /// The scope is checked before the used mark: a used token presented by another scope
    /// is told `WrongScope`.
    ScopeCheckedFirst,
    /// Consuming restarts the token's TTL for its used mark.
    UsedMarkRestartsTtl,
    /// Issuing refuses only unused tokens: a used one is overwritten and usable again.
    IssueRevivesUsed,
    /// A refused issue restarts the live token's TTL with its own (an `EXPIRE` after a
    /// failed `SET NX`, say): scope and used mark stay, the expiry does not.
    CollisionRestartsTtl,
    /// Issuing an expired token afresh keeps the scope it was issued for before (a reissue
    /// that sets everything but the scope): the old owner can use the new token.
    ReissueKeepsScope,
    /// Issuing refuses an expired token that was never used, as if it were still stored
    /// (a reissue that only replaces used rows): its ID stays taken until a purge.
    ExpiredUnusedCollides,
    /// Issuing checks that the token is free, then stores it in a second step: two issues
    /// racing both store it, the second overwriting the first.
    CheckThenIssue,
    /// A record that does not decode counts as no record: consuming it is `Unknown`, and
    /// issuing the token writes over it.
    CorruptAsUnknown,
    /// A server that does not answer is reported as `Backend` (not worth retrying) instead
    /// of `Unavailable`.
    UnavailableAsBackend,
    /// Every token is kept at most [`CAPPED_LIFETIME`], whatever its TTL (an engine's own
    /// cap, a TTL cut to a smaller unit): a long-lived token is gone early.
    CapsLifetime,
    /// A used mark is kept at most [`CAPPED_LIFETIME`] from the consume, not until the
    /// token's own expiry: a repeat late in a long TTL is told `Unknown`.
    CapsUsedMark,
    /// Token TTLs are cut to whole seconds, at least one, as Redis's `EX` or an integer
    /// `INTERVAL` would keep them: a token issued for 1.99 s is `Unknown` after 1 s, and
    /// its holder's request is refused.
    TtlInWholeSeconds,
    /// The used mark keeps no consumer (a bare used flag, as before stores kept one): the
    /// consumer's own resend after a lost reply is refused as `AlreadyUsed`, and the
    /// client's token is lost though its business never ran.
    ForgetsConsumer,
    /// A used token is `Consumed` again for any consumer of its scope, the consumer not
    /// compared: every repeat runs the business again.
    IgnoresConsumer,
    /// The consumer's resend writes the used mark again with the token's whole TTL (a
    /// `SET` without `KEEPTTL`): the mark outlives the token.
    ResendRestartsTtl,
}

/// How long [`TokenDefect::CapsLifetime`] and [`TokenDefect::CapsUsedMark`] keep a token:
/// longer than any token check waits.
pub const CAPPED_LIFETIME: Duration = Duration::from_secs(10);

impl TokenDefect {
    /// Every defect.
    pub const ALL: &'static [TokenDefect] = &[
        TokenDefect::CheckThenMark,
        TokenDefect::IgnoresScope,
        TokenDefect::BurnsOnWrongScope,
        TokenDefect::NeverExpires,
        TokenDefect::UsedMarkNeverExpires,
        TokenDefect::Overwrites,
        TokenDefect::ScopeFoldsCase,
        TokenDefect::TruncatesScopes,
        TokenDefect::ScopeReplacesAstralChars,
        TokenDefect::FoldsTokenCase,
        TokenDefect::ScopeCheckedFirst,
        TokenDefect::UsedMarkRestartsTtl,
        TokenDefect::IssueRevivesUsed,
        TokenDefect::CollisionRestartsTtl,
        TokenDefect::ReissueKeepsScope,
        TokenDefect::ExpiredUnusedCollides,
        TokenDefect::CheckThenIssue,
        TokenDefect::CorruptAsUnknown,
        TokenDefect::UnavailableAsBackend,
        TokenDefect::CapsLifetime,
        TokenDefect::CapsUsedMark,
        TokenDefect::TtlInWholeSeconds,
        TokenDefect::ForgetsConsumer,
        TokenDefect::IgnoresConsumer,
        TokenDefect::ResendRestartsTtl,
    ];

    /// Exactly the token checks that fail against this defect (asserted both ways by this
    /// crate's proof where [`TokenDefect::is_exact`], as for
    /// [`Defect::caught_by`](super::Defect::caught_by)).
    #[must_use]
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            TokenDefect::CheckThenMark => &["exclusive_consume"],
            TokenDefect::IgnoresScope => &[
                "consume_resend",
                "issue_races",
                "scope_binding",
                "scope_compared_exactly",
                "token_expiry",
            ],
            TokenDefect::BurnsOnWrongScope => &[
                "issue_races",
                "scope_binding",
                "scope_compared_exactly",
                "token_expiry",
            ],
            TokenDefect::NeverExpires => &[
                "collision_keeps_expiry",
                "issue_against_used",
                "rejection_reasons",
                "token_expiry",
                "used_mark_lifetime",
            ],
            TokenDefect::UsedMarkNeverExpires => &[
                "collision_keeps_expiry",
                "issue_against_used",
                "rejection_reasons",
                "token_expiry",
                "used_mark_lifetime",
            ],
            TokenDefect::Overwrites => &[
                "collision_keeps_expiry",
                "issue_against_used",
                "issue_never_overwrites",
                "issue_races",
            ],
            TokenDefect::ScopeFoldsCase => &["scope_compared_exactly"],
            TokenDefect::TruncatesScopes => &["scope_compared_exactly"],
            TokenDefect::ScopeReplacesAstralChars => &["scope_compared_exactly"],
            TokenDefect::FoldsTokenCase => &["token_fidelity"],
            TokenDefect::ScopeCheckedFirst => {
                &["consume_resend", "issue_against_used", "rejection_reasons"]
            }
            TokenDefect::UsedMarkRestartsTtl => &["used_mark_lifetime"],
            TokenDefect::IssueRevivesUsed => &["collision_keeps_expiry", "issue_against_used"],
            TokenDefect::CollisionRestartsTtl => &["collision_keeps_expiry"],
            TokenDefect::ReissueKeepsScope => &["token_expiry"],
            TokenDefect::ExpiredUnusedCollides => &["token_expiry"],
            TokenDefect::CheckThenIssue => &["issue_races"],
            TokenDefect::CorruptAsUnknown => &["corrupt_token"],
            TokenDefect::UnavailableAsBackend => &["unavailable_token_backend"],
            TokenDefect::CapsLifetime => &["token_lifetime"],
            TokenDefect::CapsUsedMark => &["token_lifetime"],
            TokenDefect::TtlInWholeSeconds => &["token_expiry"],
            TokenDefect::ForgetsConsumer => &["consume_resend", "used_mark_lifetime"],
            TokenDefect::IgnoresConsumer => &[
                "consume_resend",
                "exclusive_consume",
                "issue_against_used",
                "issue_races",
                "rejection_reasons",
                "token_expiry",
                "used_mark_lifetime",
            ],
            TokenDefect::ResendRestartsTtl => &["used_mark_lifetime"],
        }
    }

    /// Whether [`TokenDefect::caught_by`] is the whole set of token checks that fail: not
    /// for the race, which other checks hit by chance too; nor for TTLs cut to whole
    /// seconds, which stretches the checks' short TTLs to a second: whether a check waiting
    /// just past a short TTL sees it end is then a matter of milliseconds.
    #[must_use]
    pub fn is_exact(self) -> bool {
        !matches!(
            self,
            TokenDefect::CheckThenMark | TokenDefect::TtlInWholeSeconds
        )
    }

    /// A store with this defect.
    #[must_use]
    pub fn store(self) -> BrokenTokenStore {
        BrokenTokenStore::new(self, false)
    }
}

/// `scope` with every character of four UTF-8 bytes replaced by `?`, as a three-byte
/// character set keeps it.
fn narrowed(scope: &Scope) -> String {
    scope
        .as_str()
        .chars()
        .map(|c| if c.len_utf8() == 4 { '?' } else { c })
        .collect()
}

/// A map-backed token store with one [`TokenDefect`].
#[derive(Debug)]
pub struct BrokenTokenStore {
    tokens: Mutex<HashMap<Token, (TokenRecord, Instant, Duration)>>,
    /// Tokens whose record was replaced by bytes that do not decode (`TokenSabotage`).
    pub(super) corrupt: Mutex<HashSet<Token>>,
    pub(super) defect: TokenDefect,
    /// Answers every call as a store whose server is gone.
    pub(super) down: bool,
}

impl BrokenTokenStore {
    pub(super) fn new(defect: TokenDefect, down: bool) -> Self {
        Self {
            tokens: Mutex::default(),
            corrupt: Mutex::default(),
            defect,
            down,
        }
    }

    fn with_tokens<T>(
        &self,
        f: impl FnOnce(&mut HashMap<Token, (TokenRecord, Instant, Duration)>) -> T,
    ) -> Result<T, Error> {
        let mut tokens = self
            .tokens
            .lock()
            .map_err(|_| Error::backend("a token map lock was poisoned"))?;
        Ok(f(&mut tokens))
    }

    fn live(&self, token: &Token) -> Result<Option<TokenRecord>, Error> {
        let never_expires = self.defect == TokenDefect::NeverExpires;
        self.with_tokens(|tokens| {
            tokens
                .get(token)
                .filter(|(_, deadline, _)| never_expires || *deadline > Instant::now())
                .map(|(record, _, _)| record.clone())
        })
    }

    fn write(&self, token: &Token, record: TokenRecord) -> Result<(), Error> {
        let forever = self.defect == TokenDefect::UsedMarkNeverExpires && record.used;
        let restart = self.defect == TokenDefect::UsedMarkRestartsTtl && record.used;
        let capped = self.defect == TokenDefect::CapsUsedMark && record.used;
        self.with_tokens(|tokens| {
            if let Some(entry) = tokens.get_mut(token) {
                entry.0 = record;
                if forever {
                    entry.1 = Instant::now() + Duration::from_secs(24 * 60 * 60);
                }
                if restart {
                    entry.1 = Instant::now() + entry.2;
                }
                if capped {
                    entry.1 = entry.1.min(Instant::now() + CAPPED_LIFETIME);
                }
            }
        })
    }

    /// How much longer the token is kept: `None` once it is gone or past its deadline.
    pub(super) fn kept(&self, token: &Token) -> Result<Option<Duration>, Error> {
        let token = self.stored_as(token)?;
        self.with_tokens(|tokens| {
            tokens
                .get(&token)
                .map(|(_, deadline, _)| deadline.saturating_duration_since(Instant::now()))
                .filter(|left| !left.is_zero())
        })
    }

    /// The token as the store keys it.
    fn stored_as(&self, token: &Token) -> Result<Token, Error> {
        if self.defect != TokenDefect::FoldsTokenCase {
            return Ok(token.clone());
        }
        Token::parse(&token.as_str().to_lowercase(), &AnyTokenText)
    }
}

#[async_trait]
impl TokenStore for BrokenTokenStore {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        self.reachable()?;
        let token = &self.stored_as(token)?;
        if self.undecodable(token, true)? {
            return Err(Error::TokenCollision);
        }
        let overwrite = self.defect == TokenDefect::Overwrites;
        let live = self.live(token)?;
        let expired_unused = self.defect == TokenDefect::ExpiredUnusedCollides
            && self.with_tokens(|tokens| tokens.get(token).is_some_and(|(r, _, _)| !r.used))?;
        if expired_unused {
            return Err(Error::TokenCollision);
        }
        let revives = self.defect == TokenDefect::IssueRevivesUsed
            && live.as_ref().is_some_and(|record| record.used);
        if live.is_some() && !overwrite && !revives {
            if self.defect == TokenDefect::CollisionRestartsTtl {
                self.with_tokens(|tokens| {
                    if let Some(entry) = tokens.get_mut(token) {
                        entry.1 = Instant::now() + ttl.as_duration();
                    }
                })?;
            }
            return Err(Error::TokenCollision);
        }
        let kept = match self.defect {
            TokenDefect::ReissueKeepsScope => self.with_tokens(|tokens| {
                tokens.get(token).map(|(record, _, _)| record.scope.clone())
            })?,
            _ => None,
        };
        let record = TokenRecord::issued(kept.unwrap_or_else(|| scope.clone()));
        if self.defect == TokenDefect::CheckThenIssue {
            // The window between the check and the write that a conditional insert closes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lifetime = match self.defect {
            TokenDefect::CapsLifetime => ttl.as_duration().min(CAPPED_LIFETIME),
            TokenDefect::TtlInWholeSeconds => {
                Duration::from_secs(ttl.as_duration().as_secs().max(1))
            }
            _ => ttl.as_duration(),
        };
        let deadline = Instant::now() + lifetime;
        self.with_tokens(|tokens| {
            tokens.insert(token.clone(), (record, deadline, ttl.as_duration()))
        })?;
        Ok(())
    }

    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        self.reachable()?;
        let token = &self.stored_as(token)?;
        if self.undecodable(token, false)? {
            return match self.defect {
                TokenDefect::CorruptAsUnknown => Ok(Consumption::Rejected(Rejection::Unknown)),
                _ => Err(Error::corrupt(
                    "a broken token record was overwritten with garbage",
                )),
            };
        }
        let Some(record) = self.live(token)? else {
            return Ok(TokenRecord::consume(None, scope, consumer).0);
        };
        let folds = |a: &Scope, b: &Scope| {
            a.as_str().trim().to_lowercase() == b.as_str().trim().to_lowercase()
        };
        let truncated = |s: &Scope| {
            s.as_str()
                .as_bytes()
                .iter()
                .take(128)
                .copied()
                .collect::<Vec<_>>()
        };
        let asked_as = match self.defect {
            TokenDefect::IgnoresScope => record.scope.clone(),
            TokenDefect::ScopeFoldsCase if folds(&record.scope, scope) => record.scope.clone(),
            TokenDefect::TruncatesScopes if truncated(&record.scope) == truncated(scope) => {
                record.scope.clone()
            }
            TokenDefect::ScopeReplacesAstralChars if narrowed(&record.scope) == narrowed(scope) => {
                record.scope.clone()
            }
            TokenDefect::ScopeCheckedFirst if record.scope != *scope => {
                return Ok(Consumption::Rejected(Rejection::WrongScope));
            }
            _ => scope.clone(),
        };
        let (answer, write) = match self.defect {
            TokenDefect::IgnoresConsumer if record.used && record.scope == asked_as => {
                (Consumption::Consumed, None)
            }
            _ => TokenRecord::consume(Some(&record), &asked_as, consumer),
        };
        if self.defect == TokenDefect::ResendRestartsTtl
            && answer == Consumption::Consumed
            && write.is_none()
        {
            self.with_tokens(|tokens| {
                if let Some(entry) = tokens.get_mut(token) {
                    entry.1 = Instant::now() + entry.2;
                }
            })?;
        }
        let write = match self.defect {
            TokenDefect::ForgetsConsumer => write.map(|used| TokenRecord::used(used.scope, None)),
            _ => write,
        };
        if self.defect == TokenDefect::BurnsOnWrongScope && !record.used {
            self.write(token, TokenRecord::used(record.scope.clone(), None))?;
        }
        if let Some(used) = write {
            if self.defect == TokenDefect::CheckThenMark {
                // The window between the check and the write that a single atomic step closes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.write(token, used)?;
        }
        Ok(answer)
    }
}
