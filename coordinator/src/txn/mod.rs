//! Transactions as the replicated state machine sees them: states, decisions with their
//! reasons, the commands in the Raft log, and the table they are applied to.
//!
//! This folder is the only place a transaction's state changes. Every change is a
//! [`Command`] applied in log order by [`TxnTable::apply`], on every node alike; the
//! first decision for a gtrid wins and later ones get the recorded outcome back
//! (docs/design.md, rule 1).
//!
//! # Layout
//! - this file: the persisted types (they are part of the log and snapshot encoding).
//! - [`table`]: [`TxnTable`], the deterministic apply function and the lookups.

#[cfg(test)]
mod proptests;
mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use table::{
    cut as cut_detail, cut_to, describe, Forgotten, Lookup, Outcomes, TxnTable, FORMER_GRACE_MS,
    MAX_FORGOTTEN_RANGES, MAX_PINNED,
};

/// Most branches one transaction may have.
pub const MAX_BRANCHES: usize = 64;
/// Most labels one transaction may carry.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Longest timeout a client may ask for, in milliseconds (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Longest decision or heuristic detail kept in the table, in bytes. Longer text (a
/// participant's NO reason can be megabytes) is cut at a character boundary when the
/// command is applied, so every replica keeps the same bytes.
pub const MAX_DETAIL_BYTES: usize = 512;

/// How long completed outcomes are remembered for late questions. Replicated (the
/// table holds the one in force), so every replica forgets the same outcomes at the
/// same log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Outcomes younger than this (by completion time) are kept, up to `max_count`.
    pub min_age_ms: u64,
    /// At least this many of the newest outcomes are kept, whatever their age.
    pub min_count: u64,
    /// Never more than this many: the memory (and snapshot) bound. Outcomes evicted
    /// younger than `min_age_ms` because of it are counted (`evicted_early`).
    pub max_count: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            min_age_ms: 24 * 3_600_000,
            min_count: 200_000,
            max_count: 2_000_000,
        }
    }
}

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
    /// Begun on a leader that failed before anything was logged, and committed
    /// elsewhere without its branch list.
    LeaderLost,
}

impl Reason {
    /// True for the reasons that report a one-phase participant's own answer: the
    /// only decisions a handed-over transaction accepts (docs/design.md, rule 10).
    pub fn is_one_phase_answer(self) -> bool {
        matches!(self, Self::OnePhase | Self::OnePhaseRefused)
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
    /// What operators did to the transaction (decided it, settled its heuristic
    /// outcome), oldest first; kept with the outcome (docs/design.md, rule 17).
    pub audit: AuditTrail,
}

/// One operator action, as logged: who, why, what and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who acted (the operator's name as given; an authenticated identity once
    /// the API has them), at most [`MAX_OPERATOR_BYTES`].
    pub operator: String,
    /// What was done.
    pub action: OperatorAction,
    /// Why, in the operator's words, at most [`MAX_DETAIL_BYTES`].
    pub reason: String,
    /// When, leader clock, Unix ms.
    pub at_ms: u64,
}

/// What an operator can do to a transaction (docs/design.md, rule 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorAction {
    /// Abort an undecided transaction.
    Abort,
    /// Commit an undecided transaction whose every branch is prepared.
    Commit,
    /// Mark a heuristic outcome settled: a person repaired the data.
    SettleHeuristic,
}

impl OperatorAction {
    /// Lower-case name, as shown to people.
    pub fn name(self) -> &'static str {
        match self {
            Self::Abort => "abort",
            Self::Commit => "commit",
            Self::SettleHeuristic => "settle_heuristic",
        }
    }
}

/// Longest operator name kept in an audit entry.
pub const MAX_OPERATOR_BYTES: usize = 128;

/// Most audit entries kept per transaction (later ones replace the last).
pub const MAX_AUDIT_ENTRIES: usize = 16;

/// A transaction's operator actions. Nearly every transaction has none, so an
/// empty trail costs one pointer in the (millions of) kept outcomes.
// A boxed Vec on purpose: one thin pointer (8 bytes) for the empty case, where a
// Vec would take 24 and a boxed slice 16 in every kept outcome.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTrail(Option<Box<Vec<AuditEntry>>>);

impl AuditTrail {
    /// A trail of one entry.
    pub fn of(entry: AuditEntry) -> Self {
        Self(Some(Box::new(vec![entry])))
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[AuditEntry] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Adds `entry` (bounded: past [`MAX_AUDIT_ENTRIES`] the last one is replaced).
    pub fn push(&mut self, entry: AuditEntry) {
        let v = self.0.get_or_insert_with(Box::default);
        if v.len() >= MAX_AUDIT_ENTRIES {
            v.pop();
        }
        v.push(entry);
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

/// What a leader knows of a transaction it holds in memory: written to the log by
/// [`Command::Open`] together with the transaction's first logged step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// Begin time, leader clock, Unix ms.
    pub created_ms: u64,
    /// When an undecided transaction is aborted, Unix ms.
    pub deadline_ms: u64,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// The branches, in bqual order (the first is bqual 1).
    pub branches: Vec<BranchSpec>,
}

impl Seed {
    /// The seed's branches as records (bquals from 1).
    pub fn records(&self) -> Vec<BranchRecord> {
        self.branches
            .iter()
            .enumerate()
            .map(|(i, spec)| BranchRecord {
                bqual: i as u32 + 1,
                spec: spec.clone(),
                skip_phase2: false,
                heuristic: None,
            })
            .collect()
    }

    /// The live, undecided record this seed stands for.
    pub fn into_record(self) -> TxnRecord {
        TxnRecord {
            created_ms: self.created_ms,
            deadline_ms: self.deadline_ms,
            branches: self.records(),
            labels: self.labels,
            decision: None,
            handed_over: false,
            committing: false,
            round: 0,
        }
    }

    fn approx_bytes(&self) -> usize {
        self.labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            + self
                .branches
                .iter()
                .map(BranchSpec::approx_bytes)
                .sum::<usize>()
            + 24
    }
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
    /// The branch answered phase 2 against the decision (docs/design.md, rule 11).
    pub heuristic: Option<Heuristic>,
}

/// A phase-2 answer that contradicts the logged decision: the branch committed when
/// the decision was abort, or rolled back when it was commit. Kept on the
/// transaction until a person has repaired the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heuristic {
    /// What the branch did: true when it committed.
    pub committed: bool,
    /// What it said, cut to [`MAX_DETAIL_BYTES`].
    pub detail: String,
    /// When the answer came, leader clock, Unix ms.
    pub at_ms: u64,
    /// A person repaired the data and said so (`Command::SettleHeuristic`): the
    /// branch no longer holds the transaction live.
    pub settled: bool,
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
    /// A one-phase commit may have been sent to the single branch: from now on the
    /// outcome is the participant's, and only its answer may decide (docs/design.md,
    /// rule 10). Set by [`Command::HandOver`], never cleared.
    pub handed_over: bool,
    /// Commit was asked for and prepare sent (PREPARING, durably). Set by
    /// [`Command::CommitStarted`], never cleared.
    pub committing: bool,
    /// The prepare round whose marker set `committing` (0 before): the only round
    /// that may take the transaction as committed at its votes, or abort it on
    /// anything but a NO (docs/design.md, rule 16).
    pub round: u64,
}

impl TxnRecord {
    /// Branches that still need a phase-2 answer: not skipped, not heuristic.
    pub fn pending_phase2(&self) -> impl Iterator<Item = &BranchRecord> {
        self.branches
            .iter()
            .filter(|b| !b.skip_phase2 && b.heuristic.is_none())
    }

    /// Some branch contradicted the decision and nobody has settled it yet: a
    /// person must look.
    pub fn is_heuristic(&self) -> bool {
        self.branches
            .iter()
            .any(|b| b.heuristic.as_ref().is_some_and(|h| !h.settled))
    }
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
    /// Reserves transaction numbers below `upto` for the proposing leader, which hands
    /// them out from memory without a log entry each (docs/design.md, rule 16). A
    /// number below the reserved mark was issued (or may have been); one at or above it
    /// never was.
    Reserve {
        /// The new reserved mark (only ever raised).
        upto: u64,
    },
    /// Records a transaction the leader held in memory, so that the command that
    /// follows it (in the same entry) has a record to act on. Does nothing when the
    /// number already has a record (live or kept); refused for a number never
    /// reserved, and for one that may have been forgotten unless `held`.
    Open {
        /// The transaction number.
        txn: u64,
        /// What the leader knew of it.
        seed: Seed,
        /// The proposer began it and has logged nothing of it before: it cannot be a
        /// forgotten outcome, even where [`TxnTable::forgotten`] was filled in.
        held: bool,
    },
    /// Enlists one branch in a logged, undecided transaction (an Enlist call: the
    /// branch may come from another process than the one that began it, so it is
    /// logged, docs/design.md, rule 16).
    Enlist {
        /// Target transaction.
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
        /// The prepare round proposing it (0: none). An abort of a committing
        /// transaction is refused unless it comes from the round that marked it.
        round: u64,
    },
    /// Every branch of these transactions acknowledged phase 2.
    Complete {
        /// Completed transactions.
        txns: Vec<u64>,
        /// Proposer's clock, Unix ms.
        now_ms: u64,
        /// Those of `txns` that complete without every branch's answer (aborts whose
        /// rollback was abandoned): their outcome is pinned for the retention's time
        /// floor whatever the count cap, since a branch may still be prepared.
        abandoned: Vec<u64>,
    },
    /// Hands the outcome of a single-branch transaction to its participant, before a
    /// one-phase commit is sent. Refused unless the transaction is undecided and has
    /// exactly `branches` branches (an Enlist that slipped in makes it two-phase).
    HandOver {
        /// Target transaction.
        txn: u64,
        /// Branches the driver saw (1).
        branches: u32,
    },
    /// Records a phase-2 answer that contradicts the decision.
    Heuristic {
        /// Target transaction.
        txn: u64,
        /// The branch that answered.
        bqual: u32,
        /// What it did.
        heuristic: Heuristic,
    },
    /// Sets the outcome retention in force (the leader proposes its configuration).
    SetRetention(Retention),
    /// The client asked to commit and prepare is going out to `branches` branches
    /// (logged alongside the prepare round). A transaction marked so takes no more
    /// branches and no one-phase hand-over, and a new leader takes its commit over.
    CommitStarted {
        /// Target transaction.
        txn: u64,
        /// Branches being prepared.
        branches: u32,
        /// This prepare round's id (random, not 0). Only the round that set the mark
        /// is answered `CommitStarted`; another round is told `Committing`.
        round: u64,
    },
    /// These branches of a decided transaction acknowledged phase 2 (logged only when
    /// the transaction cannot complete, so they are not asked again).
    Acknowledged {
        /// Target transaction.
        txn: u64,
        /// The branches.
        bquals: Vec<u32>,
    },
    /// An operator says the heuristic outcomes of these branches are repaired
    /// (docs/design.md, rule 17): they are marked settled, the entry joins the
    /// decision's audit trail, and the transaction completes once no branch needs
    /// phase 2 and no other heuristic outcome is unsettled. Only the branches named
    /// are settled (what the person saw; one that contradicted the decision since
    /// stays listed). Refused, changing nothing, unless every branch named has a
    /// heuristic outcome.
    SettleHeuristic {
        /// Target transaction.
        txn: u64,
        /// The branches whose outcomes were repaired.
        bquals: Vec<u32>,
        /// Who, why, when.
        audit: AuditEntry,
    },
    /// Registers (or moves) participant `name` at `endpoint` (docs/design.md,
    /// "Security"). Refused, changing nothing, for a name or endpoint outside the
    /// wire rules, an endpoint another name holds, or a full registry.
    Register {
        /// The participant's name (its certificate's `ratify://participant/<name>`).
        name: String,
        /// Where branches reach it.
        endpoint: String,
        /// Who registered it, for operators.
        by: String,
        /// When (leader clock).
        at_ms: u64,
    },
    /// Removes participant `name` from the registry.
    Unregister {
        /// The name.
        name: String,
    },
    /// Sets the cluster's owner-token key, once (the first one proposed wins): the
    /// HMAC key of the tokens that prove to any leader which client began a
    /// transaction with which branches (docs/design.md, "Security").
    SetSecret {
        /// 32 random bytes.
        secret: [u8; 32],
    },
}

/// A registered participant (docs/design.md, "Security").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Where new branches reach it.
    pub endpoint: String,
    /// Who registered it.
    pub by: String,
    /// When (leader clock).
    pub at_ms: u64,
    /// Its earlier endpoints, oldest first (at most [`MAX_FORMER_ENDPOINTS`]):
    /// branches recorded there are its own, and calls to them go to `endpoint` (a
    /// participant restarted on another port still gets phase 2 and may ask its
    /// outcomes). One is let go (to make room, or to another name) only once no
    /// live transaction has a branch there.
    pub former: Vec<Former>,
}

/// An endpoint a participant left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Former {
    /// The endpoint.
    pub endpoint: String,
    /// When it was left (leader clock of the `Register` that moved it).
    pub since_ms: u64,
}

/// Most registered participants.
pub const MAX_PARTICIPANTS: usize = 10_000;

/// Most earlier endpoints kept per participant.
pub const MAX_FORMER_ENDPOINTS: usize = 16;

impl BranchSpec {
    fn approx_bytes(&self) -> usize {
        self.endpoint.len() + self.resource.len() + 24
    }
}

impl Command {
    /// Roughly how many bytes the command takes in a log entry (to bound entries).
    pub fn approx_bytes(&self) -> usize {
        // bincode: a variant tag, a u64 per integer field, a length per collection.
        48 + match self {
            Command::Open { seed, .. } => seed.approx_bytes(),
            Command::Enlist { branch, .. } => branch.approx_bytes(),
            Command::Decide {
                decision,
                skip_phase2,
                ..
            } => {
                decision.detail.len().min(MAX_DETAIL_BYTES)
                    + 4 * skip_phase2.len()
                    + decision
                        .audit
                        .entries()
                        .iter()
                        .map(|a| 32 + a.operator.len() + a.reason.len())
                        .sum::<usize>()
            }
            Command::Heuristic { heuristic, .. } => heuristic.detail.len().min(MAX_DETAIL_BYTES),
            Command::Complete {
                txns, abandoned, ..
            } => 8 * (txns.len() + abandoned.len()),
            Command::Acknowledged { bquals, .. } => 4 * bquals.len(),
            Command::SettleHeuristic { audit, bquals, .. } => {
                audit.operator.len() + audit.reason.len() + 4 * bquals.len()
            }
            Command::Register {
                name, endpoint, by, ..
            } => name.len() + endpoint.len() + by.len() + 8,
            Command::Unregister { name } => name.len(),
            Command::SetSecret { .. } => 32,
            Command::SetClusterId { .. }
            | Command::Reserve { .. }
            | Command::SetRetention(_)
            | Command::HandOver { .. }
            | Command::CommitStarted { .. } => 0,
        }
    }
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
    /// A one-phase commit is under way: the single branch decides, so the
    /// transaction takes no more branches and no other decision.
    #[error("a one-phase commit is under way; its participant decides the outcome")]
    HandedOver,
    /// Commit has started (prepare went out): no more branches, no one-phase.
    #[error("the transaction is committing; it takes no more branches")]
    Committing,
    /// Completed so long ago that its outcome is no longer kept.
    #[error("the transaction completed and its outcome was forgotten")]
    Forgotten,
    /// An operator asked to settle a heuristic outcome the transaction does not have.
    #[error("branch {0} has no heuristic outcome to settle")]
    NoHeuristic(u32),
    /// A registration the registry cannot take.
    #[error("participant registration refused: {0}")]
    Registration(String),
}

/// The state machine's answer to a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Membership and blank entries.
    #[default]
    None,
    /// The cluster id now in force (the first one proposed).
    ClusterId(u64),
    /// The branch (new, or the existing one for the same endpoint and resource).
    Enlisted(BranchRecord),
    /// The decision in force: the one proposed, or an earlier one that won.
    Decided(Decision),
    /// Completion recorded.
    Completed,
    /// Refused; nothing changed.
    Refused(Refusal),
    /// The transaction's outcome is now its one-phase participant's (HandOver
    /// applied, or applied earlier).
    HandedOver,
    /// The transaction is marked committing (CommitStarted applied now or earlier).
    CommitStarted,
    /// `SettleHeuristic` applied: the decision in force (with its audit trail), and
    /// whether any outcome was newly settled (false: every branch named was settled
    /// already, a repeated call).
    Settled {
        /// The decision, with the new audit entry when `changed`.
        decision: Decision,
        /// Something was settled now.
        changed: bool,
    },
    /// `Register` or `Unregister` applied; `changed` false when it was so already.
    Registry {
        /// Something changed.
        changed: bool,
    },
}
