//! The recorded history: one JSON object per line, written as things happen, and
//! kept in memory for the checker.
//!
//! Two kinds of lines:
//! - `{"type":"txn", ...}` ([`TxnRecord`]): what one client asked and was told, with
//!   the start and end times (ms since the run started).
//! - `{"type":"nemesis", ...}` ([`NemesisRecord`]): a fault injected or healed.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What the client was told at the end of a transaction attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    /// Begin failed: no transaction id was given (nothing can have happened).
    BeginFailed,
    /// Commit answered COMMITTED.
    Committed,
    /// Commit or rollback answered ABORTED.
    Aborted,
    /// No answer before the client's deadline: either outcome is allowed.
    Unknown,
}

/// One branch of a transaction, as the coordinator enlisted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRecord {
    /// Participant application (`pg`, `store`, `kafka`).
    pub app: String,
    /// Rendered xid.
    pub xid: String,
}

/// One transaction attempt of one client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Client number.
    pub client: usize,
    /// Global transaction id ("" when begin failed).
    pub gtrid: String,
    /// Enlisted branches.
    pub branches: Vec<BranchRecord>,
    /// What the client asked at the end: `commit`, `rollback` (on purpose or after a
    /// failed branch), or `commit_timeout_rollback` (Commit got no answer within its
    /// short deadline, so the client called Rollback, as an application's error path
    /// does).
    pub asked: String,
    /// A single-branch transaction, which the coordinator commits in one phase.
    #[serde(default)]
    pub one_phase: bool,
    /// Amount moved.
    pub amount: i64,
    /// What it was told.
    pub told: Told,
    /// Which call gave the answer in `told`: `commit`, `rollback`, `get` (the
    /// client asked GetTransaction after getting no answer), or empty (no answer).
    #[serde(default)]
    pub told_by: String,
    /// Reason or error text.
    pub detail: String,
    /// Start (before Begin), ms since the run started.
    pub start_ms: u64,
    /// End (answer received), ms since the run started.
    pub end_ms: u64,
}

/// One nemesis action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NemesisRecord {
    /// When, ms since the run started.
    pub at_ms: u64,
    /// `kill`, `restart`, `partition`, `pause` (SIGSTOP), `resume` (SIGCONT), `heal`,
    /// `crash` (a fail point fired) or `unexpected_exit`.
    pub action: String,
    /// Fault kind (`leader`, `follower`, `two_nodes`, `app:pg`, `postmaster`, `broker`,
    /// `failpoint:<name>`, `partition_leader`, `paused_leader` (SIGKILLed while
    /// stopped), ...).
    pub kind: String,
    /// The process or component affected (`node2`, `pg`, `postmaster`, ...).
    pub target: String,
    /// Extra detail (the fail point armed on restart, an exit status, ...).
    pub detail: String,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Txn(&'a TxnRecord),
    Nemesis(&'a NemesisRecord),
}

/// Everything recorded so far.
#[derive(Debug, Default)]
struct Records {
    /// Transactions in completion order.
    txns: Vec<TxnRecord>,
    /// Nemesis actions in order.
    nemesis: Vec<NemesisRecord>,
}

/// The history of one run. Cheap to clone; clones share the file and the records.
#[derive(Clone)]
pub struct History {
    /// When the run started (times are relative to it).
    start: Instant,
    /// The JSON-lines file.
    file: Arc<Mutex<std::io::LineWriter<std::fs::File>>>,
    /// In-memory copy for the checker.
    records: Arc<Mutex<Records>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl History {
    /// Creates (truncates) the file at `path`.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Self {
            start: Instant::now(),
            // Line by line: a run killed half-way still leaves its history.
            file: Arc::new(Mutex::new(std::io::LineWriter::new(file))),
            records: Arc::new(Mutex::new(Records::default())),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn write(&self, line: &Line<'_>) {
        let mut f = lock(&self.file);
        // A history that cannot be written makes the run useless: say so loudly, but
        // the in-memory copy still lets this run's checker work.
        if let Err(e) = serde_json::to_writer(&mut *f, line)
            .and_then(|()| f.write_all(b"\n").map_err(serde_json::Error::io))
        {
            tracing::error!("cannot write the history: {e}");
        }
    }

    /// Records a transaction attempt.
    pub fn txn(&self, r: TxnRecord) {
        self.write(&Line::Txn(&r));
        lock(&self.records).txns.push(r);
    }

    /// Records a nemesis action now.
    pub fn nemesis(&self, action: &str, kind: &str, target: &str, detail: &str) {
        let r = NemesisRecord {
            at_ms: self.now_ms(),
            action: action.into(),
            kind: kind.into(),
            target: target.into(),
            detail: detail.into(),
        };
        tracing::info!(action, kind, target, detail, "nemesis");
        self.write(&Line::Nemesis(&r));
        lock(&self.records).nemesis.push(r);
    }

    /// Flushes the file.
    ///
    /// # Errors
    /// When the write fails.
    pub fn flush(&self) -> anyhow::Result<()> {
        lock(&self.file).flush()?;
        Ok(())
    }

    /// The transactions recorded so far.
    pub fn txns(&self) -> Vec<TxnRecord> {
        lock(&self.records).txns.clone()
    }

    /// The nemesis actions recorded so far.
    pub fn nemesis_records(&self) -> Vec<NemesisRecord> {
        lock(&self.records).nemesis.clone()
    }

    /// How many nemesis records have `action`.
    pub fn count_action(&self, action: &str) -> usize {
        lock(&self.records)
            .nemesis
            .iter()
            .filter(|r| r.action == action)
            .count()
    }
}
