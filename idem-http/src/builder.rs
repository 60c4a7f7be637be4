//! Configuring a layer: one builder, one fallible `build()`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use idem_core::attempt::{CancelPolicy, Engine};
use idem_core::{Error, IdempotencyStore, InvalidInput, Ttl, WaitPolicy};

use crate::key_header::KeySyntax;
use crate::layer::IdempotencyLayer;
use crate::policy::{OversizedResponse, Storage};
use crate::scope::KeyScope;
use crate::settings::{Options, Settings};

/// Builds an [`IdempotencyLayer`]. Made by [`IdempotencyLayer::builder`]; every setting
/// has a default but the scope, which the application must choose.
#[must_use = "a builder does nothing until build() is called"]
#[derive(Debug)]
pub struct IdempotencyLayerBuilder<S> {
    store: S,
    scope: KeyScope,
    retention: Duration,
    lease_ttl: Duration,
    cancel_policy: CancelPolicy,
    options: Options,
}

impl<S: IdempotencyStore> IdempotencyLayer<S> {
    /// A builder for a layer on `store` with keys in `scope` (there is no default scope:
    /// see [`KeyScope`]). To share a store with other users, pass an `Arc` of it.
    pub fn builder(store: S, scope: KeyScope) -> IdempotencyLayerBuilder<S> {
        IdempotencyLayerBuilder {
            store,
            scope,
            retention: DEFAULT_RETENTION,
            lease_ttl: DEFAULT_LEASE_TTL,
            cancel_policy: CancelPolicy::Detach,
            options: Options::default(),
        }
    }
}

/// Default retention: 24 h, as Stripe keeps keys.
const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default lease: 30 s.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

impl<S: IdempotencyStore> IdempotencyLayerBuilder<S> {
    /// The methods that are made idempotent; all others pass through untouched.
    /// Default: `POST` and `PATCH`, the draft's non-idempotent methods.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.options.methods = methods.into_iter().collect();
        self
    }

    /// The header the key is read from. Default: `Idempotency-Key`.
    pub fn header_name(mut self, header: HeaderName) -> Self {
        self.options.header = header;
        self
    }

    /// Whether a request without the key header is refused with 400
    /// ([`MISSING_KEY`](crate::problem::MISSING_KEY)) or passed through unprotected.
    /// Default: `false` (passed through).
    pub fn require_key(mut self, required: bool) -> Self {
        self.options.required = required;
        self
    }

    /// Whether a bare key (`abc-123`, without the double quotes the draft requires) is
    /// accepted as the key `"abc-123"`. Only RFC 9110 token characters are accepted bare,
    /// so a mangled value (`"abc`, `"k";x=1`, `a, b`) is still refused. Default: `false`
    /// (strict: the header must be a structured-field string).
    pub fn allow_bare_keys(mut self, allow: bool) -> Self {
        self.options.key_syntax = if allow {
            KeySyntax::AllowBare
        } else {
            KeySyntax::Strict
        };
        self
    }

    /// The largest request body buffered for fingerprinting; a larger one gets 413, at once
    /// (before a `100 Continue`, and with none of it read) when its `Content-Length` says
    /// so. Default: 1 MiB.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.options.max_request_body = bytes;
        self
    }

    /// The largest response body stored; see [`OversizedResponse`] for a larger one.
    /// Default: 1 MiB. Keep it within the store's payload limit.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.options.max_response_body = bytes;
        self
    }

    /// What happens to a response over [`max_response_body`](Self::max_response_body).
    /// Default: [`OversizedResponse::PassOn`].
    pub fn oversized(mut self, oversized: OversizedResponse) -> Self {
        self.options.oversized = oversized;
        self
    }

    /// How long a response is replayed. Default: 24 h, as Stripe.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a claim holds its key while the handler runs. The lease is renewed every
    /// third of it, so this bounds how long a crashed process blocks a key, not how long a
    /// handler may take. Default: 30 s.
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl;
        self
    }

    /// What happens when the client goes away (disconnects, or a timeout layer drops the
    /// request) while the handler runs. Default: [`CancelPolicy::Detach`]: the handler runs
    /// to the end on a task of its own and its response is stored, so the client's retry
    /// gets 409 meanwhile and the replay after, never a second run.
    /// [`CancelPolicy::Release`] drops the handler and frees the key at once, for handlers
    /// known to have no effect until they finish, or that mark the point past which they
    /// may have one ([`LeaseHandle::commit`](crate::LeaseHandle::commit), the lease in the
    /// request's extensions); once the handler has returned its
    /// response (its body may still be streaming), a client gone changes nothing under
    /// either policy: the body is read and stored on a task of its own.
    pub fn cancel_policy(mut self, policy: CancelPolicy) -> Self {
        self.cancel_policy = policy;
        self
    }

    /// Whether 5xx responses (but 503, which is never stored) are stored and replayed, or
    /// free the key so a retry runs the handler again. Default: [`Storage::Store`], as
    /// Stripe: a handler that answered 500 may have done part of its work (charged the
    /// card, then failed to write the receipt), and running it again is the one thing this
    /// layer exists to prevent. A handler that panics counts as one that answered 500.
    /// Choose [`Storage::Release`] when your handlers roll back everything before answering
    /// 5xx.
    pub fn server_errors(mut self, storage: Storage) -> Self {
        self.options.statuses.server_errors = storage;
        self
    }

    /// Overrides the policy for one status; the last override of a status wins. Defaults:
    /// 2xx, 3xx and 4xx are stored (they reflect the request), but 408, 409, 425 and 429,
    /// which say "try again", and 503; 5xx as [`server_errors`](Self::server_errors).
    pub fn status(mut self, status: StatusCode, storage: Storage) -> Self {
        self.options.statuses.overrides.push((status, storage));
        self
    }

    /// What a duplicate does while the first request with its key still runs: answer 409
    /// at once ([`WaitPolicy::FailFast`]), or wait for the first outcome up to a deadline
    /// and get the replay ([`WaitPolicy::wait`]), the same policy as the core executor's.
    /// Default: [`WaitPolicy::FailFast`].
    pub fn wait(mut self, wait: WaitPolicy) -> Self {
        self.options.wait = wait;
        self
    }

    /// Another response header to store and replay. Default: `Content-Type`,
    /// `Content-Encoding` (the stored body is the bytes the inner service answered, so a
    /// compression layer inside this one compressed them) and `Location` only, since other
    /// headers (dates, request ids, cookies) describe the first answer rather than the
    /// result. Put compression outside this layer where you can: a replay then gets the
    /// encoding its own request asks for.
    pub fn replay_header(mut self, header: HeaderName) -> Self {
        if !self.options.replay_headers.contains(&header) {
            self.options.replay_headers.push(header);
        }
        self
    }

    /// Checks the settings and builds the layer. Fails with [`Error::InvalidInput`] on a
    /// zero or out-of-range retention or lease, or a wait policy whose backoff is zero or
    /// whose `max_backoff` is below its `initial_backoff`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] on a zero or out-of-range retention or lease TTL
    /// ([`InvalidInput::ZeroTtl`], [`InvalidInput::TtlOutOfRange`]), or a wait policy whose backoff
    /// is zero or whose `max_backoff` is below its `initial_backoff` ([`InvalidInput::Other`]).
    pub fn build(self) -> Result<IdempotencyLayer<S>, Error> {
        if let WaitPolicy::Wait {
            initial_backoff,
            max_backoff,
            ..
        } = self.options.wait
            && (initial_backoff.is_zero() || max_backoff < initial_backoff)
        {
            return Err(InvalidInput::Other(
                "wait backoff must be positive and max_backoff at least initial_backoff",
            )
            .into());
        }
        let settings = Settings {
            scope: self.scope,
            retention: Ttl::new(self.retention)?,
            options: self.options,
        };
        let engine = Engine::new(Arc::new(self.store), Ttl::new(self.lease_ttl)?)
            .with_cancel_policy(self.cancel_policy);
        Ok(IdempotencyLayer {
            engine,
            settings: Arc::new(settings),
            runs: Arc::default(),
        })
    }
}
