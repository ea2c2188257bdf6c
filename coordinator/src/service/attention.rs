//! When a live transaction needs a person: the one rule the web console and
//! `Admin.ListNeedingAttention` share (README, "Operator resolution").
//!
//! A transaction needs a person when a branch contradicted the decision and nobody
//! settled it (a heuristic outcome), when its phase 2 has been pending too long, or
//! when the calls to one of its branches have been failing too long. The console and
//! the admin call differ only in how long is too long ([`Thresholds`]).

use crate::driver::BranchTrouble;
use crate::txn::TxnRecord;

/// How long is too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A branch whose calls have been failing this long (0: any failure counts).
    pub failing_after_ms: u64,
    /// A decided transaction whose phase 2 is still pending this long after the
    /// decision.
    pub overdue_after_ms: u64,
}

impl Thresholds {
    /// Both at `ms` (what `ListNeedingAttention`'s `stuck_after_ms` asks for).
    pub fn both(ms: u64) -> Self {
        Self {
            failing_after_ms: ms,
            overdue_after_ms: ms,
        }
    }
}

/// One reason a transaction needs a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concern {
    /// Branch `bqual` contradicted the decision; nobody has settled it.
    Heuristic {
        /// The branch.
        bqual: u32,
        /// What the participant said.
        detail: String,
    },
    /// Phase 2 has been pending for `pending_ms` since the decision.
    Phase2Overdue {
        /// The decision (commit, else rollback).
        commit: bool,
        /// Since the decision.
        pending_ms: u64,
    },
    /// The calls to branch `bqual` keep failing.
    FailingCalls {
        /// The branch.
        bqual: u32,
        /// Its participant.
        endpoint: String,
        /// Its resource.
        resource: String,
        /// How long they have been failing.
        failing_ms: u64,
        /// The failures, and the last one.
        trouble: BranchTrouble,
    },
}

impl Concern {
    /// A stable short name (the console's `attention` entries).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Heuristic { .. } => "heuristic",
            Self::Phase2Overdue { .. } => "phase2_overdue",
            Self::FailingCalls { .. } => "failing_calls",
        }
    }

    /// A sentence for a person (`ListNeedingAttention`'s `why`).
    pub fn describe(&self) -> String {
        match self {
            Self::Heuristic { bqual, detail } => {
                format!("heuristic outcome on branch {bqual}: {detail}")
            }
            Self::Phase2Overdue { commit, pending_ms } => format!(
                "phase 2 ({}) pending for {} s",
                if *commit { "commit" } else { "rollback" },
                pending_ms / 1000
            ),
            Self::FailingCalls {
                bqual,
                endpoint,
                resource,
                failing_ms,
                trouble,
            } => format!(
                "branch {bqual} ({endpoint}/{resource}) failing for {} s ({} calls): {}",
                failing_ms / 1000,
                trouble.attempts,
                trouble.last_error
            ),
        }
    }
}

/// Why `rec` needs a person at `now_ms` (empty: it does not), most specific first:
/// heuristic outcomes, failing calls, then an overdue phase 2. `trouble(bqual)`: the
/// failing calls to that branch, if any.
pub fn concerns(
    rec: &TxnRecord,
    trouble: impl Fn(u32) -> Option<BranchTrouble>,
    now_ms: u64,
    limits: Thresholds,
) -> Vec<Concern> {
    let mut found = Vec::new();
    for b in &rec.branches {
        if let Some(h) = b.heuristic.as_ref().filter(|h| !h.settled) {
            found.push(Concern::Heuristic {
                bqual: b.bqual,
                detail: h.detail.clone(),
            });
        }
    }
    for b in &rec.branches {
        if let Some(t) = trouble(b.bqual) {
            let failing_ms = now_ms.saturating_sub(t.since_ms);
            if failing_ms >= limits.failing_after_ms {
                found.push(Concern::FailingCalls {
                    bqual: b.bqual,
                    endpoint: b.spec.endpoint.clone(),
                    resource: b.spec.resource.clone(),
                    failing_ms,
                    trouble: t,
                });
            }
        }
    }
    if let Some(d) = &rec.decision {
        let pending_ms = now_ms.saturating_sub(d.decided_ms);
        if pending_ms >= limits.overdue_after_ms && rec.pending_phase2().next().is_some() {
            found.push(Concern::Phase2Overdue {
                commit: d.commit,
                pending_ms,
            });
        }
    }
    found
}
