//! Leadership: when this node becomes leader it catches up on its term, names the
//! cluster if nobody has, then keeps scanning the table — aborting transactions past
//! their deadline and re-driving every decided but uncompleted one (DESIGN §4.7).
//! When it stops being leader, everything it drives stops at the next step.

use std::time::Duration;

use openraft::ServerState;
use ratify_participant_sdk::failpoint;
use tokio::sync::watch;
use tracing::Instrument;

use super::{decision, lock, Driver};
use crate::txn::{Command, Reason};
use crate::types::now_ms;

impl Driver {
    pub(super) async fn run_leadership(self, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.inner.raft.metrics();
        // The term whose `lead` task was started, so metrics churn starts only one.
        let mut started: Option<u64> = None;
        loop {
            let (leading, term) = {
                let m = metrics.borrow_and_update();
                (
                    m.state == ServerState::Leader && m.current_leader == Some(self.inner.id),
                    m.current_term,
                )
            };
            let current = *self.inner.leader_term.borrow();
            if leading && started != Some(term) {
                started = Some(term);
                // Not yet "ready": phase 2 and scans start once the term has caught up.
                self.inner.leader_term.send_replace(None);
                let driver = self.clone();
                tokio::spawn(
                    async move { driver.lead(term).await }
                        .instrument(tracing::info_span!("leader", term)),
                );
            } else if !leading && (current.is_some() || started.is_some()) {
                tracing::info!(term = ?current, "no longer leader; stopping the driver");
                started = None;
                self.inner.leader_term.send_replace(None);
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = shutdown.changed() => {
                    self.inner.leader_term.send_replace(None);
                    return;
                }
            }
        }
    }

    fn is_current_term(&self, term: u64) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_term == term
    }

    async fn lead(self, term: u64) {
        // The term's first (blank) entry must be applied before the table is trusted:
        // only then can no earlier-term decision still appear.
        loop {
            if !self.is_current_term(term) {
                return;
            }
            if self.inner.raft.ensure_linearizable().await.is_ok() {
                break;
            }
            tokio::time::sleep(self.inner.config.scan_interval).await;
        }
        // A node restarted with a committed vote for itself resumes leadership in
        // the same term without an election, and its remembered commit index may lag
        // entries a quorum had already accepted. Everything in its log at this point
        // must be applied before the table is complete (a leader's log holds every
        // committed entry).
        let last_log = self
            .inner
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        loop {
            if !self.is_current_term(term) {
                return;
            }
            let applied = self
                .inner
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map_or(0, |l| l.index);
            if applied >= last_log {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while self.inner.sm.read().table.cluster_id == 0 {
            if !self.is_current_term(term) {
                return;
            }
            let cluster_id = rand::random::<u64>().max(1);
            if let Err(e) = self.propose(Command::SetClusterId { cluster_id }).await {
                tracing::warn!(error = %e, "could not name the cluster yet; retrying");
                tokio::time::sleep(self.inner.config.scan_interval).await;
            }
        }
        if !self.is_current_term(term) {
            return;
        }
        failpoint::hit("coord.recovery").await;
        self.inner.leader_term.send_replace(Some(term));
        tracing::info!("leading; re-driving undecided and uncompleted transactions");
        let mut tick = tokio::time::interval(self.inner.config.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.still_leader(term) {
            tick.tick().await;
            self.scan().await;
        }
    }

    /// One pass over the live table.
    async fn scan(&self) {
        let now = now_ms();
        let (decided, expired): (Vec<u64>, Vec<u64>) = {
            let sm = self.inner.sm.read();
            let inflight = lock(&self.inner.inflight);
            let mut decided = Vec::new();
            let mut expired = Vec::new();
            for (&txn, rec) in &sm.table.live {
                if rec.decision.is_some() {
                    decided.push(txn);
                } else if rec.deadline_ms <= now && !inflight.contains_key(&txn) {
                    expired.push(txn);
                }
            }
            (decided, expired)
        };
        for txn in decided {
            self.ensure_phase2(txn);
        }
        for txn in expired {
            let d = decision(
                false,
                Reason::Timeout,
                "transaction outlived its timeout".into(),
            );
            let span = tracing::info_span!("timeout_abort", gtrid = %self.gtrid(txn));
            if let Err(e) = self.decide(txn, d, None, vec![]).instrument(span).await {
                tracing::debug!(error = %e, "timeout abort not logged");
                return;
            }
        }
    }
}
