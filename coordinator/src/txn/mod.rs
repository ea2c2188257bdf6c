//! Transactions as the replicated state machine sees them: states, decisions with their
//! reasons, the commands in the Raft log, and the table they are applied to.
//!
//! This folder is the only place a transaction's state changes. Every change is a
//! [`Command`] applied in log order by [`TxnTable::apply`], on every node alike; the
//! first decision for a gtrid wins and later ones get the recorded outcome back
//! (DESIGN §4.1).
//!
//! # Layout
//! - this file: the persisted types (they are part of the log and snapshot encoding).
//! - [`table`]: [`TxnTable`], the deterministic apply function and the lookups.

mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ratify_proto::pb;

pub use table::{Lookup, TxnTable, FINISHED_RETENTION};

/// Most branches one transaction may have.
pub const MAX_BRANCHES: usize = 64;
/// Most labels one transaction may carry.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Longest participant endpoint, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 256;
/// Longest resource name, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 64;
/// Longest timeout a client may ask for, in milliseconds (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Why a transaction was decided the way it was. Mirrors `ratify.v1.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Every branch voted YES or READ_ONLY.
    ClientCommit,
    /// The client rolled back.
    ClientRollback,
    /// The transaction outlived its timeout.
    Timeout,
    /// A participant voted NO.
    VotedNo,
    /// A participant could not be reached at prepare.
    ParticipantUnreachable,
    /// A participant asked and no decision existed: presumed abort, logged.
    ParticipantInquiry,
    /// An operator decided.
    Operator,
    /// Single branch committed in one phase.
    OnePhase,
    /// A participant answered outside the protocol.
    ProtocolError,
    /// The single branch refused a one-phase commit and rolled back.
    OnePhaseRefused,
}

impl From<Reason> for pb::Reason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::ClientCommit => pb::Reason::ClientCommit,
            Reason::ClientRollback => pb::Reason::ClientRollback,
            Reason::Timeout => pb::Reason::Timeout,
            Reason::VotedNo => pb::Reason::VotedNo,
            Reason::ParticipantUnreachable => pb::Reason::ParticipantUnreachable,
            Reason::ParticipantInquiry => pb::Reason::ParticipantInquiry,
            Reason::Operator => pb::Reason::Operator,
            Reason::OnePhase => pb::Reason::OnePhase,
            Reason::ProtocolError => pb::Reason::ProtocolError,
            Reason::OnePhaseRefused => pb::Reason::OnePhaseRefused,
        }
    }
}

/// A decision: commit or abort, and why. Once recorded it never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// True for commit, false for abort.
    pub commit: bool,
    /// Why.
    pub reason: Reason,
    /// Human-readable detail (which branch voted no, ...).
    pub detail: String,
    /// When it was decided, leader clock, Unix ms.
    pub decided_ms: u64,
}

impl Decision {
    /// The public outcome of this decision.
    pub fn outcome(&self) -> pb::Outcome {
        if self.commit {
            pb::Outcome::Committed
        } else {
            pb::Outcome::Aborted
        }
    }
}

/// A branch as the client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BranchSpec {
    /// Participant gRPC endpoint.
    pub endpoint: String,
    /// Resource at that participant.
    pub resource: String,
}

/// An enlisted branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRecord {
    /// Branch qualifier, from 1 in enlistment order.
    pub bqual: u32,
    /// Where the branch lives.
    pub spec: BranchSpec,
    /// The branch needs no phase 2 (it voted READ_ONLY, or finished in one phase).
    pub skip_phase2: bool,
}

/// A live transaction (not yet COMPLETED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Begin time, leader clock, Unix ms.
    pub created_ms: u64,
    /// When an undecided transaction is aborted, Unix ms.
    pub deadline_ms: u64,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Enlisted branches.
    pub branches: Vec<BranchRecord>,
    /// The decision, once made.
    pub decision: Option<Decision>,
}

/// What remains of a COMPLETED transaction: its decision, for late questions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedRecord {
    /// The decision.
    pub decision: Decision,
    /// When every branch had acknowledged phase 2, Unix ms.
    pub completed_ms: u64,
}

/// A command in the Raft log. Each variant is one kind of state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Names the cluster once; the first one applied wins. Prefixes every gtrid.
    SetClusterId {
        /// Random 64-bit id.
        cluster_id: u64,
    },
    /// Starts a transaction; it gets the table's next transaction number.
    Begin {
        /// Proposer's clock, Unix ms.
        now_ms: u64,
        /// Timeout, ms.
        timeout_ms: u64,
        /// Operator labels.
        labels: BTreeMap<String, String>,
        /// Branches enlisted at once.
        branches: Vec<BranchSpec>,
    },
    /// Enlists one branch in an undecided transaction.
    Enlist {
        /// Target transaction (its number).
        txn: u64,
        /// The branch.
        branch: BranchSpec,
    },
    /// Records a decision. The first decision for a transaction wins.
    Decide {
        /// Target transaction.
        txn: u64,
        /// The decision.
        decision: Decision,
        /// For a commit: how many branches the driver prepared. A branch enlisted after
        /// prepare started would make this differ, and the commit is then refused.
        prepared_branches: Option<u32>,
        /// Branches that need no phase 2 (READ_ONLY votes, one-phase commit).
        skip_phase2: Vec<u32>,
        /// Nothing is left to do after this decision (no branch needs phase 2).
        complete: bool,
    },
    /// Every branch of these transactions acknowledged phase 2.
    Complete {
        /// Completed transactions.
        txns: Vec<u64>,
        /// Proposer's clock, Unix ms.
        now_ms: u64,
    },
}

/// What one Raft log entry carries: commands proposed together, applied in order.
///
/// The leader batches concurrent requests into one entry, so one append and one
/// fsync on each node serve many transactions (group commit at the Raft layer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, in the order they are applied.
    pub commands: Vec<Command>,
}

impl From<Command> for Proposal {
    fn from(cmd: Command) -> Self {
        Self {
            commands: vec![cmd],
        }
    }
}

/// Why the state machine refused a command. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// No such transaction.
    #[error("no such transaction")]
    NotFound,
    /// The transaction is already decided (or completed); it cannot take branches.
    #[error("transaction already decided ({0})")]
    AlreadyDecided(String),
    /// Too many branches.
    #[error("transaction already has the maximum of {MAX_BRANCHES} branches")]
    TooManyBranches,
    /// A branch was enlisted after prepare started: the prepared set is stale.
    #[error("branch set changed during prepare ({prepared} prepared, {enlisted} enlisted)")]
    BranchSetChanged {
        /// Branches the driver prepared.
        prepared: u32,
        /// Branches enlisted now.
        enlisted: u32,
    },
    /// The cluster id is not set yet (a new cluster's first moments).
    #[error("cluster id not yet assigned")]
    NoClusterId,
}

/// The state machine's answer to a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Membership and blank entries.
    #[default]
    None,
    /// The cluster id now in force (the first one proposed).
    ClusterId(u64),
    /// A transaction began.
    Begun {
        /// Its gtrid's index.
        txn: u64,
        /// Its deadline, Unix ms.
        deadline_ms: u64,
        /// Branches enlisted at Begin.
        branches: Vec<BranchRecord>,
    },
    /// The branch (new, or the existing one for the same endpoint and resource).
    Enlisted(BranchRecord),
    /// The decision in force: the one proposed, or an earlier one that won.
    Decided(Decision),
    /// Completion recorded.
    Completed,
    /// Refused; nothing changed.
    Refused(Refusal),
}
