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
//! - [`operator`]: operator resolution (abort, commit, settle a heuristic outcome).
//!
//! One driver per transaction: commits of the same gtrid on this node share one
//! run (`Runs::slots`), and every write is a Raft proposal, so a deposed leader's late
//! decisions cannot commit; before every participant fan-out the driver checks that
//! it still leads in its term and that a quorum confirmed it recently (the lease in
//! [`leader`]), so a leader that was paused stops calling participants before it
//! hears it was deposed (docs/design.md, rules 8 and 15).
//!
//! One-phase commits hand the outcome to the participant first: a `HandOver` entry
//! is logged before the call, and from then on only the participant's answer can
//! decide (docs/design.md, rule 10).
//!
//! Nothing is logged before a transaction's commit (docs/design.md, rule 16): Begin
//! and Enlist live in the leader's memory ([`Runs::active`]), with numbers from a
//! block the leader reserved in the log. The first logged step carries the whole
//! record (`Open`). A two-phase commit logs `CommitStarted` alongside the prepare
//! round, and the transaction is committed once that entry is durable and every
//! branch voted YES (parallel commit): the client is answered then, and the decision
//! entry follows before phase 2.

mod batcher;
mod leader;
mod operator;
pub mod participants;
mod phase2;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use ratify_common::failpoint;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::metrics::Counters;
use crate::raft::SharedSm;
use crate::txn::{
    describe, BranchRecord, BranchSpec, Command, CommandResult, Decision, Lookup, Reason, Refusal,
    Retention, Seed, MAX_BRANCHES,
};
use crate::types::typ::{Raft, RaftError};
use crate::types::{now_ms, Gtrid, NodeId, NodeInfo};
pub use operator::{OperatorRequest, Resolution};
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
    /// How participants are dialled: mutual TLS with the node's certificate, or
    /// plaintext under `--insecure` (docs/design.md, "Security").
    pub transport: ratify_common::tls::Transport,
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
            transport: ratify_common::tls::Transport::Plain,
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

/// What a run is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Commit (two-phase, one-phase, or at once without branches).
    Commit,
    /// Abort for this reason, unless the transaction can no longer be aborted (handed
    /// over, or committing: then learn its outcome instead).
    Abort(Reason),
}

/// A transaction as a run finds it.
enum Found {
    /// Decided (live or completed).
    Decided(Decision),
    /// Known only to this leader's memory (`held`), or to the client that named its
    /// branches.
    Memory(Seed, bool),
    /// Live in the table and undecided.
    Table {
        /// Its branches.
        branches: Vec<BranchRecord>,
        /// A one-phase commit may have been sent: the participant decides.
        handed_over: bool,
        /// A prepare may have been sent, and it may be committed already.
        committing: bool,
    },
    /// Issued, never logged, and nobody here holds it: it lost its leader.
    Lost,
}

/// Leader-local state, behind one lock.
#[derive(Default)]
struct Runs {
    /// One run per transaction on this node (a commit, an abort, a take-over): later
    /// callers wait for the first's result.
    slots: HashMap<u64, CommitSlot>,
    /// Transactions begun on this leader and not logged yet (docs/design.md, rule
    /// 16): dropped once a run has logged their record, and when leadership ends.
    active: HashMap<u64, Held>,
    /// Numbers this leader may hand out: `(term, next, end)`.
    numbers: Option<(u64, u64, u64)>,
    /// A reservation of the next block is under way.
    reserving: bool,
    /// When this node became the ready leader, and of which term.
    ready: Option<(u64, std::time::Instant)>,
}

impl Runs {
    /// Marks held transaction `txn` as having its record proposed: from then on the
    /// table answers for it once the record lands. False when it is not held.
    fn mark_opened(&mut self, txn: u64) -> bool {
        match self.active.get_mut(&txn) {
            Some(h) => {
                h.opened = true;
                true
            }
            None => false,
        }
    }

    /// After a proposal about held transaction `txn` (`logged`: its record is in the
    /// table now): the hold is dropped, or, when nothing landed, left as it was
    /// before the proposal, for a retry.
    fn release(&mut self, txn: u64, logged: bool) {
        if logged {
            self.active.remove(&txn);
        } else if let Some(h) = self.active.get_mut(&txn) {
            h.opened = false;
        }
    }
}

/// A transaction held in this leader's memory.
struct Held {
    /// What is known of it.
    seed: Seed,
    /// A run has proposed its record (it may be in the table now).
    opened: bool,
}

/// How many numbers one `Reserve` entry sets aside.
pub(crate) const RESERVE_BLOCK: u64 = 1 << 20;

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
    /// The cluster id once the table knows it (0 before): it is set by the first
    /// entry and never changes, so the commit path reads it here, not under the
    /// table's lock for every gtrid it renders.
    cluster: std::sync::atomic::AtomicU64,
    /// Tunables.
    config: DriverConfig,
    /// Channels to participants.
    pool: ParticipantPool,
    /// Runs, in-memory transactions and the number block (see [`Runs`]).
    runs: Mutex<Runs>,
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
        let pool = ParticipantPool::new(config.transport.clone(), Some(sm.clone()));
        let driver = Self {
            inner: Arc::new(Inner {
                id,
                raft,
                batcher,
                counters,
                sm,
                cluster: std::sync::atomic::AtomicU64::new(0),
                pool,
                config,
                runs: Mutex::new(Runs::default()),
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

    /// How this node dials participants and other nodes.
    pub fn transport(&self) -> &ratify_common::tls::Transport {
        &self.inner.config.transport
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
            .map_err(|e: ratify_common::xid::XidError| DriveError::Invalid(e.to_string()))?;
        let cluster = self.cluster_id();
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
            cluster: self.cluster_id(),
            index: txn,
        }
    }

    /// The cluster id, 0 while this node has not applied the cluster's first entry.
    fn cluster_id(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let known = self.inner.cluster.load(Ordering::Acquire);
        if known != 0 {
            return known;
        }
        let applied = self.inner.sm.read().table.cluster_id;
        if applied != 0 {
            self.inner.cluster.store(applied, Ordering::Release);
        }
        applied
    }

    /// Proposes a command and returns what the state machine answered. A committed
    /// entry is a quorum's confirmation of this node's leadership: it renews the
    /// lease from the moment the proposal started.
    async fn propose(&self, cmd: Command) -> Result<CommandResult, DriveError> {
        self.propose_group(vec![cmd]).await
    }

    /// Records a decision (or learns the one that won) and starts phase 2 if needed.
    /// With a `seed`, the transaction's record is opened in the same entry first (a
    /// transaction held in memory until now).
    async fn decide(
        &self,
        txn: u64,
        seed: Option<(&Seed, bool)>,
        decision: Decision,
        prepared: Option<u32>,
        skip: Vec<u32>,
    ) -> Result<Decision, DriveError> {
        self.decide_in_round(txn, seed, decision, prepared, skip, 0)
            .await
    }

    /// [`Self::decide`] on behalf of prepare round `round`: the only way to abort a
    /// committing transaction, and only for the round that marked it.
    async fn decide_in_round(
        &self,
        txn: u64,
        seed: Option<(&Seed, bool)>,
        decision: Decision,
        prepared: Option<u32>,
        skip: Vec<u32>,
        round: u64,
    ) -> Result<Decision, DriveError> {
        let proposed = decision.clone();
        let cmd = Command::Decide {
            txn,
            decision,
            prepared_branches: prepared,
            skip_phase2: skip,
            complete: false,
            round,
        };
        match self.propose_group(opened(txn, seed, cmd)).await? {
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

    /// Logs a change of the participant registry (`Register` or `Unregister`);
    /// whether it changed anything.
    ///
    /// # Errors
    /// `NotLeader`, `Unavailable`, `Precondition` (the registry refused it).
    pub async fn change_registry(&self, cmd: Command) -> Result<bool, DriveError> {
        self.ensure_leader().await?;
        match self.propose_group(vec![cmd]).await? {
            CommandResult::Registry { changed } => Ok(changed),
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Err(unexpected(other)),
        }
    }

    /// Proposes commands that share one entry; returns the last one's answer.
    async fn propose_group(&self, cmds: Vec<Command>) -> Result<CommandResult, DriveError> {
        let started = leader::boot_clock();
        let term = *self.inner.leader_term.borrow();
        let write = self.inner.batcher.submit_group(cmds);
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

    /// Begins a transaction in this leader's memory, enlisting `branches` (nothing is
    /// logged: docs/design.md, rule 16). The answer lists one branch per requested
    /// one, in request order (a repeated spec gets the same branch).
    ///
    /// # Errors
    /// `NotLeader`, `Unavailable` (no number block yet), `Exhausted`, `Invalid`.
    pub async fn begin(
        &self,
        timeout: Duration,
        labels: BTreeMap<String, String>,
        branches: Vec<BranchSpec>,
    ) -> Result<Begun, DriveError> {
        self.ensure_leader().await?;
        let term = self.ready_term()?;
        let table_live = self.inner.sm.read().table.live.len();
        let now = now_ms();
        let mut seed = Seed {
            created_ms: now,
            deadline_ms: now.saturating_add(timeout.as_millis() as u64),
            labels,
            branches: Vec::new(),
        };
        let mut records = Vec::with_capacity(branches.len());
        for spec in branches {
            records.push(enlist_in(&mut seed, spec)?);
        }
        let (txn, refill) = {
            let mut runs = lock(&self.inner.runs);
            let live = table_live + runs.active.len();
            if live >= self.inner.config.max_live {
                Counters::inc(&self.inner.counters.begins_refused);
                return Err(DriveError::Exhausted(format!(
                    "{live} transactions are live, the most this cluster takes \
                     (--max-live-txns); retry later"
                )));
            }
            let Some((t, next, end)) = runs.numbers.filter(|&(t, n, e)| t == term && n < e) else {
                return Err(DriveError::Unavailable(
                    "this leader has no transaction numbers reserved yet; retry".into(),
                ));
            };
            runs.numbers = Some((t, next + 1, end));
            let refill = !runs.reserving && end - next < RESERVE_BLOCK / 2;
            if refill {
                runs.reserving = true;
            }
            runs.active.insert(
                next,
                Held {
                    seed: seed.clone(),
                    opened: false,
                },
            );
            (next, refill)
        };
        Counters::inc(&self.inner.counters.begins);
        if refill {
            let driver = self.clone();
            tokio::spawn(async move { driver.reserve(term).await });
        }
        Ok(Begun {
            gtrid: self.gtrid(txn),
            deadline_ms: seed.deadline_ms,
            branches: records,
        })
    }

    /// Reserves the next block of numbers for `term` (logged, awaited).
    pub(super) async fn reserve(&self, term: u64) -> bool {
        let table = self.inner.sm.read().table.next_txn.max(1);
        let from = {
            let runs = lock(&self.inner.runs);
            match runs.numbers {
                Some((t, _, end)) if t == term => end.max(table),
                _ => table,
            }
        };
        let upto = from.saturating_add(RESERVE_BLOCK);
        let ok = self.propose(Command::Reserve { upto }).await.is_ok();
        let mut runs = lock(&self.inner.runs);
        runs.reserving = false;
        if ok && self.is_current_term(term) {
            runs.numbers = match runs.numbers {
                Some((t, next, _)) if t == term => Some((t, next, upto)),
                _ => Some((term, from, upto)),
            };
        }
        ok
    }

    /// Enlists a branch in an ACTIVE transaction (idempotent per endpoint + resource).
    /// Unlike Begin's branches this is logged, with the transaction's record if it
    /// was only in memory: the branch may come from another process than the one that
    /// began the transaction, whose branch list would then miss it after a leader
    /// change (docs/design.md, rule 16).
    ///
    /// # Errors
    /// `Precondition` once commit has started, the transaction is decided, or it is
    /// not known to this leader (it lost its leader: roll it back and start again).
    pub async fn enlist(
        &self,
        gtrid: Gtrid,
        branch: BranchSpec,
    ) -> Result<BranchRecord, DriveError> {
        self.ensure_leader().await?;
        failpoint::hit("coord.before_enlist").await;
        let txn = gtrid.index;
        let in_table = self.has_record(txn);
        let held = {
            let mut runs = lock(&self.inner.runs);
            if runs.slots.contains_key(&txn) {
                return Err(DriveError::Precondition(format!(
                    "transaction {gtrid} is committing or being decided; it takes no more \
                     branches"
                )));
            }
            // Held here and not in the table yet (another Enlist's record may be on
            // its way: `Open` again is harmless).
            match runs.active.get_mut(&txn) {
                Some(h) if !in_table => {
                    h.opened = true;
                    Some(h.seed.clone())
                }
                _ => None,
            }
        };
        if held.is_none() {
            match self.found(txn, None)? {
                Found::Table {
                    handed_over: false,
                    committing: false,
                    ..
                } => {}
                Found::Decided(d) => {
                    return Err(DriveError::Precondition(format!(
                        "transaction already decided ({})",
                        describe(&d)
                    )))
                }
                Found::Table {
                    handed_over: true, ..
                } => return Err(refusal(Refusal::HandedOver)),
                Found::Table { .. } => return Err(refusal(Refusal::Committing)),
                Found::Memory(..) | Found::Lost => {
                    return Err(DriveError::Precondition(format!(
                        "transaction {gtrid} is not known to this leader (its leader changed \
                         before it committed); roll it back, with its branches, and start again"
                    )))
                }
            }
        }
        let cmd = Command::Enlist { txn, branch };
        let answer = self
            .propose_group(opened(txn, held.as_ref().map(|s| (s, true)), cmd))
            .await;
        if held.is_some() && answer.is_ok() {
            // The table holds its record now.
            let mut runs = lock(&self.inner.runs);
            if !runs.slots.contains_key(&txn) {
                runs.active.remove(&txn);
            }
        }
        match answer? {
            CommandResult::Enlisted(b) => Ok(b),
            CommandResult::Refused(r) => Err(refusal(r)),
            other => Err(unexpected(other)),
        }
    }

    /// Commits: runs prepare on every branch, logs the decision, starts phase 2 and
    /// returns the decision. Idempotent: a decided transaction returns its decision.
    /// `branches` is the client's list of the transaction's branches: a leader that
    /// does not know the transaction (it was begun on a leader that failed) drives it
    /// from that list; without it such a transaction is aborted.
    ///
    /// # Errors
    /// `NotLeader`, `NotFound`, `Forgotten`, `Unavailable`; never for a domain abort.
    pub async fn commit(
        &self,
        gtrid: Gtrid,
        branches: Option<Vec<BranchSpec>>,
    ) -> Result<Decision, DriveError> {
        self.settle(gtrid, Action::Commit, branches).await
    }

    /// The recorded decision, or the result of a run asked to do `action`.
    async fn settle(
        &self,
        gtrid: Gtrid,
        action: Action,
        branches: Option<Vec<BranchSpec>>,
    ) -> Result<Decision, DriveError> {
        self.ensure_leader().await?;
        if let Some(d) = self.decided(gtrid.index)? {
            return Ok(d);
        }
        wait_slot(self.start_run(gtrid.index, action, branches)).await
    }

    /// Aborts unless already decided; returns the decision in force. A transaction
    /// handed to its one-phase participant, or whose commit was logged as started,
    /// cannot be aborted: the answer is the participant's (or the votes'), learned by
    /// the run (docs/design.md, rules 10 and 16).
    ///
    /// # Errors
    /// `NotLeader`, `NotFound`, `Forgotten`, `Unavailable`.
    pub async fn rollback(
        &self,
        gtrid: Gtrid,
        branches: Option<Vec<BranchSpec>>,
    ) -> Result<Decision, DriveError> {
        self.settle(gtrid, Action::Abort(Reason::ClientRollback), branches)
            .instrument(tracing::info_span!("rollback", gtrid = %gtrid))
            .await
    }

    /// The recorded decision of `txn`, if any.
    fn decided(&self, txn: u64) -> Result<Option<Decision>, DriveError> {
        match self.found(txn, None)? {
            Found::Decided(d) => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// Where `txn` stands: this leader's memory first, then the table; a number that
    /// was never logged is driven from the client's `branches` when given.
    fn found(&self, txn: u64, branches: Option<&[BranchSpec]>) -> Result<Found, DriveError> {
        // Never hold `runs` while taking the state machine's lock (the scan and the
        // services take them the other way round).
        let (held, unissued) = {
            let runs = lock(&self.inner.runs);
            let held = runs.active.get(&txn).map(|h| (h.seed.clone(), h.opened));
            // A number of this leader's block not handed out yet: nobody holds it,
            // and no record may be made for it before Begin hands it out.
            let unissued = matches!(runs.numbers, Some((_, next, end)) if txn >= next && txn < end);
            (held, unissued)
        };
        if let Some((seed, opened)) = held {
            // Once a run proposed its record, the table says where it stands, unless
            // the record has not landed (or did not).
            if !opened
                || !matches!(
                    self.inner.sm.read().table.lookup(txn),
                    Lookup::Live(_) | Lookup::Finished(_)
                )
            {
                return Ok(Found::Memory(seed, true));
            }
        }
        if unissued {
            return Err(DriveError::NotFound(format!(
                "no transaction {} was ever begun in this cluster",
                self.gtrid(txn)
            )));
        }
        let sm = self.inner.sm.read();
        match sm.table.lookup(txn) {
            Lookup::Live(rec) => match &rec.decision {
                Some(d) => {
                    let d = d.clone();
                    drop(sm);
                    self.ensure_phase2(txn);
                    Ok(Found::Decided(d))
                }
                None => Ok(Found::Table {
                    branches: rec.branches.clone(),
                    handed_over: rec.handed_over,
                    committing: rec.committing,
                }),
            },
            Lookup::Finished(f) => Ok(Found::Decided(f.decision.clone())),
            // (The gtrid from the guard held: taking the lock again could wait behind
            // a writer and deadlock.)
            Lookup::Forgotten => Err(DriveError::Forgotten(format!(
                "transaction {} completed and its outcome was forgotten (older than the \
                 coordinator's outcome retention); ask the participants",
                Gtrid {
                    cluster: sm.table.cluster_id,
                    index: txn
                }
            ))),
            Lookup::Unknown => Err(DriveError::NotFound(format!(
                "no transaction {} was ever begun in this cluster",
                Gtrid {
                    cluster: sm.table.cluster_id,
                    index: txn
                }
            ))),
            Lookup::Absent => Ok(match branches {
                Some(b) => {
                    let now = now_ms();
                    let timeout = self.inner.config.default_txn_timeout.as_millis() as u64;
                    Found::Memory(
                        Seed {
                            created_ms: now,
                            deadline_ms: now.saturating_add(timeout),
                            labels: BTreeMap::new(),
                            branches: b.to_vec(),
                        },
                        false,
                    )
                }
                None => Found::Lost,
            }),
        }
    }

    /// Starts the run of `txn` unless one runs here already (whatever it was asked
    /// to do), and returns the slot its result will appear in.
    fn start_run(&self, txn: u64, action: Action, branches: Option<Vec<BranchSpec>>) -> CommitSlot {
        // One run per transaction on this node: later callers wait for the first.
        let (tx, slot) = {
            let mut runs = lock(&self.inner.runs);
            match runs.slots.get(&txn) {
                Some(slot) => (None, slot.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    runs.slots.insert(txn, rx.clone());
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
            let span = match action {
                Action::Commit => tracing::info_span!("commit", gtrid = %self.gtrid(txn)),
                Action::Abort(reason) => {
                    tracing::info_span!("abort", gtrid = %self.gtrid(txn), ?reason)
                }
            };
            // The caller's trace context goes with the run (docs/design.md, "Tracing").
            let trace = ratify_proto::trace::inherited();
            tokio::spawn(ratify_proto::trace::scope(
                trace,
                async move {
                    let result = driver.run(txn, action, branches, &tx).await;
                    if tx.borrow().is_none() {
                        let _ = tx.send(Some(result));
                    }
                    // Once its record is in the table, the table says where it stands;
                    // a run that logged nothing (lost its lease, a proposal timed out)
                    // leaves it held here for a retry. (The state machine is read
                    // before `runs` is locked: never the other way round.)
                    let logged = driver.has_record(txn);
                    let mut runs = lock(&driver.inner.runs);
                    runs.slots.remove(&txn);
                    runs.release(txn, logged);
                }
                .instrument(span),
            ));
        }
        slot
    }

    /// The term this node leads and is ready in.
    fn ready_term(&self) -> Result<u64, DriveError> {
        self.inner
            .leader_term
            .borrow()
            .ok_or_else(|| DriveError::Unavailable("leadership lost; retry".into()))
    }

    /// One run: finds the transaction and commits it, aborts it, or learns the
    /// outcome it can no longer be talked out of. `publish` may get the answer before
    /// the run ends (a parallel commit answers once it is committed, and logs the
    /// decision after).
    async fn run(
        &self,
        txn: u64,
        action: Action,
        branches: Option<Vec<BranchSpec>>,
        publish: &watch::Sender<Option<Result<Decision, DriveError>>>,
    ) -> Result<Decision, DriveError> {
        let term = self.ready_term()?;
        loop {
            let found = self.found(txn, branches.as_deref())?;
            let (seed, held, records, handed_over, committing) = match found {
                Found::Decided(d) => return Ok(d),
                Found::Lost => {
                    // Begun on a leader that failed, never logged, and no branch list
                    // to drive it: abort it durably before answering (rule 3).
                    let reason = match action {
                        Action::Commit => Reason::LeaderLost,
                        Action::Abort(r) => r,
                    };
                    let empty = Seed::default();
                    let d = decision(false, reason, "no record of the transaction".into());
                    return self
                        .decide(txn, Some((&empty, false)), d, None, vec![])
                        .await;
                }
                Found::Memory(seed, held) => {
                    if held {
                        // From here on the record may be in the log: the branch set is
                        // fixed, and the table answers once the run ends.
                        lock(&self.inner.runs).mark_opened(txn);
                    }
                    let records = seed.records();
                    (Some(seed), held, records, false, false)
                }
                Found::Table {
                    branches,
                    handed_over,
                    committing,
                } => (None, false, branches, handed_over, committing),
            };
            let seed = seed.as_ref().map(|s| (s, held));
            if handed_over {
                let [only] = records.as_slice() else {
                    return Err(unexpected(CommandResult::HandedOver));
                };
                return self.one_phase(txn, only, term).await;
            }
            if committing {
                // Someone (maybe this node before a restart, maybe a leader that
                // died) logged the commit as started: it may be committed already.
                return self.recover_two_phase(txn, records, term).await;
            }
            if let Action::Abort(reason) = action {
                let detail = match reason {
                    Reason::Timeout => "transaction outlived its timeout",
                    Reason::ParticipantInquiry => "no decision was recorded",
                    _ => "",
                };
                match self
                    .decide(
                        txn,
                        seed,
                        decision(false, reason, detail.into()),
                        None,
                        vec![],
                    )
                    .await
                {
                    // Handed over or committing meanwhile (a run of another leader
                    // whose entry landed first): learn its outcome instead.
                    Err(DriveError::HandedOver) => continue,
                    Err(DriveError::Precondition(_)) if self.is_committing(txn) => continue,
                    other => return other,
                }
            }
            match records.as_slice() {
                [] => {
                    return self
                        .decide(
                            txn,
                            seed,
                            decision(true, Reason::ClientCommit, String::new()),
                            Some(0),
                            vec![],
                        )
                        .await
                }
                [only] if self.inner.config.one_phase => {
                    // Record the hand-over before anything is sent: once the call may
                    // be on the wire, the branch may commit, and nobody may abort.
                    let cmds = opened(txn, seed, Command::HandOver { txn, branches: 1 });
                    match self.propose_group(cmds).await? {
                        CommandResult::HandedOver => return self.one_phase(txn, only, term).await,
                        CommandResult::Decided(d) => return Ok(d),
                        // A prepare went out from a leader without one phase: read again.
                        CommandResult::Refused(
                            Refusal::BranchSetChanged { .. } | Refusal::Committing,
                        ) => continue,
                        CommandResult::Refused(r) => return Err(refusal(r)),
                        other => return Err(unexpected(other)),
                    }
                }
                _ => return self.two_phase(txn, seed, records, term, publish).await,
            }
        }
    }

    /// Has this leader led long enough that a transaction it never heard of cannot
    /// still be retried by its client (see `query`)?
    fn lost_grace_over(&self) -> bool {
        let term = *self.inner.leader_term.borrow();
        match (lock(&self.inner.runs).ready, term) {
            (Some((t, since)), Some(term)) if t == term => {
                since.elapsed() >= self.inner.config.default_txn_timeout
            }
            _ => false,
        }
    }

    /// Marks this node ready as leader of `term` now.
    pub(super) fn mark_ready(&self, term: u64) {
        lock(&self.inner.runs).ready = Some((term, std::time::Instant::now()));
    }

    /// Has `txn` a record in the table (live, kept, or kept once and forgotten)?
    fn has_record(&self, txn: u64) -> bool {
        matches!(
            self.inner.sm.read().table.lookup(txn),
            Lookup::Live(_) | Lookup::Finished(_) | Lookup::Forgotten
        )
    }

    /// Is `txn` logged as committing (and undecided)?
    fn is_committing(&self, txn: u64) -> bool {
        matches!(self.inner.sm.read().table.lookup(txn), Lookup::Live(r) if r.committing && r.decision.is_none())
    }

    /// A two-phase commit driven from the start by this run: `CommitStarted` (with
    /// the record, when it was only in memory) is logged alongside the prepare round.
    async fn two_phase(
        &self,
        txn: u64,
        seed: Option<(&Seed, bool)>,
        branches: Vec<BranchRecord>,
        term: u64,
        publish: &watch::Sender<Option<Result<Decision, DriveError>>>,
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
        // Queued before the first prepare is sent, so it precedes the decision in
        // the log. From then on no leader switches the transaction to one phase or
        // aborts it but on a vote, and a new leader takes its commit over. (The
        // deliberate bug below logs nothing before it sends COMMIT.)
        let bug = failpoint::is_on("bug.commit_before_decision");
        let round = rand::random::<u64>().max(1);
        let started = (!bug).then(|| {
            self.inner.batcher.submit_group(opened(
                txn,
                seed,
                Command::CommitStarted {
                    txn,
                    branches: n,
                    round,
                },
            ))
        });
        let (read_only, failure) = self.collect_votes(gtrid, &branches, timeout, false).await;
        if failure.is_none() && bug {
            self.bug_commit_before_decision(txn, &branches, &read_only)
                .await;
        }
        failpoint::hit("coord.after_votes").await;
        if !self.still_leader(term) {
            // A stale run decides nothing: the next leader takes the commit over.
            return Err(DriveError::Unavailable(
                "leadership lost during prepare; retry".into(),
            ));
        }
        if let Some((reason, detail, _)) = failure {
            tracing::debug!(?reason, %detail, "aborting");
            let abort = decision(false, reason, detail);
            return match self
                .decide_in_round(txn, seed, abort, None, read_only, round)
                .await
            {
                // Another round marked it (it may be committed): that round, or a
                // re-drive, decides.
                Err(DriveError::Precondition(_)) if self.is_committing(txn) => {
                    self.recover_two_phase(txn, branches, term).await
                }
                other => other,
            };
        }
        let commit = decision(true, Reason::ClientCommit, String::new());
        // Parallel commit: with every vote YES and the marker durable, the
        // transaction is committed (a new leader that prepares again gets the same
        // YES votes, prepared branches being durable). A READ_ONLY branch forgets its
        // xid and would vote NO when asked again, so then the decision is logged first.
        if let Some(started) = started.filter(|_| read_only.is_empty()) {
            match started.await {
                Ok(CommandResult::CommitStarted) => {
                    Counters::inc(&self.inner.counters.parallel_commits);
                    let _ = publish.send(Some(Ok(commit.clone())));
                    return self.log_commit(txn, n, commit, term).await;
                }
                Ok(CommandResult::Decided(d)) => return Ok(d),
                Ok(CommandResult::HandedOver) => return Err(DriveError::HandedOver),
                // A branch was enlisted meanwhile (the decision below is refused
                // too), another round marked it first (this one must not take it as
                // committed at its votes), or the marker's fate is unknown: log the
                // decision itself.
                Ok(CommandResult::Refused(
                    Refusal::BranchSetChanged { .. } | Refusal::Committing,
                )) => {}
                Ok(CommandResult::Refused(r)) => return Err(refusal(r)),
                Ok(_) | Err(_) => {}
            }
        }
        match self
            .decide(txn, seed, commit, Some(n), read_only.clone())
            .await
        {
            Err(DriveError::Precondition(detail)) if !self.is_committing(txn) => {
                // A branch was enlisted while we prepared: it was never prepared, so
                // the commit cannot stand. Abort (the branch set is now fixed).
                self.decide_in_round(
                    txn,
                    None,
                    decision(false, Reason::ProtocolError, detail),
                    None,
                    read_only,
                    round,
                )
                .await
            }
            other => other,
        }
    }

    /// Logs the decision of a transaction that is committed already (parallel
    /// commit), retrying while this node leads; a new leader re-drives it otherwise.
    async fn log_commit(
        &self,
        txn: u64,
        n: u32,
        commit: Decision,
        term: u64,
    ) -> Result<Decision, DriveError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            match self
                .decide(txn, None, commit.clone(), Some(n), vec![])
                .await
            {
                Ok(d) => {
                    if !d.commit {
                        tracing::error!(
                            ?d,
                            "BUG: a transaction committed by its votes was recorded as aborted"
                        );
                    }
                    return Ok(commit);
                }
                Err(e) if !self.still_leader(term) => {
                    tracing::debug!(error = %e, "commit decision not logged; the next leader re-drives it");
                    return Ok(commit);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "commit decision not logged yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Re-drives a transaction logged as committing whose driver is gone: it may be
    /// committed already (every vote YES, nobody logged it), so only a NO vote may
    /// abort it; an unreachable branch is asked again until it answers (rule 16).
    async fn recover_two_phase(
        &self,
        txn: u64,
        branches: Vec<BranchRecord>,
        term: u64,
    ) -> Result<Decision, DriveError> {
        let n = branches.len() as u32;
        let gtrid = self.gtrid(txn);
        let timeout = self.inner.config.prepare_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            if !self.may_drive(term).await {
                return Err(DriveError::Unavailable(
                    "leadership lost while re-driving a commit; retry".into(),
                ));
            }
            let (read_only, failure) = self.collect_votes(gtrid, &branches, timeout, true).await;
            if failure.is_none() || matches!(failure, Some((Reason::VotedNo, ..))) {
                for b in &branches {
                    self.clear_trouble(txn, b.bqual);
                }
            }
            match failure {
                None => {
                    let d = decision(true, Reason::ClientCommit, String::new());
                    return self.decide(txn, None, d, Some(n), read_only).await;
                }
                Some((Reason::VotedNo, detail, _)) => {
                    // A real NO: that branch is not prepared (and its tombstone fences
                    // any earlier round's prepare), so no round saw YES everywhere.
                    // The abort is made in the marking round's name.
                    let round = match self.inner.sm.read().table.lookup(txn) {
                        Lookup::Live(r) => r.round,
                        _ => 0,
                    };
                    let d = decision(false, Reason::VotedNo, detail);
                    return self
                        .decide_in_round(txn, None, d, None, read_only, round)
                        .await;
                }
                Some((_, detail, bqual)) => {
                    tracing::debug!(bqual, %detail, "re-driven commit: a branch did not vote; asking again");
                    Counters::inc(&self.inner.counters.phase2_retries);
                    // Shown to operators as a failing branch (FAILING, `failed_calls`).
                    self.note_trouble(txn, bqual, &detail);
                    if let Some(d) = self.decided(txn)? {
                        return Ok(d);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Prepares every branch in parallel; returns the READ_ONLY branches and the first
    /// failure (a NO, an unreachable branch, a garbage answer: why, what, which
    /// branch), which ends the round.
    async fn collect_votes(
        &self,
        gtrid: Gtrid,
        branches: &[BranchRecord],
        timeout: Duration,
        recovering: bool,
    ) -> (Vec<u32>, Option<(Reason, String, u32)>) {
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
                    failure = Some((Reason::VotedNo, d, bqual));
                    break;
                }
                // A first prepare: a NO. A re-driven one: asked again.
                PrepareOutcome::NotHosted(d) => {
                    let reason = if recovering {
                        Reason::ParticipantUnreachable
                    } else {
                        Reason::VotedNo
                    };
                    failure = Some((reason, d, bqual));
                    break;
                }
                PrepareOutcome::Unreachable(d) => {
                    failure = Some((Reason::ParticipantUnreachable, d, bqual));
                    break;
                }
                PrepareOutcome::Garbage(d) => {
                    failure = Some((Reason::ProtocolError, d, bqual));
                    break;
                }
            }
        }

        (read_only, failure)
    }

    /// A DELIBERATE BUG, off unless the `bug.commit_before_decision` switch is on (see
    /// [`failpoint`]): with nothing of the commit logged (no marker, no decision), sends
    /// COMMIT to every prepared branch but the last, breaking docs/design.md, rules 2
    /// and 16. A leader that dies then leaves the last branch in doubt, and the next
    /// leader, which never heard of the transaction, presumes it aborted when that
    /// branch asks. It exists so the chaos suite can show that its checker catches a
    /// broken rule.
    async fn bug_commit_before_decision(
        &self,
        txn: u64,
        branches: &[BranchRecord],
        read_only: &[u32],
    ) {
        let gtrid = self.gtrid(txn);
        let timeout = self.inner.config.prepare_timeout;
        let prepared: Vec<_> = branches
            .iter()
            .filter(|b| !read_only.contains(&b.bqual))
            .collect();
        let calls = prepared
            .iter()
            .take(prepared.len().saturating_sub(1))
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
                    None,
                    decision(commit, reason, String::new()),
                    commit.then_some(1),
                    vec![branch.bqual],
                )
                .await;
        }
    }

    /// Answers a participant's "what happened to T?". When nothing is decided and the
    /// transaction cannot still commit, logs ABORT first (docs/design.md, rule 3):
    /// the read is linearizable, so no decision from an earlier term can still
    /// appear. A transaction handed to its one-phase participant, or logged as
    /// committing, is never presumed aborted; if no run drives it here, this leader
    /// takes it over (asking the participant, or preparing again) instead of leaving
    /// its branches locked. A number that was never logged and that this leader does
    /// not hold lost its leader before any decision: presumed aborted (rule 16).
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
        if lock(&self.inner.runs).slots.contains_key(&txn) {
            return Ok(QueryAnswer::InProgress);
        }
        let before_deadline = |deadline_ms: u64| now_ms() < deadline_ms;
        let presume = match self.found(txn, None) {
            Ok(Found::Decided(d)) => return Ok(QueryAnswer::Decided(d)),
            Ok(Found::Memory(seed, _)) => !before_deadline(seed.deadline_ms),
            Ok(Found::Table {
                handed_over,
                committing,
                ..
            }) if handed_over || committing => {
                // Nobody drives it here: take it over.
                if self.inner.leader_term.borrow().is_some() {
                    drop(self.start_run(txn, Action::Commit, None));
                }
                return Ok(QueryAnswer::InProgress);
            }
            Ok(Found::Table { .. }) => {
                let deadline = match self.inner.sm.read().table.lookup(txn) {
                    Lookup::Live(r) => r.deadline_ms,
                    _ => 0,
                };
                !before_deadline(deadline)
            }
            // Lost with its leader, before anything was logged: its client may still
            // retry the commit here with its branch list, so for a while (the default
            // transaction timeout from this leader's start) the answer is IN_PROGRESS.
            Ok(Found::Lost) => self.lost_grace_over(),
            Err(DriveError::Forgotten(_)) => return Ok(QueryAnswer::Forgotten),
            Err(e) => return Err(e),
        };
        if !presume {
            return Ok(QueryAnswer::InProgress);
        }
        let run = self.start_run(txn, Action::Abort(Reason::ParticipantInquiry), None);
        match wait_slot(run)
            .instrument(tracing::info_span!("presumed_abort", gtrid = %gtrid))
            .await
        {
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

    /// Every branch whose calls are failing, by (transaction, bqual): a copy, so a
    /// caller walking the table takes no lock per branch.
    pub fn trouble_snapshot(&self) -> HashMap<(u64, u32), BranchTrouble> {
        lock(&self.inner.trouble).clone()
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

    /// Is a run of `txn` (a commit, or an abort) under way on this node right now?
    pub fn is_preparing(&self, txn: u64) -> bool {
        lock(&self.inner.runs).slots.contains_key(&txn)
    }

    /// The transactions this leader holds in memory only (begun here, not logged),
    /// in number order, from `after` (exclusive).
    pub fn in_memory(&self, after: Option<u64>) -> Vec<(u64, Seed)> {
        let runs = lock(&self.inner.runs);
        let mut v: Vec<_> = runs
            .active
            .iter()
            .filter(|(&t, _)| after.is_none_or(|a| t > a))
            .map(|(&t, h)| (t, h.seed.clone()))
            .collect();
        v.sort_unstable_by_key(|(t, _)| *t);
        v
    }

    /// The value of label `key` of the undecided-or-live transaction `txn`, held in
    /// memory or in the table; `None` when it has no such label or is not live.
    pub fn live_label(&self, txn: u64, key: &str) -> Option<String> {
        if let Some(v) = lock(&self.inner.runs)
            .active
            .get(&txn)
            .map(|h| h.seed.labels.get(key).cloned())
        {
            return v;
        }
        let sm = self.inner.sm.read();
        sm.table.live.get(&txn)?.labels.get(key).cloned()
    }

    /// The transaction `txn`, if this leader holds it in memory only.
    pub fn held(&self, txn: u64) -> Option<Seed> {
        lock(&self.inner.runs)
            .active
            .get(&txn)
            .map(|h| h.seed.clone())
    }

    /// How many transactions this leader holds in memory only.
    pub fn held_count(&self) -> usize {
        lock(&self.inner.runs).active.len()
    }

    /// Drops what this node held as leader of an earlier term: its in-memory
    /// transactions (their clients retry with their branch lists) and its numbers.
    pub(super) fn forget_leadership(&self) {
        let mut runs = lock(&self.inner.runs);
        runs.active.clear();
        runs.numbers = None;
        runs.ready = None;
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
        audit: Default::default(),
    }
}

/// `cmd`, preceded in the same entry by the `Open` of a transaction not yet in the
/// table (held: begun on this leader).
fn opened(txn: u64, seed: Option<(&Seed, bool)>, cmd: Command) -> Vec<Command> {
    match seed {
        Some((seed, held)) => vec![
            Command::Open {
                txn,
                seed: seed.clone(),
                held,
            },
            cmd,
        ],
        None => vec![cmd],
    }
}

/// Adds a branch to an in-memory transaction, or returns the existing one for the
/// same endpoint and resource.
fn enlist_in(seed: &mut Seed, spec: BranchSpec) -> Result<BranchRecord, DriveError> {
    let bqual = match seed.branches.iter().position(|b| *b == spec) {
        Some(i) => i as u32 + 1,
        None if seed.branches.len() >= MAX_BRANCHES => {
            return Err(refusal(Refusal::TooManyBranches))
        }
        None => {
            seed.branches.push(spec.clone());
            seed.branches.len() as u32
        }
    };
    Ok(BranchRecord {
        bqual,
        spec,
        skip_phase2: false,
        heuristic: None,
    })
}

/// The protobuf xid of a branch (the shared rule of `ratify_common::xid`).
pub use ratify_common::xid::branch_pb as xid_pb;

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
        | Refusal::Committing
        | Refusal::NoHeuristic(_)
        | Refusal::Registration(_) => DriveError::Precondition(r.to_string()),
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
