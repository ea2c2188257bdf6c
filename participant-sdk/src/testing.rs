//! Test helpers of the SDK's unit tests.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::resource::{CommitResult, Resource, ResourceError, RollbackResult, Vote};
use crate::xid::Xid;

/// An in-memory resource that only remembers which branches are prepared: what
/// the recovery loop looks at.
#[derive(Default)]
pub(crate) struct Prepared(Mutex<BTreeSet<Xid>>);

impl Prepared {
    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<Xid>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Resource for Prepared {
    async fn prepare(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        self.set().insert(xid.clone());
        Ok(Vote::Yes)
    }
    async fn commit(&self, xid: &Xid, _one_phase: bool) -> Result<CommitResult, ResourceError> {
        self.set().remove(xid);
        Ok(CommitResult::Committed)
    }
    async fn rollback(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        self.set().remove(xid);
        Ok(RollbackResult::RolledBack)
    }
    async fn recover(&self) -> Result<Vec<Xid>, ResourceError> {
        Ok(self.set().iter().cloned().collect())
    }
    async fn forget(&self, _xid: &Xid) -> Result<(), ResourceError> {
        Ok(())
    }
}
