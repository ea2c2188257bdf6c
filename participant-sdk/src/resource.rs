//! The XA-style [`Resource`] trait every participant resource implements.
//!
//! The coordinator drives a resource through [`crate::server::ParticipantServer`]; the
//! recovery loop ([`crate::recovery`]) drives it after crashes. Both rely on the
//! contract below, which is what makes two-phase commit correct (docs/design.md, rules 4-6).

use async_trait::async_trait;

use crate::xid::Xid;

pub use ratify_common::wire::{is_valid_name, MAX_NAME_LEN};

/// A resource's phase-1 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Prepared and durable (fsynced): the branch will commit or roll back as told.
    Yes,
    /// Rolled back locally, with a human-readable reason; the transaction must abort.
    No(String),
    /// Nothing to commit: the coordinator skips phase 2 for this branch.
    ReadOnly,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    /// The branch is committed, now or earlier.
    Committed,
    /// The branch did not commit and never will. For a one-phase commit: the
    /// resource could not commit and rolled back instead. For a two-phase commit: the
    /// branch is known to be rolled back (a rollback or tombstone got there first, or
    /// a person rolled it back), a heuristic answer the coordinator records and shows
    /// (docs/design.md, rule 11).
    RolledBack,
}

/// What a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackResult {
    /// Rolled back now, earlier, or never existed (a tombstone now refuses prepare).
    RolledBack,
    /// Heuristic: the branch had already committed (one-phase) and cannot be undone.
    AlreadyCommitted,
}

/// Why a resource call failed. Domain answers (NO votes, one-phase refusals) are not
/// errors; these are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// Temporarily unable to answer (storage busy or failing, database unreachable):
    /// the caller should retry later. Phase-2 calls are retried until they succeed.
    #[error("resource unavailable: {0}")]
    Unavailable(String),
    /// The resource gave up on this call (corrupt state, protocol violation); retrying
    /// the same call will not help and an operator may be needed.
    #[error("resource failed: {0}")]
    Failed(String),
}

impl ResourceError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// An XA-style transactional resource.
///
/// # Contract
/// Every implementation must keep these rules; the coordinator's correctness depends
/// on them.
/// - **Durable YES** (rule 6): [`prepare`](Resource::prepare) returns [`Vote::Yes`]
///   only once the branch's prepared state is on disk (fsynced), including when the
///   branch was already prepared by an earlier call.
/// - **No work, no YES**: preparing an xid for which no work was registered votes
///   [`Vote::No`] (the work was lost, for example in a restart).
/// - **Idempotent phase 2** (rule 4): committing an already committed branch returns
///   [`CommitResult::Committed`]; committing an unknown branch also does (it was
///   committed and forgotten). Rolling back an unknown branch returns
///   [`RollbackResult::RolledBack`].
/// - **Fencing** (rule 5): a rollback, and a NO vote, leave a tombstone so a later
///   (delayed) prepare of the same xid votes NO.
/// - **Read-only is remembered**: a [`Vote::ReadOnly`] leaves a record, so a retried
///   prepare (a new leader re-running the prepare round) votes
///   [`Vote::ReadOnly`] again, not NO (which would abort a transaction that can
///   commit) nor YES; work registered for the xid later is refused; a commit of it
///   answers [`CommitResult::Committed`] and a rollback
///   [`RollbackResult::RolledBack`] (there was nothing to undo, so no heuristic).
/// - **One phase over a prepared branch**: a one-phase commit of a branch that is
///   already prepared (a leader without one phase prepared it and died; the next
///   one, with one phase on, asks for a one-phase commit) commits it, as a
///   two-phase commit would, and answers [`CommitResult::Committed`].
/// - **A rolled-back branch is said so**: a two-phase commit of a branch the
///   resource knows is rolled back (its tombstone, or rolled-back record) returns
///   `Ok(`[`CommitResult::RolledBack`]`)`, a heuristic answer the coordinator logs and
///   lists (rule 11), never an error: errors are retried, so that branch would be
///   asked for ever and never show up for a person.
///   [`ResourceError::Failed`] stays for "cannot tell" (corrupt state, a protocol
///   violation such as a two-phase commit of a branch that was never prepared).
/// - Answers are given only once the state they report is durable.
///
/// Calls for different xids may run concurrently; calls for the same xid may too
/// (retries), and must stay correct.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Phase 1: make the branch's work durable and vote.
    ///
    /// # Errors
    /// [`ResourceError::Unavailable`] when the vote cannot be given now (the
    /// coordinator treats it as unreachable), [`ResourceError::Failed`] otherwise.
    async fn prepare(&self, xid: &Xid) -> Result<Vote, ResourceError>;

    /// Phase 2 commit of a prepared branch, or (`one_phase`) commit-or-rollback of a
    /// branch that was never prepared.
    ///
    /// A branch known to be rolled back answers `Ok(`[`CommitResult::RolledBack`]`)`
    /// in both modes (see the contract).
    ///
    /// # Errors
    /// [`ResourceError::Unavailable`] to be retried later; [`ResourceError::Failed`]
    /// when the resource cannot tell what happened to the branch.
    async fn commit(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError>;

    /// Phase 2 rollback (or rollback of a branch that was never prepared).
    ///
    /// # Errors
    /// [`ResourceError::Unavailable`] to be retried later, [`ResourceError::Failed`]
    /// when the resource gave up.
    async fn rollback(&self, xid: &Xid) -> Result<RollbackResult, ResourceError>;

    /// Lists the branches this resource holds prepared (in doubt).
    ///
    /// # Errors
    /// [`ResourceError::Unavailable`] or [`ResourceError::Failed`] when they cannot be
    /// listed.
    async fn recover(&self) -> Result<Vec<Xid>, ResourceError>;

    /// Forgets what the resource remembers about a finished branch (its outcome or
    /// tombstone), once nobody can ask about it again.
    ///
    /// # Errors
    /// [`ResourceError::Unavailable`] or [`ResourceError::Failed`].
    async fn forget(&self, xid: &Xid) -> Result<(), ResourceError>;
}
