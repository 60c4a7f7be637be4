//! Which handler responses are stored and replayed, and which free the key.

use http::StatusCode;

/// What the layer does with a handler's response of some status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// Store it: every retry with the key gets it back, and the handler never runs again
    /// for the key (until the retention ends).
    Store,
    /// Free the key: the response reaches this client only, and a retry runs the handler
    /// again. Only for answers that say "nothing happened, try again". A handler that
    /// committed first ([`LeaseHandle::commit`](crate::LeaseHandle::commit) on the lease in
    /// its request's extensions) may have done its work: its response is stored whatever
    /// its status.
    Release,
}

/// What the layer does with a response whose body is over the storable size
/// ([`max_response_body`](crate::IdempotencyLayerBuilder::max_response_body)).
///
/// Either way the handler has run, so the key is never freed: a marker is stored, and
/// every retry gets a 500 problem of type
/// [`RESPONSE_NOT_STORED`](crate::problem::RESPONSE_NOT_STORED) instead of a second run.
/// A response whose status the policy releases ([`Storage::Release`]: 503 and the other
/// "try again" statuses by default) is the exception, whatever its size: it frees the key
/// and reaches its client as it is, like a small one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OversizedResponse {
    /// The first client gets the whole response, streamed on; retries get the problem.
    /// The default: the one client that can still get the response gets it.
    #[default]
    PassOn,
    /// The first client gets the same problem as every retry, so all see one answer.
    Refuse,
}

/// The statuses that say "try again" and are never stored by default: 408 Request Timeout,
/// 409 Conflict, 425 Too Early, 429 Too Many Requests, 503 Service Unavailable.
pub(crate) const TRY_AGAIN: [StatusCode; 5] = [
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::CONFLICT,
    StatusCode::TOO_EARLY,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::SERVICE_UNAVAILABLE,
];

/// The storage policy by status: defaults, then the application's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusPolicy {
    pub(crate) server_errors: Storage,
    pub(crate) overrides: Vec<(StatusCode, Storage)>,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        Self {
            server_errors: Storage::Store,
            overrides: Vec::new(),
        }
    }
}

impl StatusPolicy {
    /// What to do with a response of `status`.
    pub(crate) fn decide(&self, status: StatusCode) -> Storage {
        if let Some((_, storage)) = self.overrides.iter().rev().find(|(s, _)| *s == status) {
            return *storage;
        }
        if TRY_AGAIN.contains(&status) {
            Storage::Release
        } else if status.is_server_error() {
            self.server_errors
        } else {
            Storage::Store
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let policy = StatusPolicy::default();
        for (status, storage) in [
            (200, Storage::Store),
            (201, Storage::Store),
            (204, Storage::Store),
            (303, Storage::Store),
            (400, Storage::Store),
            (402, Storage::Store),
            (404, Storage::Store),
            (422, Storage::Store),
            (408, Storage::Release),
            (409, Storage::Release),
            (425, Storage::Release),
            (429, Storage::Release),
            (500, Storage::Store),
            (502, Storage::Store),
            (503, Storage::Release),
        ] {
            let status = StatusCode::from_u16(status).expect("valid status");
            assert_eq!(policy.decide(status), storage, "{status}");
        }
    }

    #[test]
    fn overrides_win_and_the_last_one_counts() {
        let policy = StatusPolicy {
            server_errors: Storage::Release,
            overrides: vec![
                (StatusCode::BAD_GATEWAY, Storage::Store),
                (StatusCode::NOT_FOUND, Storage::Store),
                (StatusCode::NOT_FOUND, Storage::Release),
                (StatusCode::TOO_MANY_REQUESTS, Storage::Store),
            ],
        };
        assert_eq!(
            policy.decide(StatusCode::INTERNAL_SERVER_ERROR),
            Storage::Release
        );
        assert_eq!(policy.decide(StatusCode::BAD_GATEWAY), Storage::Store);
        assert_eq!(policy.decide(StatusCode::NOT_FOUND), Storage::Release);
        assert_eq!(policy.decide(StatusCode::TOO_MANY_REQUESTS), Storage::Store);
        assert_eq!(policy.decide(StatusCode::CREATED), Storage::Store);
    }
}
