//! Leadership: when this node becomes leader it catches up on its term, names the
//! cluster if nobody has, then keeps scanning the table — aborting transactions past
//! their deadline, asking the participant of every handed-over one-phase commit, and
//! re-driving every decided but uncompleted one (docs/design.md, rule 7). When it
//! stops being leader, everything it drives stops at the next step.
//!
//! # The lease
//! `leader_term` says what this node last heard, and a node that was paused
//! (SIGSTOP, a long GC-like stall, a VM migration) resumes believing it still leads:
//! its timers fire and its queued requests run before its Raft core hears of the new
//! term. So before each participant fan-out the driver also asks for a recent quorum
//! confirmation: a committed entry, or a heartbeat round (`ensure_linearizable`),
//! that *started* less than `leader_lease` ago. The lease is shorter than the
//! election timeout's minimum, so while it holds no other node can have been elected
//! by a quorum that still acknowledged this one. Under load, entries commit all the
//! time and the check costs nothing; an idle leader pays one heartbeat round.

use std::time::Duration;

use openraft::ServerState;
use ratify_common::failpoint;
use tokio::sync::watch;
use tracing::Instrument;

use super::{lock, wait_slot, Action, Driver};
use crate::txn::{Command, Reason};
use crate::types::now_ms;

/// Time since boot, counting time the machine spent suspended (CLOCK_BOOTTIME): a VM
/// that was suspended or migrated resumes with its lease expired. `Instant` is
/// CLOCK_MONOTONIC, which stops while suspended.
pub(super) fn boot_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        // Not on Linux: fall back to the monotonic clock.
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        return START.get_or_init(std::time::Instant::now).elapsed();
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Timeout aborts proposed at once by one scan step.
const TIMEOUT_ABORTS_AT_ONCE: usize = 512;

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
                self.forget_leadership();
                let driver = self.clone();
                tokio::spawn(
                    async move { driver.lead(term).await }
                        .instrument(tracing::info_span!("leader", term)),
                );
            } else if !leading && (current.is_some() || started.is_some()) {
                tracing::info!(term = ?current, "no longer leader; stopping the driver");
                started = None;
                self.inner.leader_term.send_replace(None);
                lock(&self.inner.trouble).clear();
                self.forget_leadership();
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

    /// Records a quorum confirmation of leadership in `term` that started at `at`.
    pub(super) fn renew_lease(&self, term: u64, at: Duration) {
        let mut lease = lock(&self.inner.lease);
        if lease.is_none_or(|(t, prev)| t < term || (t == term && prev < at)) {
            *lease = Some((term, at));
        }
    }

    fn lease_holds(&self, term: u64) -> bool {
        matches!(*lock(&self.inner.lease), Some((t, at)) if t == term && boot_clock().saturating_sub(at) < self.inner.config.leader_lease)
    }

    /// May this node call participants for `term` now? It must be the ready leader
    /// of `term` and hold the lease (renewed by a heartbeat round if it lapsed).
    pub(super) async fn may_drive(&self, term: u64) -> bool {
        if !self.still_leader(term) {
            return false;
        }
        if self.lease_holds(term) {
            return true;
        }
        let _renewal = self.inner.lease_renewal.lock().await;
        if !self.lease_holds(term) {
            let started = boot_clock();
            let confirmed = tokio::time::timeout(
                self.inner
                    .config
                    .propose_timeout
                    .min(Duration::from_secs(1)),
                self.inner.raft.ensure_linearizable(),
            )
            .await;
            match confirmed {
                Ok(Ok(_)) => self.renew_lease(term, started),
                _ => {
                    tracing::debug!(term, "leadership not confirmed by a quorum; not driving");
                    return false;
                }
            }
        }
        self.still_leader(term)
    }

    pub(super) fn is_current_term(&self, term: u64) -> bool {
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
        while self.inner.sm.read().table.secret.is_none() {
            if !self.is_current_term(term) {
                return;
            }
            let secret = rand::random::<[u8; 32]>();
            if let Err(e) = self.propose(Command::SetSecret { secret }).await {
                tracing::warn!(error = %e, "could not set the owner-token key yet; retrying");
                tokio::time::sleep(self.inner.config.scan_interval).await;
            }
        }
        while self.inner.sm.read().table.retention != self.inner.config.retention {
            if !self.is_current_term(term) {
                return;
            }
            let retention = self.inner.config.retention;
            if let Err(e) = self.propose(Command::SetRetention(retention)).await {
                tracing::warn!(error = %e, "could not set the outcome retention yet; retrying");
                tokio::time::sleep(self.inner.config.scan_interval).await;
            }
        }
        // Numbers for this term's transactions, above every earlier leader's block
        // (their transactions may still be in their clients' hands).
        while !self.reserve(term).await {
            if !self.is_current_term(term) {
                return;
            }
            tracing::warn!("could not reserve transaction numbers yet; retrying");
            tokio::time::sleep(self.inner.config.scan_interval).await;
        }
        if !self.is_current_term(term) {
            return;
        }
        failpoint::hit("coord.recovery").await;
        self.mark_ready(term);
        self.inner.leader_term.send_replace(Some(term));
        tracing::info!("leading; re-driving undecided and uncompleted transactions");
        let mut tick = tokio::time::interval(self.inner.config.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.still_leader(term) {
            tick.tick().await;
            self.scan().await;
        }
    }

    /// One pass over the live table, this leader's in-memory transactions (and the
    /// participant channels).
    async fn scan(&self) {
        self.inner.pool.close_idle(self.inner.config.channel_idle);
        let now = now_ms();
        let (decided, undriven, expired) = {
            let sm = self.inner.sm.read();
            let runs = lock(&self.inner.runs);
            let (mut decided, mut undriven, mut expired) = (Vec::new(), Vec::new(), Vec::new());
            for (&txn, rec) in &sm.table.live {
                if rec.decision.is_some() {
                    // A heuristic transaction with nothing left to send waits for a
                    // person; anything else still has phase 2 (or its completion) to do.
                    if rec.pending_phase2().next().is_some() || !rec.is_heuristic() {
                        decided.push(txn);
                    }
                } else if runs.slots.contains_key(&txn) {
                    // Driven here right now.
                } else if rec.handed_over || rec.committing {
                    // Its commit was asked for and its driver is gone (a previous
                    // leader died mid-prepare or mid-one-phase): take it over. Never
                    // timed out: it may be committed already (rule 16).
                    undriven.push(txn);
                } else if rec.deadline_ms <= now {
                    expired.push(txn);
                }
            }
            for (&txn, held) in &runs.active {
                if held.seed.deadline_ms <= now && !runs.slots.contains_key(&txn) {
                    expired.push(txn);
                }
            }
            (decided, undriven, expired)
        };
        for txn in decided {
            self.ensure_phase2(txn);
        }
        for txn in undriven {
            drop(self.start_run(txn, Action::Commit, None));
        }
        // Aborts run concurrently, so they share entries: a flood of expired
        // transactions costs a few log entries, not one round trip each.
        for chunk in expired.chunks(TIMEOUT_ABORTS_AT_ONCE) {
            failpoint::hit("coord.before_timeout_abort").await;
            let runs: Vec<_> = chunk
                .iter()
                .map(|&txn| wait_slot(self.start_run(txn, Action::Abort(Reason::Timeout), None)))
                .collect();
            for result in futures::future::join_all(runs).await {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "timeout abort not logged");
                }
            }
        }
    }
}
