//! Every conversion between the coordinator's types and the protobuf contract, in
//! one place: the domain (`txn`, `driver`) knows no wire types, and the services build
//! their answers from these.

use ratify_proto::pb;

use crate::driver::{xid_pb, BranchTrouble};
use crate::txn::{BranchRecord, Decision, OperatorAction, Reason, TxnRecord};
use crate::types::Gtrid;

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
            Reason::LeaderLost => pb::Reason::LeaderLost,
        }
    }
}

/// The public outcome of a decision.
pub fn outcome(d: &Decision) -> pb::Outcome {
    if d.commit {
        pb::Outcome::Committed
    } else {
        pb::Outcome::Aborted
    }
}

/// The public state of a live record. `running_here`: a commit or abort run of it is
/// under way on this node (an undecided record is PREPARING then, even before its
/// `CommitStarted` is applied).
pub fn state(rec: &TxnRecord, running_here: bool) -> pb::TxnState {
    match &rec.decision {
        Some(_) if rec.is_heuristic() => pb::TxnState::Heuristic,
        Some(d) if d.commit => pb::TxnState::Committed,
        Some(_) => pb::TxnState::Aborted,
        None if rec.handed_over => pb::TxnState::OnePhase,
        None if rec.committing || running_here => pb::TxnState::Preparing,
        None => pb::TxnState::Active,
    }
}

/// (outcome, reason, detail) of a decision, as Commit, Rollback and Get answer them.
pub fn decision_fields(d: &Decision) -> (i32, i32, String) {
    (
        outcome(d) as i32,
        pb::Reason::from(d.reason) as i32,
        d.detail.clone(),
    )
}

/// A branch of `gtrid` as recorded, with the calls to it that keep failing (if any).
pub fn branch(gtrid: Gtrid, b: &BranchRecord, trouble: Option<BranchTrouble>) -> pb::Branch {
    let mut out = pb::Branch {
        xid: Some(xid_pb(gtrid, b.bqual)),
        endpoint: b.spec.endpoint.clone(),
        resource: b.spec.resource.clone(),
        heuristic: b
            .heuristic
            .as_ref()
            .map(|h| h.detail.clone())
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(t) = trouble {
        out.failed_calls = t.attempts;
        out.last_error = t.last_error;
    }
    out
}

/// The operator actions recorded with `d`.
pub fn audit(d: &Decision) -> Vec<pb::AuditEntry> {
    d.audit
        .entries()
        .iter()
        .map(|a| pb::AuditEntry {
            operator: a.operator.clone(),
            action: match a.action {
                OperatorAction::Abort => pb::ResolveAction::Abort,
                OperatorAction::Commit => pb::ResolveAction::Commit,
                OperatorAction::SettleHeuristic => pb::ResolveAction::SettleHeuristic,
            } as i32,
            reason: a.reason.clone(),
            at_unix_ms: a.at_ms,
        })
        .collect()
}

/// A live transaction: `running_here` as for [`state`], `trouble` the failing calls of
/// branch `bqual`.
pub fn live(
    gtrid: Gtrid,
    rec: &TxnRecord,
    running_here: bool,
    trouble: impl Fn(u32) -> Option<BranchTrouble>,
) -> pb::Transaction {
    let (outcome, reason, detail, decided) = match &rec.decision {
        Some(d) => {
            let (o, r, det) = decision_fields(d);
            (o, r, det, d.decided_ms)
        }
        None => (pb::Outcome::InProgress as i32, 0, String::new(), 0),
    };
    pb::Transaction {
        gtrid: gtrid.to_string(),
        state: state(rec, running_here) as i32,
        outcome,
        reason,
        detail,
        branches: rec
            .branches
            .iter()
            .map(|b| branch(gtrid, b, trouble(b.bqual)))
            .collect(),
        labels: rec.labels.clone().into_iter().collect(),
        created_unix_ms: rec.created_ms,
        deadline_unix_ms: rec.deadline_ms,
        decided_unix_ms: decided,
        audit: rec.decision.as_ref().map(audit).unwrap_or_default(),
    }
}

/// A completed transaction, of which only its decision is kept.
pub fn completed(gtrid: Gtrid, d: &Decision) -> pb::Transaction {
    let (outcome, reason, detail) = decision_fields(d);
    pb::Transaction {
        gtrid: gtrid.to_string(),
        state: pb::TxnState::Completed as i32,
        outcome,
        reason,
        detail,
        decided_unix_ms: d.decided_ms,
        audit: audit(d),
        ..Default::default()
    }
}
