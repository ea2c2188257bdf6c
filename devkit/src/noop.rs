//! A resource that does nothing but prepare durably: the "no-op durable participant"
//! of the benchmarks. Each prepare costs one (group-committed) fdatasync, which is
//! the floor any real participant pays.
//!
//! Storage (sled trees): `noop.prepared` (rendered xid → empty) and `noop.outcomes`
//! (rendered xid → `C` committed / `R` rolled back, the tombstone; this resource never
//! votes READ_ONLY, so it writes no `O`).

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ratify_participant_sdk::branch_log::{self, Finished, StagedResource};
use ratify_participant_sdk::durable::{DurableError, DurableSled};
use ratify_participant_sdk::resource::{CommitResult, ResourceError, RollbackResult, Vote};
use ratify_participant_sdk::xid::Xid;

/// A durable do-nothing resource.
#[derive(Debug)]
pub struct NoopResource {
    /// The database and its group-committed fsync.
    durable: DurableSled,
    /// xid → nothing: the branches held prepared.
    prepared: sled::Tree,
    /// xid → outcome / tombstone.
    outcomes: sled::Tree,
    /// Test switch: vote NO on every prepare (and refuse one-phase commits).
    vote_no_for_all: bool,
    /// Serialises check-then-write per call so a prepare racing a rollback of the
    /// same xid cannot leave the branch prepared after its tombstone. Never held
    /// across `.await`.
    guard: Mutex<()>,
}

impl NoopResource {
    /// Opens (or creates) the resource's database in folder `path`.
    ///
    /// # Errors
    /// [`DurableError`] when the database cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DurableError> {
        let durable = DurableSled::open(path.as_ref())?;
        let open_tree = |name: &str| {
            durable
                .db()
                .open_tree(name)
                .map_err(|source| DurableError::Open {
                    path: path.as_ref().to_path_buf(),
                    source,
                })
        };
        Ok(Self {
            prepared: open_tree("noop.prepared")?,
            outcomes: open_tree("noop.outcomes")?,
            durable,
            vote_no_for_all: false,
            guard: Mutex::new(()),
        })
    }

    /// Makes every prepare vote NO (and every one-phase commit roll back), to test
    /// abort paths.
    #[must_use]
    pub fn vote_no_for_all(mut self, yes: bool) -> Self {
        self.vote_no_for_all = yes;
        self
    }

    /// Completed flush + fdatasync rounds since open (observability, tests).
    pub fn sync_count(&self) -> u64 {
        self.durable.sync_count()
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves `xid` from prepared to finished `how`, in one sled transaction.
    fn finish(&self, xid: &Xid, how: Finished) -> Result<(), ResourceError> {
        branch_log::finish(&self.prepared, &self.outcomes, xid, how)
    }
}

impl StagedResource for NoopResource {
    fn durable(&self) -> &DurableSled {
        &self.durable
    }

    fn prepared(&self) -> &sled::Tree {
        &self.prepared
    }

    fn outcomes(&self) -> &sled::Tree {
        &self.outcomes
    }

    fn prepare_step(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        let _guard = self.guard();
        if let Some(vote) =
            branch_log::answer_prepare(branch_log::read_outcome(&self.outcomes, xid)?)
        {
            return Ok(vote);
        }
        if self.vote_no_for_all {
            branch_log::write_outcome(&self.outcomes, xid, Finished::RolledBack)?;
            return Ok(Vote::No("configured to vote no".into()));
        }
        self.prepared
            .insert(xid.render(), &[][..])
            .map_err(branch_log::unavailable)?;
        Ok(Vote::Yes)
    }

    fn commit_step(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError> {
        let _guard = self.guard();
        let finished = branch_log::read_outcome(&self.outcomes, xid)?;
        if let Some(answer) = branch_log::answer_commit(finished, xid, one_phase) {
            return Ok(answer);
        }
        if one_phase && self.vote_no_for_all {
            self.finish(xid, Finished::RolledBack)?;
            return Ok(CommitResult::RolledBack);
        }
        self.finish(xid, Finished::Committed)?;
        Ok(CommitResult::Committed)
    }

    fn rollback_step(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        let _guard = self.guard();
        if let Some(answer) =
            branch_log::answer_rollback(branch_log::read_outcome(&self.outcomes, xid)?)
        {
            return Ok(answer);
        }
        self.finish(xid, Finished::RolledBack)?;
        Ok(RollbackResult::RolledBack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratify_participant_sdk::resource::Resource;

    fn xid(n: u32) -> anyhow::Result<Xid> {
        Ok(Xid::new(format!("{n:032x}"), "1")?)
    }

    #[tokio::test]
    async fn prepare_syncs_and_survives_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let x = xid(1)?;
        {
            let r = NoopResource::open(dir.path())?;
            let before = r.sync_count();
            assert_eq!(r.prepare(&x).await?, Vote::Yes);
            assert!(r.sync_count() > before, "YES before a sync");
        }
        let r = NoopResource::open(dir.path())?;
        assert_eq!(r.recover().await?, vec![x.clone()]);
        assert_eq!(r.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(r.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(r.rollback(&x).await?, RollbackResult::AlreadyCommitted);
        assert!(r.recover().await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn rollback_fences_a_late_prepare() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = NoopResource::open(dir.path())?;
        let x = xid(1)?;
        assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);
        assert!(matches!(r.prepare(&x).await?, Vote::No(_)));
        assert!(r.recover().await?.is_empty());
        assert_eq!(
            r.commit(&x, false).await?,
            CommitResult::RolledBack,
            "a two-phase commit of a rolled-back branch is a heuristic answer, not an error"
        );
        Ok(())
    }

    #[tokio::test]
    async fn vote_no_for_all_refuses() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = NoopResource::open(dir.path())?.vote_no_for_all(true);
        assert!(matches!(r.prepare(&xid(1)?).await?, Vote::No(_)));
        assert_eq!(r.commit(&xid(2)?, true).await?, CommitResult::RolledBack);
        assert!(r.recover().await?.is_empty());
        Ok(())
    }

    /// A leader without one phase prepared the single branch and died; the next one
    /// sends a one-phase commit, which commits the prepared branch.
    #[tokio::test]
    async fn one_phase_commit_of_a_prepared_branch_commits_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let r = NoopResource::open(dir.path())?;
        let x = xid(1)?;
        assert_eq!(r.prepare(&x).await?, Vote::Yes);
        assert_eq!(r.commit(&x, true).await?, CommitResult::Committed);
        assert!(r.recover().await?.is_empty());
        assert_eq!(r.rollback(&x).await?, RollbackResult::AlreadyCommitted);
        Ok(())
    }
}
