//! The web console: a page and the JSON document it reads, on the metrics port.
//!
//! - `GET /` and `GET /console`: the page (plain HTML, CSS and JS embedded in the
//!   binary, no build step, nothing fetched from elsewhere). It fetches the JSON every
//!   1.5 s and updates itself in place.
//! - `GET /api/v1/console`: the JSON document ([`ConsoleView`]), documented in the
//!   README ("Web console") and meant for scripts too.
//!
//! Everything comes from this node's own state, so the page works on every node and
//! never waits on a peer: the applied table (the same on every node once it has
//! applied the same log), this node's Raft metrics (a leader adds each member's
//! replication lag), and what only the leader's driver knows (transactions in its
//! memory, branches whose calls keep failing). Decisions per second are counted by
//! this node ([`DecisionRate`], sampled once a second): a follower logs no decisions
//! and shows a flat chart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ratify_proto::pb;

use super::attention::{concerns, Concern, Thresholds};
use serde::Serialize;

use crate::driver::{BranchTrouble, Driver};
use crate::metrics::Counters;
use crate::txn::{Seed, TxnRecord, TxnTable};
use crate::types::typ::RaftMetrics;
use crate::types::{now_ms, Gtrid};

/// The page.
const INDEX_HTML: &str = include_str!("console/index.html");
/// Its script.
const CONSOLE_JS: &str = include_str!("console/console.js");
/// Its style sheet.
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The page loads nothing but its own files and the JSON, and runs no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// At most this many transactions are listed in `transactions.listed` and in
/// `needs_attention.listed` (the counts cover all of them).
pub const MAX_LISTED: usize = 200;
/// At most this many participants are listed.
pub const MAX_PARTICIPANTS: usize = 100;
/// Decision-rate samples kept (one a second).
pub const RATE_SAMPLES: usize = 120;
/// A decided transaction whose phase 2 has not finished after this long needs a person.
pub const PHASE2_OVERDUE_MS: u64 = 30_000;

/// The JSON document of `GET /api/v1/console`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleView {
    /// Version of this document's shape (fields are only added within a version).
    pub version: u32,
    /// When this node built it, its clock, Unix ms.
    pub generated_unix_ms: u64,
    /// The node that answered.
    pub node: NodeView,
    /// The cluster's members as this node knows them.
    pub members: Vec<MemberView>,
    /// Live transactions.
    pub transactions: TxnSummary,
    /// Live transactions that need a person.
    pub needs_attention: AttentionSummary,
    /// Participants holding branches that may be prepared, longest-holding first.
    pub participants: Vec<ParticipantView>,
    /// More participants hold such branches than are listed.
    pub participants_truncated: bool,
    /// Decisions this node logged, per second.
    pub decisions: DecisionsView,
}

/// The node that answered.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its Raft id.
    pub id: u64,
    /// Its Raft role: `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// That leader's client address.
    pub leader_api_addr: Option<String>,
    /// Last index in its log.
    pub last_log_index: u64,
    /// Last index applied to its table.
    pub last_applied_index: u64,
    /// Last index covered by its snapshot (0: none).
    pub snapshot_index: u64,
    /// On a leader: ms since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// The cluster id (16 hex digits; all zeros until the first leader chose it).
    pub cluster_id: String,
}

/// A member of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Raft id.
    pub id: u64,
    /// Internal Raft address.
    pub raft_addr: String,
    /// Client API address.
    pub api_addr: String,
    /// A voter (otherwise a learner).
    pub voter: bool,
    /// `leader`, `follower` or `learner` as this node knows it (for itself: its own
    /// role, which may be `candidate`).
    pub role: String,
    /// The member is the node that answered.
    pub this_node: bool,
    /// On a leader: the last log index this member is known to hold.
    pub matched_index: Option<u64>,
    /// On a leader: entries this member is behind the leader's log.
    pub lag: Option<u64>,
}

/// Live transactions (not yet COMPLETED).
#[derive(Debug, Clone, Serialize)]
pub struct TxnSummary {
    /// How many (the table's, plus on the leader those in its memory only).
    pub live: u64,
    /// Of them, held in the leader's memory only (begun, nothing logged yet).
    pub in_leader_memory: u64,
    /// How many in each state (`ACTIVE`, `PREPARING`, `COMMITTED`, `ABORTED`,
    /// `ONE_PHASE`, `HEURISTIC`; every key is present).
    pub by_state: BTreeMap<&'static str, u64>,
    /// Age of the oldest, ms.
    pub oldest_age_ms: Option<u64>,
    /// The oldest [`MAX_LISTED`], in number order.
    pub listed: Vec<TxnView>,
    /// More are live than listed.
    pub truncated: bool,
}

/// Live transactions that need a person.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionSummary {
    /// How many.
    pub count: u64,
    /// The oldest [`MAX_LISTED`], in number order.
    pub listed: Vec<TxnView>,
    /// More need a person than are listed.
    pub truncated: bool,
}

/// A live transaction.
#[derive(Debug, Clone, Serialize)]
pub struct TxnView {
    /// Its gtrid (32 hex digits).
    pub gtrid: String,
    /// `ACTIVE`, `PREPARING`, `COMMITTED`, `ABORTED`, `ONE_PHASE` or `HEURISTIC`.
    pub state: &'static str,
    /// Since it was begun, ms.
    pub age_ms: u64,
    /// When it was begun, Unix ms.
    pub created_unix_ms: u64,
    /// When it is aborted if still undecided, Unix ms.
    pub deadline_unix_ms: u64,
    /// `COMMITTED` or `ABORTED` once decided.
    pub outcome: Option<&'static str>,
    /// Why (e.g. `CLIENT_COMMIT`, `VOTED_NO`) once decided.
    pub reason: Option<&'static str>,
    /// Since the decision, ms.
    pub decided_age_ms: Option<u64>,
    /// The decision's detail (which branch voted NO, ...).
    pub detail: String,
    /// Held in the leader's memory only.
    pub in_leader_memory: bool,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Why a person is needed (empty: not needed): `heuristic`, `failing_calls`,
    /// `phase2_overdue`.
    pub attention: Vec<&'static str>,
    /// Its branches, in bqual order.
    pub branches: Vec<BranchView>,
}

/// A branch of a live transaction and what is known of its last answer.
#[derive(Debug, Clone, Serialize)]
pub struct BranchView {
    /// Branch qualifier (from 1).
    pub bqual: u32,
    /// Participant endpoint.
    pub endpoint: String,
    /// Resource at that participant.
    pub resource: String,
    /// `not_asked`, `prepare_sent`, `one_phase_sent`, `commit_pending`,
    /// `rollback_pending`, `done`, `heuristic_commit` or `heuristic_rollback`.
    pub status: &'static str,
    /// Failed calls in a row (0: none failing; known to the leader only).
    pub failed_calls: u32,
    /// Since the first of those failures, ms.
    pub failing_for_ms: Option<u64>,
    /// The last failure, short.
    pub last_error: String,
    /// What the branch said when it answered against the decision.
    pub heuristic: Option<String>,
}

/// A participant holding branches that may be prepared (prepare sent, or a one-phase
/// commit handed to it, and phase 2 not acknowledged).
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// Its endpoint.
    pub endpoint: String,
    /// Such branches.
    pub prepared_branches: u64,
    /// Of them, whose calls keep failing.
    pub failing_branches: u64,
    /// Age of the oldest such branch's transaction, ms (since Begin: the prepare time
    /// is not recorded, and a branch holds its locks since its work anyway).
    pub oldest_prepared_age_ms: u64,
    /// That transaction.
    pub oldest_gtrid: String,
}

/// Decisions this node logged (as leader), per second.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionsView {
    /// Time between samples, ms.
    pub interval_ms: u64,
    /// Commit decisions this node logged since it started.
    pub commit_total: u64,
    /// Abort decisions this node logged since it started.
    pub abort_total: u64,
    /// The last [`RATE_SAMPLES`] samples, oldest first.
    pub samples: Vec<RateSample>,
}

/// Decisions logged during one sampling interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateSample {
    /// End of the interval, Unix ms.
    pub unix_ms: u64,
    /// Commit decisions in it.
    pub commit: u64,
    /// Abort decisions in it.
    pub abort: u64,
}

/// A ring of the last [`RATE_SAMPLES`] decision counts.
#[derive(Debug, Default)]
pub struct DecisionRate {
    samples: VecDeque<RateSample>,
    last: Option<(u64, u64)>,
}

impl DecisionRate {
    /// Records the counters' totals at `unix_ms`: the sample is the change since the
    /// previous call (the first call only sets the baseline).
    pub fn record(&mut self, unix_ms: u64, commit_total: u64, abort_total: u64) {
        if let Some((c, a)) = self.last {
            if self.samples.len() == RATE_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(RateSample {
                unix_ms,
                commit: commit_total.saturating_sub(c),
                abort: abort_total.saturating_sub(a),
            });
        }
        self.last = Some((commit_total, abort_total));
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<RateSample> {
        self.samples.iter().copied().collect()
    }
}

/// What the document is built from: one node's state at one moment.
pub struct Sources<'a> {
    /// Now, Unix ms.
    pub now_ms: u64,
    /// This node's Raft metrics.
    pub raft: &'a RaftMetrics,
    /// The applied table.
    pub table: &'a TxnTable,
    /// Transactions held in the leader's memory only, in number order, with whether a
    /// commit or abort run of each is under way.
    pub held: &'a [(u64, Seed, bool)],
    /// Whether a run of a transaction is under way on this node.
    pub running: &'a dyn Fn(u64) -> bool,
    /// The failures of a branch (txn, bqual), if its calls are failing here.
    pub trouble: &'a dyn Fn(u64, u32) -> Option<BranchTrouble>,
    /// Commit and abort decisions this node logged.
    pub decision_totals: (u64, u64),
    /// The decision-rate samples.
    pub rate: Vec<RateSample>,
}

/// `TXN_STATE_PREPARING` → `PREPARING`.
fn state_name(s: pb::TxnState) -> &'static str {
    let name = s.as_str_name();
    name.strip_prefix("TXN_STATE_").unwrap_or(name)
}

fn reason_name(r: pb::Reason) -> &'static str {
    let name = r.as_str_name();
    name.strip_prefix("REASON_").unwrap_or(name)
}

/// Every state a live transaction can be in, as listed in `by_state`.
const LIVE_STATES: [pb::TxnState; 6] = [
    pb::TxnState::Active,
    pb::TxnState::Preparing,
    pb::TxnState::Committed,
    pb::TxnState::Aborted,
    pb::TxnState::OnePhase,
    pb::TxnState::Heuristic,
];

/// The branch statuses that may hold prepared state at the participant.
fn may_be_prepared(status: &str) -> bool {
    matches!(
        status,
        "prepare_sent" | "one_phase_sent" | "commit_pending" | "rollback_pending"
    )
}

/// One live transaction, with its branches' statuses and why it needs a person.
fn txn_view(s: &Sources<'_>, gtrid: Gtrid, rec: &TxnRecord, state: pb::TxnState) -> TxnView {
    let branches: Vec<BranchView> = rec
        .branches
        .iter()
        .map(|b| {
            let status = match (&rec.decision, &b.heuristic) {
                (Some(_), Some(h)) if h.committed => "heuristic_commit",
                (Some(_), Some(_)) => "heuristic_rollback",
                (Some(_), None) if b.skip_phase2 => "done",
                (Some(d), None) if d.commit => "commit_pending",
                (Some(_), None) => "rollback_pending",
                (None, _) => match state {
                    pb::TxnState::OnePhase => "one_phase_sent",
                    pb::TxnState::Preparing => "prepare_sent",
                    _ => "not_asked",
                },
            };
            let trouble = (s.trouble)(gtrid.index, b.bqual);
            BranchView {
                bqual: b.bqual,
                endpoint: b.spec.endpoint.clone(),
                resource: b.spec.resource.clone(),
                status,
                failed_calls: trouble.as_ref().map_or(0, |t| t.attempts),
                failing_for_ms: trouble
                    .as_ref()
                    .map(|t| s.now_ms.saturating_sub(t.since_ms)),
                last_error: trouble.map(|t| t.last_error).unwrap_or_default(),
                heuristic: b.heuristic.as_ref().map(|h| h.detail.clone()),
            }
        })
        .collect();
    // The rule ListNeedingAttention applies, with the console's thresholds: a failing
    // call shows at once, phase 2 after PHASE2_OVERDUE_MS.
    let limits = Thresholds {
        failing_after_ms: 0,
        overdue_after_ms: PHASE2_OVERDUE_MS,
    };
    let mut attention: Vec<&'static str> = concerns(
        rec,
        |bqual| (s.trouble)(gtrid.index, bqual),
        s.now_ms,
        limits,
    )
    .iter()
    .map(Concern::kind)
    .collect();
    attention.dedup();
    TxnView {
        gtrid: gtrid.to_string(),
        state: state_name(state),
        age_ms: s.now_ms.saturating_sub(rec.created_ms),
        created_unix_ms: rec.created_ms,
        deadline_unix_ms: rec.deadline_ms,
        outcome: rec
            .decision
            .as_ref()
            .map(|d| if d.commit { "COMMITTED" } else { "ABORTED" }),
        reason: rec
            .decision
            .as_ref()
            .map(|d| reason_name(pb::Reason::from(d.reason))),
        decided_age_ms: rec
            .decision
            .as_ref()
            .map(|d| s.now_ms.saturating_sub(d.decided_ms)),
        detail: rec
            .decision
            .as_ref()
            .map(|d| d.detail.clone())
            .unwrap_or_default(),
        in_leader_memory: false,
        labels: rec.labels.clone(),
        attention,
        branches,
    }
}

/// The members, with each one's lag when this node leads.
fn members(raft: &RaftMetrics) -> Vec<MemberView> {
    let membership = raft.membership_config.membership();
    let last = raft.last_log_index.unwrap_or(0);
    membership
        .nodes()
        .map(|(&id, node)| {
            let voter = membership.voter_ids().any(|v| v == id);
            let role = if id == raft.id {
                format!("{:?}", raft.state).to_lowercase()
            } else if raft.current_leader == Some(id) {
                "leader".to_string()
            } else if voter {
                "follower".to_string()
            } else {
                "learner".to_string()
            };
            let matched_index = raft.replication.as_ref().map(|r| match r.get(&id) {
                Some(m) => m.map_or(0, |l| l.index),
                // The leader is not always in its own replication map.
                None if id == raft.id => last,
                None => 0,
            });
            MemberView {
                id,
                raft_addr: node.raft_addr.clone(),
                api_addr: node.api_addr.clone(),
                voter,
                role,
                this_node: id == raft.id,
                matched_index,
                lag: matched_index.map(|m| last.saturating_sub(m)),
            }
        })
        .collect()
}

/// Builds the document from `s`. Pure: tests call it with a hand-made table.
pub fn build(s: &Sources<'_>) -> ConsoleView {
    let raft = s.raft;
    let table = s.table;
    let membership = raft.membership_config.membership();
    let node = NodeView {
        id: raft.id,
        role: format!("{:?}", raft.state).to_lowercase(),
        term: raft.current_term,
        leader_id: raft.current_leader,
        leader_api_addr: raft
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.api_addr.clone())),
        last_log_index: raft.last_log_index.unwrap_or(0),
        last_applied_index: raft.last_applied.map_or(0, |l| l.index),
        snapshot_index: raft.snapshot.map_or(0, |l| l.index),
        millis_since_quorum_ack: raft.millis_since_quorum_ack,
        cluster_id: format!("{:016x}", table.cluster_id),
    };

    let mut by_state: BTreeMap<&'static str, u64> =
        LIVE_STATES.iter().map(|&st| (state_name(st), 0)).collect();
    let (mut live, mut in_memory, mut oldest_created) = (0u64, 0u64, None::<u64>);
    let mut listed = Vec::new();
    let mut attention = Vec::new();
    let mut attention_count = 0u64;
    // Every live transaction once, in number order: the table's and the leader's
    // in-memory ones merged (a number in both is the table's).
    let held_records: Vec<(u64, TxnRecord, bool)> = s
        .held
        .iter()
        .filter(|(t, _, _)| !table.live.contains_key(t))
        .map(|(t, seed, running)| (*t, seed.clone().into_record(), *running))
        .collect();
    // endpoint → (branches, failing, oldest created, its gtrid)
    let mut holders: HashMap<&str, (u64, u64, u64, u64)> = HashMap::new();
    let mut from_table = table.live.iter().peekable();
    let mut from_memory = held_records.iter().peekable();
    loop {
        let take_table = match (from_table.peek(), from_memory.peek()) {
            (Some((&t, _)), Some((m, _, _))) => t < *m,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let (index, rec, running, memory) = if take_table {
            let Some((&t, rec)) = from_table.next() else {
                break;
            };
            let running =
                rec.decision.is_none() && !rec.committing && !rec.handed_over && (s.running)(t);
            (t, rec, running, false)
        } else {
            let Some((t, rec, running)) = from_memory.next() else {
                break;
            };
            (*t, rec, *running, true)
        };
        let gtrid = Gtrid {
            cluster: table.cluster_id,
            index,
        };
        let state = super::convert::state(rec, running);
        live += 1;
        in_memory += u64::from(memory);
        *by_state.entry(state_name(state)).or_default() += 1;
        oldest_created = Some(oldest_created.map_or(rec.created_ms, |o| o.min(rec.created_ms)));

        let mut view = txn_view(s, gtrid, rec, state);
        view.in_leader_memory = memory;
        for (b, spec) in view.branches.iter().zip(&rec.branches) {
            if may_be_prepared(b.status) {
                let h =
                    holders
                        .entry(spec.spec.endpoint.as_str())
                        .or_insert((0, 0, u64::MAX, index));
                h.0 += 1;
                h.1 += u64::from(b.failed_calls > 0);
                if rec.created_ms < h.2 {
                    (h.2, h.3) = (rec.created_ms, index);
                }
            }
        }
        if !view.attention.is_empty() {
            attention_count += 1;
            if attention.len() < MAX_LISTED {
                attention.push(view.clone());
            }
        }
        if listed.len() < MAX_LISTED {
            listed.push(view);
        }
    }

    let mut participants: Vec<ParticipantView> = holders
        .into_iter()
        .map(|(endpoint, (n, failing, created, index))| ParticipantView {
            endpoint: endpoint.to_string(),
            prepared_branches: n,
            failing_branches: failing,
            oldest_prepared_age_ms: s.now_ms.saturating_sub(created),
            oldest_gtrid: Gtrid {
                cluster: table.cluster_id,
                index,
            }
            .to_string(),
        })
        .collect();
    participants.sort_by(|a, b| {
        b.oldest_prepared_age_ms
            .cmp(&a.oldest_prepared_age_ms)
            .then_with(|| a.endpoint.cmp(&b.endpoint))
    });
    let participants_truncated = participants.len() > MAX_PARTICIPANTS;
    participants.truncate(MAX_PARTICIPANTS);

    ConsoleView {
        version: 1,
        generated_unix_ms: s.now_ms,
        node,
        members: members(raft),
        transactions: TxnSummary {
            live,
            in_leader_memory: in_memory,
            by_state,
            oldest_age_ms: oldest_created.map(|c| s.now_ms.saturating_sub(c)),
            truncated: live > listed.len() as u64,
            listed,
        },
        needs_attention: AttentionSummary {
            count: attention_count,
            truncated: attention_count > attention.len() as u64,
            listed: attention,
        },
        participants,
        participants_truncated,
        decisions: DecisionsView {
            interval_ms: 1000,
            commit_total: s.decision_totals.0,
            abort_total: s.decision_totals.1,
            samples: s.rate.clone(),
        },
    }
}

/// The console of one node: its driver and its decision-rate ring. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    driver: Driver,
    rate: Arc<Mutex<DecisionRate>>,
}

/// Stops the console's sampling task when dropped.
#[derive(Debug)]
pub struct Sampler(tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn totals(c: &Counters) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        c.decisions_commit.load(Relaxed),
        c.decisions_abort.load(Relaxed),
    )
}

impl Console {
    /// Creates the console and starts sampling the decision counters once a second
    /// (until the returned [`Sampler`] is dropped).
    pub fn start(driver: Driver) -> (Self, Sampler) {
        let rate = Arc::new(Mutex::new(DecisionRate::default()));
        let task = {
            let (driver, rate) = (driver.clone(), rate.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let (c, a) = totals(driver.counters());
                    rate.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(now_ms(), c, a);
                }
            })
        };
        (Self { driver, rate }, Sampler(task))
    }

    /// The document as of now.
    pub fn view(&self) -> ConsoleView {
        let d = &self.driver;
        let raft = d.raft().metrics().borrow().clone();
        let held: Vec<(u64, Seed, bool)> = d
            .in_memory(None)
            .into_iter()
            .map(|(t, seed)| (t, seed, d.is_preparing(t)))
            .collect();
        // Most of the time nothing is failing: skip the per-branch look-ups then.
        let any_trouble = d.trouble_summary().0 > 0;
        let rate = self
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples();
        let sm = d.sm().read();
        build(&Sources {
            now_ms: now_ms(),
            raft: &raft,
            table: &sm.table,
            held: &held,
            running: &|t| d.is_preparing(t),
            trouble: &|t, b| if any_trouble { d.trouble(t, b) } else { None },
            decision_totals: totals(d.counters()),
            rate,
        })
    }

    /// The console's routes: `/`, `/console`, its script and style sheet, and
    /// `/api/v1/console`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/console", get(page))
            .route("/console/console.js", get(script))
            .route("/console/console.css", get(style))
            .route("/api/v1/console", get(api))
            .with_state(self)
    }
}

const CSP_HEADER: HeaderName = HeaderName::from_static("content-security-policy");

async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (CSP_HEADER, CSP),
        ],
        INDEX_HTML,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        CONSOLE_JS,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        CONSOLE_CSS,
    )
}

async fn api(State(console): State<Console>) -> impl IntoResponse {
    match serde_json::to_string(&console.view()) {
        Ok(body) => (
            StatusCode::OK,
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "no-store"),
            ],
            body,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "console: the JSON document could not be encoded");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [
                    (CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (CACHE_CONTROL, "no-store"),
                ],
                format!("the console document could not be encoded: {e}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, LogId, Membership, ServerState, StoredMembership};

    use super::*;
    use crate::txn::{BranchRecord, BranchSpec, Decision, Heuristic, Reason};
    use crate::types::NodeInfo;

    const NOW: u64 = 1_000_000_000;

    fn record(created_ms: u64, endpoints: &[&str]) -> TxnRecord {
        TxnRecord {
            created_ms,
            deadline_ms: created_ms + 10_000,
            labels: BTreeMap::new(),
            branches: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| BranchRecord {
                    bqual: i as u32 + 1,
                    spec: BranchSpec {
                        endpoint: e.to_string(),
                        resource: "accounts".into(),
                    },
                    skip_phase2: false,
                    heuristic: None,
                })
                .collect(),
            decision: None,
            handed_over: false,
            committing: false,
            round: 0,
        }
    }

    fn decided(mut rec: TxnRecord, commit: bool, decided_ms: u64) -> TxnRecord {
        rec.decision = Some(Decision {
            commit,
            reason: if commit {
                Reason::ClientCommit
            } else {
                Reason::VotedNo
            },
            detail: String::new(),
            decided_ms,
            audit: Default::default(),
        });
        rec
    }

    fn leader_metrics() -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.current_term = 4;
        m.last_log_index = Some(50);
        let nodes: BTreeMap<u64, NodeInfo> = (1..=3)
            .map(|id| {
                (
                    id,
                    NodeInfo {
                        raft_addr: format!("127.0.0.1:700{id}"),
                        api_addr: format!("127.0.0.1:710{id}"),
                    },
                )
            })
            .collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        m.membership_config = Arc::new(StoredMembership::new(None, membership));
        let lid = CommittedLeaderId::new(4, 1);
        m.replication = Some(BTreeMap::from([
            (1, Some(LogId::new(lid, 50))),
            (2, Some(LogId::new(lid, 50))),
            (3, Some(LogId::new(lid, 42))),
        ]));
        m
    }

    #[test]
    fn the_document_counts_lists_and_flags_what_needs_a_person() {
        let mut table = TxnTable {
            cluster_id: 0xabc,
            ..Default::default()
        };
        // 1: committed, its second branch failing (stuck phase 2).
        table.live.insert(
            1,
            decided(
                record(NOW - 90_000, &["p:1", "stuck:1"]),
                true,
                NOW - 80_000,
            ),
        );
        // 2: aborted, a branch answered that it committed (heuristic).
        let mut heur = decided(record(NOW - 5_000, &["p:1", "p:2"]), false, NOW - 4_000);
        heur.branches[1].heuristic = Some(Heuristic {
            committed: true,
            detail: "<img src=x onerror=alert(1)>".into(),
            at_ms: NOW - 3_000,
            settled: false,
        });
        heur.branches[0].skip_phase2 = true;
        table.live.insert(2, heur);
        // 3: preparing (marker logged).
        let mut preparing = record(NOW - 1_000, &["p:1", "p:2"]);
        preparing.committing = true;
        table.live.insert(3, preparing);
        // 5, 6: in the leader's memory; 6 is being prepared.
        let seed = |created_ms| Seed {
            created_ms,
            deadline_ms: created_ms + 10_000,
            labels: BTreeMap::from([("order".to_string(), "42".to_string())]),
            branches: vec![BranchSpec {
                endpoint: "p:1".into(),
                resource: "accounts".into(),
            }],
        };
        let held = vec![(5, seed(NOW - 200), false), (6, seed(NOW - 100), true)];
        let raft = leader_metrics();
        let trouble = |t: u64, b: u32| {
            (t == 1 && b == 2).then(|| BranchTrouble {
                attempts: 7,
                since_ms: NOW - 60_000,
                last_error: "unavailable: down".into(),
            })
        };
        let mut rate = DecisionRate::default();
        rate.record(NOW - 2_000, 10, 1);
        rate.record(NOW - 1_000, 13, 1);
        let v = build(&Sources {
            now_ms: NOW,
            raft: &raft,
            table: &table,
            held: &held,
            running: &|_| false,
            trouble: &trouble,
            decision_totals: (13, 1),
            rate: rate.samples(),
        });

        assert_eq!(v.node.role, "leader");
        assert_eq!(v.node.leader_id, Some(1));
        assert_eq!(v.node.leader_api_addr.as_deref(), Some("127.0.0.1:7101"));
        assert_eq!(v.node.cluster_id, "0000000000000abc");
        let lags: Vec<_> = v
            .members
            .iter()
            .map(|m| (m.id, m.role.as_str(), m.lag))
            .collect();
        assert_eq!(
            lags,
            [
                (1, "leader", Some(0)),
                (2, "follower", Some(0)),
                (3, "follower", Some(8))
            ]
        );

        let t = &v.transactions;
        assert_eq!((t.live, t.in_leader_memory, t.truncated), (5, 2, false));
        assert_eq!(t.by_state["COMMITTED"], 1);
        assert_eq!(t.by_state["HEURISTIC"], 1);
        assert_eq!(t.by_state["PREPARING"], 2);
        assert_eq!(t.by_state["ACTIVE"], 1);
        assert_eq!(t.by_state["ONE_PHASE"], 0);
        assert_eq!(t.oldest_age_ms, Some(90_000));
        let order: Vec<_> = t.listed.iter().map(|x| x.gtrid.clone()).collect();
        let g = |i: u64| format!("{:016x}{i:016x}", 0xabc);
        assert_eq!(order, [g(1), g(2), g(3), g(5), g(6)]);
        assert!(t.listed[3].in_leader_memory && t.listed[3].labels["order"] == "42");

        let a = &v.needs_attention;
        assert_eq!(a.count, 2);
        assert_eq!(a.listed[0].gtrid, g(1));
        assert_eq!(a.listed[0].attention, ["failing_calls", "phase2_overdue"]);
        let stuck = &a.listed[0].branches[1];
        assert_eq!((stuck.status, stuck.failed_calls), ("commit_pending", 7));
        assert_eq!(stuck.failing_for_ms, Some(60_000));
        assert_eq!(stuck.last_error, "unavailable: down");
        assert_eq!(a.listed[1].attention, ["heuristic"]);
        assert_eq!(a.listed[1].branches[0].status, "done");
        assert_eq!(a.listed[1].branches[1].status, "heuristic_commit");

        // Prepared branches per participant: txn 1 (both pending), txn 2 (none: one
        // done, one heuristic), txn 3 (both prepare_sent), txn 6 (prepare_sent).
        let p: Vec<_> = v
            .participants
            .iter()
            .map(|p| {
                (
                    p.endpoint.as_str(),
                    p.prepared_branches,
                    p.failing_branches,
                    p.oldest_prepared_age_ms,
                )
            })
            .collect();
        assert_eq!(
            p,
            [
                ("p:1", 3, 0, 90_000),
                ("stuck:1", 1, 1, 90_000),
                ("p:2", 1, 0, 1_000)
            ]
        );

        assert_eq!(
            v.decisions.samples,
            [RateSample {
                unix_ms: NOW - 1_000,
                commit: 3,
                abort: 0
            }]
        );
        // Strings from the network are data in the JSON; the page sets them as text.
        let json = serde_json::to_string(&v).expect("encodes");
        assert!(json.contains("<img src=x onerror=alert(1)>"));
    }

    #[test]
    fn the_lists_are_bounded_and_a_follower_shows_its_own_view() {
        let mut table = TxnTable::default();
        for i in 1..=(MAX_LISTED as u64 + 50) {
            let rec = decided(record(NOW - i, &[&format!("p:{i}")]), true, NOW - 60_000);
            table.live.insert(i, rec);
        }
        let mut raft = leader_metrics();
        raft.id = 2;
        raft.state = ServerState::Follower;
        raft.replication = None;
        let v = build(&Sources {
            now_ms: NOW,
            raft: &raft,
            table: &table,
            held: &[],
            running: &|_| false,
            trouble: &|_, _| None,
            decision_totals: (0, 0),
            rate: Vec::new(),
        });
        assert_eq!(v.node.role, "follower");
        assert_eq!(v.node.leader_id, Some(1));
        assert!(v.members.iter().all(|m| m.lag.is_none()));
        assert_eq!(v.members[0].role, "leader");
        assert!(v.members[1].this_node);
        assert_eq!(v.transactions.live, MAX_LISTED as u64 + 50);
        assert_eq!(v.transactions.listed.len(), MAX_LISTED);
        assert!(v.transactions.truncated);
        assert_eq!(v.needs_attention.count, MAX_LISTED as u64 + 50);
        assert_eq!(v.needs_attention.listed.len(), MAX_LISTED);
        assert!(v.needs_attention.truncated);
        assert_eq!(v.participants.len(), MAX_PARTICIPANTS);
        assert!(v.participants_truncated);
    }

    #[test]
    fn the_rate_ring_keeps_the_last_samples() {
        let mut r = DecisionRate::default();
        for i in 0..(RATE_SAMPLES as u64 + 10) {
            r.record(i * 1000, i * 2, i);
        }
        let s = r.samples();
        assert_eq!(s.len(), RATE_SAMPLES);
        // The first call is the baseline: samples 1..=129, the last 120 kept.
        assert_eq!(s[0].unix_ms, 10_000);
        assert!(s.iter().all(|x| x.commit == 2 && x.abort == 1));
    }

    #[test]
    fn the_page_inserts_no_markup_and_loads_nothing_from_elsewhere() {
        for (name, text) in [("index.html", INDEX_HTML), ("console.js", CONSOLE_JS)] {
            assert!(!text.contains("innerHTML"), "{name} uses innerHTML");
            assert!(!text.contains("insertAdjacentHTML"), "{name}");
            assert!(!text.contains("document.write"), "{name}");
            // The SVG namespace is a name, not a fetch.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name}"
            );
        }
        assert!(INDEX_HTML.contains("/console/console.js"));
    }
}
