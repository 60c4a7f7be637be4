//! One-time tokens: issue a token, then consume it exactly once.
//!
//! The flow, for forms and APIs whose clients can ask first:
//!
//! 1. before showing the form (or before a business call), the client asks for a token; the
//!    server makes a globally unique, unguessable ID, stores it for the user's scope with a
//!    TTL, and hands it out ([`Tokens::issue`]);
//! 2. the business request carries the token;
//! 3. the server consumes it ([`Tokens::consume`]): the check and the invalidation are one
//!    atomic step in the store, so of any number of concurrent submissions exactly one is
//!    [`Consumption::Consumed`] and runs the business; a consume the store could not
//!    answer is sent again by the same consumer, and one that was applied with only its
//!    reply lost is `Consumed` again, not refused as used;
//! 4. every repeat is [`Consumption::Rejected`] with the reason, and gets the "already done"
//!    answer.
//!
//! Pick tokens when the server must refuse requests it did not hand a ticket out for, and
//! key-based idempotency ([`Idempotency`](crate::Idempotency)) when clients make their own
//! keys and repeats should get the first response back. The two combine: use the token as
//! the idempotency key ([`Token::key`]) and a repeat is answered with the stored response;
//! consume it inside the execution with [`Tokens::consume_for`], as the request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::{NoContext, Timestamp, Uuid};

use crate::attempt::backoff;
use crate::error::{Error, InputField, InvalidInput};
use crate::fingerprint::Fingerprint;
use crate::key::{self, Key};
use crate::lease::OwnerToken;
use crate::ttl::Ttl;

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 128;

/// A token in its generator's format. Made by [`Tokens::issue`] or [`Tokens::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// Checks that `raw` is a well-formed token of `generator`'s format: non-empty, at most
    /// [`MAX_TOKEN_LEN`] bytes, no whitespace or control characters.
    ///
    /// # Errors
    ///
    /// [`InvalidInput::MalformedToken`], with the reason, when any of these checks fails.
    pub fn parse(raw: &str, generator: &dyn TokenGenerator) -> Result<Self, Error> {
        let reason = if raw.is_empty() {
            Some("empty")
        } else if raw.len() > MAX_TOKEN_LEN {
            Some("longer than MAX_TOKEN_LEN")
        } else if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("holds whitespace or control characters")
        } else if !generator.is_well_formed(raw) {
            Some("not in the generator's format")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidInput::MalformedToken { reason }.into()),
            None => Ok(Self(raw.to_owned())),
        }
    }

    /// The token's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The idempotency key of the request this token guards when `scope` presents it, in
    /// `namespace`: run the request through [`Idempotency`](crate::Idempotency) under it,
    /// and a repeat with a used token gets the stored response instead of a bare rejection.
    ///
    /// The key holds the scope too (the token, a space, then the SHA-256 of the scope in
    /// hex; a token holds no whitespace, so no two pairs share a key). Keyed by the token
    /// alone, a request from another scope presenting the token first would store its
    /// rejection under the key the owner's request then replays, refused for the whole
    /// retention though the token was never used; and a request from another scope after
    /// the owner's would get the owner's stored response.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `namespace` is not a valid key namespace (see [`Key::new`]).
    pub fn key(&self, namespace: &str, scope: &Scope) -> Result<Key, Error> {
        let scope = Fingerprint::from_bytes(scope.as_str().as_bytes());
        Key::new(namespace, format!("{} {scope}", self.0))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:?})", self.0)
    }
}

/// Whom a token belongs to: a user, a session or a tenant. A token issued for one scope is
/// rejected for any other, without being used up.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Validates a scope: non-empty, at most [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes, no
    /// control characters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for [`InputField::Scope`]: empty, too long, or holding a control
    /// character.
    pub fn new(scope: impl Into<String>) -> Result<Self, Error> {
        let scope = scope.into();
        key::validate(InputField::Scope, &scope)?;
        Ok(Self(scope))
    }

    /// The scope's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.0)
    }
}

/// What consuming a token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumption {
    /// This call used the token up: run the business.
    Consumed,
    /// The token cannot be used: answer with the reason.
    Rejected(Rejection),
}

/// Why a token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Never issued, or expired.
    Unknown,
    /// Consumed before: a repeat of a request that already ran.
    AlreadyUsed,
    /// Issued for another scope. The token stays usable by its own scope.
    WrongScope,
}

/// Makes token IDs. The default is [`UuidV7Tokens`]; plug in your own scheme (a Snowflake- or
/// Leaf-style ID service, say) by implementing this.
pub trait TokenGenerator: fmt::Debug + Send + Sync + 'static {
    /// A new ID, unique across processes and machines, and unguessable.
    fn generate(&self) -> String;

    /// Whether `raw` is in this generator's format. Checked before any store is asked.
    fn is_well_formed(&self, raw: &str) -> bool;
}

/// UUIDv7 tokens as 32 lowercase hex digits: ordered by their millisecond (kind to B-tree
/// indexes), with 74 random bits after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7Tokens;

impl TokenGenerator for UuidV7Tokens {
    fn generate(&self) -> String {
        // Not `Uuid::now_v7`: it fills 42 of the 74 bits with a counter the whole process
        // shares, so a token issued in the same millisecond as another (to an attacker, say)
        // gives away all but 32 bits of it. A timestamp without a context leaves all 74 to
        // the random generator; tokens stay ordered by their millisecond.
        Uuid::new_v7(Timestamp::now(NoContext)).simple().to_string()
    }

    fn is_well_formed(&self, raw: &str) -> bool {
        raw.len() == 32
            && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && Uuid::try_parse(raw).is_ok_and(|uuid| uuid.get_version_num() == 7)
    }
}

/// Where tokens live. Implement this to add a backend; `idem-tests` checks it.
///
/// Both operations are atomic per token. A consumed token is kept, marked used by its
/// consumer, until it expires, so a repeat is told [`Rejection::AlreadyUsed`] rather than
/// [`Rejection::Unknown`], and the consumer's own resend is told
/// [`Consumption::Consumed`] again ([`TokenRecord::consume`] is the rule).
#[async_trait]
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// Stores a new token for `scope`, valid for `ttl`. A token already stored is left
    /// untouched and the call fails with [`Error::TokenCollision`].
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error>;

    /// Uses the token up for `consumer` if it is live, unused and belongs to `scope`, in
    /// one atomic step. A token `consumer` used up already, for `scope`, is
    /// [`Consumption::Consumed`] again and stays as it is: the same consumer's resend after
    /// a reply was lost (a timeout, a dropped connection) must not find its own consume and
    /// refuse it as [`Rejection::AlreadyUsed`]. Any other consumer is refused.
    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error>;
}

#[async_trait]
impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        (**self).issue(token, scope, ttl).await
    }
    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        (**self).consume(token, scope, consumer).await
    }
}

#[async_trait]
impl<T: TokenStore + ?Sized> TokenStore for Box<T> {
    async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
        (**self).issue(token, scope, ttl).await
    }
    async fn consume(
        &self,
        token: &Token,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> Result<Consumption, Error> {
        (**self).consume(token, scope, consumer).await
    }
}

/// What a token store keeps per token, for stores that hold Rust values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenRecord {
    /// Whom it was issued to.
    pub scope: Scope,
    /// Whether it was consumed.
    pub used: bool,
    /// Who consumed it, where the store knows: a token used before its store kept consumers
    /// says only that it was used, and no resend is recognised as its consumer's.
    pub used_by: Option<OwnerToken>,
}

impl TokenRecord {
    /// A token issued to `scope` and not used yet.
    #[must_use]
    pub const fn issued(scope: Scope) -> Self {
        Self {
            scope,
            used: false,
            used_by: None,
        }
    }

    /// A token of `scope` that `consumer` used up (`None`: used by a consumer the store did
    /// not keep).
    #[must_use]
    pub const fn used(scope: Scope, consumer: Option<OwnerToken>) -> Self {
        Self {
            scope,
            used: true,
            used_by: consumer,
        }
    }

    /// The consume rule, once for every store that keeps [`TokenRecord`]s: answers what
    /// `consumer` consuming for `scope` finds, and the record to write back when this call
    /// used the token up (`None`: leave the store as it is).
    ///
    /// In order: no record is [`Rejection::Unknown`]; a record `consumer` used for `scope`
    /// is [`Consumption::Consumed`], written already (its own resend); any other used
    /// record is [`Rejection::AlreadyUsed`], whatever its scope; an unused record of
    /// another scope is [`Rejection::WrongScope`]; an unused record of `scope` is
    /// `Consumed`, with the record it becomes.
    #[must_use]
    pub fn consume(
        current: Option<&TokenRecord>,
        scope: &Scope,
        consumer: &OwnerToken,
    ) -> (Consumption, Option<TokenRecord>) {
        match current {
            None => (Consumption::Rejected(Rejection::Unknown), None),
            Some(record) if record.used => {
                if record.used_by == Some(*consumer) && record.scope == *scope {
                    (Consumption::Consumed, None)
                } else {
                    (Consumption::Rejected(Rejection::AlreadyUsed), None)
                }
            }
            Some(record) if record.scope != *scope => {
                (Consumption::Rejected(Rejection::WrongScope), None)
            }
            Some(record) => (
                Consumption::Consumed,
                Some(TokenRecord::used(record.scope.clone(), Some(*consumer))),
            ),
        }
    }
}

/// Issues and consumes tokens on a [`TokenStore`].
///
/// ```
/// use idem_core::{Consumption, Rejection, Scope, Tokens};
/// use idem_memory::MemoryTokenStore; // or idem-redis's, idem-mysql's
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let tokens = Tokens::new(MemoryTokenStore::new());
/// let alice = Scope::new("user:alice")?;
/// let token = tokens.issue(&alice).await?;      // handed to the client with the form
///
/// let first = tokens.consume(&alice, token.as_str()).await?;
/// let repeat = tokens.consume(&alice, token.as_str()).await?;
/// assert_eq!(first, Consumption::Consumed);     // run the business
/// assert_eq!(repeat, Consumption::Rejected(Rejection::AlreadyUsed));
/// # Ok::<(), idem_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Tokens<S> {
    store: S,
    generator: Arc<dyn TokenGenerator>,
    ttl: Ttl,
}

impl<S: TokenStore> Tokens<S> {
    /// The default token lifetime: 30 minutes, time enough to fill in a form.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

    /// Tokens on `store`, made by [`UuidV7Tokens`], living [`Self::DEFAULT_TTL`].
    pub fn new(store: S) -> Self {
        Self {
            store,
            generator: Arc::new(UuidV7Tokens),
            // In range by construction: no `Result` to handle.
            ttl: Ttl::from_millis_clamped(Self::DEFAULT_TTL.as_secs() * 1000),
        }
    }

    /// Sets how long an issued token stays usable.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `ttl` is zero or over [`Ttl::MAX`].
    pub fn with_ttl(mut self, ttl: Duration) -> Result<Self, Error> {
        self.ttl = Ttl::new(ttl)?;
        Ok(self)
    }

    /// Makes tokens with another generator.
    #[must_use]
    pub fn with_generator(mut self, generator: impl TokenGenerator) -> Self {
        self.generator = Arc::new(generator);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Makes a token for `scope`, stores it and returns it for the client.
    ///
    /// # Errors
    ///
    /// [`InvalidInput::MalformedToken`] when the generator made a token outside its own format; the
    /// store's [`TokenStore::issue`] errors: [`Error::TokenCollision`] when the token exists
    /// already, [`Error::Unavailable`] when the store cannot be reached.
    pub async fn issue(&self, scope: &Scope) -> Result<Token, Error> {
        let token = self.parse(&self.generator.generate())?;
        self.store.issue(&token, scope, self.ttl).await?;
        Ok(token)
    }

    /// Checks that `raw` is a well-formed token, without asking the store.
    ///
    /// # Errors
    ///
    /// [`InvalidInput::MalformedToken`], as [`Token::parse`].
    pub fn parse(&self, raw: &str) -> Result<Token, Error> {
        Token::parse(raw, self.generator.as_ref())
    }

    /// Uses up the token the client presented, if it is live, unused and belongs to `scope`.
    /// A malformed token is [`InvalidInput::MalformedToken`], and the store is not asked.
    ///
    /// Each call is one consumer ([`OwnerToken::random`]). A store that does not answer
    /// ([`Error::Unavailable`]: a timeout, a dropped connection) is asked again by the same
    /// consumer, a few times within a second: a consume that was applied with only its
    /// reply lost is then answered `Consumed`, and the business runs, where a fresh
    /// consumer's retry would be refused as used and the token lost. What no resend can
    /// recover is a consume applied for a caller that went away (a client gone, a timeout,
    /// a store down past the resends): the token is used and the business never ran, and
    /// the client's next request, a consumer of its own, is refused. Where that matters,
    /// combine the token with a key ([`consume_for`](Self::consume_for)).
    ///
    /// # Errors
    ///
    /// [`InvalidInput::MalformedToken`] for a malformed `raw`; the store's [`TokenStore::consume`]
    /// errors ([`Error::Unavailable`] once the resends ran out, [`Error::CorruptRecord`]). A
    /// token that is unknown, used, expired or of another scope is not an error: it is
    /// [`Consumption::Rejected`].
    pub async fn consume(&self, scope: &Scope, raw: &str) -> Result<Consumption, Error> {
        self.consume_as(scope, raw, OwnerToken::random()).await
    }

    /// Uses up the token for the request keyed `key`, as [`consume`](Self::consume) does,
    /// with one consumer for every attempt at that request: for tokens combined with keys,
    /// inside an execution of [`Idempotency`](crate::Idempotency) under `key` (made by
    /// [`Token::key`]).
    ///
    /// There the executor runs one attempt at a time, replays the first outcome, and frees
    /// the key after a retryable failure, such as a consume left `Unavailable`. If that
    /// consume was applied with only its reply lost, the next attempt finds the token used
    /// by its own request and is answered `Consumed`, and the business runs; with a fresh
    /// consumer per call ([`consume`](Self::consume)) it would be refused as used, and that
    /// refusal stored and replayed though nothing ran. As for every operation under a key,
    /// an attempt whose outcome could not be stored
    /// ([`ExecuteError::NotRecorded`](crate::ExecuteError::NotRecorded)) may run again once
    /// its lease ends, the token's consume included.
    ///
    /// Only there: outside an execution under `key`, every call with `key` is one consumer,
    /// and each would be answered `Consumed`.
    ///
    /// # Errors
    ///
    /// As [`consume`](Self::consume).
    pub async fn consume_for(
        &self,
        key: &Key,
        scope: &Scope,
        raw: &str,
    ) -> Result<Consumption, Error> {
        self.consume_as(scope, raw, consumer_of(key)).await
    }

    /// Consumes as `consumer`, sending the consume again while the store is unavailable.
    async fn consume_as(
        &self,
        scope: &Scope,
        raw: &str,
        consumer: OwnerToken,
    ) -> Result<Consumption, Error> {
        let token = self.parse(raw)?;
        let sent = tokio::time::Instant::now();
        match self.store.consume(&token, scope, &consumer).await {
            Err(Error::Unavailable { source }) => {
                backoff::resend(sent, source, || {
                    self.store.consume(&token, scope, &consumer)
                })
                .await
            }
            answer => answer,
        }
    }
}

/// The consumer of every attempt at the request keyed `key`: the first 16 bytes of a
/// SHA-256 over the key's parts, each after its length (no two keys share the bytes hashed),
/// behind a label of this use.
fn consumer_of(key: &Key) -> OwnerToken {
    let (namespace, id) = (key.namespace().as_bytes(), key.id().as_bytes());
    let lengths = [namespace.len() as u64, id.len() as u64].map(u64::to_be_bytes);
    let digest = Fingerprint::from_byte_parts([
        b"idem token consumer of a key\0".as_slice(),
        &lengths[0],
        namespace,
        &lengths[1],
        id,
    ]);
    let mut first = [0_u8; 16];
    first.copy_from_slice(&digest.as_bytes()[..16]);
    OwnerToken::from_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v7_tokens_are_well_formed_and_distinct() {
        let generator = UuidV7Tokens;
        let tokens: std::collections::HashSet<_> =
            (0..10_000).map(|_| generator.generate()).collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(tokens.iter().all(|t| generator.is_well_formed(t)));
    }

    /// The 74 bits after a token's timestamp and version: the ones a client cannot know.
    fn secret_bits(token: &str) -> u128 {
        let uuid = Uuid::try_parse(token)
            .expect("a generated token parses")
            .as_u128();
        let rand_a = (uuid >> 64) & 0xfff;
        let rand_b = uuid & ((1 << 62) - 1);
        (rand_a << 62) | rand_b
    }

    /// Tokens issued back to back (within one millisecond, as most here are) share no more
    /// of their secret bits than chance gives: a token handed to one client must not tell
    /// it most of the next client's. With 74 random bits, two tokens agree on their top 32
    /// with odds 2^-32 per pair.
    #[test]
    fn uuid_v7_tokens_keep_74_random_bits_apart() {
        let generator = UuidV7Tokens;
        let tokens: Vec<_> = (0..10_000).map(|_| generator.generate()).collect();
        let alike = tokens
            .windows(2)
            .filter(|pair| secret_bits(&pair[0]) >> 42 == secret_bits(&pair[1]) >> 42)
            .count();
        assert_eq!(
            alike, 0,
            "{alike} of 9,999 consecutive tokens share the top 32 of their 74 secret bits"
        );
    }

    #[test]
    fn other_formats_are_not_well_formed() {
        let generator = UuidV7Tokens;
        let v4 = Uuid::new_v4().simple().to_string();
        let v7 = generator.generate();
        assert!(!generator.is_well_formed(&v4), "a UUIDv4 is not a v7 token");
        assert!(!generator.is_well_formed(&v7.to_uppercase()));
        assert!(!generator.is_well_formed(&Uuid::now_v7().hyphenated().to_string()));
        assert!(!generator.is_well_formed(&v7[..31]));
    }

    #[test]
    fn consume_rule() {
        let alice = Scope::new("alice").expect("valid");
        let bob = Scope::new("bob").expect("valid");
        let (first, second) = (OwnerToken::random(), OwnerToken::random());
        let fresh = TokenRecord::issued(alice.clone());
        assert_eq!(
            TokenRecord::consume(None, &alice, &first).0,
            Consumption::Rejected(Rejection::Unknown)
        );
        assert_eq!(
            TokenRecord::consume(Some(&fresh), &bob, &first),
            (Consumption::Rejected(Rejection::WrongScope), None)
        );
        let (answer, write) = TokenRecord::consume(Some(&fresh), &alice, &first);
        assert_eq!(answer, Consumption::Consumed);
        let used = write.expect("consuming writes the used mark");
        assert_eq!(used, TokenRecord::used(alice.clone(), Some(first)));
        assert_eq!(
            TokenRecord::consume(Some(&used), &alice, &first),
            (Consumption::Consumed, None),
            "the consumer's own resend is answered as its first send, and writes nothing"
        );
        assert_eq!(
            TokenRecord::consume(Some(&used), &alice, &second),
            (Consumption::Rejected(Rejection::AlreadyUsed), None)
        );
        assert_eq!(
            TokenRecord::consume(Some(&used), &bob, &first),
            (Consumption::Rejected(Rejection::AlreadyUsed), None),
            "the consumer of one scope does not consume for another"
        );
        let kept_no_consumer = TokenRecord::used(alice.clone(), None);
        assert_eq!(
            TokenRecord::consume(Some(&kept_no_consumer), &alice, &first),
            (Consumption::Rejected(Rejection::AlreadyUsed), None)
        );
    }

    /// Accepts any text, so `Token::parse`'s own limits are tested, not the generator's.
    #[derive(Debug)]
    struct AnyText;

    impl TokenGenerator for AnyText {
        fn generate(&self) -> String {
            "t".repeat(MAX_TOKEN_LEN)
        }
        fn is_well_formed(&self, _raw: &str) -> bool {
            true
        }
    }

    fn malformed_reason(raw: &str, generator: &dyn TokenGenerator) -> Option<&'static str> {
        match Token::parse(raw, generator) {
            Err(Error::InvalidInput(InvalidInput::MalformedToken { reason })) => Some(reason),
            Err(other) => panic!("{raw:?}: not MalformedToken but {other:?}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn parse_enforces_its_own_limits_whatever_the_generator_accepts() {
        let longest = "t".repeat(MAX_TOKEN_LEN);
        assert_eq!(malformed_reason(&longest, &AnyText), None);
        assert_eq!(
            Token::parse(&longest, &AnyText)
                .expect("at the limit")
                .as_str(),
            longest
        );
        assert_eq!(malformed_reason("", &AnyText), Some("empty"));
        assert_eq!(
            malformed_reason(&"t".repeat(MAX_TOKEN_LEN + 1), &AnyText),
            Some("longer than MAX_TOKEN_LEN")
        );
        for bad in ["a b", "a\tb", "a\u{7f}b", "a\u{2028}b", "ab\n"] {
            assert_eq!(
                malformed_reason(bad, &AnyText),
                Some("holds whitespace or control characters"),
                "{bad:?}"
            );
        }
        // The generator's own format is checked last, and only then.
        let v4 = Uuid::new_v4().simple().to_string();
        assert_eq!(
            malformed_reason(&v4, &UuidV7Tokens),
            Some("not in the generator's format")
        );
        assert_eq!(malformed_reason(&v4, &AnyText), None);
    }

    #[test]
    fn a_token_shows_its_text_and_keys_its_request() {
        let token = Token::parse("abc", &AnyText).expect("well formed");
        assert_eq!(token.to_string(), "abc");
        assert_eq!(format!("{token:?}"), "Token(\"abc\")");
        let scope = Scope::new("user:1").expect("valid");
        let key = token.key("orders", &scope).expect("valid key");
        assert_eq!(key.namespace(), "orders");
        assert_eq!(
            key.id(),
            format!("abc {}", Fingerprint::from_bytes(b"user:1")),
            "the token and its scope's digest"
        );
        let other = Scope::new("user:2").expect("valid");
        assert_ne!(token.key("orders", &other).expect("valid key"), key);
        let longest = Token::parse(&"t".repeat(MAX_TOKEN_LEN), &AnyText).expect("well formed");
        assert!(
            longest.key("orders", &scope).is_ok(),
            "the longest token fits"
        );
        assert!(token.key("", &scope).is_err(), "the namespace is validated");
        assert_eq!(format!("{scope:?}"), "Scope(\"user:1\")");
        assert_eq!(scope.as_str(), "user:1");
    }

    #[test]
    fn a_used_token_is_already_used_in_any_scope() {
        let used = TokenRecord::used(Scope::new("alice").expect("valid"), None);
        let bob = Scope::new("bob").expect("valid");
        let consumer = OwnerToken::random();
        assert_eq!(
            TokenRecord::consume(Some(&used), &bob, &consumer),
            (Consumption::Rejected(Rejection::AlreadyUsed), None)
        );
        assert_eq!(
            TokenRecord::consume(None, &bob, &consumer),
            (Consumption::Rejected(Rejection::Unknown), None)
        );
    }

    /// A token store that keeps [`TokenRecord`]s and records every consume it was asked,
    /// and can lose replies.
    #[derive(Debug, Default)]
    struct Recording {
        issued: std::sync::Mutex<Vec<(Token, Scope, Ttl)>>,
        records: std::sync::Mutex<std::collections::HashMap<Token, TokenRecord>>,
        /// Every consume asked: the token and the consumer.
        consumes: std::sync::Mutex<Vec<(Token, OwnerToken)>>,
        /// How many of the next consumes are applied and then answered `Unavailable`, as
        /// if their reply was lost.
        lose_replies: std::sync::atomic::AtomicUsize,
    }

    impl Recording {
        fn losing_replies(count: usize) -> Self {
            let store = Self::default();
            store
                .lose_replies
                .store(count, std::sync::atomic::Ordering::SeqCst);
            store
        }

        fn consumers(&self) -> Vec<OwnerToken> {
            let consumes = self.consumes.lock().expect("not poisoned");
            consumes.iter().map(|(_, consumer)| *consumer).collect()
        }
    }

    #[async_trait]
    impl TokenStore for Recording {
        async fn issue(&self, token: &Token, scope: &Scope, ttl: Ttl) -> Result<(), Error> {
            let mut issued = self.issued.lock().expect("not poisoned");
            if issued.iter().any(|(t, _, _)| t == token) {
                return Err(Error::TokenCollision);
            }
            issued.push((token.clone(), scope.clone(), ttl));
            let mut records = self.records.lock().expect("not poisoned");
            records.insert(token.clone(), TokenRecord::issued(scope.clone()));
            Ok(())
        }
        async fn consume(
            &self,
            token: &Token,
            scope: &Scope,
            consumer: &OwnerToken,
        ) -> Result<Consumption, Error> {
            let mut consumes = self.consumes.lock().expect("not poisoned");
            consumes.push((token.clone(), *consumer));
            let mut records = self.records.lock().expect("not poisoned");
            let (answer, write) = TokenRecord::consume(records.get(token), scope, consumer);
            if let Some(record) = write {
                records.insert(token.clone(), record);
            }
            let lost = self.lose_replies.fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |left| left.checked_sub(1),
            );
            match lost {
                Ok(_) => Err(Error::unavailable("the reply was lost")),
                Err(_) => Ok(answer),
            }
        }
    }

    /// A current-thread runtime whose clock moves only when every task waits, so the
    /// pauses between resends take no real time.
    fn block_on_paused<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    /// A consume the store applied but whose reply was lost is sent again by the same
    /// consumer and answered `Consumed`: the business runs, where a fresh consumer would be
    /// refused as already used and the client's token lost to its own first send.
    #[test]
    fn a_consume_whose_reply_was_lost_is_consumed_by_its_resend() {
        block_on_paused(async {
            let alice = Scope::new("alice").expect("valid");
            let tokens = Tokens::new(Recording::losing_replies(1));
            let token = tokens.issue(&alice).await.expect("issued");
            assert_eq!(
                tokens
                    .consume(&alice, token.as_str())
                    .await
                    .expect("answered by the resend"),
                Consumption::Consumed
            );
            let consumers = tokens.store().consumers();
            assert_eq!(consumers.len(), 2, "one send, one resend");
            assert_eq!(
                consumers[0], consumers[1],
                "the resend is the same consumer's"
            );
            assert_eq!(
                tokens
                    .consume(&alice, token.as_str())
                    .await
                    .expect("answered"),
                Consumption::Rejected(Rejection::AlreadyUsed),
                "the next call is another consumer"
            );
        });
    }

    /// Combined with keys, a consume applied whose every reply was lost (the resends ran
    /// out: the attempt failed retryably and its key was freed) is `Consumed` for the next
    /// attempt at the same request, which is the same consumer; any other request is
    /// refused.
    #[test]
    fn the_next_attempt_at_a_request_finds_the_token_its_lost_consume_used() {
        block_on_paused(async {
            let alice = Scope::new("alice").expect("valid");
            let tokens = Tokens::new(Recording::losing_replies(4));
            let token = tokens.issue(&alice).await.expect("issued");
            let key = token.key("orders", &alice).expect("a key");
            assert!(matches!(
                tokens.consume_for(&key, &alice, token.as_str()).await,
                Err(Error::Unavailable { .. })
            ));
            assert_eq!(
                tokens
                    .consume_for(&key, &alice, token.as_str())
                    .await
                    .expect("answered"),
                Consumption::Consumed,
                "the next attempt at the request"
            );
            let consumers = tokens.store().consumers();
            assert_eq!(consumers.len(), 5);
            assert!(consumers.iter().all(|consumer| *consumer == consumers[0]));
            assert_eq!(
                tokens
                    .consume(&alice, token.as_str())
                    .await
                    .expect("answered"),
                Consumption::Rejected(Rejection::AlreadyUsed),
                "a call of its own"
            );
            let other = Token::parse("other", &AnyText)
                .expect("well formed")
                .key("orders", &alice)
                .expect("a key");
            assert_eq!(
                tokens
                    .consume_for(&other, &alice, token.as_str())
                    .await
                    .expect("answered"),
                Consumption::Rejected(Rejection::AlreadyUsed),
                "another request"
            );
        });
    }

    #[test]
    fn each_key_is_a_consumer_of_its_own() {
        let key = |namespace: &str, id: &str| Key::new(namespace, id).expect("a key");
        let consumers: std::collections::HashSet<_> = [
            key("a", "bc"),
            key("ab", "c"),
            key("a", "b/c"),
            key("a/b", "c"),
            key("orders", "1"),
        ]
        .iter()
        .map(consumer_of)
        .collect();
        assert_eq!(consumers.len(), 5);
        assert_eq!(
            consumer_of(&key("orders", "1")),
            consumer_of(&key("orders", "1")),
            "every attempt at one key is one consumer"
        );
        assert_ne!(consumer_of(&key("orders", "1")), OwnerToken::random());
    }

    /// A store that stays unavailable is asked a few times within a second, then the
    /// caller gets `Unavailable`.
    #[test]
    fn a_store_that_stays_unavailable_is_asked_four_times_within_a_second() {
        block_on_paused(async {
            let alice = Scope::new("alice").expect("valid");
            let tokens = Tokens::new(Recording::losing_replies(usize::MAX));
            let token = tokens.issue(&alice).await.expect("issued");
            let started = tokio::time::Instant::now();
            assert!(matches!(
                tokens.consume(&alice, token.as_str()).await,
                Err(Error::Unavailable { .. })
            ));
            assert!(started.elapsed() < Duration::from_secs(1));
            let consumers = tokens.store().consumers();
            assert_eq!(consumers.len(), 4);
            assert!(consumers.iter().all(|consumer| *consumer == consumers[0]));
        });
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn tokens_issue_with_the_configured_ttl_and_generator() {
        block_on(async {
            let alice = Scope::new("alice").expect("valid");
            let tokens = Tokens::new(Recording::default());
            let token = tokens.issue(&alice).await.expect("issued");
            assert!(UuidV7Tokens.is_well_formed(token.as_str()));
            let ttl = Ttl::new(Tokens::<Recording>::DEFAULT_TTL).expect("in range");
            assert_eq!(
                tokens.store().issued.lock().expect("not poisoned")[0],
                (token.clone(), alice.clone(), ttl)
            );
            assert_eq!(
                Tokens::<Recording>::DEFAULT_TTL,
                Duration::from_secs(30 * 60)
            );

            let tokens = Tokens::new(Recording::default())
                .with_ttl(Duration::from_secs(5))
                .expect("in range")
                .with_generator(AnyText);
            let token = tokens.issue(&alice).await.expect("issued");
            assert_eq!(token.as_str(), AnyText.generate());
            assert_eq!(
                tokens.store().issued.lock().expect("not poisoned")[0].2,
                Ttl::from_secs(5).expect("in range")
            );
            assert!(
                Tokens::new(Recording::default())
                    .with_ttl(Duration::ZERO)
                    .is_err()
            );
        });
    }

    #[test]
    fn tokens_consume_through_the_store_and_refuse_malformed_text_first() {
        block_on(async {
            let alice = Scope::new("alice").expect("valid");
            let bob = Scope::new("bob").expect("valid");
            // Through `Arc` and `Box<dyn>`: the forwarding impls reach the store.
            let store = Arc::new(Recording::default());
            let tokens = Tokens::new(Arc::clone(&store));
            let token = tokens.issue(&alice).await.expect("issued");
            let boxed: Box<dyn TokenStore> = Box::new(Arc::clone(&store));
            assert_eq!(
                boxed
                    .issue(&token, &alice, tokens.ttl)
                    .await
                    .map_err(|e| e.to_string()),
                Err(Error::TokenCollision.to_string())
            );
            assert_eq!(
                tokens
                    .consume(&bob, token.as_str())
                    .await
                    .expect("answered"),
                Consumption::Rejected(Rejection::WrongScope)
            );
            assert_eq!(
                boxed
                    .consume(&token, &alice, &OwnerToken::random())
                    .await
                    .expect("answered"),
                Consumption::Consumed
            );
            assert_eq!(
                tokens
                    .consume(&alice, token.as_str())
                    .await
                    .expect("answered"),
                Consumption::Rejected(Rejection::AlreadyUsed)
            );
            let asked = store.consumes.lock().expect("not poisoned").len();
            assert!(matches!(
                tokens.consume(&alice, "not a token").await,
                Err(Error::InvalidInput(InvalidInput::MalformedToken { .. }))
            ));
            assert!(tokens.parse(token.as_str()).is_ok());
            assert_eq!(store.consumes.lock().expect("not poisoned").len(), asked);
        });
    }

    #[test]
    fn scopes_are_validated() {
        assert!(Scope::new("").is_err());
        assert!(Scope::new("a\tb").is_err());
        assert!(Scope::new("s".repeat(256)).is_err());
    }
}
