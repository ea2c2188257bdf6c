//! Operator resolution (docs/design.md, rule 17): a person aborts an undecided
//! transaction, commits one whose every branch is prepared, or marks a heuristic
//! outcome settled. Each action is a Raft entry that carries who and why, applied by
//! the state machine under the same rules as the driver's own decisions, so an
//! operator can never decide what the protocol forbids: a transaction handed to its
//! one-phase participant is that participant's to decide (rule 10), and one whose
//! commit was logged as started may already have been reported committed (rule 16),
//! so it cannot be aborted.

use std::time::Duration;

use futures::future::join_all;

use super::participants::PrepareOutcome;
use super::{decision, lock, refusal, DriveError, Driver, Found};
use crate::txn::{
    AuditEntry, AuditTrail, BranchRecord, Command, CommandResult, Decision, OperatorAction, Reason,
    Seed, MAX_BRANCHES, MAX_OPERATOR_BYTES,
};
use crate::types::{now_ms, Gtrid};

/// What an operator's action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The decision in force now (the operator's, or the one recorded before).
    pub decision: Decision,
    /// The action changed the transaction (false: it was already decided, or
    /// already settled, and the recorded outcome is the answer).
    pub changed: bool,
}

/// An operator's request.
#[derive(Debug, Clone)]
pub struct OperatorRequest {
    /// What to do.
    pub action: OperatorAction,
    /// For a settle: the branches whose heuristic outcomes were repaired (required;
    /// only those are settled). Empty for the other actions.
    pub bquals: Vec<u32>,
    /// Who asks (non-empty, at most [`MAX_OPERATOR_BYTES`]).
    pub operator: String,
    /// Why (non-empty; cut to the detail limit).
    pub reason: String,
}

/// Longest time the branch checks of a commit may take together.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl Driver {
    /// Carries out an operator's action on `gtrid` (see the module docs).
    ///
    /// # Errors
    /// `Invalid` (no operator or reason), `NotFound`, `Forgotten`, `Precondition`
    /// (one-phase; commit started and abort asked; a branch not known prepared;
    /// nothing to settle) — nothing changed then — and `NotLeader` / `Unavailable`.
    pub async fn operator_action(
        &self,
        gtrid: Gtrid,
        request: OperatorRequest,
    ) -> Result<Resolution, DriveError> {
        // A task of its own, as a run is: an operator whose call is dropped half-way
        // must not leave the in-memory hold marked opened.
        let driver = self.clone();
        tokio::spawn(async move { driver.operator_action_here(gtrid, request).await })
            .await
            .map_err(|e| DriveError::Unavailable(format!("operator action failed: {e}")))?
    }

    async fn operator_action_here(
        &self,
        gtrid: Gtrid,
        request: OperatorRequest,
    ) -> Result<Resolution, DriveError> {
        let OperatorRequest {
            action,
            bquals,
            operator,
            reason,
        } = request;
        if operator.trim().is_empty() || operator.len() > MAX_OPERATOR_BYTES {
            return Err(DriveError::Invalid(format!(
                "operator must name who acts, 1 to {MAX_OPERATOR_BYTES} bytes"
            )));
        }
        if reason.trim().is_empty() {
            return Err(DriveError::Invalid("reason must say why".into()));
        }
        match (action, bquals.is_empty()) {
            (OperatorAction::SettleHeuristic, true) => {
                return Err(DriveError::Invalid(
                    "a settle names the branches whose heuristic outcomes were repaired".into(),
                ))
            }
            (OperatorAction::Abort | OperatorAction::Commit, false) => {
                return Err(DriveError::Invalid(
                    "branches are named only to settle heuristic outcomes".into(),
                ))
            }
            _ => {}
        }
        // A transaction has at most MAX_BRANCHES branches: a longer list names one
        // that is not there, and would only make the log entry large.
        if bquals.len() > MAX_BRANCHES {
            return Err(DriveError::Invalid(format!(
                "a transaction has at most {MAX_BRANCHES} branches; {} named",
                bquals.len()
            )));
        }
        self.ensure_leader().await?;
        let audit = AuditEntry {
            operator,
            action,
            reason: crate::txn::cut_detail(reason),
            at_ms: now_ms(),
        };
        let txn = gtrid.index;
        let result = match action {
            OperatorAction::SettleHeuristic => {
                self.settle_heuristic(txn, bquals, audit.clone()).await
            }
            OperatorAction::Abort | OperatorAction::Commit => {
                self.decide_for_operator(gtrid, audit.clone()).await
            }
        };
        match &result {
            Ok(r) => tracing::info!(
                %gtrid,
                operator = %audit.operator,
                action = audit.action.name(),
                reason = %audit.reason,
                changed = r.changed,
                outcome = if r.decision.commit { "commit" } else { "abort" },
                "operator resolution"
            ),
            Err(e) => tracing::info!(
                %gtrid,
                operator = %audit.operator,
                action = audit.action.name(),
                error = %e,
                "operator resolution refused"
            ),
        }
        result
    }

    async fn settle_heuristic(
        &self,
        txn: u64,
        bquals: Vec<u32>,
        audit: AuditEntry,
    ) -> Result<Resolution, DriveError> {
        match self
            .propose(Command::SettleHeuristic { txn, bquals, audit })
            .await?
        {
            CommandResult::Settled { decision, changed } => {
                // The transaction may now complete: phase 2 finishes it.
                self.ensure_phase2(txn);
                Ok(Resolution { decision, changed })
            }
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Err(super::unexpected(other)),
        }
    }

    /// Abort or commit, as the operator asked.
    async fn decide_for_operator(
        &self,
        gtrid: Gtrid,
        audit: AuditEntry,
    ) -> Result<Resolution, DriveError> {
        let txn = gtrid.index;
        let commit = audit.action == OperatorAction::Commit;
        let (seed, records): (Option<Seed>, Vec<BranchRecord>) = match self.found(txn, None)? {
            Found::Decided(d) => {
                return Ok(Resolution {
                    decision: d,
                    changed: false,
                })
            }
            Found::Lost if commit => {
                return Err(DriveError::Precondition(format!(
                    "no record of transaction {gtrid} and of its branches (begun on a leader \
                     that failed before anything was logged): it cannot be committed; an \
                     abort is safe"
                )))
            }
            // A client's retried commit may be driving it from its branch list right
            // now: an abort without those branches would leave them prepared.
            Found::Lost if self.is_preparing(txn) => {
                return Err(DriveError::Unavailable(format!(
                    "transaction {gtrid} is being committed from its client's branch list \
                     right now; ask again in a moment"
                )))
            }
            // Never logged and not held: abort it durably (presumed abort, rule 3).
            Found::Lost => (Some(Seed::default()), Vec::new()),
            Found::Memory(seed, _) => {
                let records = seed.records();
                (Some(seed), records)
            }
            Found::Table {
                handed_over: true, ..
            } => {
                return Err(DriveError::Precondition(format!(
                    "transaction {gtrid} was handed to its single participant for a one-phase \
                     commit: that participant's answer decides it (the coordinator asks until \
                     it answers); an operator cannot"
                )))
            }
            Found::Table {
                committing: true, ..
            } if !commit => {
                return Err(DriveError::Precondition(format!(
                    "the commit of transaction {gtrid} was logged as started: it may already \
                     have been reported committed, so it cannot be aborted; commit it once \
                     every branch is prepared, or bring back the participant that does not \
                     answer"
                )))
            }
            Found::Table { branches, .. } => (None, branches),
        };
        let prepared = if commit {
            self.check_prepared(gtrid, &records).await?;
            Some(records.len() as u32)
        } else {
            None
        };
        let verb = if commit { "committed" } else { "aborted" };
        let mut proposed = decision(
            commit,
            Reason::Operator,
            format!("{verb} by operator {}: {}", audit.operator, audit.reason),
        );
        proposed.audit = AuditTrail::of(audit);
        // From here on the record may be in the log: the table answers for it (as a
        // run does, see `Driver::run`), and the hold is dropped once it landed.
        let held = seed.is_some() && lock(&self.inner.runs).mark_opened(txn);
        let result = self
            .decide(
                txn,
                seed.as_ref().map(|s| (s, held)),
                proposed.clone(),
                prepared,
                vec![],
            )
            .await;
        self.release_if_logged(txn);
        match result {
            Ok(d) => Ok(Resolution {
                changed: d == proposed,
                decision: d,
            }),
            Err(DriveError::HandedOver) => Err(DriveError::Precondition(format!(
                "transaction {gtrid} was handed to its one-phase participant meanwhile: its \
                 answer decides"
            ))),
            // The client's commit marked it committing between the look and the
            // proposal: the table refused the abort (rule 16); say so in these words.
            Err(DriveError::Precondition(_)) if !commit && self.is_committing(txn) => {
                Err(DriveError::Precondition(format!(
                    "the commit of transaction {gtrid} was logged as started meanwhile: it \
                     may already have been reported committed, so it cannot be aborted"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks that every branch of `gtrid` is prepared at its participant, durably:
    /// its xid is in the participant's Recover answer (so no new work gets
    /// prepared), and a Prepare of it then answers YES (a YES is durable; a listed
    /// branch whose record is not on disk yet answers only once it is). Refuses
    /// naming each branch that is not, or whose participant did not answer. Calls
    /// participants only while this node leads with the lease (rule 15).
    async fn check_prepared(
        &self,
        gtrid: Gtrid,
        branches: &[BranchRecord],
    ) -> Result<(), DriveError> {
        let term = self.ready_term()?;
        let lost = || DriveError::Unavailable("leadership lost; retry on the new leader".into());
        if !self.may_drive(term).await {
            return Err(lost());
        }
        let timeout = self.inner.config.prepare_timeout.min(CHECK_TIMEOUT);
        let pool = &self.inner.pool;
        let checks = branches.iter().map(|b| async move {
            let xid = super::xid_pb(gtrid, b.bqual);
            let listed = pool
                .recover(&b.spec.endpoint, &b.spec.resource, timeout)
                .await;
            let problem = match listed {
                Ok(xids) if xids.contains(&xid) => None,
                Ok(_) => Some("not prepared there".to_string()),
                Err(e) => Some(format!("could not ask: {e}")),
            };
            problem.map(|p| branch_problem(b, &p))
        });
        let problems: Vec<String> = join_all(checks).await.into_iter().flatten().collect();
        if !problems.is_empty() {
            return Err(not_prepared(gtrid, &problems));
        }
        if !self.may_drive(term).await {
            return Err(lost());
        }
        let votes = branches.iter().map(|b| async move {
            let xid = super::xid_pb(gtrid, b.bqual);
            match pool
                .prepare(&b.spec.endpoint, &b.spec.resource, xid, timeout)
                .await
            {
                PrepareOutcome::Yes => None,
                other => Some(branch_problem(
                    b,
                    &format!("listed as prepared, but asked again it answered {other:?}"),
                )),
            }
        });
        let problems: Vec<String> = join_all(votes).await.into_iter().flatten().collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(not_prepared(gtrid, &problems))
        }
    }

    /// Drops the in-memory hold of `txn` once its record is in the table, unless a
    /// run of it is under way (the run does it when it ends). A proposal that did
    /// not land leaves the hold as it was, for a retry.
    fn release_if_logged(&self, txn: u64) {
        let logged = self.has_record(txn);
        let mut runs = lock(&self.inner.runs);
        if !runs.slots.contains_key(&txn) {
            runs.release(txn, logged);
        }
    }
}

/// One branch's line in a refusal.
fn branch_problem(b: &BranchRecord, problem: &str) -> String {
    format!(
        "branch {} ({}/{}): {problem}",
        b.bqual, b.spec.endpoint, b.spec.resource
    )
}

fn not_prepared(gtrid: Gtrid, problems: &[String]) -> DriveError {
    DriveError::Precondition(format!(
        "not every branch of {gtrid} is known prepared, so it cannot be committed: {}",
        problems.join("; ")
    ))
}
