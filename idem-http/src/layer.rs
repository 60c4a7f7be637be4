//! The layer and its settings.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, Method, header};
use idem_core::{IdempotencyStore, Ttl};
use tower_layer::Layer;

use crate::service::IdempotencyService;

/// The header the draft names.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header added to replayed responses (Stripe's name; the draft names none).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Computes a key namespace from the request, for per-route or per-tenant keys.
type NamespaceFn = dyn Fn(&Parts) -> String + Send + Sync;

/// What the layer does, shared by every service it makes.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) required: bool,
    pub(crate) namespace: Arc<NamespaceFn>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) retention: Ttl,
    pub(crate) lease_ttl: Ttl,
    pub(crate) store_server_errors: bool,
    pub(crate) replay_headers: Vec<HeaderName>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("methods", &self.methods)
            .field("header", &self.header)
            .field("required", &self.required)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("retention", &self.retention)
            .field("lease_ttl", &self.lease_ttl)
            .field("store_server_errors", &self.store_server_errors)
            .field("replay_headers", &self.replay_headers)
            .finish_non_exhaustive()
    }
}

/// A TTL known to be in range at compile time.
fn ttl_secs(secs: u64) -> Ttl {
    Ttl::from_secs(secs).unwrap_or_else(|_| unreachable!("{secs} s is a valid TTL"))
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            methods: vec![Method::POST, Method::PATCH],
            header: IDEMPOTENCY_KEY,
            required: false,
            namespace: Arc::new(|_: &Parts| String::from("http")),
            max_request_body: 1024 * 1024,
            max_response_body: 1024 * 1024,
            retention: ttl_secs(24 * 60 * 60),
            lease_ttl: ttl_secs(30),
            store_server_errors: false,
            replay_headers: vec![header::CONTENT_TYPE, header::LOCATION],
        }
    }
}

/// A tower [`Layer`] that makes the wrapped service idempotent per `Idempotency-Key`,
/// on any [`IdempotencyStore`]. See the [crate docs](crate) for the behaviour.
///
/// Cloning is cheap: clones share the store and the settings.
pub struct IdempotencyLayer<S> {
    store: Arc<S>,
    settings: Arc<Settings>,
}

impl<S> Clone for IdempotencyLayer<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for IdempotencyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S: IdempotencyStore> IdempotencyLayer<S> {
    /// A layer with the defaults: POST and PATCH, header `Idempotency-Key` optional,
    /// namespace `"http"`, 1 MiB body limits, 24 h retention, 30 s lease.
    pub fn new(store: S) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A layer over a store already in an `Arc`, shared with other users.
    pub fn from_arc(store: Arc<S>) -> Self {
        Self {
            store,
            settings: Arc::new(Settings::default()),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(Arc::make_mut(&mut self.settings));
        self
    }

    /// The methods that need a key; all others pass through untouched. Default POST, PATCH.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.edit(|s| s.methods = methods)
    }

    /// The header the key is read from. Default `Idempotency-Key`.
    pub fn header_name(self, header: HeaderName) -> Self {
        self.edit(|s| s.header = header)
    }

    /// Whether a request without the header is refused with 400 (`true`) or passed
    /// through unprotected (`false`, the default).
    pub fn required(self, required: bool) -> Self {
        self.edit(|s| s.required = required)
    }

    /// A fixed key namespace, instead of `"http"`: layers with different namespaces never
    /// share keys, even on one store.
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        let namespace: String = namespace.into();
        self.namespace_with(move |_| namespace.clone())
    }

    /// Computes the key namespace from each request (per route, per tenant, ...). A
    /// namespace that is not a valid [`Key`](idem_core::Key) part answers 500.
    pub fn namespace_with(
        self,
        namespace: impl Fn(&Parts) -> String + Send + Sync + 'static,
    ) -> Self {
        self.edit(|s| s.namespace = Arc::new(namespace))
    }

    /// The largest request body buffered; larger ones get 413. Default 1 MiB.
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.edit(|s| s.max_request_body = bytes)
    }

    /// The largest response body stored. A larger response is passed to the client as is
    /// and its key released, so a retry runs the handler again. Default 1 MiB.
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.edit(|s| s.max_response_body = bytes)
    }

    /// How long a response is replayed. Default 24 h.
    pub fn retention(self, retention: Ttl) -> Self {
        self.edit(|s| s.retention = retention)
    }

    /// How long a claim holds its key while the handler runs; renewed every third of it,
    /// so this bounds how long a crashed process blocks a key. Default 30 s.
    pub fn lease_ttl(self, lease_ttl: Ttl) -> Self {
        self.edit(|s| s.lease_ttl = lease_ttl)
    }

    /// Whether 5xx responses are stored and replayed (`true`) or their key released so a
    /// retry runs again (`false`, the default).
    pub fn store_server_errors(self, store: bool) -> Self {
        self.edit(|s| s.store_server_errors = store)
    }

    /// Another response header to store and replay, besides `Content-Type` and `Location`.
    pub fn replay_header(self, header: HeaderName) -> Self {
        self.edit(|s| s.replay_headers.push(header))
    }
}

impl<S, Inner> Layer<Inner> for IdempotencyLayer<S> {
    type Service = IdempotencyService<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        IdempotencyService::new(Arc::clone(&self.store), Arc::clone(&self.settings), inner)
    }
}
