//! What every check needs: a namespace of its own and short ways to drive the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{Claim, ClaimRequest, Error, Key, Lease, Record, Ttl};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::{Capabilities, CheckFailure, CheckResult, Store};

/// Fails the running check with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}
pub(crate) use ensure;

/// A lease long enough that nothing expires during a check that does not wait for expiry.
pub(crate) const LONG: Duration = Duration::from_secs(30);
/// Retention for records a check leaves behind: gone a minute later.
pub(crate) const RETENTION: Duration = Duration::from_secs(60);

/// A check's view of the store, inside its own namespace.
pub(crate) struct Ctx {
    pub(crate) store: Store,
    pub(crate) caps: Capabilities,
    pub(crate) namespace: String,
}

/// Runs a check body in a fresh namespace and names the check in its failure.
pub(crate) async fn run<F, Fut>(
    check: &'static str,
    store: Store,
    caps: Capabilities,
    body: F,
) -> CheckResult
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let namespace = unique_name(check);
    named(
        check,
        body(Ctx {
            store,
            caps,
            namespace,
        }),
    )
    .await
}

/// A name no other run of any check uses, `idem-tests.<check>.<uuid>`: a check's namespace
/// or scope, so that checks share a server without wiping it.
pub(crate) fn unique_name(check: &str) -> String {
    format!("idem-tests.{check}.{}", uuid::Uuid::new_v4().simple())
}

/// Runs a check's body and names the check in its failure.
pub(crate) async fn named(
    check: &'static str,
    body: impl Future<Output = Result<(), String>>,
) -> CheckResult {
    body.await
        .map_err(|message| CheckFailure { check, message })
}

/// Turns a store error into a check failure that says what was being done.
pub(crate) trait Doing<T> {
    fn doing(self, what: &str) -> Result<T, String>;
}

impl<T> Doing<T> for Result<T, Error> {
    fn doing(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: unexpected error {e:?}"))
    }
}

pub(crate) fn ttl(duration: Duration) -> Result<Ttl, String> {
    Ttl::new(duration).doing("building a TTL")
}

impl Ctx {
    pub(crate) fn key(&self, id: &str) -> Result<Key, String> {
        Key::new(self.namespace.clone(), id).doing("building a key")
    }

    /// A claim by a fresh owner.
    pub(crate) fn request(&self, key: &Key, lease: Duration) -> Result<ClaimRequest, String> {
        Ok(ClaimRequest::new(key.clone(), ttl(lease)?))
    }

    pub(crate) async fn claim(&self, request: &ClaimRequest) -> Result<Claim, String> {
        self.store.claim(request).await.doing("claim")
    }

    /// Claims by a fresh owner and insists on acquiring.
    pub(crate) async fn acquire(&self, key: &Key, lease: Duration) -> Result<Lease, String> {
        let request = self.request(key, lease)?;
        self.acquire_with(&request).await
    }

    pub(crate) async fn acquire_with(&self, request: &ClaimRequest) -> Result<Lease, String> {
        match self.claim(request).await? {
            Claim::Acquired(lease) => {
                ensure!(
                    lease.key == request.key && lease.owner == request.owner,
                    "the lease names another key or owner: {lease:?} for {request:?}"
                );
                Ok(lease)
            }
            other => Err(format!(
                "claiming {} expected Acquired, got {other:?}",
                request.key
            )),
        }
    }

    /// What a fresh owner's claim finds.
    pub(crate) async fn probe(&self, key: &Key) -> Result<Claim, String> {
        self.claim(&self.request(key, LONG)?).await
    }

    pub(crate) async fn complete(
        &self,
        lease: &Lease,
        response: impl Into<Bytes>,
    ) -> Result<(), String> {
        let retention = ttl(RETENTION)?;
        self.store
            .complete(lease, response.into(), retention)
            .await
            .doing("complete")
    }

    pub(crate) async fn fail(
        &self,
        lease: &Lease,
        failure: impl Into<Bytes>,
    ) -> Result<(), String> {
        let retention = ttl(RETENTION)?;
        self.store
            .fail(lease, failure.into(), retention)
            .await
            .doing("fail")
    }

    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), String> {
        self.store.release(lease).await.doing("release")
    }

    pub(crate) async fn renew(&self, lease: &Lease, to: Duration) -> Result<(), String> {
        self.store.renew(lease, ttl(to)?).await.doing("renew")
    }

    pub(crate) async fn remove(&self, key: &Key) -> Result<bool, String> {
        self.store.remove(key).await.doing("remove")
    }

    /// Every lease-presenting call with `lease` must be `LeaseLost` and leave the key's
    /// record as it was (its time left may only have run down).
    pub(crate) async fn expect_spent(&self, lease: &Lease, why: &str) -> Result<(), String> {
        let key = &lease.key;
        let before = self.read(key).await?;
        let long = ttl(Duration::from_secs(3600))?;
        let store = &self.store;
        expect_lease_lost(
            &format!("complete {why}"),
            store.complete(lease, "spent".into(), long).await,
        )?;
        expect_lease_lost(
            &format!("fail {why}"),
            store.fail(lease, "spent".into(), long).await,
        )?;
        expect_lease_lost(&format!("renew {why}"), store.renew(lease, long).await)?;
        expect_lease_lost(&format!("release {why}"), store.release(lease).await)?;
        let after = self.read(key).await?;
        let strip = |r: &Option<Record>| r.clone().map(|r| (r.state, r.fencing, r.fingerprint));
        ensure!(
            strip(&before) == strip(&after),
            "a spent lease ({why}) changed the record: {before:?} -> {after:?}"
        );
        if let (Some(before), Some(after)) = (&before, &after) {
            ensure!(
                after.expires_in <= before.expires_in,
                "a spent lease ({why}) extended the record's time left: {:?} -> {:?}",
                before.expires_in,
                after.expires_in
            );
        }
        Ok(())
    }

    pub(crate) async fn read(&self, key: &Key) -> Result<Option<Record>, String> {
        self.store.read(key).await.doing("read")
    }

    pub(crate) fn short(&self) -> Duration {
        self.caps.short_ttl
    }

    /// `short_ttl` plus `time_slack`: the unit time-dependent checks count in.
    pub(crate) fn unit(&self) -> Duration {
        self.caps.short_ttl + self.caps.time_slack
    }

    pub(crate) fn slack(&self) -> Duration {
        self.caps.time_slack
    }

    /// Sleeps until something given `short_ttl` to live has surely expired.
    pub(crate) async fn outlive_short_ttl(&self) {
        tokio::time::sleep(self.caps.short_ttl + self.caps.time_slack).await;
    }
}

/// Starts `call` on a task of its own once `gate` opens: one side of a race, so that every
/// side of every race of a check leaves at the same instant.
pub(crate) fn after_gate<T, F>(gate: &Arc<Barrier>, call: F) -> JoinHandle<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let gate = Arc::clone(gate);
    tokio::spawn(async move {
        gate.wait().await;
        call.await
    })
}

/// What a task of a race answered; a panic is a failure.
pub(crate) async fn joined<T>(task: JoinHandle<T>) -> Result<T, String> {
    task.await
        .map_err(|e| format!("a racing task panicked: {e}"))
}

/// Insists that a store call failed with `LeaseLost`.
pub(crate) fn expect_lease_lost<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Error>,
) -> Result<(), String> {
    match result {
        Err(Error::LeaseLost) => Ok(()),
        other => Err(format!(
            "{what} with a stale lease: expected LeaseLost, got {other:?}"
        )),
    }
}
