//! The blob store's lock when several hosts share one S3 bucket: a
//! PostgreSQL advisory lock in the state store they share (writers shared,
//! garbage collection exclusive), never S3 itself (some S3 servers ignore
//! conditional writes).

use crate::store::{LockKey, Store};
use sbx_store::{LockGuard, LockMode, Locker};

pub struct ClusterLocker {
    state: Store,
    runtime: tokio::runtime::Handle,
}

impl ClusterLocker {
    /// Locks through `state`, whose queries run on `runtime`.
    pub fn new(state: Store, runtime: tokio::runtime::Handle) -> Self {
        ClusterLocker { state, runtime }
    }
}

impl Locker for ClusterLocker {
    fn lock(&self, mode: LockMode) -> sbx_store::Result<LockGuard> {
        let take = self
            .state
            .advisory_lock(LockKey::Blobs, mode == LockMode::Shared);
        // Called from blocking threads; at start also from async code.
        let held = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.runtime.block_on(take)),
            Err(_) => self.runtime.block_on(take),
        }
        .map_err(|e| sbx_store::Error::Remote {
            op: "lock",
            key: "the state store's blob lock".into(),
            source: Box::new(e),
        })?;
        Ok(LockGuard::new(std::sync::Mutex::new(held)))
    }
}
