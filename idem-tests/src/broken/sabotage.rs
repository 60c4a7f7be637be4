//! The broken stores' [`Sabotage`] hooks: a corrupt record is a mark on its slot, a down
//! server is a store that answers every call as one would. Honest unless the store's defect
//! is one of the fault defects.

use std::sync::Arc;
use std::time::Duration;

use idem_core::backend::lifecycle::Phase;
use idem_core::{BoxError, Error, Key, Token, async_trait};

use super::Defect;
use super::store::BrokenStore;
use super::tokens::{BrokenTokenStore, TokenDefect};
use crate::{Sabotage, SharedTokenStore, Store, TokenSabotage};

/// What a client gets from a server that is not there.
fn refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "nothing listens there (a broken store's down server)",
    )
}

impl BrokenStore {
    /// Answers as a down server would, when this store is one: `Unavailable`, or under
    /// the fault defects `Backend` or never.
    pub(super) async fn reachable(&self) -> Result<(), Error> {
        if !self.down {
            return Ok(());
        }
        match self.defect {
            Defect::UnavailableAsBackend => Err(Error::backend(refused())),
            Defect::HangsWhenDown => std::future::pending().await,
            _ => Err(Error::unavailable(refused())),
        }
    }

    /// Whether the record at `slot` was corrupted. Under [`Defect::CorruptTraceAsFree`] a
    /// corrupted freed key's trace is not: it decodes as no trace, and goes.
    pub(super) fn undecodable(&self, slot: &str) -> Result<bool, Error> {
        let mut state = self.lock()?;
        if !state.corrupt.contains(slot) {
            return Ok(false);
        }
        let trace = state
            .entries
            .get(slot)
            .is_some_and(|entry| matches!(entry.phase, Phase::Vacant));
        if trace && self.defect == Defect::CorruptTraceAsFree {
            // With the garbage goes the fencing number it carried.
            state.corrupt.remove(slot);
            state.entries.remove(slot);
            return Ok(false);
        }
        Ok(true)
    }

    /// Drops the slot's record, corrupt or not.
    pub(super) fn forget(&self, slot: &str) -> Result<(), Error> {
        let mut state = self.lock()?;
        state.corrupt.remove(slot);
        state.entries.remove(slot);
        Ok(())
    }

    pub(super) fn corrupt() -> Error {
        Error::corrupt("a broken store's record was overwritten with garbage")
    }
}

#[async_trait]
impl Sabotage for Arc<BrokenStore> {
    fn store(&self) -> Store {
        Arc::clone(self) as Store
    }

    async fn corrupt_record(&self, key: &Key) -> Result<(), BoxError> {
        let slot = self.slot(key);
        self.lock()?.corrupt.insert(slot);
        Ok(())
    }

    async fn unreachable_store(&self) -> Result<Store, BoxError> {
        Ok(Arc::new(BrokenStore::unreachable(
            self.defect,
            self.max_payload,
        )))
    }

    async fn kept_for(&self, key: &Key) -> Result<Option<Duration>, BoxError> {
        Ok(self.kept_ms(&self.slot(key))?.map(Duration::from_millis))
    }
}

impl BrokenTokenStore {
    /// Answers as a down server would, when this store is one.
    pub(super) fn reachable(&self) -> Result<(), Error> {
        match (self.down, self.defect) {
            (false, _) => Ok(()),
            (true, TokenDefect::UnavailableAsBackend) => Err(Error::backend(refused())),
            (true, _) => Err(Error::unavailable(refused())),
        }
    }

    /// Whether `token`'s record was corrupted; under [`TokenDefect::CorruptAsUnknown`]
    /// with `forget`, the mark goes (an issue writes over it).
    pub(super) fn undecodable(&self, token: &Token, forget: bool) -> Result<bool, Error> {
        let mut corrupt = self
            .corrupt
            .lock()
            .map_err(|_| Error::backend("a token mark lock was poisoned"))?;
        if forget && self.defect == TokenDefect::CorruptAsUnknown {
            corrupt.remove(token);
            return Ok(false);
        }
        Ok(corrupt.contains(token))
    }
}

#[async_trait]
impl TokenSabotage for Arc<BrokenTokenStore> {
    fn store(&self) -> SharedTokenStore {
        Arc::clone(self) as SharedTokenStore
    }

    async fn corrupt_token(&self, token: &Token) -> Result<(), BoxError> {
        self.corrupt
            .lock()
            .map_err(|_| Error::backend("a token mark lock was poisoned"))?
            .insert(token.clone());
        Ok(())
    }

    async fn unreachable_store(&self) -> Result<SharedTokenStore, BoxError> {
        Ok(Arc::new(BrokenTokenStore::new(self.defect, true)))
    }

    async fn kept_for(&self, token: &Token) -> Result<Option<Duration>, BoxError> {
        Ok(self.kept(token)?)
    }
}
