//! Counters the node keeps about its own work, and their Prometheus text rendering.
//!
//! Counters are per node and reset on restart (Prometheus handles that with `rate`).
//! Gauges about transactions come from the replicated table at scrape time, so every
//! node reports the same transaction gauges once it has applied the same log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::raft::SharedSm;
use crate::types::now_ms;
use crate::types::typ::RaftMetrics;

/// What this node did since it started. All fields only ever increase.
#[derive(Debug, Default)]
pub struct Counters {
    /// Raft entries this node proposed as leader.
    pub proposals: AtomicU64,
    /// Commands carried by those entries (commands / proposals = mean batch size).
    pub proposed_commands: AtomicU64,
    /// Proposals that failed (lost leadership, no quorum).
    pub proposal_failures: AtomicU64,
    /// Begins refused because the live table was full.
    pub begins_refused: AtomicU64,
    /// Transactions this node began as leader (in its memory: nothing is logged at
    /// Begin, so the replicated table does not count them).
    pub begins: AtomicU64,
    /// Branches of aborted transactions given up on after the retry window.
    pub phase2_abandoned: AtomicU64,
    /// Proposals whose entry was not answered within the propose timeout (their
    /// pipeline slot was released; see `driver/batcher.rs`).
    pub proposal_timeouts: AtomicU64,
    /// Time from proposing an entry until it was committed and applied, summed, µs.
    pub proposal_micros: AtomicU64,
    /// Commit decisions this node logged.
    pub decisions_commit: AtomicU64,
    /// Abort decisions this node logged.
    pub decisions_abort: AtomicU64,
    /// Two-phase commits answered as committed once every vote was YES and the commit
    /// marker durable, before their decision entry (parallel commit).
    pub parallel_commits: AtomicU64,
    /// Prepare calls to participants.
    pub prepare_calls: AtomicU64,
    /// Prepare calls that got no usable answer (unreachable, timeout, garbage).
    pub prepare_failures: AtomicU64,
    /// Phase-2 calls (commit or rollback) to participants.
    pub phase2_calls: AtomicU64,
    /// Phase-2 calls that must be retried.
    pub phase2_retries: AtomicU64,
    /// Branches whose phase-2 answer contradicted the logged decision.
    pub heuristic_outcomes: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One metric family in the text format.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn get(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

/// Renders every metric in the Prometheus text exposition format (version 0.0.4).
/// What only this node's driver knows (its calls that keep failing, its channels).
#[derive(Debug, Default, Clone)]
pub struct LeaderView {
    /// Branches whose phase-2 or one-phase calls are failing now.
    pub retrying_branches: usize,
    /// When the oldest of those started failing, Unix ms.
    pub oldest_retrying_ms: Option<u64>,
    /// Open participant channels.
    pub channels: usize,
}

/// Renders every metric in the Prometheus text format.
pub fn render(
    counters: &Counters,
    sm: &SharedSm,
    raft: &RaftMetrics,
    local: &LeaderView,
) -> String {
    let mut out = String::new();
    let c = counters;
    let counter = |out: &mut String, name, help, v| family(out, name, "counter", help, &[("", v)]);
    counter(
        &mut out,
        "ratify_proposals_total",
        "Raft entries this node proposed as leader.",
        get(&c.proposals),
    );
    counter(
        &mut out,
        "ratify_proposed_commands_total",
        "Commands carried by the proposed entries (batching: commands per entry).",
        get(&c.proposed_commands),
    );
    counter(
        &mut out,
        "ratify_proposal_seconds_total",
        "Time entries took from proposal to applied, summed (divide by proposals for the mean).",
        get(&c.proposal_micros) / 1e6,
    );
    counter(
        &mut out,
        "ratify_proposal_failures_total",
        "Proposals that did not commit (leadership lost, no quorum).",
        get(&c.proposal_failures),
    );
    counter(
        &mut out,
        "ratify_proposal_timeouts_total",
        "Proposals not answered within the propose timeout (their pipeline slot was released).",
        get(&c.proposal_timeouts),
    );
    family(
        &mut out,
        "ratify_decisions_total",
        "counter",
        "Decisions this node logged, by outcome.",
        &[
            ("{outcome=\"commit\"}", get(&c.decisions_commit)),
            ("{outcome=\"abort\"}", get(&c.decisions_abort)),
        ],
    );
    family(
        &mut out,
        "ratify_parallel_commits_total",
        "counter",
        "Two-phase commits answered once every vote was YES and the commit marker was durable, before the decision entry.",
        &[("", get(&c.parallel_commits))],
    );
    family(
        &mut out,
        "ratify_participant_calls_total",
        "counter",
        "Calls to participants, by phase.",
        &[
            ("{phase=\"prepare\"}", get(&c.prepare_calls)),
            ("{phase=\"phase2\"}", get(&c.phase2_calls)),
        ],
    );
    family(
        &mut out,
        "ratify_participant_call_failures_total",
        "counter",
        "Participant calls without a usable answer (prepare), or to be retried (phase 2).",
        &[
            ("{phase=\"prepare\"}", get(&c.prepare_failures)),
            ("{phase=\"phase2\"}", get(&c.phase2_retries)),
        ],
    );
    counter(
        &mut out,
        "ratify_heuristic_outcomes_total",
        "Branches whose phase-2 answer contradicted the logged decision.",
        get(&c.heuristic_outcomes),
    );

    let now = now_ms();
    let (mut one_phase, mut heuristic) = (0u64, 0u64);
    let (evicted_early, pinned) = {
        let t = &sm.read().table;
        (t.evicted_early, t.pinned.len())
    };
    let (begun, live, undecided, in_phase2, oldest_undecided, oldest_phase2, kept) = {
        let d = sm.read();
        let t = &d.table;
        let mut undecided = 0u64;
        let mut in_phase2 = 0u64;
        let mut oldest_undecided = None::<u64>;
        let mut oldest_phase2 = None::<u64>;
        for rec in t.live.values() {
            if rec.handed_over && rec.decision.is_none() {
                one_phase += 1;
            }
            if rec.is_heuristic() {
                heuristic += 1;
            }
            match &rec.decision {
                None => {
                    undecided += 1;
                    oldest_undecided =
                        Some(oldest_undecided.map_or(rec.created_ms, |o| o.min(rec.created_ms)));
                }
                Some(dec) => {
                    in_phase2 += 1;
                    oldest_phase2 =
                        Some(oldest_phase2.map_or(dec.decided_ms, |o| o.min(dec.decided_ms)));
                }
            }
        }
        (
            get(&c.begins),
            t.live.len(),
            undecided,
            in_phase2,
            oldest_undecided,
            oldest_phase2,
            t.finished.len(),
        )
    };
    let age = |since: Option<u64>| since.map_or(0.0, |s| now.saturating_sub(s) as f64 / 1000.0);
    counter(
        &mut out,
        "ratify_transactions_begun_total",
        "Transactions this node began as leader (sum over the nodes for the cluster).",
        begun,
    );
    family(
        &mut out,
        "ratify_transactions",
        "gauge",
        "Transactions in the table, by state.",
        &[
            ("{state=\"live\"}", live as f64),
            ("{state=\"undecided\"}", undecided as f64),
            ("{state=\"decided_phase2_pending\"}", in_phase2 as f64),
            ("{state=\"completed_kept\"}", kept as f64),
            ("{state=\"completed_pinned\"}", pinned as f64),
            ("{state=\"one_phase_in_doubt\"}", one_phase as f64),
            ("{state=\"heuristic_needs_person\"}", heuristic as f64),
        ],
    );
    counter(
        &mut out,
        "ratify_begins_refused_total",
        "Begins refused because the live table held --max-live-txns transactions.",
        get(&c.begins_refused),
    );
    counter(
        &mut out,
        "ratify_phase2_abandoned_total",
        "Branches of aborted transactions no longer retried after the retry window (they pull the logged abort).",
        get(&c.phase2_abandoned),
    );
    family(
        &mut out,
        "ratify_branches_retrying",
        "gauge",
        "Branches whose phase-2 or one-phase calls are failing on this leader (stuck branches).",
        &[("", local.retrying_branches as f64)],
    );
    family(
        &mut out,
        "ratify_oldest_retrying_branch_seconds",
        "gauge",
        "How long the longest-failing branch has been failing; 0 when none.",
        &[("", age(local.oldest_retrying_ms))],
    );
    family(
        &mut out,
        "ratify_participant_channels",
        "gauge",
        "Open gRPC channels to participants (idle ones are closed).",
        &[("", local.channels as f64)],
    );
    counter(
        &mut out,
        "ratify_outcomes_evicted_early_total",
        "Completed outcomes forgotten before the retention's time floor because the count cap was reached.",
        evicted_early as f64,
    );
    family(
        &mut out,
        "ratify_oldest_transaction_age_seconds",
        "gauge",
        "Age of the oldest undecided transaction (since begin) and of the oldest decision whose phase 2 is pending; 0 when none.",
        &[
            ("{state=\"undecided\"}", age(oldest_undecided)),
            ("{state=\"decided_phase2_pending\"}", age(oldest_phase2)),
        ],
    );

    let gauge = |out: &mut String, name, help, v| family(out, name, "gauge", help, &[("", v)]);
    gauge(
        &mut out,
        "ratify_node_is_leader",
        "1 if this node is the Raft leader.",
        if raft.state.is_leader() { 1.0 } else { 0.0 },
    );
    gauge(
        &mut out,
        "ratify_raft_term",
        "Current Raft term.",
        raft.current_term as f64,
    );
    gauge(
        &mut out,
        "ratify_raft_last_log_index",
        "Last log index on this node.",
        raft.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        &mut out,
        "ratify_raft_last_applied_index",
        "Last log index applied to the state machine on this node.",
        raft.last_applied.map_or(0, |l| l.index) as f64,
    );
    gauge(
        &mut out,
        "ratify_raft_snapshot_index",
        "Last log index covered by this node's snapshot (0: none).",
        raft.snapshot.map_or(0, |l| l.index) as f64,
    );
    gauge(
        &mut out,
        "ratify_raft_purged_index",
        "Last log index purged from this node's log (0: none).",
        raft.purged.map_or(0, |l| l.index) as f64,
    );
    out
}

/// Parses the text format into `name{labels}` → value (comments and malformed lines
/// are skipped). For tests, benchmarks and tools that read a node's metrics.
pub fn parse_text(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Fetches `http://addr/metrics` and parses it.
///
/// # Errors
/// When the node cannot be reached or does not answer 200.
pub async fn scrape(addr: &str) -> std::io::Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "metrics at {addr} answered {:?}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(parse_text(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_parse_back() {
        let c = Counters::default();
        Counters::add(&c.proposed_commands, 12);
        Counters::inc(&c.proposals);
        Counters::inc(&c.decisions_abort);
        let sm = SharedSm::default();
        let raft = RaftMetrics::new_initial(1);
        let m = parse_text(&render(&c, &sm, &raft, &LeaderView::default()));
        assert_eq!(m["ratify_proposed_commands_total"], 12.0);
        assert_eq!(m["ratify_proposals_total"], 1.0);
        assert_eq!(m["ratify_decisions_total{outcome=\"abort\"}"], 1.0);
        assert_eq!(m["ratify_decisions_total{outcome=\"commit\"}"], 0.0);
        assert_eq!(m["ratify_transactions{state=\"live\"}"], 0.0);
        assert_eq!(m["ratify_node_is_leader"], 0.0);
    }
}
