//! Storage pieces for a resource kept in [`crate::durable::DurableSled`] (the Kafka
//! adapter's stage, and the demo resources of `ratify-devkit`): the encoding of
//! finished-branch outcomes (commit records and rollback tombstones), the listing of
//! prepared branches, and error conversion.
//!
//! Every such resource keys its `prepared` and `outcomes` trees by the rendered xid.

use std::fmt::Display;

use crate::durable::DurableSled;
use crate::resource::{CommitResult, ResourceError, RollbackResult, Vote};
use crate::xid::Xid;

/// How a branch finished, as remembered in an `outcomes` tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Committed (two-phase or one-phase).
    Committed,
    /// Rolled back; also the tombstone that refuses a late prepare.
    RolledBack,
    /// Voted READ_ONLY: nothing to commit or undo. Kept so a retried prepare votes
    /// READ_ONLY again and later work for the xid is refused; a commit of it answers
    /// committed and a rollback rolled back, neither a heuristic.
    ReadOnly,
}

impl Finished {
    /// One byte per record: the encoding is tiny and stable.
    pub fn encode(self) -> &'static [u8] {
        match self {
            Self::Committed => b"C",
            Self::RolledBack => b"R",
            Self::ReadOnly => b"O",
        }
    }

    /// Reads a record [`Finished::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            b"C" => Some(Self::Committed),
            b"R" => Some(Self::RolledBack),
            b"O" => Some(Self::ReadOnly),
            _ => None,
        }
    }
}

/// A storage failure: likely transient (disk full, I/O error), so retry later.
pub fn unavailable(e: impl Display) -> ResourceError {
    ResourceError::Unavailable(format!("storage: {e}"))
}

/// Reads how `xid` finished, if it did.
pub fn read_outcome(tree: &sled::Tree, xid: &Xid) -> Result<Option<Finished>, ResourceError> {
    match tree.get(xid.render()).map_err(unavailable)? {
        None => Ok(None),
        Some(v) => Finished::decode(&v)
            .map(Some)
            .ok_or_else(|| ResourceError::Failed(format!("corrupt outcome record for {xid}"))),
    }
}

/// Records how `xid` finished (outside a multi-tree transaction).
pub fn write_outcome(tree: &sled::Tree, xid: &Xid, how: Finished) -> Result<(), ResourceError> {
    tree.insert(xid.render(), how.encode())
        .map(drop)
        .map_err(unavailable)
}

/// Lists the xids keyed in a `prepared` tree.
pub fn list_prepared(tree: &sled::Tree) -> Result<Vec<Xid>, ResourceError> {
    tree.iter()
        .keys()
        .map(|k| {
            let k = k.map_err(unavailable)?;
            std::str::from_utf8(&k)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    ResourceError::Failed(format!(
                        "corrupt prepared key {:?}",
                        String::from_utf8_lossy(&k)
                    ))
                })
        })
        .collect()
}

/// Waits until everything written so far is durable.
pub async fn sync(durable: &DurableSled) -> Result<(), ResourceError> {
    durable.sync().await.map_err(unavailable)
}

/// Maps the result of a multi-tree sled transaction whose aborts carry a
/// [`ResourceError`].
pub fn tx_result<T>(
    r: sled::transaction::TransactionResult<T, ResourceError>,
) -> Result<T, ResourceError> {
    r.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => unavailable(e),
    })
}

/// Moves `xid` from its `prepared` tree to `outcomes` as finished `how`, in one sled
/// transaction (no prepared record is fine: a branch finished before it prepared).
pub fn finish(
    prepared: &sled::Tree,
    outcomes: &sled::Tree,
    xid: &Xid,
    how: Finished,
) -> Result<(), ResourceError> {
    use sled::transaction::Transactional;
    let key = xid.render();
    tx_result((prepared, outcomes).transaction(|(prepared, outcomes)| {
        prepared.remove(key.as_bytes())?;
        outcomes.insert(key.as_bytes(), how.encode())?;
        Ok(())
    }))
}

// The skeleton every resource kept this way shares: what a branch that already
// finished answers, per the `Resource` contract (docs/design.md, rules 4-6). Each
// resource asks these first and goes on to its own staging only on `None`.

/// The vote of a finished branch asked to prepare again: NO after a rollback (the
/// tombstone fences a late prepare), YES after a commit (only committing is consistent
/// with what happened), READ_ONLY again after a read-only vote (a new leader re-running
/// the prepare round must get the same vote, not a NO that aborts a committable
/// transaction).
pub fn answer_prepare(finished: Option<Finished>) -> Option<Vote> {
    Some(match finished? {
        Finished::RolledBack => Vote::No("branch was rolled back".into()),
        Finished::Committed => Vote::Yes,
        Finished::ReadOnly => Vote::ReadOnly,
    })
}

/// The answer of a finished branch asked to commit: committed after a commit or a
/// read-only vote (nothing to commit), rolled back after a rollback — for a two-phase
/// commit that is a heuristic the coordinator records, so it is logged.
pub fn answer_commit(
    finished: Option<Finished>,
    xid: &Xid,
    one_phase: bool,
) -> Option<CommitResult> {
    Some(match finished? {
        Finished::Committed | Finished::ReadOnly => CommitResult::Committed,
        Finished::RolledBack => {
            if !one_phase {
                tracing::warn!(%xid, "two-phase commit of a rolled-back branch");
            }
            CommitResult::RolledBack
        }
    })
}

/// The answer of a finished branch asked to roll back: already committed (a
/// heuristic for the coordinator) after a commit, rolled back otherwise (a read-only
/// branch has nothing to undo; its record stays, so a retried prepare still votes
/// READ_ONLY).
pub fn answer_rollback(finished: Option<Finished>) -> Option<RollbackResult> {
    Some(match finished? {
        Finished::Committed => RollbackResult::AlreadyCommitted,
        Finished::RolledBack | Finished::ReadOnly => RollbackResult::RolledBack,
    })
}

/// Makes a vote durable before it is sent: a YES (the prepared state) and a READ_ONLY
/// (its record: a retry after a crash that lost it would vote NO and abort a commit).
/// A NO needs no sync: if its tombstone is lost in a crash, so is the pending work,
/// and a later prepare still votes NO.
pub async fn durable_vote(durable: &DurableSled, vote: Vote) -> Result<Vote, ResourceError> {
    if !matches!(vote, Vote::No(_)) {
        sync(durable).await?;
    }
    Ok(vote)
}

/// A resource kept in a [`DurableSled`] whose steps are synchronous writes under its
/// own lock (the demo account store and the no-op resource of `ratify-devkit` are
/// two): implement the steps and get [`crate::Resource`] with the contract's
/// durability rules — a vote made durable before it is sent ([`durable_vote`]), a
/// commit or rollback acknowledged only once durable (the coordinator may forget the
/// transaction once told, and a lost commit would bring back a branch nobody can
/// resolve), prepared branches listed from [`StagedResource::prepared`], forgotten
/// outcomes removed without a sync (one that reappears after a crash is harmless).
///
/// Each step should answer a finished branch with [`answer_prepare`],
/// [`answer_commit`] or [`answer_rollback`] first.
pub trait StagedResource: Send + Sync + 'static {
    /// The store every step writes to.
    fn durable(&self) -> &DurableSled;
    /// Rendered xid → the branch's prepared state.
    fn prepared(&self) -> &sled::Tree;
    /// Rendered xid → how it finished ([`Finished`]).
    fn outcomes(&self) -> &sled::Tree;
    /// Phase 1; the vote is made durable by the caller.
    ///
    /// # Errors
    /// Storage errors.
    fn prepare_step(&self, xid: &Xid) -> Result<Vote, ResourceError>;
    /// Phase 2 (or one-phase) commit; made durable by the caller.
    ///
    /// # Errors
    /// Storage errors, a two-phase commit of a branch never prepared.
    fn commit_step(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError>;
    /// Rollback; made durable by the caller.
    ///
    /// # Errors
    /// Storage errors.
    fn rollback_step(&self, xid: &Xid) -> Result<RollbackResult, ResourceError>;
}

#[async_trait::async_trait]
impl<T: StagedResource> crate::Resource for T {
    async fn prepare(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        let vote = self.prepare_step(xid)?;
        durable_vote(self.durable(), vote).await
    }

    async fn commit(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError> {
        let result = self.commit_step(xid, one_phase)?;
        sync(self.durable()).await?;
        Ok(result)
    }

    async fn rollback(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        let result = self.rollback_step(xid)?;
        sync(self.durable()).await?;
        Ok(result)
    }

    async fn recover(&self) -> Result<Vec<Xid>, ResourceError> {
        list_prepared(self.prepared())
    }

    async fn forget(&self, xid: &Xid) -> Result<(), ResourceError> {
        self.outcomes()
            .remove(xid.render())
            .map(drop)
            .map_err(unavailable)
    }
}
