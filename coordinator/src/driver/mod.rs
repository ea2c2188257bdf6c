//! The leader-only driver: runs two-phase commit, logs every decision through Raft
//! before phase 2, retries phase 2 until every branch acknowledges, aborts
//! transactions that outlive their timeout, and on becoming leader finishes every
//! decided-but-not-completed transaction.
//!
//! # Layout
//! - this file: [`Driver`], the entry points the services call (begin, enlist,
//!   commit, rollback, query) and the propose path into Raft.
//! - [`participants`]: calls to participants and the mapping of their answers.
//! - [`phase2`]: phase-2 fan-out with retries, and batched completion.
//! - [`leader`]: leadership tracking, the timeout scanner and failover recovery.
//!
//! One driver per transaction: commits of the same gtrid on this node share one
//! run (`inflight`), and every write is a Raft proposal, so a deposed leader's late
//! decisions cannot commit; before every participant fan-out the driver checks that
//! it still leads in its term and that a quorum confirmed it recently (the lease in
//! [`leader`]), so a leader that was paused stops calling participants before it
//! hears it was deposed (docs/design.md, rules 8 and 15).
//!
//! One-phase commits hand the outcome to the participant first: a `HandOver` entry
//! is logged before the call, and from then on only the participant's answer can
//! decide (docs/design.md, rule 10).

mod batcher;
mod leader;
pub mod participants;
mod phase2;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use ratify_participant_sdk::failpoint;
use ratify_proto::pb;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::metrics::Counters;
use crate::raft::SharedSm;
use crate::txn::{
    BranchRecord, BranchSpec, Command, CommandResult, Decision, Lookup, Reason, Refusal, Retention,
};
use crate::types::typ::{Raft, RaftError};
use crate::types::{now_ms, Gtrid, NodeId, NodeInfo};
use participants::{ParticipantPool, Phase2Outcome, PrepareOutcome};

/// Tunables of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How long a prepare may take before the branch counts as unreachable.
    pub prepare_timeout: Duration,
    /// Per-attempt bound on a phase-2 call.
    pub phase2_timeout: Duration,
    /// Timeout of a transaction whose client did not set one.
    pub default_txn_timeout: Duration,
    /// Commit single-branch transactions in one phase.
    pub one_phase: bool,
    /// How long a proposal may wait for the log before the caller is told to retry.
    pub propose_timeout: Duration,
    /// Raft entries the leader keeps in flight at once; commands arriving meanwhile
    /// share the next entry (see `driver/batcher.rs`).
    pub propose_pipeline: usize,
    /// Most commands one Raft entry carries.
    pub max_batch: usize,
    /// How often the leader scans for timed-out and undriven transactions.
    pub scan_interval: Duration,
    /// How long a quorum's acknowledgement lets this leader call participants without
    /// asking the quorum again. Below the election timeout's minimum, so a leader
    /// that was paused (or cut off) longer cannot drive on stale leadership.
    pub leader_lease: Duration,
    /// How long completed outcomes are kept (proposed by each new leader).
    pub retention: Retention,
    /// Most live (not completed) transactions; Begin is refused past it.
    pub max_live: usize,
    /// How long an aborted transaction's unreachable branches are retried before
    /// it completes anyway (its prepared branches pull the logged abort).
    pub abandon_rollback_after: Duration,
    /// Participant channels unused this long are closed.
    pub channel_idle: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            prepare_timeout: Duration::from_secs(5),
            phase2_timeout: Duration::from_secs(5),
            default_txn_timeout: Duration::from_secs(30),
            one_phase: true,
            propose_timeout: Duration::from_secs(5),
            propose_pipeline: 2,
            max_batch: 512,
            scan_interval: Duration::from_millis(200),
            leader_lease: Duration::from_millis(150),
            retention: Retention::default(),
            max_live: 100_000,
            abandon_rollback_after: Duration::from_secs(300),
            channel_idle: Duration::from_secs(60),
        }
    }
}

/// Why the driver could not serve a request. Domain outcomes (aborts) are not errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveError {
    /// This node is not the leader; the leader, if known, is attached.
    #[error("not the leader")]
    NotLeader(Option<NodeInfo>),
    /// Malformed input; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// No such transaction.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the transaction's state; nothing changed.
    #[error("{0}")]
    Precondition(String),
    /// No quorum, or the node is shutting down: retry.
    #[error("{0}")]
    Unavailable(String),
    /// The transaction completed and its outcome was forgotten (older than the
    /// retention); distinct from a gtrid this cluster never issued.
    #[error("{0}")]
    Forgotten(String),
    /// Too much live state: refused, nothing changed; retry later.
    #[error("{0}")]
    Exhausted(String),
    /// A one-phase commit is under way: only its participant's answer decides. The
    /// driver learns that answer instead (never surfaced to clients as such).
    #[error("a one-phase commit of this transaction is under way; its participant decides")]
    HandedOver,
}

/// Where a transaction stands, for the participant-facing query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAnswer {
    /// Decided.
    Decided(Decision),
    /// Undecided and may still commit.
    InProgress,
    /// Completed and forgotten.
    Forgotten,
}

/// The result of Begin.
#[derive(Debug, Clone)]
pub struct Begun {
    /// The new gtrid.
    pub gtrid: Gtrid,
    /// Deadline, Unix ms.
    pub deadline_ms: u64,
    /// Branches enlisted with it.
    pub branches: Vec<BranchRecord>,
}

/// Longest wait between two calls to a branch that does not answer.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A transaction as `commit` and `rollback` find it.
enum Settled {
    /// Decided (live or completed).
    Decided(Decision),
    /// Live and undecided.
    Undecided {
        /// Its branches.
        branches: Vec<BranchRecord>,
        /// A one-phase commit may have been sent: the participant decides.
        handed_over: bool,
        /// A prepare may have been sent: the commit stays two-phase.
        committing: bool,
    },
}

/// Shared result of one commit run, seen by every concurrent commit of the gtrid.
type CommitSlot = watch::Receiver<Option<Result<Decision, DriveError>>>;

/// The leader-side engine. Cheap to clone.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node.
    id: NodeId,
    /// The Raft handle.
    raft: Raft,
    /// The only way to change a transaction: proposals, batched into Raft entries.
    batcher: batcher::Batcher,
    /// What this node did, for the metrics endpoint.
    counters: Arc<Counters>,
    /// Read access to the applied table.
    sm: SharedSm,
    /// Tunables.
    config: DriverConfig,
    /// Channels to participants.
    pool: ParticipantPool,
    /// Commits being driven on this node, by txn index (the in-memory PREPARING state).
    inflight: Mutex<HashMap<u64, CommitSlot>>,
    /// Transactions whose phase 2 runs on this node (until their completion is logged).
    phase2: Mutex<HashSet<u64>>,
    /// Fully acknowledged transactions waiting to be logged as completed, in batches.
    completions: mpsc::UnboundedSender<(u64, bool)>,
    /// `Some(term)` while this node is the leader and has caught up in that term.
    leader_term: watch::Sender<Option<u64>>,
    /// The latest quorum confirmation of this node's leadership: (term, a time before
    /// the confirming round started). See `may_drive`.
    lease: Mutex<Option<(u64, Duration)>>,
    /// Serialises lease renewals, so many waiting calls share one heartbeat round.
    lease_renewal: tokio::sync::Mutex<()>,
    /// Branches whose phase-2 (or one-phase) calls are failing, by (txn, bqual): what
    /// an operator sees as stuck. Leader-local, dropped when the call succeeds.
    trouble: Mutex<HashMap<(u64, u32), BranchTrouble>>,
}

/// A branch whose calls keep failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchTrouble {
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the first failure happened, Unix ms.
    pub since_ms: u64,
    /// The last failure, short.
    pub last_error: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    /// Creates the driver and starts its background tasks (leadership tracking,
    /// completion batching). They stop when `shutdown` resolves.
    pub fn start(
        id: NodeId,
        raft: Raft,
        sm: SharedSm,
        config: DriverConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (completions, completions_rx) = mpsc::unbounded_channel();
        let (leader_term, _) = watch::channel(None);
        let counters = Arc::new(Counters::default());
        let batcher = batcher::Batcher::start(
            raft.clone(),
            config.propose_pipeline,
            config.max_batch,
            config.propose_timeout,
            counters.clone(),
        );
        let driver = Self {
            inner: Arc::new(Inner {
                id,
                raft,
                batcher,
                counters,
                sm,
                config,
                pool: ParticipantPool::default(),
                inflight: Mutex::new(HashMap::new()),
                phase2: Mutex::new(HashSet::new()),
                completions,
                leader_term,
                lease: Mutex::new(None),
                lease_renewal: tokio::sync::Mutex::new(()),
                trouble: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(
            driver
                .clone()
                .run_completer(completions_rx, shutdown.clone()),
        );
        tokio::spawn(driver.clone().run_leadership(shutdown));
        driver
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The applied state.
    pub fn sm(&self) -> &SharedSm {
        &self.inner.sm
    }

    /// What this node did since it started.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The default transaction timeout.
    pub fn default_txn_timeout(&self) -> Duration {
        self.inner.config.default_txn_timeout
    }

    /// Errs with the leader hint unless this node is the leader and has applied every
    /// entry of earlier terms (so the table it reads is complete). A fresh leader is
    /// given a moment to catch up before the caller is told to retry.
    ///
    /// # Errors
    /// `NotLeader` with the hint, or `Unavailable` while still catching up.
    pub async fn ensure_leader(&self) -> Result<(), DriveError> {
        {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(self.inner.id) || !m.state.is_leader() {
                let hint = m
                    .current_leader
                    .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
                return Err(DriveError::NotLeader(hint));
            }
        }
        let mut ready = self.inner.leader_term.subscribe();
        let caught_up =
            tokio::time::timeout(Duration::from_secs(2), ready.wait_for(|t| t.is_some())).await;
        match caught_up {
            Ok(Ok(_)) => Ok(()),
            _ => Err(DriveError::Unavailable(
                "the new leader is still catching up; retry".into(),
            )),
        }
    }

    /// Parses a gtrid and checks that it belongs to this cluster. Call it after
    /// [`Self::ensure_leader`]: a node that has not applied the cluster id yet cannot
    /// tell whose a gtrid is, and says so as `Unavailable` (retry on the leader),
    /// never as `NotFound`, which clients take as final.
    ///
    /// # Errors
    /// `Invalid` when malformed, `Unavailable` before the cluster id is known,
    /// `NotFound` when it names another cluster.
    pub fn resolve(&self, gtrid: &str) -> Result<Gtrid, DriveError> {
        let g: Gtrid = gtrid
            .parse()
            .map_err(|e: crate::types::MalformedGtrid| DriveError::Invalid(e.to_string()))?;
        let cluster = self.inner.sm.read().table.cluster_id;
        if cluster == 0 {
            return Err(DriveError::Unavailable(
                "this node has not caught up with the cluster yet; retry on the leader".into(),
            ));
        }
        if g.cluster != cluster {
            return Err(DriveError::NotFound(format!(
                "transaction {g} does not belong to this cluster ({cluster:016x})"
            )));
        }
        Ok(g)
    }

    fn gtrid(&self, txn: u64) -> Gtrid {
        Gtrid {
            cluster: self.inner.sm.read().table.cluster_id,
            index: txn,
        }
    }

    /// Proposes a command and returns what the state machine answered. A committed
    /// entry is a quorum's confirmation of this node's leadership: it renews the
    /// lease from the moment the proposal started.
    async fn propose(&self, cmd: Command) -> Result<CommandResult, DriveError> {
        let started = leader::boot_clock();
        let term = *self.inner.leader_term.borrow();
        let write = self.inner.batcher.propose(cmd);
        let result = tokio::time::timeout(self.inner.config.propose_timeout, write)
            .await
            .unwrap_or_else(|_| {
                Err(DriveError::Unavailable(
                    "the log did not commit the request in time (no quorum?); retry".into(),
                ))
            });
        if let (Ok(_), Some(term)) = (&result, term) {
            self.renew_lease(term, started);
        }
        result
    }

    /// Records a decision (or learns the one that won) and starts phase 2 if needed.
    async fn decide(
        &self,
        txn: u64,
        decision: Decision,
        prepared: Option<u32>,
        skip: Vec<u32>,
    ) -> Result<Decision, DriveError> {
        let proposed = decision.clone();
        let cmd = Command::Decide {
            txn,
            decision,
            prepared_branches: prepared,
            skip_phase2: skip,
            complete: false,
        };
        match self.propose(cmd).await? {
            CommandResult::Decided(d) => {
                if d == proposed {
                    let c = &self.inner.counters;
                    Counters::inc(if d.commit {
                        &c.decisions_commit
                    } else {
                        &c.decisions_abort
                    });
                }
                failpoint::hit("coord.after_decision").await;
                self.ensure_phase2(txn);
                Ok(d)
            }
            CommandResult::HandedOver => Err(DriveError::HandedOver),
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Err(unexpected(other)),
        }
    }

    /// Begins a transaction, enlisting `branches` in the same log entry.
    ///
    /// # Errors
    /// `NotLeader`, `Unavailable` (no quorum, cluster still initialising), `Invalid`.
    pub async fn begin(
        &self,
        timeout: Duration,
        labels: BTreeMap<String, String>,
        branches: Vec<BranchSpec>,
    ) -> Result<Begun, DriveError> {
        self.ensure_leader().await?;
        let live = self.inner.sm.read().table.live.len();
        if live >= self.inner.config.max_live {
            Counters::inc(&self.inner.counters.begins_refused);
            return Err(DriveError::Exhausted(format!(
                "{live} transactions are live, the most this cluster takes \
                 (--max-live-txns); retry later"
            )));
        }
        let cmd = Command::Begin {
            now_ms: now_ms(),
            timeout_ms: timeout.as_millis() as u64,
            labels,
            branches,
        };
        match self.propose(cmd).await? {
            CommandResult::Begun {
                txn,
                deadline_ms,
                branches,
            } => Ok(Begun {
                gtrid: self.gtrid(txn),
                deadline_ms,
                branches,
            }),
            CommandResult::Refused(Refusal::NoClusterId) => Err(DriveError::Unavailable(
                "the cluster is still initialising; retry".into(),
            )),
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Err(unexpected(other)),
        }
    }

    /// Enlists a branch in an ACTIVE transaction (idempotent per endpoint + resource).
    ///
    /// # Errors
    /// `Precondition` once commit has started or the transaction is decided.
    pub async fn enlist(
        &self,
        gtrid: Gtrid,
        branch: BranchSpec,
    ) -> Result<BranchRecord, DriveError> {
        self.ensure_leader().await?;
        if lock(&self.inner.inflight).contains_key(&gtrid.index) {
            return Err(DriveError::Precondition(format!(
                "transaction {gtrid} is committing; it takes no more branches"
            )));
        }
        failpoint::hit("coord.before_enlist").await;
        match self
            .propose(Command::Enlist {
                txn: gtrid.index,
                branch,
            })
            .await?
        {
            CommandResult::Enlisted(b) => Ok(b),
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Err(unexpected(other)),
        }
    }

    /// Commits: runs prepare on every branch, logs the decision, starts phase 2 and
    /// returns the decision. Idempotent: a decided transaction returns its decision.
    ///
    /// # Errors
    /// `NotLeader`, `NotFound`, `Forgotten`, `Unavailable`; never for a domain abort.
    pub async fn commit(&self, gtrid: Gtrid) -> Result<Decision, DriveError> {
        self.ensure_leader().await?;
        if let Settled::Decided(d) = self.settled(gtrid.index)? {
            return Ok(d);
        }
        wait_slot(self.start_commit(gtrid.index)).await
    }

    /// Starts the commit run of `txn` unless one runs here already, and returns the
    /// slot its result will appear in.
    fn start_commit(&self, txn: u64) -> CommitSlot {
        // One driver per transaction on this node: later callers wait for the first.
        let (tx, slot) = {
            let mut inflight = lock(&self.inner.inflight);
            match inflight.get(&txn) {
                Some(slot) => (None, slot.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(txn, rx.clone());
                    (Some(tx), rx)
                }
            }
        };
        if let Some(tx) = tx {
            // The run is a task of its own: a caller that goes away (a client that
            // disconnects mid-prepare drops the RPC handler) must not stop it half-way,
            // or the transaction would stay marked as being driven forever (never timed
            // out, IN_PROGRESS to every inquiry, its prepared branches holding locks).
            let driver = self.clone();
            let span = tracing::info_span!("commit", gtrid = %self.gtrid(txn));
            tokio::spawn(
                async move {
                    let result = driver.drive_commit(txn).await;
                    let _ = tx.send(Some(result));
                    lock(&driver.inner.inflight).remove(&txn);
                }
                .instrument(span),
            );
        }
        slot
    }

    /// The recorded decision, or what an undecided live transaction looks like.
    fn settled(&self, txn: u64) -> Result<Settled, DriveError> {
        let sm = self.inner.sm.read();
        match sm.table.lookup(txn) {
            Lookup::Live(rec) => match &rec.decision {
                Some(d) => {
                    let d = d.clone();
                    drop(sm);
                    self.ensure_phase2(txn);
                    Ok(Settled::Decided(d))
                }
                None => Ok(Settled::Undecided {
                    branches: rec.branches.clone(),
                    handed_over: rec.handed_over,
                    committing: rec.committing,
                }),
            },
            Lookup::Finished(f) => Ok(Settled::Decided(f.decision.clone())),
            Lookup::Forgotten => Err(DriveError::Forgotten(format!(
                "transaction {} completed and its outcome was forgotten (older than the \
                 coordinator's outcome retention); ask the participants",
                self.gtrid(txn)
            ))),
            Lookup::Unknown => Err(DriveError::NotFound(format!(
                "no transaction {} was ever begun in this cluster",
                self.gtrid(txn)
            ))),
        }
    }

    /// The term this node leads and is ready in.
    fn ready_term(&self) -> Result<u64, DriveError> {
        self.inner
            .leader_term
            .borrow()
            .ok_or_else(|| DriveError::Unavailable("leadership lost; retry".into()))
    }

    async fn drive_commit(&self, txn: u64) -> Result<Decision, DriveError> {
        let term = self.ready_term()?;
        loop {
            let (branches, handed_over, committing) = match self.settled(txn)? {
                Settled::Decided(d) => return Ok(d),
                Settled::Undecided {
                    branches,
                    handed_over,
                    committing,
                } => (branches, handed_over, committing),
            };
            match branches.as_slice() {
                [] => {
                    return self
                        .decide(
                            txn,
                            decision(true, Reason::ClientCommit, String::new()),
                            Some(0),
                            vec![],
                        )
                        .await
                }
                [only] if handed_over => return self.one_phase(txn, only, term).await,
                [only] if self.inner.config.one_phase && !committing => {
                    // Record the hand-over before anything is sent: once the call may
                    // be on the wire, the branch may commit, and nobody may abort.
                    match self.propose(Command::HandOver { txn, branches: 1 }).await? {
                        CommandResult::HandedOver => return self.one_phase(txn, only, term).await,
                        CommandResult::Decided(d) => return Ok(d),
                        // An Enlist slipped in (commit in two phases), or a prepare went
                        // out from a leader without one phase: read again.
                        CommandResult::Refused(
                            Refusal::BranchSetChanged { .. } | Refusal::Committing,
                        ) => continue,
                        CommandResult::Refused(r) => return Err(refusal(r)),
                        other => return Err(unexpected(other)),
                    }
                }
                _ => return self.two_phase(txn, branches, term).await,
            }
        }
    }

    async fn two_phase(
        &self,
        txn: u64,
        branches: Vec<BranchRecord>,
        term: u64,
    ) -> Result<Decision, DriveError> {
        let n = branches.len() as u32;
        let gtrid = self.gtrid(txn);
        let timeout = self.inner.config.prepare_timeout;
        failpoint::hit("coord.before_prepare").await;
        if !self.may_drive(term).await {
            return Err(DriveError::Unavailable(
                "leadership lost before prepare; retry".into(),
            ));
        }
        // The commit request is logged alongside the prepare round, and nobody waits
        // for it: it is queued before the decision, so it lands in the log first (in
        // the same entry or an earlier one). From then on no branch can be enlisted,
        // no leader switches the transaction to one phase, and a new leader takes the
        // commit over if this one dies. Its answer is not needed: the decision below
        // meets the same refusals (decided meanwhile: that decision comes back; a
        // branch sneaked in: the commit is refused; handed over: likewise).
        drop(
            self.inner
                .batcher
                .submit(Command::CommitStarted { txn, branches: n }),
        );
        let (read_only, failure) = self.collect_votes(gtrid, &branches, timeout).await;
        if failure.is_none() && failpoint::is_on("bug.commit_before_decision") {
            self.bug_commit_before_decision(txn, &branches, &read_only)
                .await;
        }
        failpoint::hit("coord.after_votes").await;
        if let Some((reason, detail)) = failure {
            tracing::debug!(?reason, %detail, "aborting");
            return self
                .decide(txn, decision(false, reason, detail), None, read_only)
                .await;
        }
        match self
            .decide(
                txn,
                decision(true, Reason::ClientCommit, String::new()),
                Some(n),
                read_only.clone(),
            )
            .await
        {
            Err(DriveError::Precondition(detail)) => {
                // A branch was enlisted while we prepared: it was never prepared, so
                // the commit cannot stand. Abort (the branch set is now fixed).
                self.decide(
                    txn,
                    decision(false, Reason::ProtocolError, detail),
                    None,
                    read_only,
                )
                .await
            }
            other => other,
        }
    }

    /// Prepares every branch in parallel; returns the READ_ONLY branches and the first
    /// failure (a NO, an unreachable branch, a garbage answer), which ends the round.
    async fn collect_votes(
        &self,
        gtrid: Gtrid,
        branches: &[BranchRecord],
        timeout: Duration,
    ) -> (Vec<u32>, Option<(Reason, String)>) {
        let mut votes: FuturesUnordered<_> = branches
            .iter()
            .map(|b| {
                let xid = xid_pb(gtrid, b.bqual);
                async move {
                    let vote = self
                        .inner
                        .pool
                        .prepare(&b.spec.endpoint, &b.spec.resource, xid, timeout)
                        .await;
                    (b.bqual, vote)
                }
            })
            .collect();
        let mut read_only = Vec::new();
        let mut failure = None;
        Counters::add(&self.inner.counters.prepare_calls, branches.len() as u64);
        while let Some((bqual, vote)) = votes.next().await {
            tracing::debug!(bqual, ?vote, "vote");
            if matches!(
                vote,
                PrepareOutcome::Unreachable(_) | PrepareOutcome::Garbage(_)
            ) {
                Counters::inc(&self.inner.counters.prepare_failures);
            }
            match vote {
                PrepareOutcome::Yes => {}
                PrepareOutcome::ReadOnly => read_only.push(bqual),
                // The first NO decides: the rest cannot change the outcome, and a
                // late prepare is fenced by the participant's tombstone.
                PrepareOutcome::No(d) => {
                    failure = Some((Reason::VotedNo, d));
                    break;
                }
                PrepareOutcome::Unreachable(d) => {
                    failure = Some((Reason::ParticipantUnreachable, d));
                    break;
                }
                PrepareOutcome::Garbage(d) => {
                    failure = Some((Reason::ProtocolError, d));
                    break;
                }
            }
        }

        (read_only, failure)
    }

    /// A DELIBERATE BUG, off unless the `bug.commit_before_decision` switch is on (see
    /// [`failpoint`]): sends COMMIT to every prepared branch before the decision is
    /// logged, breaking docs/design.md, rule 2. It exists so the chaos suite can show that its
    /// checker catches a broken rule.
    async fn bug_commit_before_decision(
        &self,
        txn: u64,
        branches: &[BranchRecord],
        read_only: &[u32],
    ) {
        let gtrid = self.gtrid(txn);
        let timeout = self.inner.config.prepare_timeout;
        let calls = branches
            .iter()
            .filter(|b| !read_only.contains(&b.bqual))
            .map(|b| {
                self.inner.pool.commit(
                    &b.spec.endpoint,
                    &b.spec.resource,
                    xid_pb(gtrid, b.bqual),
                    false,
                    timeout,
                )
            });
        futures::future::join_all(calls).await;
    }

    /// One-phase commit of a handed-over single-branch transaction: the participant
    /// decides, and its answer is logged as the decision. Without an answer it asks
    /// again (participants answer a repeated one-phase commit with what happened),
    /// for as long as this node leads; a later leader asks in turn.
    async fn one_phase(
        &self,
        txn: u64,
        branch: &BranchRecord,
        term: u64,
    ) -> Result<Decision, DriveError> {
        let xid = xid_pb(self.gtrid(txn), branch.bqual);
        failpoint::hit("coord.before_one_phase").await;
        let mut backoff = Duration::from_millis(20);
        loop {
            if !self.may_drive(term).await {
                return Err(DriveError::Unavailable(
                    "leadership lost during a one-phase commit; the next leader asks the \
                     participant; retry"
                        .into(),
                ));
            }
            let answer = self
                .inner
                .pool
                .commit(
                    &branch.spec.endpoint,
                    &branch.spec.resource,
                    xid.clone(),
                    true,
                    self.inner.config.prepare_timeout,
                )
                .await;
            let (commit, reason) = match answer {
                Phase2Outcome::Committed => (true, Reason::OnePhase),
                Phase2Outcome::RolledBack => (false, Reason::OnePhaseRefused),
                // No answer is not a NO: the branch may have committed.
                Phase2Outcome::Retry(d) => {
                    tracing::debug!(detail = %d, "one-phase commit retry");
                    Counters::inc(&self.inner.counters.phase2_retries);
                    self.note_trouble(txn, branch.bqual, &d);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            self.clear_trouble(txn, branch.bqual);
            failpoint::hit("coord.after_one_phase").await;
            return self
                .decide(
                    txn,
                    decision(commit, reason, String::new()),
                    commit.then_some(1),
                    vec![branch.bqual],
                )
                .await;
        }
    }

    /// Aborts unless already decided; returns the decision in force. A transaction
    /// handed to its one-phase participant cannot be aborted: the answer is the
    /// participant's, learned by the commit run (asked again until it answers).
    ///
    /// # Errors
    /// `NotLeader`, `NotFound`, `Forgotten`, `Unavailable`.
    pub async fn rollback(&self, gtrid: Gtrid) -> Result<Decision, DriveError> {
        self.ensure_leader().await?;
        let txn = gtrid.index;
        match self.settled(txn)? {
            Settled::Decided(d) => Ok(d),
            Settled::Undecided {
                handed_over: true, ..
            } => wait_slot(self.start_commit(txn)).await,
            Settled::Undecided { .. } => {
                let d = decision(false, Reason::ClientRollback, String::new());
                match self
                    .decide(txn, d, None, vec![])
                    .instrument(tracing::info_span!("rollback", gtrid = %gtrid))
                    .await
                {
                    Err(DriveError::HandedOver) => wait_slot(self.start_commit(txn)).await,
                    other => other,
                }
            }
        }
    }

    /// Answers a participant's "what happened to T?". When nothing is decided and the
    /// transaction cannot still commit, logs ABORT first (docs/design.md, rule 3):
    /// the read is linearizable, so no decision from an earlier term can still
    /// appear. A transaction handed to its one-phase participant is never presumed
    /// aborted. One whose commit was logged as started (`CommitStarted`) but that no
    /// run drives here lost its driver mid-prepare: this leader takes the commit over
    /// (re-running prepare, which prepared branches answer YES again) instead of
    /// leaving its branches locked until the deadline (the scan does too).
    ///
    /// # Errors
    /// `NotLeader`, `NotFound` (a gtrid this cluster never issued), `Unavailable`.
    pub async fn query(&self, gtrid: Gtrid) -> Result<QueryAnswer, DriveError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => {}
            Err(RaftError::APIError(crate::types::typ::CheckIsLeaderError::ForwardToLeader(f))) => {
                return Err(DriveError::NotLeader(f.leader_node));
            }
            Err(e) => return Err(DriveError::Unavailable(e.to_string())),
        }
        let txn = gtrid.index;
        let (inflight, handed_over, committing, before_deadline) = {
            let sm = self.inner.sm.read();
            match sm.table.lookup(txn) {
                Lookup::Live(rec) => match &rec.decision {
                    Some(d) => return Ok(QueryAnswer::Decided(d.clone())),
                    None => (
                        lock(&self.inner.inflight).contains_key(&txn),
                        rec.handed_over,
                        rec.committing,
                        now_ms() < rec.deadline_ms,
                    ),
                },
                Lookup::Finished(f) => return Ok(QueryAnswer::Decided(f.decision.clone())),
                Lookup::Forgotten => return Ok(QueryAnswer::Forgotten),
                Lookup::Unknown => {
                    return Err(DriveError::NotFound(format!(
                        "no transaction {gtrid} was ever begun"
                    )));
                }
            }
        };
        if inflight {
            return Ok(QueryAnswer::InProgress);
        }
        if handed_over || (committing && before_deadline) {
            // Nobody drives it here: take it over (one-phase: ask the participant;
            // two-phase: prepare again and decide).
            if self.inner.leader_term.borrow().is_some() {
                drop(self.start_commit(txn));
            }
            return Ok(QueryAnswer::InProgress);
        }
        if before_deadline {
            return Ok(QueryAnswer::InProgress);
        }
        let d = self
            .decide(
                txn,
                decision(
                    false,
                    Reason::ParticipantInquiry,
                    "no decision was recorded".into(),
                ),
                None,
                vec![],
            )
            .instrument(tracing::info_span!("presumed_abort", gtrid = %gtrid))
            .await;
        match d {
            Ok(d) => Ok(QueryAnswer::Decided(d)),
            Err(DriveError::HandedOver) => Ok(QueryAnswer::InProgress),
            Err(e) => Err(e),
        }
    }

    /// Records a failed call to branch `bqual` of `txn`.
    pub(crate) fn note_trouble(&self, txn: u64, bqual: u32, error: &str) {
        let mut trouble = lock(&self.inner.trouble);
        let t = trouble
            .entry((txn, bqual))
            .or_insert_with(|| BranchTrouble {
                attempts: 0,
                since_ms: now_ms(),
                last_error: String::new(),
            });
        t.attempts = t.attempts.saturating_add(1);
        t.last_error = crate::txn::cut_detail(error.chars().take(256).collect());
    }

    /// Forgets the failures of branch `bqual` of `txn` (it answered).
    pub(crate) fn clear_trouble(&self, txn: u64, bqual: u32) {
        lock(&self.inner.trouble).remove(&(txn, bqual));
    }

    /// The failures of branch `bqual` of `txn`, if its calls are failing.
    pub fn trouble(&self, txn: u64, bqual: u32) -> Option<BranchTrouble> {
        lock(&self.inner.trouble).get(&(txn, bqual)).cloned()
    }

    /// How many branches have failing calls, and since when the oldest (Unix ms).
    pub fn trouble_summary(&self) -> (usize, Option<u64>) {
        let trouble = lock(&self.inner.trouble);
        (trouble.len(), trouble.values().map(|t| t.since_ms).min())
    }

    /// Open participant channels.
    pub fn open_channels(&self) -> usize {
        self.inner.pool.len()
    }

    /// Is a commit of `txn` being driven on this node right now?
    pub fn is_preparing(&self, txn: u64) -> bool {
        lock(&self.inner.inflight).contains_key(&txn)
    }
}

async fn wait_slot(mut slot: CommitSlot) -> Result<Decision, DriveError> {
    loop {
        if let Some(r) = slot.borrow().clone() {
            return r;
        }
        if slot.changed().await.is_err() {
            return slot.borrow().clone().unwrap_or_else(|| {
                Err(DriveError::Unavailable(
                    "the commit run was interrupted; retry".into(),
                ))
            });
        }
    }
}

/// A decision made now. The detail is cut before it reaches the log (a participant's
/// NO reason may be megabytes; every entry must stay small).
fn decision(commit: bool, reason: Reason, detail: String) -> Decision {
    Decision {
        commit,
        reason,
        detail: crate::txn::cut_detail(detail),
        decided_ms: now_ms(),
    }
}

/// The protobuf xid of a branch.
pub fn xid_pb(gtrid: Gtrid, bqual: u32) -> pb::Xid {
    pb::Xid {
        format_id: ratify_proto::XID_FORMAT_ID,
        gtrid: gtrid.to_string(),
        bqual: bqual.to_string(),
    }
}

/// The state machine answered a command with a result of another command: a bug,
/// reported as retryable rather than crashing the node.
fn unexpected(answer: CommandResult) -> DriveError {
    DriveError::Unavailable(format!("unexpected state machine answer {answer:?}"))
}

fn refusal(r: Refusal) -> DriveError {
    match r {
        Refusal::NotFound => DriveError::NotFound("no such transaction".into()),
        Refusal::NoClusterId => DriveError::Unavailable(r.to_string()),
        Refusal::Forgotten => DriveError::Forgotten(
            "the transaction completed and its outcome was forgotten (older than the \
             coordinator's outcome retention); ask the participants"
                .into(),
        ),
        Refusal::AlreadyDecided(_)
        | Refusal::TooManyBranches
        | Refusal::BranchSetChanged { .. }
        | Refusal::HandedOver
        | Refusal::Committing => DriveError::Precondition(r.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::MAX_DETAIL_BYTES;

    #[test]
    fn a_huge_detail_is_cut_before_it_reaches_the_log() {
        let d = decision(false, Reason::VotedNo, "x".repeat(4 << 20));
        assert!(d.detail.len() <= MAX_DETAIL_BYTES);
    }
}
