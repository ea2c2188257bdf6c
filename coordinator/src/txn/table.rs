//! The transaction table and the deterministic apply function.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    BranchRecord, Command, CommandResult, Decision, FinishedRecord, Refusal, TxnRecord,
    MAX_BRANCHES,
};

/// How many completed outcomes are kept for late questions before the oldest are
/// forgotten. Deterministic (a constant), so every replica forgets the same ones.
pub const FINISHED_RETENTION: usize = 200_000;

/// The replicated transaction table: live transactions plus recent outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnTable {
    /// Prefix of every gtrid; 0 until the first `SetClusterId` is applied.
    pub cluster_id: u64,
    /// The number the next Begin gets (from 1). Numbers are dense and never reused, so
    /// a number at or above this one was never issued, and one below it was issued.
    pub next_txn: u64,
    /// Transactions not yet COMPLETED, by number.
    pub live: BTreeMap<u64, TxnRecord>,
    /// Decisions of COMPLETED transactions, by number, bounded by
    /// [`FINISHED_RETENTION`].
    pub finished: BTreeMap<u64, FinishedRecord>,
}

/// Where a transaction stands, as found in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Live (undecided, or decided with phase 2 pending).
    Live(&'a TxnRecord),
    /// Completed; the decision is kept.
    Finished(&'a FinishedRecord),
    /// Completed long ago and forgotten.
    Forgotten,
    /// Never issued (as far as this table, which has applied up to its last entry, knows).
    Unknown,
}

impl TxnTable {
    /// Finds a transaction.
    pub fn lookup(&self, txn: u64) -> Lookup<'_> {
        if let Some(r) = self.live.get(&txn) {
            Lookup::Live(r)
        } else if let Some(f) = self.finished.get(&txn) {
            Lookup::Finished(f)
        } else if txn == 0 || txn >= self.next_txn {
            Lookup::Unknown
        } else {
            // Issued, not live, not kept: completed and dropped from the bounded
            // outcome list. Its outcome is unknown, never presumed aborted.
            Lookup::Forgotten
        }
    }

    /// Applies one command. Deterministic: depends only on the table and the command,
    /// never on the local clock or on where the command sits in the log (a log entry
    /// carries a batch of commands).
    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::SetClusterId { cluster_id } => {
                if self.cluster_id == 0 {
                    self.cluster_id = cluster_id;
                }
                CommandResult::ClusterId(self.cluster_id)
            }
            Command::Begin {
                now_ms,
                timeout_ms,
                labels,
                branches,
            } => {
                if self.cluster_id == 0 {
                    return CommandResult::Refused(Refusal::NoClusterId);
                }
                let mut rec = TxnRecord {
                    created_ms: now_ms,
                    deadline_ms: now_ms.saturating_add(timeout_ms),
                    labels,
                    branches: Vec::new(),
                    decision: None,
                };
                for spec in branches {
                    if let Err(refusal) = enlist(&mut rec, spec) {
                        return CommandResult::Refused(refusal);
                    }
                }
                let txn = self.next_txn.max(1);
                self.next_txn = txn + 1;
                let result = CommandResult::Begun {
                    txn,
                    deadline_ms: rec.deadline_ms,
                    branches: rec.branches.clone(),
                };
                self.live.insert(txn, rec);
                result
            }
            Command::Enlist { txn, branch } => match self.live.get_mut(&txn) {
                Some(rec) => match enlist(rec, branch) {
                    Ok(b) => CommandResult::Enlisted(b),
                    Err(refusal) => CommandResult::Refused(refusal),
                },
                None => CommandResult::Refused(match self.lookup(txn) {
                    Lookup::Finished(f) => Refusal::AlreadyDecided(describe(&f.decision)),
                    _ => Refusal::NotFound,
                }),
            },
            Command::Decide {
                txn,
                decision,
                prepared_branches,
                skip_phase2,
                complete,
            } => self.decide(txn, decision, prepared_branches, &skip_phase2, complete),
            Command::Complete { txns, now_ms } => {
                for txn in txns {
                    let Some(rec) = self.live.get(&txn) else {
                        continue;
                    };
                    // Only a decided transaction can complete; anything else is a
                    // stale completion from a confused proposer and is ignored.
                    if let Some(decision) = rec.decision.clone() {
                        self.live.remove(&txn);
                        self.finish(txn, decision, now_ms);
                    }
                }
                CommandResult::Completed
            }
        }
    }

    fn decide(
        &mut self,
        txn: u64,
        decision: Decision,
        prepared_branches: Option<u32>,
        skip_phase2: &[u32],
        complete: bool,
    ) -> CommandResult {
        let Some(rec) = self.live.get_mut(&txn) else {
            // Not live: either completed (the recorded decision answers) or never
            // issued / forgotten. Recording an abort for a number never issued would
            // collide with the Begin that later takes it, so that is refused; presumed
            // abort applies to issued, undecided transactions, which are live.
            return match self.lookup(txn) {
                Lookup::Finished(f) => CommandResult::Decided(f.decision.clone()),
                _ => CommandResult::Refused(Refusal::NotFound),
            };
        };
        if let Some(existing) = &rec.decision {
            return CommandResult::Decided(existing.clone());
        }
        if decision.commit {
            if let Some(prepared) = prepared_branches {
                let enlisted = rec.branches.len() as u32;
                if prepared != enlisted {
                    return CommandResult::Refused(Refusal::BranchSetChanged {
                        prepared,
                        enlisted,
                    });
                }
            }
        }
        for b in &mut rec.branches {
            if skip_phase2.contains(&b.bqual) {
                b.skip_phase2 = true;
            }
        }
        rec.decision = Some(decision.clone());
        if complete || rec.branches.iter().all(|b| b.skip_phase2) {
            self.live.remove(&txn);
            let now = decision.decided_ms;
            self.finish(txn, decision.clone(), now);
        }
        CommandResult::Decided(decision)
    }

    fn finish(&mut self, txn: u64, decision: Decision, completed_ms: u64) {
        self.finished.insert(
            txn,
            FinishedRecord {
                decision,
                completed_ms,
            },
        );
        while self.finished.len() > FINISHED_RETENTION {
            self.finished.pop_first();
        }
    }
}

/// Adds a branch, or returns the existing one for the same endpoint and resource.
fn enlist(rec: &mut TxnRecord, spec: super::BranchSpec) -> Result<BranchRecord, Refusal> {
    if let Some(d) = &rec.decision {
        return Err(Refusal::AlreadyDecided(describe(d)));
    }
    if let Some(existing) = rec.branches.iter().find(|b| b.spec == spec) {
        return Ok(existing.clone());
    }
    if rec.branches.len() >= MAX_BRANCHES {
        return Err(Refusal::TooManyBranches);
    }
    let branch = BranchRecord {
        bqual: rec.branches.len() as u32 + 1,
        spec,
        skip_phase2: false,
    };
    rec.branches.push(branch.clone());
    Ok(branch)
}

fn describe(d: &Decision) -> String {
    format!(
        "{} ({:?})",
        if d.commit { "committed" } else { "aborted" },
        d.reason
    )
}

#[cfg(test)]
mod tests {
    use super::super::{BranchSpec, Reason};
    use super::*;

    fn spec(n: u32) -> BranchSpec {
        BranchSpec {
            endpoint: format!("127.0.0.1:{n}"),
            resource: "r".into(),
        }
    }

    fn begun(t: &mut TxnTable, branches: u32) -> u64 {
        let expected = t.next_txn.max(1);
        let r = t.apply(Command::Begin {
            now_ms: 1_000,
            timeout_ms: 500,
            labels: BTreeMap::new(),
            branches: (0..branches).map(spec).collect(),
        });
        assert!(matches!(r, CommandResult::Begun { txn, .. } if txn == expected));
        expected
    }

    fn decision(commit: bool, reason: Reason) -> Decision {
        Decision {
            commit,
            reason,
            detail: String::new(),
            decided_ms: 2_000,
        }
    }

    fn decide(t: &mut TxnTable, txn: u64, commit: bool, reason: Reason) -> CommandResult {
        t.apply(Command::Decide {
            txn,
            decision: decision(commit, reason),
            prepared_branches: commit
                .then(|| t.live.get(&txn).map_or(0, |r| r.branches.len() as u32)),
            skip_phase2: vec![],
            complete: false,
        })
    }

    fn table() -> TxnTable {
        let mut t = TxnTable::default();
        t.apply(Command::SetClusterId { cluster_id: 7 });
        t
    }

    #[test]
    fn begin_is_refused_until_the_cluster_has_an_id() {
        let mut t = TxnTable::default();
        let r = t.apply(Command::Begin {
            now_ms: 0,
            timeout_ms: 1,
            labels: BTreeMap::new(),
            branches: vec![],
        });
        assert_eq!(r, CommandResult::Refused(Refusal::NoClusterId));
        t.apply(Command::SetClusterId { cluster_id: 9 });
        t.apply(Command::SetClusterId { cluster_id: 10 });
        assert_eq!(t.cluster_id, 9, "the first cluster id must win");
    }

    #[test]
    fn first_decision_wins() {
        let mut t = table();
        let txn = begun(&mut t, 2);
        let first = decide(&mut t, txn, false, Reason::Timeout);
        let second = decide(&mut t, txn, true, Reason::ClientCommit);
        assert_eq!(first, second);
        assert!(
            matches!(second, CommandResult::Decided(d) if !d.commit && d.reason == Reason::Timeout)
        );
    }

    #[test]
    fn enlist_is_idempotent_and_refused_after_decision() {
        let mut t = table();
        let txn = begun(&mut t, 1);
        let again = t.apply(Command::Enlist {
            txn,
            branch: spec(0),
        });
        assert!(matches!(again, CommandResult::Enlisted(b) if b.bqual == 1));
        let new = t.apply(Command::Enlist {
            txn,
            branch: spec(1),
        });
        assert!(matches!(new, CommandResult::Enlisted(b) if b.bqual == 2));
        decide(&mut t, txn, true, Reason::ClientCommit);
        let late = t.apply(Command::Enlist {
            txn,
            branch: spec(2),
        });
        assert!(matches!(
            late,
            CommandResult::Refused(Refusal::AlreadyDecided(_))
        ));
        assert_eq!(
            t.live[&txn].branches.len(),
            2,
            "a refused enlist must change nothing"
        );
    }

    #[test]
    fn commit_is_refused_when_a_branch_sneaked_in_during_prepare() {
        let mut t = table();
        let txn = begun(&mut t, 1);
        t.apply(Command::Enlist {
            txn,
            branch: spec(9),
        });
        let r = t.apply(Command::Decide {
            txn,
            decision: decision(true, Reason::ClientCommit),
            prepared_branches: Some(1),
            skip_phase2: vec![],
            complete: false,
        });
        assert!(matches!(
            r,
            CommandResult::Refused(Refusal::BranchSetChanged { .. })
        ));
        assert!(t.live[&txn].decision.is_none());
    }

    #[test]
    fn decisions_for_numbers_never_issued_are_refused() {
        let mut t = table();
        let issued = begun(&mut t, 1);
        for commit in [true, false] {
            assert!(matches!(
                decide(&mut t, issued + 1, commit, Reason::ParticipantInquiry),
                CommandResult::Refused(Refusal::NotFound)
            ));
        }
        // The next Begin takes that number as a fresh, undecided transaction.
        let next = begun(&mut t, 1);
        assert_eq!(next, issued + 1);
        assert!(matches!(t.lookup(next), Lookup::Live(r) if r.decision.is_none()));
        assert_eq!(t.lookup(0), Lookup::Unknown);
    }

    #[test]
    fn presumed_abort_of_a_live_transaction_is_recorded() {
        let mut t = table();
        let txn = begun(&mut t, 2);
        assert!(matches!(
            decide(&mut t, txn, false, Reason::ParticipantInquiry),
            CommandResult::Decided(d) if !d.commit
        ));
        // A later commit gets the recorded abort back.
        assert!(
            matches!(decide(&mut t, txn, true, Reason::ClientCommit), CommandResult::Decided(d) if !d.commit)
        );
    }

    #[test]
    fn complete_moves_decided_transactions_out_of_the_live_table() {
        let mut t = table();
        let a = begun(&mut t, 2);
        let b = begun(&mut t, 2);
        decide(&mut t, a, true, Reason::ClientCommit);
        t.apply(Command::Complete {
            txns: vec![a, b],
            now_ms: 3_000,
        });
        assert!(matches!(t.lookup(a), Lookup::Finished(f) if f.decision.commit));
        assert!(
            matches!(t.lookup(b), Lookup::Live(_)),
            "undecided must not complete"
        );
    }

    #[test]
    fn read_only_and_empty_transactions_complete_at_decision() {
        let mut t = table();
        let a = begun(&mut t, 2);
        t.apply(Command::Decide {
            txn: a,
            decision: decision(true, Reason::ClientCommit),
            prepared_branches: Some(2),
            skip_phase2: vec![1, 2],
            complete: false,
        });
        assert!(matches!(t.lookup(a), Lookup::Finished(_)));
        let b = begun(&mut t, 0);
        decide(&mut t, b, true, Reason::ClientCommit);
        assert!(matches!(t.lookup(b), Lookup::Finished(_)));
    }

    #[test]
    fn old_outcomes_are_forgotten_not_presumed_aborted() {
        let mut t = table();
        t.next_txn = 10 + FINISHED_RETENTION as u64 + 3;
        for i in 0..(FINISHED_RETENTION as u64 + 3) {
            t.finish(10 + i, decision(true, Reason::ClientCommit), 0);
        }
        assert_eq!(t.finished.len(), FINISHED_RETENTION);
        assert_eq!(t.lookup(10), Lookup::Forgotten);
        assert!(matches!(
            decide(&mut t, 10, false, Reason::ParticipantInquiry),
            CommandResult::Refused(Refusal::NotFound)
        ));
        assert_eq!(
            t.lookup(10),
            Lookup::Forgotten,
            "a forgotten commit must not turn into an abort"
        );
    }
}
