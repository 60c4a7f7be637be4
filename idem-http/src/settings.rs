//! What a layer does, checked once when it is built and shared by every service it makes.

use http::{HeaderName, Method, StatusCode, header};
use idem_core::{Ttl, WaitPolicy};

use crate::header::IDEMPOTENCY_KEY;
use crate::key_header::KeySyntax;
use crate::policy::{OversizedResponse, StatusPolicy, Storage};
use crate::scope::KeyScope;

/// A layer's settings: the options, and the retention in the units the stores take (the
/// lease is the engine's).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) scope: KeyScope,
    pub(crate) retention: Ttl,
    pub(crate) options: Options,
}

/// The settings that need no checking.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) required: bool,
    pub(crate) key_syntax: KeySyntax,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) statuses: StatusPolicy,
    pub(crate) oversized: OversizedResponse,
    pub(crate) wait: WaitPolicy,
    pub(crate) replay_headers: Vec<HeaderName>,
}

impl Settings {
    /// Whether a response of `status` frees the key: only a status the policy releases,
    /// from a handler that did not commit (one that did may have done its work).
    pub(crate) fn releases(&self, status: StatusCode, committed: bool) -> bool {
        !committed && self.options.statuses.decide(status) == Storage::Release
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            methods: vec![Method::POST, Method::PATCH],
            header: IDEMPOTENCY_KEY,
            required: false,
            key_syntax: KeySyntax::Strict,
            max_request_body: 1024 * 1024,
            max_response_body: 1024 * 1024,
            statuses: StatusPolicy::default(),
            oversized: OversizedResponse::default(),
            wait: WaitPolicy::FailFast,
            replay_headers: vec![
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::LOCATION,
            ],
        }
    }
}
