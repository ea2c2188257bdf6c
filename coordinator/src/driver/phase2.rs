//! Phase 2: tell every branch the decision, retry until each acknowledges, then log the
//! transaction COMPLETED — in batches, so completion costs a fraction of a log entry.

use std::time::Duration;

use futures::future::join_all;
use ratify_participant_sdk::failpoint;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::participants::Phase2Outcome;
use super::{lock, xid_pb, Driver};
use crate::metrics::Counters;
use crate::txn::{Command, Lookup};
use crate::types::now_ms;

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
        tokio::spawn(async move { driver.run_phase2(txn, term).await }.instrument(span));
    }

    pub(super) fn still_leader(&self, term: u64) -> bool {
        *self.inner.leader_term.borrow() == Some(term)
    }

    async fn run_phase2(self, txn: u64, term: u64) {
        let found = match self.inner.sm.read().table.lookup(txn) {
            Lookup::Live(rec) => rec.decision.clone().map(|d| (d, rec.branches.clone())),
            _ => None,
        };
        let Some((decision, branches)) = found else {
            lock(&self.inner.phase2).remove(&txn);
            return;
        };
        let gtrid = self.gtrid(txn);
        let acks = join_all(branches.iter().filter(|b| !b.skip_phase2).map(|b| {
            let xid = xid_pb(gtrid, b.bqual);
            let driver = &self;
            let commit = decision.commit;
            async move {
                let mut backoff = Duration::from_millis(50);
                loop {
                    if !driver.still_leader(term) {
                        return false;
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
                    match answer {
                        Phase2Outcome::Committed if commit => {
                            failpoint::hit("coord.after_phase2_ack").await;
                            return true;
                        }
                        Phase2Outcome::RolledBack if !commit => {
                            failpoint::hit("coord.after_phase2_ack").await;
                            return true;
                        }
                        Phase2Outcome::Committed | Phase2Outcome::RolledBack => {
                            // The branch decided on its own against the log: a heuristic
                            // outcome. Nothing more can be done by retrying.
                            Counters::inc(&driver.inner.counters.heuristic_outcomes);
                            tracing::error!(
                                bqual = b.bqual,
                                decision = if commit { "commit" } else { "abort" },
                                ?answer,
                                "heuristic outcome: branch disagrees with the logged decision"
                            );
                            return true;
                        }
                        Phase2Outcome::Retry(detail) => {
                            tracing::debug!(bqual = b.bqual, %detail, "phase 2 retry");
                            Counters::inc(&driver.inner.counters.phase2_retries);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            }
        }))
        .await;
        if acks.iter().all(|&a| a) {
            // Stays in `phase2` until the completion is logged, so the scanner does
            // not start a second run meanwhile.
            if self.inner.completions.send(txn).is_ok() {
                return;
            }
        }
        lock(&self.inner.phase2).remove(&txn);
    }

    /// Logs completions in batches: whatever arrived while the previous batch was
    /// being committed goes into the next entry.
    pub(super) async fn run_completer(
        self,
        mut rx: mpsc::UnboundedReceiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return },
                _ = shutdown.changed() => return,
            };
            let mut txns = vec![first];
            while txns.len() < MAX_COMPLETIONS_PER_ENTRY {
                match rx.try_recv() {
                    Ok(t) => txns.push(t),
                    Err(_) => break,
                }
            }
            failpoint::hit("coord.before_complete").await;
            let cmd = Command::Complete {
                txns: txns.clone(),
                now_ms: now_ms(),
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
