//! Wires one coordinator node: stores, Raft, driver, and the two gRPC servers (the
//! client/admin API with the standard health and reflection services and, on its own
//! port, the internal Raft service).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use ratify_common::stopped;
use ratify_proto::pb::admin_server::AdminServer;
use ratify_proto::pb::coordinator_server::CoordinatorServer;
use ratify_proto::raft_pb::raft_server::RaftServer as RaftGrpcServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::driver::{Driver, DriverConfig};
use crate::raft::{new_raft, open_stores, raft_config, Network, OpenError};
use crate::service::coordinator::CoordinatorService;
use crate::service::raft::RaftServer;
use crate::types::{NodeId, NodeInfo};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id (non-zero).
    pub id: NodeId,
    /// Where to listen for peers' Raft traffic (`host:port`).
    pub raft_addr: String,
    /// Where to listen for clients (`host:port`).
    pub api_addr: String,
    /// Where to serve Prometheus metrics over HTTP (`host:port`), if anywhere.
    pub metrics_addr: Option<String>,
    /// Source address for Raft connections to peers (tests that cut a node off).
    pub raft_source_ip: Option<std::net::IpAddr>,
    /// Where the node keeps its log and snapshots. One node per folder.
    pub data_dir: PathBuf,
    /// The initial members (including this node), used when `init` is set.
    pub peers: BTreeMap<NodeId, NodeInfo>,
    /// Initialise the cluster with `peers` if it has never been initialised.
    pub init: bool,
    /// Driver tunables.
    pub driver: DriverConfig,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every: u64,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data folder belongs to another node.
    #[error("data dir {dir} belongs to node {found}, not node {wanted}; refusing to start")]
    WrongNode {
        /// The folder.
        dir: PathBuf,
        /// The id recorded in it.
        found: NodeId,
        /// This node's id.
        wanted: NodeId,
    },
    /// Filesystem trouble.
    #[error("data dir {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The stores could not be opened.
    #[error("cannot open the stores: {0}")]
    Stores(#[from] OpenError),
    /// A listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, #[source] std::io::Error),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// A server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The reflection service could not be built (a descriptor set did not decode).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The metrics server failed.
    #[error("metrics server: {0}")]
    Metrics(#[source] std::io::Error),
    /// The node stopped on a storage failure (a failed write or fdatasync of the log,
    /// a full disk): it must not go on serving (docs/design.md, rule 13).
    #[error("the node stopped: {0}")]
    Fatal(String),
}

/// Records the node id in the data dir on first start and refuses a different one later.
///
/// The marker is written atomically (temporary file, fsync, rename, fsync of the
/// folder): a node killed while claiming its folder must not leave a half-written
/// marker that refuses every later start (the chaos suite found exactly that). An empty
/// marker in a folder holding nothing else, which that older non-atomic write could
/// leave, is claimed again: nothing was stored under it.
fn claim_data_dir(dir: &std::path::Path, id: NodeId) -> Result<(), StartError> {
    let io = |e| StartError::Io(dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let marker = dir.join("NODE_ID");
    match std::fs::read_to_string(&marker) {
        Ok(s) if s.trim().is_empty() && holds_only_the_marker(dir).map_err(io)? => {
            write_marker(dir, &marker, id).map_err(io)
        }
        Ok(s) => {
            let found: NodeId = s.trim().parse().map_err(|_| {
                StartError::Config(format!("{} is corrupt: {s:?}", marker.display()))
            })?;
            if found != id {
                return Err(StartError::WrongNode {
                    dir: dir.to_path_buf(),
                    found,
                    wanted: id,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_marker(dir, &marker, id).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Does `dir` hold nothing but the marker (and maybe its temporary file)?
fn holds_only_the_marker(dir: &std::path::Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name != "NODE_ID" && name != "NODE_ID.tmp" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `marker` = `id` atomically and durably.
fn write_marker(
    dir: &std::path::Path,
    marker: &std::path::Path,
    id: NodeId,
) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("NODE_ID.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, marker)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Binds a listen address given as `ip:port` or `host:port` (a DNS name, such as
/// `localhost` or a pod's own name, is resolved and its first address that binds is
/// used).
async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    let addrs: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
        Ok(sa) => vec![sa],
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|e| {
                StartError::Config(format!(
                    "listen address {addr:?} is not ip:port or a host:port that resolves: {e}"
                ))
            })?
            .collect(),
    };
    let mut last = None;
    for sa in addrs {
        match TcpListener::bind(sa).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => StartError::Bind(addr.to_string(), e),
        None => StartError::Config(format!("listen address {addr:?} resolves to no address")),
    })
}

/// Runs a node until `shutdown` resolves.
///
/// # Errors
/// [`StartError`] when the node cannot start (bad config, data dir of another node,
/// address in use) or a server fails.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if config.id == 0 {
        return Err(StartError::Config("node id must be non-zero".into()));
    }
    if config.init && !config.peers.contains_key(&config.id) {
        return Err(StartError::Config(format!(
            "--init needs this node ({}) among the peers",
            config.id
        )));
    }
    claim_data_dir(&config.data_dir, config.id)?;
    let (log, sm) = open_stores(&config.data_dir.join("raft"))?;
    let shared = sm.shared();
    let raft_listener = bind(&config.raft_addr).await?;
    let api_listener = bind(&config.api_addr).await?;
    let metrics_listener = match &config.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let raft = new_raft(
        config.id,
        raft_config("ratify", config.snapshot_every)
            .map_err(|e| StartError::Raft(e.to_string()))?,
        Network {
            source_ip: config.raft_source_ip,
            transport: config.driver.transport.clone(),
        },
        log.clone(),
        sm,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let transport = config.driver.transport.clone();
    transport.watch();
    let driver = Driver::start(
        config.id,
        raft.clone(),
        shared,
        config.driver.clone(),
        stop_rx.clone(),
    );
    let metrics_task = metrics_listener.map(|l| {
        tokio::spawn(crate::service::metrics::serve(
            l,
            transport.clone(),
            driver.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    let (health_reporter, health_service) = crate::service::health::health_service().await;
    let health_task = tokio::spawn(crate::service::health::track(
        config.id,
        driver.clone(),
        health_reporter,
        stop_rx.clone(),
    ));
    let service = CoordinatorService::new(driver, log);

    let raft_server = tonic::transport::Server::builder()
        .add_service(
            RaftGrpcServer::new(RaftServer::new(raft.clone(), config.id))
                .max_decoding_message_size(256 * 1024 * 1024)
                .max_encoding_message_size(256 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(transport.incoming(raft_listener), stopped(stop_rx.clone()));
    let api_server = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(service.clone()).max_decoding_message_size(1024 * 1024))
        .add_service(AdminServer::new(service))
        .add_service(health_service)
        .add_service(crate::service::health::reflection_v1()?)
        .add_service(crate::service::health::reflection_v1alpha()?)
        .serve_with_incoming_shutdown(transport.incoming(api_listener), stopped(stop_rx));
    let raft_task = tokio::spawn(raft_server);
    let api_task = tokio::spawn(api_server);

    if config.init {
        match raft.is_initialized().await {
            Ok(false) => {
                tracing::info!(members = config.peers.len(), "initialising the cluster");
                if let Err(e) = raft.initialize(config.peers.clone()).await {
                    tracing::warn!(error = %e, "initialise refused (already initialised elsewhere?)");
                }
            }
            Ok(true) => tracing::info!("cluster already initialised"),
            Err(e) => return Err(StartError::Raft(e.to_string())),
        }
    }
    tracing::info!(
        id = config.id,
        raft = %config.raft_addr,
        api = %config.api_addr,
        metrics = config.metrics_addr.as_deref().unwrap_or("off"),
        "node running"
    );

    // Fail-stop (docs/design.md, rule 13): when the log cannot be written or synced,
    // openraft stops the Raft core; the node then exits rather than serve on.
    let fatal = {
        let mut m = raft.metrics();
        async move {
            loop {
                if let Err(f) = &m.borrow_and_update().running_state {
                    return f.to_string();
                }
                if m.changed().await.is_err() {
                    return "the Raft core stopped".to_string();
                }
            }
        }
    };
    let failure = tokio::select! {
        () = shutdown => None,
        f = fatal => Some(f),
    };
    match &failure {
        None => tracing::info!("shutting down"),
        Some(f) => {
            tracing::error!(error = %f, "the Raft core stopped on a storage failure; the node stops")
        }
    }
    let _ = stop_tx.send(true);
    let _ = health_task.await;
    let _ = raft.shutdown().await;
    for task in [raft_task, api_task] {
        if let Ok(Err(e)) = task.await {
            return Err(e.into());
        }
    }
    if let Some(task) = metrics_task {
        if let Ok(Err(e)) = task.await {
            return Err(StartError::Metrics(e));
        }
    }
    match failure {
        None => Ok(()),
        Some(f) => Err(StartError::Fatal(f)),
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn a_folder_is_claimed_once_and_refused_to_another_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        claim_data_dir(dir.path(), 2).expect("first claim");
        claim_data_dir(dir.path(), 2).expect("same node again");
        assert!(matches!(
            claim_data_dir(dir.path(), 3),
            Err(StartError::WrongNode {
                found: 2,
                wanted: 3,
                ..
            })
        ));
        assert!(!dir.path().join("NODE_ID.tmp").exists());
    }

    #[test]
    fn an_empty_marker_is_reclaimed_only_in_an_otherwise_empty_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("NODE_ID"), "").expect("write");
        claim_data_dir(dir.path(), 1).expect("a claim cut short is claimed again");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("NODE_ID")).expect("read"),
            "1\n"
        );
        let used = tempfile::tempdir().expect("tempdir");
        std::fs::write(used.path().join("NODE_ID"), "").expect("write");
        std::fs::create_dir(used.path().join("wal")).expect("mkdir");
        assert!(matches!(
            claim_data_dir(used.path(), 1),
            Err(StartError::Config(_))
        ));
    }
}
