//! Phase 2: tell every branch the decision, retry until each acknowledges, then log the
//! transaction COMPLETED — in batches, so completion costs a fraction of a log entry.

use std::time::Duration;

use futures::future::join_all;
use ratify_common::{failpoint, group};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::participants::Phase2Outcome;
use super::{lock, xid_pb, Driver, MAX_BACKOFF};
use crate::metrics::Counters;
use crate::txn::{Command, Heuristic, Lookup};
use crate::types::now_ms;

/// How one branch's phase 2 ended on this node.
enum Ack {
    /// Acknowledged as decided.
    Done(u32),
    /// An abort's rollback given up after the retry window (the branch pulls it).
    Abandoned,
    /// Answered against the decision (logged as a heuristic outcome).
    Contradicted,
    /// Stopped: leadership lost (the next leader re-drives it).
    Stopped,
}

/// Most completions logged in one entry.
const MAX_COMPLETIONS_PER_ENTRY: usize = 4_096;

impl Driver {
    /// Starts phase 2 for a decided live transaction unless it already runs here.
    pub(super) fn ensure_phase2(&self, txn: u64) {
        let Some(term) = *self.inner.leader_term.borrow() else {
            return;
        };
        if !lock(&self.inner.phase2).insert(txn) {
            return;
        }
        let driver = self.clone();
        let span = tracing::info_span!("phase2", gtrid = %self.gtrid(txn));
        let trace = ratify_proto::trace::inherited();
        tokio::spawn(ratify_proto::trace::scope(
            trace,
            async move { driver.run_phase2(txn, term).await }.instrument(span),
        ));
    }

    pub(super) fn still_leader(&self, term: u64) -> bool {
        *self.inner.leader_term.borrow() == Some(term)
    }

    async fn run_phase2(self, txn: u64, term: u64) {
        let found = match self.inner.sm.read().table.lookup(txn) {
            Lookup::Live(rec) => rec.decision.clone().map(|d| {
                (
                    d,
                    rec.pending_phase2().cloned().collect::<Vec<_>>(),
                    rec.is_heuristic(),
                )
            }),
            _ => None,
        };
        let Some((decision, branches, mut heuristic)) = found else {
            lock(&self.inner.phase2).remove(&txn);
            return;
        };
        let gtrid = self.gtrid(txn);
        let acks = join_all(branches.iter().map(|b| {
            let xid = xid_pb(gtrid, b.bqual);
            let driver = &self;
            let commit = decision.commit;
            let give_up_ms = decision.decided_ms.saturating_add(
                u64::try_from(driver.inner.config.abandon_rollback_after.as_millis())
                    .unwrap_or(u64::MAX),
            );
            async move {
                let mut backoff = Duration::from_millis(50);
                loop {
                    if !driver.may_drive(term).await {
                        return Ack::Stopped;
                    }
                    let timeout = driver.inner.config.phase2_timeout;
                    Counters::inc(&driver.inner.counters.phase2_calls);
                    let pool = &driver.inner.pool;
                    let answer = if commit {
                        pool.commit(
                            &b.spec.endpoint,
                            &b.spec.resource,
                            xid.clone(),
                            false,
                            timeout,
                        )
                        .await
                    } else {
                        pool.rollback(&b.spec.endpoint, &b.spec.resource, xid.clone(), timeout)
                            .await
                    };
                    if !matches!(answer, Phase2Outcome::Retry(_)) {
                        driver.clear_trouble(txn, b.bqual);
                    }
                    match answer {
                        Phase2Outcome::Committed if commit => {
                            failpoint::hit("coord.after_phase2_ack").await;
                            return Ack::Done(b.bqual);
                        }
                        Phase2Outcome::RolledBack if !commit => {
                            failpoint::hit("coord.after_phase2_ack").await;
                            return Ack::Done(b.bqual);
                        }
                        Phase2Outcome::Committed | Phase2Outcome::RolledBack => {
                            // The branch decided on its own against the log: a heuristic
                            // outcome. Retrying cannot change it; a person must repair
                            // the data, so it is logged and kept visible (rule 11).
                            return driver.record_heuristic(txn, b.bqual, commit, &answer).await;
                        }
                        Phase2Outcome::Retry(detail) => {
                            tracing::debug!(bqual = b.bqual, %detail, "phase 2 retry");
                            Counters::inc(&driver.inner.counters.phase2_retries);
                            driver.note_trouble(txn, b.bqual, &detail);
                            if !commit && now_ms() >= give_up_ms {
                                // Bounded state (rule 12): an abort needs no answer to
                                // stand. The branch, if prepared, asks for the logged
                                // outcome itself (kept for the retention period).
                                Counters::inc(&driver.inner.counters.phase2_abandoned);
                                tracing::debug!(
                                    bqual = b.bqual,
                                    "rollback abandoned after the retry window"
                                );
                                driver.clear_trouble(txn, b.bqual);
                                return Ack::Abandoned;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }))
        .await;
        let mut stopped = false;
        let mut abandoned = false;
        let mut acked = Vec::new();
        for ack in &acks {
            match ack {
                Ack::Done(bqual) => acked.push(*bqual),
                Ack::Abandoned => abandoned = true,
                Ack::Contradicted => heuristic = true,
                Ack::Stopped => stopped = true,
            }
        }
        if heuristic && !acked.is_empty() {
            // The transaction will not complete (a person must look): log which
            // branches are done, so no pass asks them again.
            let cmd = Command::Acknowledged { txn, bquals: acked };
            if let Err(e) = self.propose(cmd).await {
                tracing::debug!(error = %e, "acknowledgements not logged; asked again later");
            }
        }
        // A heuristic transaction is not completed: it stays live, listed for a
        // person, once nothing is left to send.
        if !stopped && !heuristic {
            // Stays in `phase2` until the completion is logged, so the scanner does
            // not start a second run meanwhile.
            if self.inner.completions.send((txn, abandoned)).is_ok() {
                return;
            }
        }
        lock(&self.inner.phase2).remove(&txn);
    }

    /// Logs a phase-2 answer that contradicts the decision, counts it and says so
    /// at WARN with the gtrid (the span). If the log cannot take it now, the branch
    /// counts as not acknowledged and the next pass asks it again.
    async fn record_heuristic(
        &self,
        txn: u64,
        bqual: u32,
        decided_commit: bool,
        answer: &Phase2Outcome,
    ) -> Ack {
        let committed = matches!(answer, Phase2Outcome::Committed);
        let detail = format!(
            "decision was {}, branch {bqual} answered {}",
            if decided_commit { "COMMIT" } else { "ABORT" },
            if committed {
                "COMMITTED"
            } else {
                "ROLLED BACK"
            }
        );
        tracing::warn!(bqual, %detail, "heuristic outcome: a branch contradicts the logged decision; a person must repair it");
        let cmd = Command::Heuristic {
            txn,
            bqual,
            heuristic: Heuristic {
                committed,
                detail,
                at_ms: now_ms(),
                settled: false,
            },
        };
        match self.propose(cmd).await {
            Ok(_) => {
                Counters::inc(&self.inner.counters.heuristic_outcomes);
                Ack::Contradicted
            }
            Err(e) => {
                tracing::debug!(error = %e, "heuristic outcome not logged yet");
                Ack::Stopped
            }
        }
    }

    /// Logs completions in batches: whatever arrived while the previous batch was
    /// being committed goes into the next entry.
    pub(super) async fn run_completer(
        self,
        mut rx: mpsc::UnboundedReceiver<(u64, bool)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return },
                _ = shutdown.changed() => return,
            };
            let batch = group::round_of(first, &mut rx, MAX_COMPLETIONS_PER_ENTRY);
            let txns: Vec<u64> = batch.iter().map(|&(t, _)| t).collect();
            let abandoned = batch
                .iter()
                .filter(|&&(_, abandoned)| abandoned)
                .map(|&(t, _)| t)
                .collect();
            failpoint::hit("coord.before_complete").await;
            let cmd = Command::Complete {
                txns: txns.clone(),
                now_ms: now_ms(),
                abandoned,
            };
            if let Err(e) = self.propose(cmd).await {
                // Not fatal: a later leader (or the scanner here) re-drives phase 2,
                // which is idempotent, and completes them then.
                tracing::debug!(error = %e, count = txns.len(), "completion not logged");
            }
            let mut phase2 = lock(&self.inner.phase2);
            for t in txns {
                phase2.remove(&t);
            }
        }
    }
}
