//! `ratify`: run a coordinator node, and inspect and operate transactions and the
//! cluster. The demo, the dev cluster and the benchmark are `ratify-dev`'s
//! (crate `ratify-devkit`).
//!
//! This binary only parses flags, sets up logging and calls the libraries.

mod probe;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ratify_client::{ClientConfig, CoordinatorClient};
use ratify_coordinator::config::{self, LogFlags};
use ratify_proto::pb;

/// Ratify: a two-phase-commit transaction coordinator on a Raft-replicated log.
#[derive(Parser, Debug)]
#[command(name = "ratify", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    log: LogFlags,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one coordinator node. Settings: flag, else environment variable, else
    /// --config file key, else default.
    Node(Box<config::NodeArgs>),
    /// Ask a node's gRPC health service (for container health checks): exit 0 when
    /// SERVING.
    Probe(probe::ProbeArgs),
    /// Inspect transactions.
    #[command(subcommand)]
    Txn(TxnCmd),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The participant registry: under TLS, branches may only name registered
    /// participants' endpoints.
    #[command(subcommand)]
    Participant(ParticipantCmd),
}

#[derive(Subcommand, Debug)]
enum ParticipantCmd {
    /// Register (or move) a participant: NAME is its certificate's
    /// `ratify://participant/NAME`, ENDPOINT where the coordinator calls it.
    Register {
        #[command(flatten)]
        target: Target,
        /// The participant's name.
        name: String,
        /// Its endpoint (host:port), exactly as branches will name it.
        endpoint: String,
    },
    /// Remove a participant from the registry (branches already recorded keep
    /// their endpoint).
    Unregister {
        #[command(flatten)]
        target: Target,
        /// The participant's name.
        name: String,
    },
    /// List the registered participants.
    List {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// Coordinator client address; repeat for each node.
    #[arg(long = "coordinator", default_value = "127.0.0.1:7101")]
    coordinators: Vec<String>,
    /// Mutual TLS (an operator's certificate, `ratify://operator/<name>`), or
    /// `--insecure` for a node on loopback run with `--insecure`.
    #[command(flatten)]
    tls: config::TlsFlags,
}

impl Target {
    fn transport(&self) -> anyhow::Result<ratify_common::tls::Transport> {
        let addrs: Vec<(&str, &str)> = self
            .coordinators
            .iter()
            .map(|c| {
                (
                    "--coordinator",
                    c.trim_start_matches("http://")
                        .trim_start_matches("https://"),
                )
            })
            .collect();
        Ok(self.tls.transport(&config::NodeFile::default(), &addrs)?)
    }
}

#[derive(Subcommand, Debug)]
enum TxnCmd {
    /// List live (not yet completed) transactions.
    List {
        #[command(flatten)]
        target: Target,
        /// Only this state: active, preparing, one_phase, committed, aborted, heuristic
        /// (heuristic: a branch contradicted the decision; a person must repair it).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one transaction (with its operator audit trail).
    Show {
        #[command(flatten)]
        target: Target,
        /// Its gtrid.
        gtrid: String,
    },
    /// Operator: abort an undecided transaction (refused once its commit was logged
    /// as started, or when a one-phase participant decides it). Logged with who and
    /// why.
    Abort(ResolveArgs),
    /// Operator: commit an undecided transaction whose every branch is prepared at
    /// its participant (the leader checks; refused otherwise, naming each branch).
    Commit(ResolveArgs),
    /// Operator: mark the heuristic outcomes of the named branches settled once their
    /// data is repaired (`--branch N`, repeatable); the transaction completes when
    /// none is left.
    Settle(ResolveArgs),
    /// Transactions that need a person: heuristic outcomes, stuck phase 2, branches
    /// failing for long, oldest first.
    Attention {
        #[command(flatten)]
        target: Target,
        /// How long phase 2 or a failing branch may last before it is listed.
        #[arg(long, default_value_t = 30)]
        stuck_after_secs: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// An operator action on one transaction.
#[derive(Args, Debug)]
struct ResolveArgs {
    #[command(flatten)]
    target: Target,
    /// The transaction.
    gtrid: String,
    /// Who acts (recorded in the audit trail); default: $USER.
    #[arg(long, env = "USER")]
    operator: String,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    reason: String,
    /// (settle only, required there) A branch whose heuristic outcome was repaired,
    /// by its number as `ratify txn show` lists it; repeatable.
    #[arg(long = "branch", value_name = "BQUAL")]
    branches: Vec<u32>,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Role, term, leader, log position of every node (those named and every
    /// member), then the members: voters and learners with their addresses.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Add a node as a voter. Start it first (`ratify node --id N ...` without
    /// --init, on an empty data folder); the leader adds it as a learner, waits until
    /// it has caught up (up to 60 s), then promotes it.
    Add {
        #[command(flatten)]
        target: Target,
        /// The new node's id (never used in this cluster before).
        #[arg(long)]
        id: u64,
        /// Its Raft address (host:port), as the other nodes reach it.
        #[arg(long)]
        raft_addr: String,
        /// Its client API address (host:port), as clients reach it.
        #[arg(long)]
        api_addr: String,
    },
    /// Remove a member (voter or learner). Refused when the reachable voters left
    /// would not be a majority. Stop the removed node afterwards.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The member's id.
        #[arg(long)]
        id: u64,
    },
    /// Replace a voter (typically a dead one) by a new node with a new id, in one
    /// step: the new node joins as a learner, catches up, and one joint change swaps
    /// it in. Start the new node first, as for `add`.
    Replace {
        #[command(flatten)]
        target: Target,
        /// The voter to replace.
        #[arg(long)]
        old: u64,
        /// The new node's id (never used in this cluster before).
        #[arg(long)]
        new: u64,
        /// The new node's Raft address (host:port).
        #[arg(long)]
        raft_addr: String,
        /// The new node's client API address (host:port).
        #[arg(long)]
        api_addr: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = config::parse_cli::<Cli>();
    let node = match &cli.command {
        Cmd::Node(a) => Some(a.as_ref()),
        _ => None,
    };
    let (node_file, log) = cli.log.settings(node)?;
    config::run_command(log, false, |log| async move {
        match cli.command {
            Cmd::Node(a) => {
                Ok(config::run_node(&a, &node_file, &log, config::shutdown_signal()).await?)
            }
            Cmd::Probe(a) => probe::run(a).await,
            Cmd::Txn(c) => txn(c).await,
            Cmd::Cluster(c) => cluster(c).await,
            Cmd::Participant(c) => participant(c).await,
        }
    })
}

fn client_for(t: &Target) -> anyhow::Result<CoordinatorClient> {
    let config = ClientConfig {
        deadline: Duration::from_secs(5),
        transport: t.transport()?,
        ..ClientConfig::default()
    };
    Ok(CoordinatorClient::new(t.coordinators.clone(), config)?)
}

fn state_name(s: i32) -> &'static str {
    match pb::TxnState::try_from(s) {
        Ok(pb::TxnState::Active) => "ACTIVE",
        Ok(pb::TxnState::Preparing) => "PREPARING",
        Ok(pb::TxnState::Committed) => "COMMITTED",
        Ok(pb::TxnState::Aborted) => "ABORTED",
        Ok(pb::TxnState::Completed) => "COMPLETED",
        Ok(pb::TxnState::OnePhase) => "ONE_PHASE",
        Ok(pb::TxnState::Heuristic) => "HEURISTIC",
        _ => "?",
    }
}

fn reason_name(r: i32) -> String {
    pb::Reason::try_from(r).map_or_else(|_| format!("reason {r}"), |r| r.as_str_name().to_string())
}

async fn txn(c: TxnCmd) -> anyhow::Result<()> {
    match c {
        TxnCmd::List {
            target,
            state,
            limit,
        } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(
                    pb::TxnState::from_str_name(&format!("TXN_STATE_{}", s.to_uppercase()))
                        .with_context(|| {
                            format!(
                                "unknown state {s:?}: use active, preparing, one_phase, committed, aborted or heuristic"
                            )
                        })?,
                ),
            };
            let page = client_for(&target)?.list(state, limit, "").await?;
            println!(
                "{:<34} {:<10} {:>8} {:>8} {:<28}",
                "GTRID", "STATE", "BRANCHES", "FAILING", "REASON"
            );
            for t in &page.transactions {
                println!(
                    "{:<34} {:<10} {:>8} {:>8} {:<28}",
                    t.gtrid,
                    state_name(t.state),
                    t.branches.len(),
                    t.branches.iter().filter(|b| b.failed_calls > 0).count(),
                    if t.reason == 0 {
                        String::new()
                    } else {
                        reason_name(t.reason)
                    }
                );
            }
            println!("{} transaction(s)", page.transactions.len());
        }
        TxnCmd::Show { target, gtrid } => {
            let t = client_for(&target)?.get(&gtrid).await?;
            println!("gtrid     {}", t.gtrid);
            println!("state     {}", state_name(t.state));
            let outcome = pb::Outcome::try_from(t.outcome).map_or_else(
                |_| format!("outcome {}", t.outcome),
                |o| o.as_str_name().to_string(),
            );
            println!("outcome   {outcome}");
            if t.reason != 0 {
                println!("reason    {} {}", reason_name(t.reason), t.detail);
            } else if !t.detail.is_empty() {
                println!("detail    {}", t.detail);
            }
            println!(
                "created   {} ms, deadline {} ms",
                t.created_unix_ms, t.deadline_unix_ms
            );
            for b in &t.branches {
                let bq = b.xid.as_ref().map(|x| x.bqual.clone()).unwrap_or_default();
                println!("branch {bq:<3} {} / {}", b.endpoint, b.resource);
                if !b.heuristic.is_empty() {
                    println!(
                        "  HEURISTIC {} (a person must repair the data)",
                        b.heuristic
                    );
                }
                if b.failed_calls > 0 {
                    println!("  {} failed calls, last: {}", b.failed_calls, b.last_error);
                }
            }
            for (k, v) in &t.labels {
                println!("label     {k}={v}");
            }
            print_audit(&t);
        }
        TxnCmd::Abort(a) => resolve(a, pb::ResolveAction::Abort).await?,
        TxnCmd::Commit(a) => resolve(a, pb::ResolveAction::Commit).await?,
        TxnCmd::Settle(a) => resolve(a, pb::ResolveAction::SettleHeuristic).await?,
        TxnCmd::Attention {
            target,
            stuck_after_secs,
            limit,
        } => {
            let page = client_for(&target)?
                .needing_attention(Duration::from_secs(stuck_after_secs), limit)
                .await?;
            for n in &page.transactions {
                let Some(t) = &n.transaction else { continue };
                println!(
                    "{}  {}  age {} s",
                    t.gtrid,
                    state_name(t.state),
                    n.age_ms / 1000
                );
                for w in &n.why {
                    println!("  {w}");
                }
            }
            println!(
                "{} transaction(s) need a person{}",
                page.transactions.len(),
                if page.truncated {
                    " (more not listed)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Runs one operator action and prints what it did.
async fn resolve(a: ResolveArgs, action: pb::ResolveAction) -> anyhow::Result<()> {
    let r = client_for(&a.target)?
        .resolve_branches(&a.gtrid, action, &a.branches, &a.operator, &a.reason)
        .await?;
    let t = r.transaction.context("the answer has no transaction")?;
    let outcome = pb::Outcome::try_from(t.outcome)
        .map_or_else(|_| t.outcome.to_string(), |o| o.as_str_name().to_string());
    if r.changed {
        println!("{} {}: {outcome}", t.gtrid, state_name(t.state));
    } else {
        println!(
            "{} unchanged, already {}: {outcome} ({})",
            t.gtrid,
            state_name(t.state),
            reason_name(t.reason)
        );
    }
    print_audit(&t);
    Ok(())
}

/// The operator audit trail of `t`, one line per action.
fn print_audit(t: &pb::Transaction) {
    for e in &t.audit {
        let action = pb::ResolveAction::try_from(e.action)
            .map_or_else(|_| e.action.to_string(), |a| a.as_str_name().to_string());
        println!(
            "audit     {} {} by {} at {} ms: {}",
            action.trim_start_matches("RESOLVE_ACTION_").to_lowercase(),
            t.gtrid,
            e.operator,
            e.at_unix_ms,
            e.reason
        );
    }
}

async fn cluster_status(t: Target) -> anyhow::Result<()> {
    let client = client_for(&t)?;
    println!(
        "{:<22} {:>4} {:<10} {:>6} {:>7} {:>10} {:>10} {:>8}",
        "NODE", "ID", "ROLE", "TERM", "LEADER", "LAST_LOG", "APPLIED", "LIVE_TXN"
    );
    // The nodes named, then every member they know of; the members shown are the
    // leader's view (else the one of the highest term).
    let mut asked = t.coordinators.clone();
    let mut view: Option<((bool, u64), Vec<pb::Member>)> = None;
    let mut next = 0;
    while let Some(ep) = asked.get(next).cloned() {
        next += 1;
        match client.cluster_status(Some(&ep)).await {
            Ok(s) => {
                println!(
                    "{:<22} {:>4} {:<10} {:>6} {:>7} {:>10} {:>10} {:>8}",
                    ep,
                    s.node_id,
                    s.role,
                    s.term,
                    s.leader_id,
                    s.last_log_index,
                    s.last_applied,
                    s.live_transactions
                );
                for m in &s.members {
                    if !asked.contains(&m.api_addr) {
                        asked.push(m.api_addr.clone());
                    }
                }
                let rank = (s.leader_id != 0 && s.leader_id == s.node_id, s.term);
                if view.as_ref().is_none_or(|(r, _)| rank > *r) {
                    view = Some((rank, s.members));
                }
            }
            Err(e) => println!("{ep:<22} unreachable: {e}"),
        }
    }
    match view {
        Some((_, members)) if !members.is_empty() => {
            println!();
            print_members(&members);
        }
        Some(_) => println!("\nno members: not initialised (waiting to be added to a cluster)"),
        None => {}
    }
    Ok(())
}

/// A client for membership changes: one may wait a minute for a new node to catch up.
fn membership_client(t: &Target) -> anyhow::Result<CoordinatorClient> {
    let config = ClientConfig {
        attempt_timeout: Duration::from_secs(150),
        deadline: Duration::from_secs(180),
        transport: t.transport()?,
        ..ClientConfig::default()
    };
    Ok(CoordinatorClient::new(t.coordinators.clone(), config)?)
}

fn print_members(members: &[pb::Member]) {
    println!(
        "{:>4} {:<8} {:<24} {:<24}",
        "ID", "MEMBER", "RAFT_ADDR", "API_ADDR"
    );
    for m in members {
        println!(
            "{:>4} {:<8} {:<24} {:<24}",
            m.id,
            if m.voter { "voter" } else { "learner" },
            m.raft_addr,
            m.api_addr
        );
    }
}

async fn participant(c: ParticipantCmd) -> anyhow::Result<()> {
    match c {
        ParticipantCmd::Register {
            target,
            name,
            endpoint,
        } => {
            let r = client_for(&target)?
                .register_participant(&name, &endpoint)
                .await?;
            if r.changed {
                println!("participant {name} registered at {endpoint}");
            } else {
                println!("participant {name} already is registered at {endpoint}; nothing changed");
            }
        }
        ParticipantCmd::Unregister { target, name } => {
            let r = client_for(&target)?.unregister_participant(&name).await?;
            if r.changed {
                println!("participant {name} unregistered");
            } else {
                println!("no participant {name}; nothing changed");
            }
        }
        ParticipantCmd::List { target } => {
            let r = client_for(&target)?.list_participants().await?;
            println!("{:<24} {:<32} REGISTERED BY", "NAME", "ENDPOINT");
            for p in r.participants {
                println!("{:<24} {:<32} {}", p.name, p.endpoint, p.registered_by);
            }
        }
    }
    Ok(())
}

async fn cluster(c: ClusterCmd) -> anyhow::Result<()> {
    let (what, members) = match c {
        ClusterCmd::Status { target } => return cluster_status(target).await,
        ClusterCmd::Add {
            target,
            id,
            raft_addr,
            api_addr,
        } => {
            let r = membership_client(&target)?
                .add_member(id, &raft_addr, &api_addr)
                .await?;
            let what = if r.changed {
                format!("node {id} added as a voter")
            } else {
                format!("node {id} already is a voter at these addresses; nothing changed")
            };
            (what, r.members)
        }
        ClusterCmd::Remove { target, id } => {
            let r = membership_client(&target)?.remove_member(id).await?;
            let what = if r.changed {
                format!("node {id} removed; stop its process")
            } else {
                format!("node {id} is not a member; nothing changed")
            };
            (what, r.members)
        }
        ClusterCmd::Replace {
            target,
            old,
            new,
            raft_addr,
            api_addr,
        } => {
            let r = membership_client(&target)?
                .replace_member(old, new, &raft_addr, &api_addr)
                .await?;
            let what = if r.changed {
                format!("node {old} replaced by node {new}; stop node {old} if it still runs")
            } else {
                format!("node {old} was already replaced by node {new}; nothing changed")
            };
            (what, r.members)
        }
    };
    println!("{what}");
    print_members(&members);
    Ok(())
}
