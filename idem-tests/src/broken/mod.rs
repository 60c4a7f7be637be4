//! Stores with one deliberate defect each, to prove the suite catches what it claims to.
//!
//! Each [`Defect`] wraps the correct [`MemoryStore`] and breaks one rule; [`Defect::caught_by`]
//! names the checks that must fail against it. This crate's own tests run the whole suite
//! against every defect and assert exactly that, so emptying or weakening a check shows up
//! as a defect that is no longer caught.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use idem_core::{
    Claim, ClaimRequest, Error, IdempotencyStore, Key, Lease, Record, RecordState, Ttl,
};
use idem_memory::MemoryStore;

/// One way a store can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A claim that should be "in progress" acquires too: two owners run the operation.
    TwoWinners,
    /// Like `TwoWinners`, but only when taking over a key that was freed (lapsed or
    /// released): new keys are claimed correctly.
    TwoWinnersOnTakeover,
    /// Complete, fail, renew and release ignore the owner token and fencing number.
    IgnoresOwner,
    /// Leases never expire: a crashed owner blocks its key for good.
    NeverExpiresLeases,
    /// Payloads are stored through a lossy UTF-8 conversion.
    ReencodesPayloads,
    /// Fingerprints are dropped on claim.
    IgnoresFingerprints,
    /// A free key forgets its fencing number, so numbers are reused.
    ReusesFencing,
    /// The namespace is dropped: every namespace shares one key space.
    LeaksNamespaces,
    /// Keys are folded to lower case and cut to 64 bytes, merging distinct keys.
    MangleKeys,
    /// Payloads over the declared limit are accepted.
    IgnoresPayloadLimit,
    /// Finished records are kept a thousand times longer than asked.
    IgnoresRetention,
    /// Renewing says yes and does nothing.
    NoopRenew,
    /// A claim retried by the same owner is told "in progress".
    ForgetsOwnClaim,
    /// A claim retried by the same owner gets its lease back but not extended.
    ReclaimDoesNotExtend,
    /// A lapsed lease nobody took over can no longer finish.
    DropsLapsedLeases,
    /// Reading always finds nothing.
    ReadsNothing,
    /// Removing says yes and removes nothing.
    RemoveIsNoop,
}

impl Defect {
    /// Every defect.
    pub const ALL: &'static [Defect] = &[
        Defect::TwoWinners,
        Defect::TwoWinnersOnTakeover,
        Defect::IgnoresOwner,
        Defect::NeverExpiresLeases,
        Defect::ReencodesPayloads,
        Defect::IgnoresFingerprints,
        Defect::ReusesFencing,
        Defect::LeaksNamespaces,
        Defect::MangleKeys,
        Defect::IgnoresPayloadLimit,
        Defect::IgnoresRetention,
        Defect::NoopRenew,
        Defect::ForgetsOwnClaim,
        Defect::ReclaimDoesNotExtend,
        Defect::DropsLapsedLeases,
        Defect::ReadsNothing,
        Defect::RemoveIsNoop,
    ];

    /// The checks that must fail against this defect.
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            Defect::TwoWinners => &["exclusive_claim", "exclusive_claim_many_keys"],
            Defect::TwoWinnersOnTakeover => &["exclusive_takeover"],
            Defect::IgnoresOwner => &["stale_lease"],
            Defect::NeverExpiresLeases => &["lease_expiry"],
            Defect::ReencodesPayloads => &["replay_fidelity"],
            Defect::IgnoresFingerprints => &["fingerprints"],
            Defect::ReusesFencing => &["lease_expiry", "failures"],
            Defect::LeaksNamespaces => &["namespace_isolation"],
            Defect::MangleKeys => &["key_fidelity"],
            Defect::IgnoresPayloadLimit => &["bad_input"],
            Defect::IgnoresRetention => &["retention"],
            Defect::NoopRenew => &["renewal"],
            Defect::ForgetsOwnClaim => &["uncertain_claim"],
            Defect::ReclaimDoesNotExtend => &["uncertain_claim"],
            Defect::DropsLapsedLeases => &["lapsed_lease_still_finishes"],
            Defect::ReadsNothing => &["inspection_and_removal"],
            Defect::RemoveIsNoop => &["inspection_and_removal"],
        }
    }

    /// A store with this defect, whose honest payload limit is `max_payload`.
    pub fn store(self, max_payload: usize) -> BrokenStore {
        let limit = if self == Defect::IgnoresPayloadLimit {
            usize::MAX
        } else {
            max_payload
        };
        BrokenStore {
            inner: MemoryStore::new().with_max_payload(limit),
            defect: self,
            acquired: Arc::default(),
        }
    }
}

/// A [`MemoryStore`] with one [`Defect`].
#[derive(Debug, Clone)]
pub struct BrokenStore {
    inner: MemoryStore,
    defect: Defect,
    /// Keys acquired before, for the takeover defect.
    acquired: Arc<Mutex<HashSet<Key>>>,
}

impl BrokenStore {
    fn key(&self, key: &Key) -> Result<Key, Error> {
        match self.defect {
            Defect::LeaksNamespaces => Key::new("shared", key.id()),
            Defect::MangleKeys => {
                let folded = key.id().to_lowercase();
                let cut = (0..=folded.len().min(64))
                    .rev()
                    .find(|i| folded.is_char_boundary(*i))
                    .unwrap_or(0);
                Key::new(key.namespace(), &folded[..cut])
            }
            _ => Ok(key.clone()),
        }
    }

    fn lease(&self, lease: &Lease) -> Result<Lease, Error> {
        Ok(Lease {
            key: self.key(&lease.key)?,
            ..lease.clone()
        })
    }

    /// Stretches a TTL a thousandfold, within what `Ttl` accepts.
    fn stretched(ttl: Ttl) -> Result<Ttl, Error> {
        Ttl::new((ttl.as_duration() * 1000).min(Ttl::MAX))
    }

    /// The lease of whoever holds the key now, for the owner-ignoring defect.
    async fn holder(&self, lease: &Lease) -> Result<Lease, Error> {
        match self.inner.read(&lease.key).await? {
            Some(Record {
                state: RecordState::Claimed { owner },
                fencing,
                ..
            }) => Ok(Lease {
                key: lease.key.clone(),
                owner,
                fencing,
            }),
            _ => Ok(lease.clone()),
        }
    }

    /// The lease to finish with, after this store's defect had its say.
    async fn finishing(&self, lease: &Lease) -> Result<Lease, Error> {
        let lease = self.lease(lease)?;
        match self.defect {
            Defect::IgnoresOwner => self.holder(&lease).await,
            Defect::DropsLapsedLeases if self.inner.read(&lease.key).await?.is_none() => {
                Err(Error::LeaseLost)
            }
            _ => Ok(lease),
        }
    }

    /// Claims correctly, except that a key acquired before and free now is handed to every
    /// claimer that finds it free, as a check-then-set on an existing row would.
    async fn claim_racing_takeovers(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let known = self
            .acquired
            .lock()
            .map_err(|_| Error::backend("poisoned"))?
            .contains(&request.key);
        let freed = known && self.inner.read(&request.key).await?.is_none();
        if freed {
            // The gap between the check and the write, where the other claimers get in.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let claim = self.inner.claim(request).await?;
        match claim {
            Claim::Acquired(_) => {
                self.acquired
                    .lock()
                    .map_err(|_| Error::backend("poisoned"))?
                    .insert(request.key.clone());
                Ok(claim)
            }
            Claim::InProgress { .. } if freed => Ok(Claim::Acquired(Lease {
                key: request.key.clone(),
                owner: request.owner,
                fencing: u64::MAX,
            })),
            other => Ok(other),
        }
    }

    fn payload(&self, payload: Bytes) -> Bytes {
        match self.defect {
            Defect::ReencodesPayloads => {
                Bytes::from(String::from_utf8_lossy(&payload).into_owned())
            }
            _ => payload,
        }
    }

    fn retention(&self, retention: Ttl) -> Result<Ttl, Error> {
        match self.defect {
            Defect::IgnoresRetention => Self::stretched(retention),
            _ => Ok(retention),
        }
    }
}

#[async_trait]
impl IdempotencyStore for BrokenStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, Error> {
        let mut request = request.clone();
        request.key = self.key(&request.key)?;
        if self.defect == Defect::TwoWinnersOnTakeover {
            return self.claim_racing_takeovers(&request).await;
        }
        match self.defect {
            Defect::NeverExpiresLeases => request.lease_ttl = Self::stretched(request.lease_ttl)?,
            Defect::IgnoresFingerprints => request.fingerprint = None,
            Defect::ReusesFencing if self.inner.read(&request.key).await?.is_none() => {
                self.inner.remove(&request.key).await?;
            }
            Defect::ReclaimDoesNotExtend => {
                if let Some(Record {
                    state: RecordState::Claimed { owner },
                    fencing,
                    ..
                }) = self.inner.read(&request.key).await?
                    && owner == request.owner
                {
                    return Ok(Claim::Acquired(Lease {
                        key: request.key,
                        owner,
                        fencing,
                    }));
                }
            }
            Defect::ForgetsOwnClaim => {
                if let Some(Record {
                    state: RecordState::Claimed { owner },
                    ..
                }) = self.inner.read(&request.key).await?
                    && owner == request.owner
                {
                    return Ok(Claim::InProgress {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
            _ => {}
        }
        match self.inner.claim(&request).await? {
            Claim::InProgress { .. } if self.defect == Defect::TwoWinners => {
                Ok(Claim::Acquired(Lease {
                    key: request.key,
                    owner: request.owner,
                    fencing: 0,
                }))
            }
            claim => Ok(claim),
        }
    }

    async fn complete(&self, lease: &Lease, response: Bytes, retention: Ttl) -> Result<(), Error> {
        let lease = self.finishing(lease).await?;
        self.inner
            .complete(&lease, self.payload(response), self.retention(retention)?)
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Bytes, retention: Ttl) -> Result<(), Error> {
        let lease = self.finishing(lease).await?;
        self.inner
            .fail(&lease, self.payload(failure), self.retention(retention)?)
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Ttl) -> Result<(), Error> {
        if self.defect == Defect::NoopRenew {
            return Ok(());
        }
        let ttl = if self.defect == Defect::NeverExpiresLeases {
            Self::stretched(ttl)?
        } else {
            ttl
        };
        let lease = self.finishing(lease).await?;
        self.inner.renew(&lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let lease = self.finishing(lease).await?;
        self.inner.release(&lease).await
    }

    async fn read(&self, key: &Key) -> Result<Option<Record>, Error> {
        if self.defect == Defect::ReadsNothing {
            return Ok(None);
        }
        self.inner.read(&self.key(key)?).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, Error> {
        if self.defect == Defect::RemoveIsNoop {
            return Ok(true);
        }
        self.inner.remove(&self.key(key)?).await
    }
}

pub mod tokens;
