//! `ratify-dev`: Ratify on one machine, for trying it and measuring it — the
//! end-to-end demo, a local dev cluster, the benchmark, and the demo account store as
//! a participant process. The product binary (`ratify`: node and admin commands) has
//! none of this.
//!
//! Its local clusters run this very binary as their nodes (`ratify-dev node`, the
//! same command and settings as `ratify node`), so `cargo run -p ratify-devkit --
//! demo` needs nothing else built.
//!
//! This binary only parses flags, sets up logging and calls the libraries.

mod bench;
mod demo;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ratify_common::tls::Role;
use ratify_coordinator::config::{self, LogFlags, NodeArgs};
use ratify_devkit::accounts::AccountStore;
use ratify_devkit::local::LocalCluster;
use ratify_participant_sdk::{App, ClientConfig};

/// Ratify on one machine: the demo, a dev cluster, the benchmark.
#[derive(Parser, Debug)]
#[command(name = "ratify-dev", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    log: LogFlags,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// End-to-end demo on embedded defaults: a 3-node cluster, two account
    /// participants, a transfer workload, a leader SIGKILL, and a summary.
    Demo(demo::DemoArgs),
    /// Start a local 3-node cluster on loopback (data in a temp dir) until Ctrl-C.
    Dev(DevArgs),
    /// Benchmark: global txn/s and commit latency with two no-op durable
    /// participants on a 3-node cluster (build with --release).
    Bench(bench::BenchArgs),
    /// Host the demo account store as a participant (with its recovery loop).
    Participant(ParticipantArgs),
    /// A coordinator node of this binary's local clusters: `ratify node`, the same
    /// flags.
    #[command(hide = true)]
    Node(Box<NodeArgs>),
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Plaintext (default: mutual TLS with a throwaway CA in DIR/tls).
    #[arg(long)]
    insecure: bool,
    /// Keep data here instead of a temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ParticipantArgs {
    /// Listen address (ip:port).
    #[arg(long)]
    listen: String,
    /// Folder of the account store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Coordinator client address; repeat for each node.
    #[arg(long = "coordinator", required = true)]
    coordinators: Vec<String>,
    /// Resource name.
    #[arg(long, default_value = "accounts")]
    resource: String,
    /// Accounts to create (acct0..acctN-1) if missing.
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Opening balance of new accounts.
    #[arg(long, default_value_t = 1000)]
    initial_balance: i64,
    /// Mutual TLS (a `ratify://participant/<name>` certificate), or `--insecure`.
    #[command(flatten)]
    tls: config::TlsFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = config::parse_cli::<Cli>();
    let node = match &cli.command {
        Cmd::Node(a) => Some(a.as_ref()),
        _ => None,
    };
    let (node_file, log) = cli.log.settings(node)?;
    // The node processes this one starts log the same way.
    config::run_command(log, true, |log| async move {
        match cli.command {
            Cmd::Node(a) => {
                Ok(config::run_node(&a, &node_file, &log, config::shutdown_signal()).await?)
            }
            Cmd::Dev(a) => dev(a).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Participant(a) => participant(a).await,
        }
    })
}

/// Starts a local cluster of this binary's `node` command in `dir` and waits for its
/// leader.
async fn start_cluster(
    dir: &Path,
    nodes: u64,
    extra: Vec<String>,
    tls: bool,
) -> anyhow::Result<LocalCluster> {
    let binary = std::env::current_exe().context("cannot locate the ratify-dev binary")?;
    let cluster = if tls {
        LocalCluster::start_tls(&binary, dir, nodes, extra)?
    } else {
        LocalCluster::start(&binary, dir, nodes, extra)?
    };
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    Ok(cluster)
}

async fn dev(a: DevArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match a.dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let cluster = start_cluster(&dir, a.nodes, vec![], !a.insecure).await?;
    println!(
        "ratify dev cluster is up ({} nodes, data in {})",
        a.nodes,
        dir.display()
    );
    for id in cluster.ids() {
        println!("  node {id}: api {}", cluster.api_addr(id)?);
    }
    let flags = match cluster.ca() {
        Some(ca) => {
            // An operator/client/participant certificate for the commands below, and
            // one for a participant (`ratify-dev participant`).
            let tls = dir.join("tls");
            let admin = ratify_devkit::local::ADMIN_NAME;
            cluster.transport_for("dev-participant", &[Role::Participant, Role::Client])?;
            println!(
                "mutual TLS with a throwaway CA ({}); for the commands:",
                ca.ca_file().display()
            );
            println!(
                "  export RATIFY_TLS_CA={} RATIFY_TLS_CERT={} RATIFY_TLS_KEY={}",
                ca.ca_file().display(),
                tls.join(format!("{admin}.pem")).display(),
                tls.join(format!("{admin}.key")).display()
            );
            println!(
                "  (a participant: RATIFY_TLS_CERT={} RATIFY_TLS_KEY={})",
                tls.join("dev-participant.pem").display(),
                tls.join("dev-participant.key").display()
            );
            ""
        }
        None => " --insecure",
    };
    println!(
        "try: ratify cluster status{flags} --coordinator {}",
        cluster.api_endpoints().join(" --coordinator ")
    );
    println!("Ctrl-C stops it.");
    config::shutdown_signal().await;
    Ok(())
}

async fn participant(a: ParticipantArgs) -> anyhow::Result<()> {
    let store = AccountStore::open(&a.data_dir)?;
    store
        .open_numbered_accounts("acct", a.accounts, a.initial_balance)
        .await?;
    let mut addrs: Vec<(&str, &str)> = a
        .coordinators
        .iter()
        .map(|c| ("--coordinator", c.as_str()))
        .collect();
    addrs.push(("--listen", a.listen.as_str()));
    let transport = a.tls.transport(&config::NodeFile::default(), &addrs)?;
    let app = App::builder()
        .coordinators(a.coordinators.clone())
        .client_config(ClientConfig::default())
        .transport(transport)
        .listen(&a.listen)
        .recovery_interval(Duration::from_secs(1))
        .resource(
            &a.resource,
            Arc::clone(&store) as Arc<dyn ratify_participant_sdk::Resource>,
        )
        .start()
        .await?;
    println!(
        "participant serving resource {:?} on {}",
        a.resource,
        app.endpoint()
    );
    config::shutdown_signal().await;
    app.shutdown().await;
    Ok(())
}
