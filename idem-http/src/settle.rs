//! What the engine writes once the handler returned: the response record, the too-large
//! marker, or nothing (the key is freed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderName, HeaderValue, StatusCode};
use idem_core::attempt::{Settle, Settlement};

use crate::body::BufferedResponse;
use crate::record::{StoredOutcome, encode_response};
use crate::settings::Settings;

/// The handler's output as the engine sees it: the buffered response, or the inner
/// service's error, and whether the handler committed before it answered.
pub(crate) struct Output<B, E> {
    /// The handler marked its point of no return ([`LeaseHandle::commit`] on the lease in
    /// its request's extensions) before it answered: its effects may have happened, so
    /// nothing it answers frees the key, an error or a "try again" status included (a
    /// timeout inside the layer that dropped it, say).
    ///
    /// [`LeaseHandle::commit`]: idem_core::attempt::LeaseHandle::commit
    pub(crate) committed: bool,
    pub(crate) result: Result<BufferedResponse<B>, E>,
}

impl<B, E> Output<B, E> {
    pub(crate) fn new(committed: bool, result: Result<BufferedResponse<B>, E>) -> Self {
        Self { committed, result }
    }
}

/// Turns a handler's output into the engine's [`Settlement`], as the layer's settings say.
pub(crate) struct SettleResponse {
    settings: Arc<Settings>,
    /// The status of the response being settled, for the marker written when the store
    /// refuses the record as too large.
    status: StatusCode,
    /// Set when the store refused the record and the marker was written instead: under
    /// [`OversizedResponse::Refuse`](crate::OversizedResponse::Refuse) the first client
    /// then gets the retries' problem too. `None` (no allocation) under `PassOn`.
    store_refused: Option<Arc<AtomicBool>>,
}

impl SettleResponse {
    pub(crate) fn new(settings: Arc<Settings>, store_refused: Option<Arc<AtomicBool>>) -> Self {
        Self {
            settings,
            status: StatusCode::OK,
            store_refused,
        }
    }

    /// A response of `status` with no body to store: a marker keeps the key from a second
    /// run, unless the status says nothing happened and the handler did not commit.
    fn body_failed(&self, status: StatusCode, committed: bool) -> Settlement {
        if self.settings.releases(status, committed) {
            return Settlement::Release;
        }
        Settlement::Complete {
            payload: StoredOutcome::encode_body_failed(status),
            retention: self.settings.retention,
        }
    }

    fn marker(&self, size: u64) -> Settlement {
        Settlement::Complete {
            payload: StoredOutcome::encode_too_large(self.status, size),
            retention: self.settings.retention,
        }
    }
}

impl<B, E> Settle<Output<B, E>> for SettleResponse {
    fn settle(&mut self, output: &Output<B, E>) -> Settlement {
        let committed = output.committed;
        match &output.result {
            // The inner service failed after the handler committed (a timeout inside the
            // layer dropped it mid-charge): nothing to replay, but never a second run.
            Err(_) if committed => self.body_failed(StatusCode::INTERNAL_SERVER_ERROR, committed),
            // The inner service failed: it may not have run the handler at all (a load
            // shedder's refusal), and left nothing to replay.
            Err(_) => Settlement::Release,
            // The handler returned, so whatever it did is done, though its body broke
            // mid-way: a marker keeps the key from a second run, unless the status says
            // nothing happened.
            Ok(BufferedResponse::Unreadable(status, _)) => self.body_failed(*status, committed),
            // A handler that panicked may have done part of its work, as one that answered
            // 500: settled as a 500 whose body failed.
            Ok(BufferedResponse::Panicked(_)) => {
                self.body_failed(StatusCode::INTERNAL_SERVER_ERROR, committed)
            }
            Ok(BufferedResponse::TooLarge(response, size)) => {
                self.status = response.status();
                // A "try again" answer frees the key whatever its size: the marker would
                // refuse every retry of an operation that said nothing happened.
                if self.settings.releases(self.status, committed) {
                    return Settlement::Release;
                }
                tracing::warn!(
                    status = %self.status,
                    size,
                    limit = self.settings.options.max_response_body,
                    "the response is over the storable size: retries get a response-not-stored problem"
                );
                self.marker(*size)
            }
            Ok(BufferedResponse::Complete(parts, body, trailers)) => {
                self.status = parts.status;
                if self.settings.releases(parts.status, committed) {
                    return Settlement::Release;
                }
                let names = &self.settings.options.replay_headers;
                let headers = || selected_headers(names, parts);
                // Every trailer is kept: they end the body (a gRPC status, a checksum), so a
                // replay without them is not the response that ran.
                match encode_response(parts.status, headers, trailers.as_deref(), body) {
                    Ok(payload) => Settlement::Complete {
                        payload,
                        retention: self.settings.retention,
                    },
                    Err(reason) => {
                        tracing::error!(reason, "the response cannot be encoded; freeing its key");
                        Settlement::Release
                    }
                }
            }
        }
    }

    /// The store's payload limit is below the layer's: still never a second run.
    fn too_large(&mut self, size: usize, limit: usize) -> Option<Settlement> {
        tracing::warn!(
            size,
            limit,
            "the store refused the response as too large; storing a marker"
        );
        if let Some(flag) = &self.store_refused {
            flag.store(true, Ordering::Relaxed);
        }
        Some(self.marker(size as u64))
    }
}

/// The response headers to store, in the configured order.
fn selected_headers<'a>(
    names: &'a [HeaderName],
    parts: &'a http::response::Parts,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
    names.iter().flat_map(|name| {
        parts
            .headers
            .get_all(name)
            .iter()
            .map(move |value| (name, value))
    })
}
