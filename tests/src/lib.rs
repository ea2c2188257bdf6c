//! Shared fixtures for Ratify's multi-process integration tests: a 3-node cluster of
//! real `ratify node` processes on loopback (SIGKILL-able), in-process account
//! participants served over real gRPC, and assertion helpers.
//!
//! # Layout
//! - [`ratify_binary`]: locates the `ratify` binary built by `cargo build`.
//! - [`TestCluster`]: the cluster, its client and its temp folder.
//! - [`Bank`]: two account-store participants with recovery loops.
//! - [`must_commit`], [`must_abort`]: assertions on decisions.
//! - [`kafka`]: the test broker, the independent Java checker and the Kafka
//!   participant process.
//! - [`chaos`]: the chaos suite (workload, nemesis, history, checker); its runner is
//!   the `chaos` binary.
//! - [`pg`]: the Postgres server of `tests/infra/postgres.sh`, the two-database bank
//!   and killable `pg_bank participant` processes.

pub mod chaos;
pub mod kafka;
pub mod load;
pub mod pg;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ratify_devkit::accounts::AccountStore;
use ratify_devkit::local::LocalCluster;
use ratify_participant_sdk::client::{
    BeginOptions, Begun, ClientConfig, CoordinatorClient, Decision, Outcome,
};
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::HostedParticipant;
use ratify_proto::pb;

/// Opening balance of every test account.
pub const INITIAL: i64 = 1_000;
/// Accounts per bank.
pub const ACCOUNTS: usize = 20;

/// Sends logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Sends logs to stderr when `RUST_LOG` is set (for helper processes of the tests).
pub fn init_logging_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// The `ratify` binary next to this test executable (`target/<profile>/ratify`).
///
/// # Errors
/// When it has not been built: run `cargo build -p ratify-coordinator --bin ratify`
/// (the README's test command does).
pub fn ratify_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("RATIFY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("unexpected test executable location")?;
    let bin = profile_dir.join("ratify");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build -p ratify-coordinator --bin ratify` first (the README's test command does)",
        bin.display()
    );
    Ok(bin)
}

/// Example binary `name` of `ratify-examples` next to the `ratify` binary, or the
/// path in environment variable `env` when set.
///
/// # Errors
/// When it has not been built (`cargo build -p ratify-examples --bin <name>`;
/// `tests/run.sh` does).
pub fn example_binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let bin = ratify_binary()?.with_file_name(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --bin {name}` first (tests/run.sh does)",
        bin.display()
    );
    Ok(bin)
}

/// How a [`TestCluster`]'s nodes run.
#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Partitionable,
    Tls,
}

/// A 3-node cluster of real processes, with a client and a temp folder.
pub struct TestCluster {
    /// The processes.
    pub nodes: LocalCluster,
    /// A client that knows every node.
    pub client: CoordinatorClient,
    /// Holds every file of the test.
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts 3 nodes with the given extra node flags and waits for a leader.
    ///
    /// # Errors
    /// When the binary is missing or no leader is elected in 20 s.
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        Self::launch(extra, Mode::Plain).await
    }

    /// Like [`Self::start`] with mutual TLS on every port (a throwaway CA; the
    /// client presents the operator/client/participant certificate of
    /// `LocalCluster::transport`, and `nodes.ca()` issues more).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_tls(extra: &[&str]) -> anyhow::Result<Self> {
        Self::launch(extra, Mode::Tls).await
    }

    /// Like [`Self::start`], with fault proxies on the Raft ports so a node can be
    /// cut off from the others (`nodes.isolate(id)`, `nodes.heal()`).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_partitionable(extra: &[&str]) -> anyhow::Result<Self> {
        Self::launch(extra, Mode::Partitionable).await
    }

    async fn launch(extra: &[&str], mode: Mode) -> anyhow::Result<Self> {
        init_logging();
        let mut dir = tempfile::Builder::new().prefix("ratify-test-").tempdir()?;
        if std::env::var_os("RATIFY_KEEP_TEST_DIRS").is_some() {
            // Post-mortem: node logs, participant logs and data stay on disk.
            dir.disable_cleanup(true);
            eprintln!("keeping test folder {}", dir.path().display());
        }
        let (binary, data) = (ratify_binary()?, dir.path().join("cluster"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let nodes = match mode {
            Mode::Partitionable => {
                LocalCluster::start_partitionable(&binary, &data, 3, extra).await?
            }
            Mode::Plain => LocalCluster::start(&binary, &data, 3, extra)?,
            Mode::Tls => LocalCluster::start_tls(&binary, &data, 3, extra)?,
        };
        if let Err(e) = nodes.wait_for_leader(Duration::from_secs(20)).await {
            // Rare, and only visible in CI: say what each node was doing.
            let mut logs = String::new();
            for id in nodes.ids() {
                let text =
                    std::fs::read_to_string(data.join(format!("node{id}.log"))).unwrap_or_default();
                let start = text.len().saturating_sub(2_000);
                let tail = text.get(start..).unwrap_or(&text);
                logs.push_str(&format!("\n--- node{id}.log (end) ---\n{tail}"));
            }
            anyhow::bail!("{e}{logs}");
        }
        let config = ClientConfig {
            transport: nodes.transport(),
            ..ClientConfig::default()
        };
        let client = CoordinatorClient::new(nodes.api_endpoints(), config)?;
        Ok(Self { nodes, client, dir })
    }

    /// The current leader's id.
    ///
    /// # Errors
    /// When none is elected within 10 s.
    pub async fn leader(&self) -> anyhow::Result<u64> {
        Ok(self.nodes.wait_for_leader(Duration::from_secs(10)).await?)
    }

    /// A node other than `leader`.
    ///
    /// # Errors
    /// When the cluster has no other node.
    pub fn follower(&self, leader: u64) -> anyhow::Result<u64> {
        self.nodes
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .context("no follower")
    }

    /// Waits until node `id` has applied the log up to `index`.
    ///
    /// # Errors
    /// When it has not after `timeout`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(s) = self.nodes.status(id).await {
                if s.last_applied >= index {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "node {id} did not apply up to {index} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the leader's live table is empty (every transaction completed).
    ///
    /// # Errors
    /// When transactions are still live after `timeout`.
    pub async fn wait_all_completed(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        loop {
            let leader = self.leader().await?;
            if let Ok(s) = self.nodes.status(leader).await {
                if s.live_transactions == 0 {
                    return Ok(());
                }
            }
            if start.elapsed() >= timeout {
                let live = self
                    .client
                    .list(None, 20, "")
                    .await
                    .map(|r| format!("{:#?}", r.transactions))
                    .unwrap_or_else(|e| format!("(could not list them: {e})"));
                anyhow::bail!("transactions still live after {timeout:?}: {live}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves a hand-written `Participant` service (a test fake that misbehaves on purpose)
/// on a free loopback port and returns its endpoint.
///
/// # Errors
/// When no port can be bound.
pub async fn serve_fake_participant<S>(service: S) -> anyhow::Result<String>
where
    S: pb::participant_server::Participant,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = listener.local_addr()?.to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::participant_server::ParticipantServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(endpoint)
}

/// Serves `resource` as `name` on 127.0.0.1 with a fast (500 ms) recovery loop.
///
/// # Errors
/// When the port cannot be bound.
pub async fn serve(
    name: &str,
    resource: Arc<dyn Resource>,
    client: CoordinatorClient,
) -> anyhow::Result<HostedParticipant> {
    Ok(HostedParticipant::start(name, resource, client, Duration::from_millis(500)).await?)
}

/// Two account stores ("bank A" and "bank B"), each its own participant.
pub struct Bank {
    /// Bank A's store.
    pub a: Arc<AccountStore>,
    /// Bank B's store.
    pub b: Arc<AccountStore>,
    /// Bank A's server.
    pub a_srv: HostedParticipant,
    /// Bank B's server.
    pub b_srv: HostedParticipant,
}

impl Bank {
    /// Opens both banks under the cluster's folder with [`ACCOUNTS`] accounts each.
    ///
    /// # Errors
    /// Storage or bind failures.
    pub async fn open(c: &TestCluster) -> anyhow::Result<Self> {
        let a = AccountStore::open(c.dir.path().join("bank-a"))?;
        let b = AccountStore::open(c.dir.path().join("bank-b"))?;
        a.open_numbered_accounts("acct", ACCOUNTS, INITIAL).await?;
        b.open_numbered_accounts("acct", ACCOUNTS, INITIAL).await?;
        let ra: Arc<dyn Resource> = a.clone();
        let rb: Arc<dyn Resource> = b.clone();
        let a_srv = serve("accounts", ra, c.client.clone()).await?;
        let b_srv = serve("accounts", rb, c.client.clone()).await?;
        Ok(Self { a, b, a_srv, b_srv })
    }

    /// Both banks as branch specs, A first.
    pub fn branches(&self) -> Vec<(String, String)> {
        vec![
            (self.a_srv.endpoint.clone(), "accounts".into()),
            (self.b_srv.endpoint.clone(), "accounts".into()),
        ]
    }

    /// Begins a transfer of `amount` from A's `acct{from}` to B's `acct{to}` and does
    /// the work on both branches; the caller commits.
    ///
    /// # Errors
    /// Client or store errors.
    pub async fn transfer(
        &self,
        client: &CoordinatorClient,
        from: usize,
        to: usize,
        amount: i64,
    ) -> anyhow::Result<Begun> {
        let begun = client
            .begin(BeginOptions {
                timeout: Duration::from_secs(10),
                branches: self.branches(),
                ..Default::default()
            })
            .await?;
        let (xa, xb) = (&begun.branches[0].xid, &begun.branches[1].xid);
        self.a.branch(xa)?.debit(&format!("acct{from}"), amount)?;
        self.b.branch(xb)?.credit(&format!("acct{to}"), amount)?;
        Ok(begun)
    }

    /// Sum over both banks.
    ///
    /// # Errors
    /// Storage errors.
    pub fn total(&self) -> anyhow::Result<i64> {
        Ok(self.a.total()? + self.b.total()?)
    }

    /// Waits until neither bank holds a prepared branch.
    ///
    /// # Errors
    /// When branches are still prepared after `timeout`.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while self.a.prepared_count() + self.b.prepared_count() > 0 {
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{} + {} branches still prepared after {timeout:?}",
                self.a.prepared_count(),
                self.b.prepared_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Asserts the decision is COMMITTED.
///
/// # Panics
/// When it is not.
pub fn must_commit(d: &Decision) {
    assert_eq!(
        d.outcome,
        Outcome::Committed,
        "expected COMMITTED, got {d:?}"
    );
}

/// Asserts the decision is ABORTED for `reason`.
///
/// # Panics
/// When it is not.
pub fn must_abort(d: &Decision, reason: pb::Reason) {
    assert_eq!(d.outcome, Outcome::Aborted, "expected ABORTED, got {d:?}");
    assert_eq!(d.reason, reason, "aborted for the wrong reason: {d:?}");
}
