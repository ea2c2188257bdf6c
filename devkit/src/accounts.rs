//! An embedded, durable account-balance store for demos and tests.
//!
//! [`AccountStore`] is a [`Resource`] on [`DurableSled`]. Applications open a branch
//! handle ([`AccountStore::branch`]) for an xid the coordinator gave them, buffer
//! debits and credits on it in memory, and the coordinator's prepare makes them durable.
//!
//! # Storage (sled trees)
//! - `accounts.balances`: account name → balance, `i64` big-endian.
//! - `accounts.prepared`: rendered xid → prepared record (JSON, versioned): the net
//!   change per account and when it was prepared.
//! - `accounts.outcomes`: rendered xid → `C` (committed), `R` (rolled back, also the
//!   tombstone that refuses a late prepare) or `O` (voted READ_ONLY, so a retried
//!   prepare votes READ_ONLY again).
//!
//! # Concurrency
//! One `std` mutex guards the in-memory state (pending work, account locks held by
//! prepared branches) and every read-check-write of the trees, so checks and writes
//! cannot interleave. It is never held across `.await`: the fsync happens after it is
//! released. That is safe because a sync makes durable every write made before it
//! was requested, so a call whose answer depends on another call's write (for
//! example a retried prepare that finds the branch prepared) syncs before answering.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::transaction::{ConflictableTransactionError, Transactional};

use ratify_participant_sdk::branch_log::{self, Finished, StagedResource};
use ratify_participant_sdk::durable::{DurableError, DurableSled};
use ratify_participant_sdk::resource::{
    is_valid_name, CommitResult, ResourceError, RollbackResult, Vote,
};
use ratify_participant_sdk::xid::Xid;

/// Tree of balances.
const BALANCES: &str = "accounts.balances";
/// Tree of prepared branches.
const PREPARED: &str = "accounts.prepared";
/// Tree of outcomes and tombstones.
const OUTCOMES: &str = "accounts.outcomes";

/// Most distinct accounts one branch may touch; keeps a prepared record far below
/// [`crate::durable::MAX_VALUE_BYTES`].
pub const MAX_ACCOUNTS_PER_BRANCH: usize = 1024;

/// Version of [`PreparedRecord`]'s encoding.
const PREPARED_RECORD_VERSION: u32 = 1;

/// Errors of the application-facing [`AccountStore`] API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountsError {
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] DurableError),
    /// sled failed; possibly transient.
    #[error("account storage failed: {0}")]
    Storage(#[from] sled::Error),
    /// Storage could not read, write or sync right now; possibly transient.
    #[error("account storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded; needs an operator.
    #[error("corrupt account store: {0}")]
    Corrupt(String),
    /// An account name is not 1 to 64 characters of `[A-Za-z0-9_.-]`.
    #[error("invalid account name {0:?}: use 1 to 64 characters of [A-Za-z0-9_.-]")]
    InvalidAccountName(String),
    /// The account does not exist.
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    /// Amounts must be positive (and balances non-negative).
    #[error("invalid amount {0}: must be positive")]
    InvalidAmount(i64),
    /// A sum went past the range of `i64`.
    #[error("amount overflow")]
    Overflow,
    /// The branch is prepared, finished, or not registered: it takes no more work.
    #[error("branch {0} does not accept work (prepared, finished or not registered)")]
    BranchClosed(Xid),
    /// The branch touches more than [`MAX_ACCOUNTS_PER_BRANCH`] accounts.
    #[error("a branch may touch at most {MAX_ACCOUNTS_PER_BRANCH} accounts")]
    TooManyAccounts,
}

impl AccountsError {
    /// True when the same call may succeed later (storage trouble).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Unavailable(_))
    }
}

impl From<ResourceError> for AccountsError {
    fn from(e: ResourceError) -> Self {
        match e {
            ResourceError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

/// What a prepared branch will do, as stored in the `prepared` tree.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PreparedRecord {
    /// Encoding version, so a later release can read old records.
    v: u32,
    /// When the branch was prepared (Unix ms), for reporting how long it is in doubt.
    prepared_unix_ms: u64,
    /// Net change per account.
    deltas: BTreeMap<String, i64>,
}

/// Net change per account of one branch.
type Deltas = BTreeMap<String, i64>;

/// In-memory state, guarded by [`AccountStore::state`].
#[derive(Default)]
struct State {
    /// Work registered through branch handles and not yet prepared. Deliberately
    /// not durable: a branch whose process dies before prepare must vote NO.
    pending: HashMap<Xid, Deltas>,
    /// Accounts held by prepared branches; another branch touching one votes NO.
    locks: HashMap<String, Xid>,
    /// Accounts of each prepared branch, so phase 2 can release its locks. Mirrors
    /// the `prepared` tree (rebuilt from it on open).
    prepared: HashMap<Xid, Vec<String>>,
}

impl State {
    fn lock_accounts(&mut self, xid: &Xid, deltas: &Deltas) {
        for account in deltas.keys() {
            self.locks.insert(account.clone(), xid.clone());
        }
        self.prepared
            .insert(xid.clone(), deltas.keys().cloned().collect());
    }

    fn unlock_accounts(&mut self, xid: &Xid) {
        for account in self.prepared.remove(xid).unwrap_or_default() {
            if self.locks.get(&account) == Some(xid) {
                self.locks.remove(&account);
            }
        }
    }
}

/// A durable store of account balances that takes part in global transactions.
pub struct AccountStore {
    /// The database and its group-committed fsync.
    durable: DurableSled,
    /// account → balance.
    balances: sled::Tree,
    /// xid → prepared record.
    prepared: sled::Tree,
    /// xid → outcome / tombstone.
    outcomes: sled::Tree,
    /// In-memory state; see the module docs for the locking rule.
    state: Mutex<State>,
}

impl std::fmt::Debug for AccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountStore")
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

/// Decodes a stored balance.
fn decode_balance(account: &str, bytes: &[u8]) -> Result<i64, ResourceError> {
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_be_bytes)
        .map_err(|_| ResourceError::Failed(format!("corrupt balance of {account:?}")))
}

fn decode_prepared(xid: &Xid, bytes: &[u8]) -> Result<PreparedRecord, ResourceError> {
    match serde_json::from_slice::<PreparedRecord>(bytes) {
        Ok(r) if r.v == PREPARED_RECORD_VERSION => Ok(r),
        Ok(r) => Err(ResourceError::Failed(format!(
            "prepared record of {xid} has unknown version {}",
            r.v
        ))),
        Err(e) => Err(ResourceError::Failed(format!(
            "corrupt prepared record of {xid}: {e}"
        ))),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl AccountStore {
    /// Opens (or creates) the store in folder `path`, restoring prepared branches and
    /// the account locks they hold.
    ///
    /// # Errors
    /// [`AccountsError::Open`] when the database cannot be opened (for example another
    /// process holds it), [`AccountsError::Corrupt`] when a prepared record cannot be
    /// read: refusing to start is safer than forgetting an in-doubt branch.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<Self>, AccountsError> {
        let durable = DurableSled::open(path)?;
        let db = durable.db();
        let (balances, prepared, outcomes) = (
            db.open_tree(BALANCES)?,
            db.open_tree(PREPARED)?,
            db.open_tree(OUTCOMES)?,
        );
        let mut state = State::default();
        for entry in prepared.iter() {
            let (key, value) = entry?;
            let xid: Xid = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    AccountsError::Corrupt(format!(
                        "prepared key {:?}",
                        String::from_utf8_lossy(&key)
                    ))
                })?;
            let record = decode_prepared(&xid, &value)?;
            state.lock_accounts(&xid, &record.deltas);
        }
        if !state.prepared.is_empty() {
            tracing::info!(
                prepared = state.prepared.len(),
                "account store reopened with prepared branches"
            );
        }
        Ok(Arc::new(Self {
            durable,
            balances,
            prepared,
            outcomes,
            state: Mutex::new(state),
        }))
    }

    /// The state lock. A panic while holding it cannot leave the trees half-written
    /// (multi-tree writes are sled transactions), so a poisoned lock is still usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the named accounts that do not exist yet with `initial_balance`;
    /// existing accounts keep their balance, so calling it again is harmless. Returns
    /// how many were created, once they are durable.
    ///
    /// # Errors
    /// [`AccountsError::InvalidAccountName`], [`AccountsError::InvalidAmount`] for a
    /// negative balance (nothing is created then), or storage errors.
    pub async fn open_accounts<I, S>(
        &self,
        names: I,
        initial_balance: i64,
    ) -> Result<usize, AccountsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if initial_balance < 0 {
            return Err(AccountsError::InvalidAmount(initial_balance));
        }
        let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_owned()).collect();
        if let Some(bad) = names.iter().find(|n| !is_valid_name(n)) {
            return Err(AccountsError::InvalidAccountName(bad.clone()));
        }
        let created = {
            let _state = self.state();
            let mut created = 0;
            for name in &names {
                let swapped = self.balances.compare_and_swap(
                    name.as_bytes(),
                    None as Option<&[u8]>,
                    Some(&initial_balance.to_be_bytes()[..]),
                )?;
                created += usize::from(swapped.is_ok());
            }
            created
        };
        branch_log::sync(&self.durable).await?;
        Ok(created)
    }

    /// Convenience for demos: opens accounts `<prefix>0` … `<prefix><count-1>`.
    ///
    /// # Errors
    /// As [`AccountStore::open_accounts`].
    pub async fn open_numbered_accounts(
        &self,
        prefix: &str,
        count: usize,
        initial_balance: i64,
    ) -> Result<usize, AccountsError> {
        self.open_accounts((0..count).map(|i| format!("{prefix}{i}")), initial_balance)
            .await
    }

    /// The committed balance of `account`.
    ///
    /// # Errors
    /// [`AccountsError::UnknownAccount`], or storage errors.
    pub fn balance(&self, account: &str) -> Result<i64, AccountsError> {
        let bytes = self
            .balances
            .get(account)?
            .ok_or_else(|| AccountsError::UnknownAccount(account.to_owned()))?;
        Ok(decode_balance(account, &bytes)?)
    }

    /// Every account and its committed balance, in name order, as one consistent
    /// snapshot (no commit is half-visible in it).
    ///
    /// # Errors
    /// Storage errors or corrupt balances.
    pub fn accounts(&self) -> Result<Vec<(String, i64)>, AccountsError> {
        // The state lock keeps commits out while we read, so a transfer is never
        // seen half-applied.
        let _state = self.state();
        self.balances
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                let name = String::from_utf8_lossy(&k).into_owned();
                let balance = decode_balance(&name, &v)?;
                Ok((name, balance))
            })
            .collect()
    }

    /// Sum of all committed balances (conserved by transfers).
    ///
    /// # Errors
    /// Storage errors, corrupt balances, or [`AccountsError::Overflow`].
    pub fn total(&self) -> Result<i64, AccountsError> {
        self.accounts()?
            .into_iter()
            .try_fold(0i64, |sum, (_, b)| sum.checked_add(b))
            .ok_or(AccountsError::Overflow)
    }

    /// The rendered xids of every branch this store committed (while their outcome
    /// records are kept): what a checker compares with the coordinator's decisions.
    ///
    /// # Errors
    /// Storage errors.
    pub fn committed_xids(&self) -> Result<Vec<String>, AccountsError> {
        let mut out = Vec::new();
        for entry in self.outcomes.iter() {
            let (k, v) = entry?;
            if Finished::decode(&v) == Some(Finished::Committed) {
                out.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(out)
    }

    /// Number of branches currently prepared (in doubt).
    pub fn prepared_count(&self) -> usize {
        self.state().prepared.len()
    }

    /// Completed flush + fdatasync rounds since open (observability, tests).
    pub fn sync_count(&self) -> u64 {
        self.durable.sync_count()
    }

    /// Registers `xid` as a branch of this store and returns the handle to do its
    /// work on. Registering twice returns a handle to the same branch.
    ///
    /// # Errors
    /// [`AccountsError::BranchClosed`] when the branch is already prepared or finished
    /// (or fenced by a rollback), storage errors.
    pub fn branch(self: &Arc<Self>, xid: &Xid) -> Result<AccountBranch, AccountsError> {
        let mut state = self.state();
        if state.prepared.contains_key(xid)
            || branch_log::read_outcome(&self.outcomes, xid)?.is_some()
        {
            return Err(AccountsError::BranchClosed(xid.clone()));
        }
        state.pending.entry(xid.clone()).or_default();
        Ok(AccountBranch {
            store: Arc::clone(self),
            xid: xid.clone(),
        })
    }

    /// Adds `delta` to the pending net change of `account` in branch `xid`.
    fn add_work(&self, xid: &Xid, account: &str, delta: i64) -> Result<(), AccountsError> {
        if !is_valid_name(account) {
            return Err(AccountsError::InvalidAccountName(account.to_owned()));
        }
        // Fail early on a typo; prepare checks again.
        if !self.balances.contains_key(account)? {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        let mut state = self.state();
        let deltas = state
            .pending
            .get_mut(xid)
            .ok_or_else(|| AccountsError::BranchClosed(xid.clone()))?;
        if !deltas.contains_key(account) && deltas.len() >= MAX_ACCOUNTS_PER_BRANCH {
            return Err(AccountsError::TooManyAccounts);
        }
        let entry = deltas.entry(account.to_owned()).or_default();
        *entry = entry.checked_add(delta).ok_or(AccountsError::Overflow)?;
        Ok(())
    }

    /// Why `deltas` cannot be applied now, if they cannot: an account is unknown,
    /// locked by another prepared branch, or would go negative.
    fn refusal(
        &self,
        state: &State,
        xid: &Xid,
        deltas: &Deltas,
    ) -> Result<Option<String>, ResourceError> {
        for (account, delta) in deltas {
            if let Some(holder) = state.locks.get(account).filter(|h| *h != xid) {
                return Ok(Some(format!(
                    "account {account} is locked by prepared branch {holder}"
                )));
            }
            let Some(bytes) = self
                .balances
                .get(account)
                .map_err(branch_log::unavailable)?
            else {
                return Ok(Some(format!("unknown account {account}")));
            };
            let balance = decode_balance(account, &bytes)?;
            match balance.checked_add(*delta) {
                Some(b) if b >= 0 => {}
                _ => {
                    return Ok(Some(format!(
                        "insufficient funds in {account}: balance {balance}, change {delta}"
                    )))
                }
            }
        }
        Ok(None)
    }

    /// Applies `deltas` and records `xid` as committed in one sled transaction,
    /// removing its prepared record when `was_prepared`.
    fn apply_committed(
        &self,
        xid: &Xid,
        deltas: &Deltas,
        was_prepared: bool,
    ) -> Result<(), ResourceError> {
        let key = xid.render();
        let abort = |m: String| ConflictableTransactionError::Abort(ResourceError::Failed(m));
        branch_log::tx_result(
            (&self.balances, &self.prepared, &self.outcomes).transaction(
                |(balances, prepared, outcomes)| {
                    for (account, delta) in deltas {
                        let bytes = balances.get(account.as_bytes())?.ok_or_else(|| {
                            abort(format!("{xid} touches unknown account {account}"))
                        })?;
                        let balance = decode_balance(account, &bytes)
                            .map_err(ConflictableTransactionError::Abort)?;
                        let new = balance
                            .checked_add(*delta)
                            .ok_or_else(|| abort(format!("{xid} overflows account {account}")))?;
                        balances.insert(account.as_bytes(), &new.to_be_bytes()[..])?;
                    }
                    if was_prepared {
                        prepared.remove(key.as_bytes())?;
                    }
                    outcomes.insert(key.as_bytes(), Finished::Committed.encode())?;
                    Ok(())
                },
            ),
        )
    }

    /// Records a rollback tombstone for `xid`, removing its prepared record if any, in
    /// one sled transaction.
    fn record_rolled_back(&self, xid: &Xid) -> Result<(), ResourceError> {
        branch_log::finish(&self.prepared, &self.outcomes, xid, Finished::RolledBack)
    }

    /// The prepared record of `xid`, which the in-memory state says exists.
    fn read_prepared(&self, xid: &Xid) -> Result<PreparedRecord, ResourceError> {
        let bytes = self
            .prepared
            .get(xid.render())
            .map_err(branch_log::unavailable)?
            .ok_or_else(|| ResourceError::Failed(format!("prepared record of {xid} is missing")))?;
        decode_prepared(xid, &bytes)
    }
}

impl StagedResource for AccountStore {
    fn durable(&self) -> &DurableSled {
        &self.durable
    }

    fn prepared(&self) -> &sled::Tree {
        &self.prepared
    }

    fn outcomes(&self) -> &sled::Tree {
        &self.outcomes
    }

    /// Phase 1 under the state lock; the caller syncs before a YES.
    fn prepare_step(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        let mut state = self.state();
        if let Some(vote) =
            branch_log::answer_prepare(branch_log::read_outcome(&self.outcomes, xid)?)
        {
            return Ok(vote);
        }
        if state.prepared.contains_key(xid) {
            return Ok(Vote::Yes);
        }
        let Some(deltas) = state.pending.get(xid).cloned() else {
            // Fence: work registered for this xid later must not be prepared.
            branch_log::write_outcome(&self.outcomes, xid, Finished::RolledBack)?;
            return Ok(Vote::No("unknown branch".into()));
        };
        if deltas.is_empty() {
            // Remembered: a retried prepare must find this vote, not "unknown branch".
            branch_log::write_outcome(&self.outcomes, xid, Finished::ReadOnly)?;
            state.pending.remove(xid);
            return Ok(Vote::ReadOnly);
        }
        if let Some(reason) = self.refusal(&state, xid, &deltas)? {
            state.pending.remove(xid);
            branch_log::write_outcome(&self.outcomes, xid, Finished::RolledBack)?;
            return Ok(Vote::No(reason));
        }
        let record = PreparedRecord {
            v: PREPARED_RECORD_VERSION,
            prepared_unix_ms: now_unix_ms(),
            deltas,
        };
        let bytes =
            serde_json::to_vec(&record).map_err(|e| ResourceError::Failed(e.to_string()))?;
        self.prepared
            .insert(xid.render(), bytes)
            .map_err(branch_log::unavailable)?;
        state.pending.remove(xid);
        state.lock_accounts(xid, &record.deltas);
        Ok(Vote::Yes)
    }

    /// Phase 2 (or one-phase) commit under the state lock; the caller syncs.
    fn commit_step(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError> {
        let mut state = self.state();
        let finished = branch_log::read_outcome(&self.outcomes, xid)?;
        if let Some(answer) = branch_log::answer_commit(finished, xid, one_phase) {
            return Ok(answer);
        }
        // Also for a one-phase commit: a leader without one phase prepared the branch
        // and died, and the next one, with one phase on, asks for a one-phase commit.
        if state.prepared.contains_key(xid) {
            let record = self.read_prepared(xid)?;
            self.apply_committed(xid, &record.deltas, true)?;
            state.unlock_accounts(xid);
            return Ok(CommitResult::Committed);
        }
        let pending = state.pending.get(xid).cloned();
        match (pending, one_phase) {
            (Some(deltas), true) => {
                if let Some(reason) = self.refusal(&state, xid, &deltas)? {
                    tracing::debug!(%reason, "one-phase commit refused, rolling back");
                    branch_log::write_outcome(&self.outcomes, xid, Finished::RolledBack)?;
                    state.pending.remove(xid);
                    return Ok(CommitResult::RolledBack);
                }
                self.apply_committed(xid, &deltas, false)?;
                state.pending.remove(xid);
                Ok(CommitResult::Committed)
            }
            (None, true) => {
                branch_log::write_outcome(&self.outcomes, xid, Finished::RolledBack)?;
                Ok(CommitResult::RolledBack)
            }
            (Some(_), false) => Err(ResourceError::Failed(format!(
                "two-phase commit of {xid}, which was never prepared"
            ))),
            // Committed earlier and forgotten since.
            (None, false) => Ok(CommitResult::Committed),
        }
    }

    /// Rollback under the state lock; the caller syncs.
    fn rollback_step(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        let mut state = self.state();
        if let Some(answer) =
            branch_log::answer_rollback(branch_log::read_outcome(&self.outcomes, xid)?)
        {
            return Ok(answer);
        }
        self.record_rolled_back(xid)?;
        state.unlock_accounts(xid);
        state.pending.remove(xid);
        Ok(RollbackResult::RolledBack)
    }
}

/// A handle to do work in one branch of an [`AccountStore`]. Work is buffered in
/// memory until the coordinator prepares the branch.
#[derive(Debug, Clone)]
pub struct AccountBranch {
    /// The store the work goes to.
    store: Arc<AccountStore>,
    /// The branch.
    xid: Xid,
}

impl AccountBranch {
    /// The branch id.
    pub fn xid(&self) -> &Xid {
        &self.xid
    }

    /// Takes `amount` (> 0) from `account` when the branch commits.
    ///
    /// # Errors
    /// [`AccountsError::InvalidAmount`], [`AccountsError::InvalidAccountName`],
    /// [`AccountsError::UnknownAccount`], [`AccountsError::BranchClosed`] once the
    /// branch is prepared or finished, [`AccountsError::Overflow`],
    /// [`AccountsError::TooManyAccounts`].
    pub fn debit(&self, account: &str, amount: i64) -> Result<(), AccountsError> {
        let delta = positive(amount)?
            .checked_neg()
            .ok_or(AccountsError::Overflow)?;
        self.store.add_work(&self.xid, account, delta)
    }

    /// Adds `amount` (> 0) to `account` when the branch commits.
    ///
    /// # Errors
    /// As [`AccountBranch::debit`].
    pub fn credit(&self, account: &str, amount: i64) -> Result<(), AccountsError> {
        self.store.add_work(&self.xid, account, positive(amount)?)
    }
}

fn positive(amount: i64) -> Result<i64, AccountsError> {
    if amount > 0 {
        Ok(amount)
    } else {
        Err(AccountsError::InvalidAmount(amount))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratify_participant_sdk::resource::Resource;

    fn xid(n: u32) -> anyhow::Result<Xid> {
        Ok(Xid::new(format!("{n:032x}"), "1")?)
    }

    async fn store_with(
        dir: &Path,
        accounts: &[&str],
        balance: i64,
    ) -> anyhow::Result<Arc<AccountStore>> {
        let store = AccountStore::open(dir)?;
        store
            .open_accounts(accounts.iter().copied(), balance)
            .await?;
        Ok(store)
    }

    fn transfer(
        store: &Arc<AccountStore>,
        xid: &Xid,
        from: &str,
        to: &str,
        amount: i64,
    ) -> anyhow::Result<()> {
        let b = store.branch(xid)?;
        b.debit(from, amount)?;
        b.credit(to, amount)?;
        Ok(())
    }

    #[tokio::test]
    async fn transfer_commit_conserves_total() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 100).await?;
        let x = xid(1)?;
        transfer(&store, &x, "a", "b", 30)?;
        let syncs = store.sync_count();
        assert_eq!(store.prepare(&x).await?, Vote::Yes);
        assert!(
            store.sync_count() > syncs,
            "YES before the prepared state was synced"
        );
        assert_eq!(store.prepared_count(), 1);
        assert_eq!(
            store.balance("a")?,
            100,
            "prepare must not apply the change"
        );
        assert_eq!(store.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(store.balance("a")?, 70);
        assert_eq!(store.balance("b")?, 130);
        assert_eq!(store.total()?, 200);
        assert_eq!(store.prepared_count(), 0);
        assert!(store.recover().await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn insufficient_funds_votes_no_and_fences() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 10).await?;
        let x = xid(1)?;
        transfer(&store, &x, "a", "b", 11)?;
        assert!(matches!(store.prepare(&x).await?, Vote::No(r) if r.contains("insufficient")));
        assert!(matches!(store.prepare(&x).await?, Vote::No(_)));
        assert_eq!(store.rollback(&x).await?, RollbackResult::RolledBack);
        assert_eq!(store.total()?, 20);
        Ok(())
    }

    #[tokio::test]
    async fn prepared_state_survives_reopen_then_commits_or_rolls_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (x1, x2) = (xid(1)?, xid(2)?);
        {
            let store = store_with(dir.path(), &["a", "b", "c", "d"], 50).await?;
            transfer(&store, &x1, "a", "b", 20)?;
            transfer(&store, &x2, "c", "d", 20)?;
            assert_eq!(store.prepare(&x1).await?, Vote::Yes);
            assert_eq!(store.prepare(&x2).await?, Vote::Yes);
        }
        let store = AccountStore::open(dir.path())?;
        assert_eq!(store.prepared_count(), 2);
        let mut in_doubt = store.recover().await?;
        in_doubt.sort();
        assert_eq!(in_doubt, vec![x1.clone(), x2.clone()]);
        // Locks were rebuilt: another branch touching a prepared account votes NO.
        let x3 = xid(3)?;
        transfer(&store, &x3, "b", "c", 1)?;
        assert!(matches!(store.prepare(&x3).await?, Vote::No(r) if r.contains("locked")));

        assert_eq!(store.commit(&x1, false).await?, CommitResult::Committed);
        assert_eq!(store.rollback(&x2).await?, RollbackResult::RolledBack);
        assert_eq!(
            store.accounts()?,
            vec![
                ("a".into(), 30),
                ("b".into(), 70),
                ("c".into(), 50),
                ("d".into(), 50)
            ]
        );
        assert_eq!(store.prepared_count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn rollback_tombstone_refuses_late_prepare_and_work() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 10).await?;
        let x = xid(1)?;
        let branch = store.branch(&x)?;
        branch.debit("a", 1)?;
        assert_eq!(store.rollback(&x).await?, RollbackResult::RolledBack);
        assert!(matches!(
            branch.credit("b", 1),
            Err(AccountsError::BranchClosed(_))
        ));
        assert!(matches!(
            store.branch(&x),
            Err(AccountsError::BranchClosed(_))
        ));
        assert!(matches!(store.prepare(&x).await?, Vote::No(_)));

        // Rollback of a never-seen xid also fences it.
        let unknown = xid(2)?;
        assert_eq!(store.rollback(&unknown).await?, RollbackResult::RolledBack);
        assert!(store.branch(&unknown).is_err());
        assert!(matches!(store.prepare(&unknown).await?, Vote::No(_)));
        Ok(())
    }

    #[tokio::test]
    async fn phase_two_is_idempotent() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 10).await?;
        let (x, y) = (xid(1)?, xid(2)?);
        transfer(&store, &x, "a", "b", 5)?;
        assert_eq!(store.prepare(&x).await?, Vote::Yes);
        assert_eq!(
            store.prepare(&x).await?,
            Vote::Yes,
            "re-prepare must vote YES again"
        );
        assert_eq!(store.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(store.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(store.rollback(&x).await?, RollbackResult::AlreadyCommitted);
        assert_eq!(store.balance("a")?, 5, "a repeated commit applied twice");

        transfer(&store, &y, "a", "b", 1)?;
        assert_eq!(store.prepare(&y).await?, Vote::Yes);
        assert_eq!(store.rollback(&y).await?, RollbackResult::RolledBack);
        assert_eq!(store.rollback(&y).await?, RollbackResult::RolledBack);
        assert_eq!(
            store.commit(&y, false).await?,
            CommitResult::RolledBack,
            "a commit after the rollback is a heuristic answer, not a commit"
        );

        // Committed and forgotten: still success.
        store.forget(&x).await?;
        assert_eq!(store.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(store.balance("a")?, 5);
        Ok(())
    }

    #[tokio::test]
    async fn lock_conflict_votes_no_without_waiting() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b", "c"], 10).await?;
        let (x, y) = (xid(1)?, xid(2)?);
        transfer(&store, &x, "a", "b", 1)?;
        transfer(&store, &y, "c", "a", 1)?;
        assert_eq!(store.prepare(&x).await?, Vote::Yes);
        assert!(matches!(store.prepare(&y).await?, Vote::No(r) if r.contains("locked")));
        assert_eq!(store.commit(&x, false).await?, CommitResult::Committed);
        // Released after phase 2.
        let z = xid(3)?;
        transfer(&store, &z, "c", "a", 1)?;
        assert_eq!(store.prepare(&z).await?, Vote::Yes);
        Ok(())
    }

    #[tokio::test]
    async fn unknown_and_empty_branches() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a"], 10).await?;
        let (x, y) = (xid(1)?, xid(2)?);
        assert!(matches!(store.prepare(&x).await?, Vote::No(r) if r.contains("unknown branch")));
        store.branch(&y)?;
        assert_eq!(store.prepare(&y).await?, Vote::ReadOnly);
        Ok(())
    }

    #[tokio::test]
    async fn one_phase_commits_or_refuses() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 10).await?;
        let (ok, too_much, none) = (xid(1)?, xid(2)?, xid(3)?);
        transfer(&store, &ok, "a", "b", 10)?;
        assert_eq!(store.commit(&ok, true).await?, CommitResult::Committed);
        assert_eq!(store.commit(&ok, true).await?, CommitResult::Committed);
        transfer(&store, &too_much, "a", "b", 1)?;
        assert_eq!(
            store.commit(&too_much, true).await?,
            CommitResult::RolledBack
        );
        assert_eq!(
            store.commit(&too_much, true).await?,
            CommitResult::RolledBack
        );
        assert_eq!(store.commit(&none, true).await?, CommitResult::RolledBack);
        assert_eq!((store.balance("a")?, store.balance("b")?), (0, 20));
        Ok(())
    }

    #[tokio::test]
    async fn bad_input_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a"], 10).await?;
        let b = store.branch(&xid(1)?)?;
        assert!(matches!(
            b.debit("a", 0),
            Err(AccountsError::InvalidAmount(0))
        ));
        assert!(matches!(
            b.credit("a", -5),
            Err(AccountsError::InvalidAmount(-5))
        ));
        assert!(matches!(
            b.debit("nope", 1),
            Err(AccountsError::UnknownAccount(_))
        ));
        assert!(matches!(
            b.debit("'; --", 1),
            Err(AccountsError::InvalidAccountName(_))
        ));
        b.credit("a", i64::MAX)?;
        assert!(matches!(b.credit("a", 1), Err(AccountsError::Overflow)));
        assert!(matches!(
            store.open_accounts(["x"], -1).await,
            Err(AccountsError::InvalidAmount(-1))
        ));
        assert_eq!(
            store.open_accounts(["a", "z"], 99).await?,
            1,
            "open_accounts must be idempotent"
        );
        assert_eq!(store.balance("a")?, 10);
        Ok(())
    }

    /// A leader without one phase prepared the single branch and died; the next one
    /// sends a one-phase commit, which commits the prepared branch.
    #[tokio::test]
    async fn one_phase_commit_of_a_prepared_branch_commits_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 10).await?;
        let x = xid(1)?;
        transfer(&store, &x, "a", "b", 4)?;
        assert_eq!(store.prepare(&x).await?, Vote::Yes);
        assert_eq!(store.commit(&x, true).await?, CommitResult::Committed);
        assert_eq!(store.commit(&x, true).await?, CommitResult::Committed);
        assert_eq!((store.balance("a")?, store.balance("b")?), (6, 14));
        assert_eq!(store.prepared_count(), 0);
        Ok(())
    }

    /// A two-phase commit of a rolled-back branch answers ROLLED_BACK (a heuristic
    /// outcome the coordinator records), not an error it would retry for ever.
    #[tokio::test]
    async fn a_two_phase_commit_of_a_rolled_back_branch_answers_rolled_back() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let store = store_with(dir.path(), &["a", "b"], 10).await?;
        let x = xid(1)?;
        transfer(&store, &x, "a", "b", 4)?;
        assert_eq!(store.prepare(&x).await?, Vote::Yes);
        assert_eq!(store.rollback(&x).await?, RollbackResult::RolledBack);
        assert_eq!(store.commit(&x, false).await?, CommitResult::RolledBack);
        assert_eq!((store.balance("a")?, store.balance("b")?), (10, 10));
        Ok(())
    }

    /// A retried prepare of a branch with no work (a new leader re-running the
    /// prepare round) answers READ_ONLY again, not NO; the xid takes no more work; a
    /// rollback of it (the transaction aborted for another branch) is no heuristic.
    #[tokio::test]
    async fn a_retried_prepare_of_a_read_only_branch_answers_read_only() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let x = xid(1)?;
        {
            let store = store_with(dir.path(), &["a"], 10).await?;
            store.branch(&x)?;
            assert_eq!(store.prepare(&x).await?, Vote::ReadOnly);
            assert_eq!(
                store.prepare(&x).await?,
                Vote::ReadOnly,
                "the retried prepare"
            );
        }
        let store = AccountStore::open(dir.path())?;
        assert_eq!(store.prepare(&x).await?, Vote::ReadOnly, "after a reopen");
        assert!(matches!(
            store.branch(&x),
            Err(AccountsError::BranchClosed(_))
        ));
        assert_eq!(store.commit(&x, false).await?, CommitResult::Committed);
        assert_eq!(store.rollback(&x).await?, RollbackResult::RolledBack);
        assert!(store.committed_xids()?.is_empty());
        Ok(())
    }
}
