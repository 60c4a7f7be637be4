//! Keeping a lease alive while its operation runs, on a task of its own, and what the
//! operation sees of it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::Error;
use crate::lease::Lease;
use crate::store::IdempotencyStore;
use crate::ttl::Ttl;

/// What the attempt knows about its lease.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseStatus {
    /// The store said the lease no longer holds the key.
    pub(crate) lost: bool,
    /// The latest the lease is known to last: when the last renewal that succeeded was sent,
    /// plus the TTL.
    pub(crate) until: Instant,
}

/// How often a lease of `ttl` is renewed: every third of it, so two renewals may fail
/// before it lapses.
pub(crate) fn renew_interval(ttl: Ttl) -> Duration {
    ttl.as_duration() / 3
}

/// Keeps `lease` renewed: at once (the supervisor starts this once the attempt has run a
/// while, see [`watchlist`](super::watchlist)), then every third of the TTL, until aborted or
/// the lease is found lost.
pub(crate) async fn keep_renewed<S: IdempotencyStore>(
    store: Arc<S>,
    lease: Arc<Lease>,
    ttl: Ttl,
    status: watch::Sender<LeaseStatus>,
) {
    let every = renew_interval(ttl);
    let mut ticker = tokio::time::interval_at(Instant::now(), every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sent = Instant::now();
        match store.renew(&lease, ttl).await {
            Ok(()) => {
                status.send_modify(|status| status.until = sent + ttl.as_duration());
                tracing::trace!(fencing = lease.fencing, "lease renewed");
            }
            Err(Error::LeaseLost) => {
                tracing::warn!(
                    namespace = lease.key.namespace(),
                    fencing = lease.fencing,
                    "lease lost while the operation runs; its outcome will not be stored"
                );
                status.send_modify(|status| status.lost = true);
                return;
            }
            Err(error) => tracing::warn!(%error, "renewing the lease failed; retrying"),
        }
    }
}

/// The lease of a running attempt, as its operation sees it: the [`Lease`] (it derefs to
/// one, for the fencing number), and whether the lease was lost while the operation runs.
///
/// The lease is lost when its renewal finds another owner holding the key (it lapsed and was
/// taken over, or the key was removed). The operation's outcome can then no longer be
/// stored, and a second owner may be running the same operation: a long job should check
/// [`is_lost`](Self::is_lost) between steps, or race its work against
/// [`lost`](Self::lost), and stop.
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    lease: Lease,
    status: watch::Receiver<LeaseStatus>,
}

impl LeaseHandle {
    pub(crate) fn new(lease: Lease, status: watch::Receiver<LeaseStatus>) -> Self {
        Self { lease, status }
    }

    /// The lease.
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether the lease was found lost.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.status.borrow().lost
    }

    /// Resolves once the lease is found lost. Never resolves if the attempt ends with the
    /// lease held.
    pub async fn lost(&self) {
        let mut status = self.status.clone();
        if status.wait_for(|status| status.lost).await.is_err() {
            // The attempt ended (its renewal stopped) without losing the lease.
            std::future::pending::<()>().await;
        }
    }
}

impl Deref for LeaseHandle {
    type Target = Lease;

    fn deref(&self) -> &Lease {
        &self.lease
    }
}
