//! A local multi-process cluster on loopback: each node is a separate `ratify node`
//! process with its own data folder, so it can be SIGKILLed and restarted for real.
//! Used by `ratify-dev` (demo, dev cluster, bench) and the integration tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ratify_proto::pb;

use crate::certs::Ca;
use crate::netfault::FaultProxy;
use ratify_common::tls::{Role, Tls, TlsFiles, Transport};
use ratify_coordinator::types::{NodeId, NodeInfo};

/// Errors managing a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Spawning or signalling a process, or preparing its folder.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// No leader emerged in time.
    #[error("no leader elected within {0:?}")]
    NoLeader(Duration),
    /// Unknown node id.
    #[error("no node {0} in this cluster")]
    NoSuchNode(NodeId),
    /// A new node was given id 0 or the id of a node of this cluster.
    #[error("node id {0} is 0 or already in this cluster")]
    Taken(NodeId),
    /// The cluster was not started with fault proxies.
    #[error("this cluster has no fault proxies (use start_partitionable)")]
    NotPartitionable,
    /// A certificate could not be made, or TLS set up with it.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A TLS cluster's certificate authority and the certificate its callers use.
struct LocalTls {
    /// The throwaway CA (in `dir/tls`), which issued each node's certificate.
    ca: Ca,
    /// A caller holding every role but `peer`: operator, client and participant.
    admin: Transport,
}

impl std::fmt::Debug for LocalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTls").field("ca", &self.ca).finish()
    }
}

/// The name of the certificate [`LocalCluster::transport`] presents.
pub const ADMIN_NAME: &str = "dev-admin";

impl LocalTls {
    fn new(dir: &Path) -> Result<Self, LocalError> {
        let tls = |e: &dyn std::fmt::Display| LocalError::Tls(e.to_string());
        let ca = Ca::new(&dir.join("tls"), "ratify local cluster CA").map_err(|e| tls(&e))?;
        let files = ca
            .issue(
                ADMIN_NAME,
                &[
                    (Role::Operator, ADMIN_NAME),
                    (Role::Client, ADMIN_NAME),
                    (Role::Participant, ADMIN_NAME),
                ],
            )
            .map_err(|e| tls(&e))?;
        let admin = Transport::Tls(Tls::load(files).map_err(|e| tls(&e))?);
        Ok(Self { ca, admin })
    }

    /// Node `id`'s certificate (made on first use).
    fn node_files(&self, id: NodeId) -> Result<TlsFiles, LocalError> {
        self.ca
            .issue(&format!("node{id}"), &[(Role::Peer, &id.to_string())])
            .map_err(|e| LocalError::Tls(e.to_string()))
    }
}

/// One node process.
#[derive(Debug)]
struct LocalNode {
    /// Its addresses as the other nodes and clients know them.
    info: NodeInfo,
    /// Where it listens for Raft traffic: `info.raft_addr` itself, or the target of
    /// the fault proxy that `info.raft_addr` then names.
    raft_listen: String,
    /// Source IP of its Raft connections, when the cluster can be partitioned.
    source_ip: Option<IpAddr>,
    /// Where it serves Prometheus metrics.
    metrics_addr: String,
    /// `RATIFY_FAILPOINTS` for its next start (empty: inherited from this process).
    failpoints: String,
    /// The running process, if any.
    child: Option<Child>,
    /// Started after the cluster, to be added by a membership change: never
    /// started with `--init`.
    joining: bool,
}

/// A cluster of `ratify node` processes on 127.0.0.1.
#[derive(Debug)]
pub struct LocalCluster {
    /// The `ratify` binary.
    binary: PathBuf,
    /// Parent of the nodes' data folders and log files.
    dir: PathBuf,
    /// Nodes by id.
    nodes: BTreeMap<NodeId, LocalNode>,
    /// Extra flags passed to every node (driver tunables in tests).
    extra_args: Vec<String>,
    /// Fault proxies in front of each node's Raft port (partitionable clusters only).
    proxies: BTreeMap<NodeId, FaultProxy>,
    /// Mutual TLS (nodes run with certificates of a throwaway CA), or none (nodes run
    /// `--insecure`: every port is on loopback).
    tls: Option<LocalTls>,
}

/// Lowest port [`free_port`] picks from.
const PORT_RANGE_START: u16 = 20_000;

/// Reserves a free loopback port (released at once, for a child process to bind).
///
/// Picked at random below the kernel's ephemeral range (`ip_local_port_range`, from
/// 32768 by default): a port the OS handed out for `bind(0)` can be taken by any
/// outgoing connection before the child binds it, and a node that cannot bind its
/// port never joins its cluster. Ports already handed out by this process are not
/// handed out again.
///
/// # Errors
/// When no socket can be bound.
pub fn free_port() -> Result<u16, LocalError> {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > PORT_RANGE_START + 1_000 {
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..200 {
            let port = rand::thread_rng().gen_range(PORT_RANGE_START..ephemeral_start);
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LocalError::Io("bind 127.0.0.1:0".into(), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LocalError::Io("local_addr".into(), e))
}

/// The loopback address node `id`'s Raft connections leave from in a partitionable
/// cluster.
fn source_ip(id: NodeId) -> IpAddr {
    IpAddr::from([127, 0, 0, 10u8.saturating_add(id.min(200) as u8)])
}

impl LocalCluster {
    /// Starts `n` nodes (ids 1..=n) with data under `dir`; node 1 initialises the
    /// cluster. Returns once the processes are spawned (see [`Self::wait_for_leader`]).
    ///
    /// # Errors
    /// When a port cannot be reserved or a process cannot be spawned.
    pub fn start(
        binary: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
    ) -> Result<Self, LocalError> {
        Self::launch(binary, dir, n, extra_args, BTreeMap::new(), None)
    }

    /// Like [`Self::start`] with mutual TLS on every port: a throwaway CA in
    /// `dir/tls` issues each node `ratify://peer/<id>`; [`Self::transport`] presents
    /// an operator, client and participant certificate, and [`Self::ca`] issues more.
    ///
    /// # Errors
    /// As [`Self::start`], and [`LocalError::Tls`].
    pub fn start_tls(
        binary: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
    ) -> Result<Self, LocalError> {
        let tls = LocalTls::new(dir)?;
        Self::launch(binary, dir, n, extra_args, BTreeMap::new(), Some(tls))
    }

    /// How to reach this cluster's nodes: plaintext, or TLS with a certificate
    /// holding the operator, client and participant roles ([`ADMIN_NAME`]).
    pub fn transport(&self) -> Transport {
        self.tls
            .as_ref()
            .map_or(Transport::Plain, |t| t.admin.clone())
    }

    /// A transport presenting a new certificate of this cluster's CA that grants
    /// `roles` to `name` (written to `dir/tls/<name>.pem`); plaintext for a
    /// plaintext cluster.
    ///
    /// # Errors
    /// [`LocalError::Tls`].
    pub fn transport_for(&self, name: &str, roles: &[Role]) -> Result<Transport, LocalError> {
        let Some(tls) = &self.tls else {
            return Ok(Transport::Plain);
        };
        let names: Vec<(Role, &str)> = roles.iter().map(|r| (*r, name)).collect();
        let files = tls
            .ca
            .issue(name, &names)
            .map_err(|e| LocalError::Tls(e.to_string()))?;
        Ok(Transport::Tls(
            Tls::load(files).map_err(|e| LocalError::Tls(e.to_string()))?,
        ))
    }

    /// The CA of a TLS cluster.
    pub fn ca(&self) -> Option<&Ca> {
        self.tls.as_ref().map(|t| &t.ca)
    }

    /// Like [`Self::start`], with a [`FaultProxy`] in front of every node's Raft port
    /// and each node's Raft connections leaving from its own loopback address
    /// (127.0.0.(10+id)), so [`Self::isolate`] can cut any node off. Needs a tokio
    /// runtime (the proxies run on it).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_partitionable(
        binary: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
    ) -> Result<Self, LocalError> {
        let mut proxies = BTreeMap::new();
        for id in 1..=n {
            let listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let proxy = FaultProxy::start(listen)
                .await
                .map_err(|e| LocalError::Io("start fault proxy".into(), e))?;
            proxies.insert(id, proxy);
        }
        Self::launch(binary, dir, n, extra_args, proxies, None)
    }

    fn launch(
        binary: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
        proxies: BTreeMap<NodeId, FaultProxy>,
        tls: Option<LocalTls>,
    ) -> Result<Self, LocalError> {
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let (raft_addr, raft_listen, source_ip) = match proxies.get(&id) {
                Some(p) => (
                    p.addr().to_string(),
                    p.target().to_string(),
                    Some(source_ip(id)),
                ),
                None => {
                    let a = format!("127.0.0.1:{}", free_port()?);
                    (a.clone(), a, None)
                }
            };
            let info = NodeInfo {
                raft_addr,
                api_addr: format!("127.0.0.1:{}", free_port()?),
            };
            let metrics_addr = format!("127.0.0.1:{}", free_port()?);
            nodes.insert(
                id,
                LocalNode {
                    info,
                    raft_listen,
                    source_ip,
                    metrics_addr,
                    failpoints: String::new(),
                    child: None,
                    joining: false,
                },
            );
        }
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes,
            extra_args,
            proxies,
            tls,
        };
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Starts a new node `id` on fresh loopback ports and its own data folder, without
    /// `--init`: it waits, uninitialised, to be added by a membership change
    /// (`AddMember`, `ReplaceMember`). Returns its addresses. Its Raft port has no
    /// fault proxy.
    ///
    /// # Errors
    /// [`LocalError::Taken`], or [`LocalError::Io`] when a port cannot be reserved or
    /// the process cannot be spawned.
    pub fn spawn_joining(&mut self, id: NodeId) -> Result<NodeInfo, LocalError> {
        if id == 0 || self.nodes.contains_key(&id) {
            return Err(LocalError::Taken(id));
        }
        let raft_addr = format!("127.0.0.1:{}", free_port()?);
        let info = NodeInfo {
            raft_addr: raft_addr.clone(),
            api_addr: format!("127.0.0.1:{}", free_port()?),
        };
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        self.nodes.insert(
            id,
            LocalNode {
                info: info.clone(),
                raft_listen: raft_addr,
                source_ip: None,
                metrics_addr,
                failpoints: String::new(),
                child: None,
                joining: true,
            },
        );
        self.spawn(id)?;
        Ok(info)
    }

    /// SIGKILLs node `id` and forgets it (after a membership change removed it), so
    /// [`Self::ids`] and [`Self::wait_for_leader`] no longer name it. Its data folder
    /// and log stay.
    ///
    /// # Errors
    /// As [`Self::kill`].
    pub fn forget(&mut self, id: NodeId) -> Result<(), LocalError> {
        self.kill(id)?;
        self.nodes.remove(&id);
        Ok(())
    }

    /// Node `id`'s addresses, as the other nodes and clients know them.
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`].
    pub fn node_info(&self, id: NodeId) -> Result<NodeInfo, LocalError> {
        Ok(self.node(id)?.info.clone())
    }

    /// Client API addresses of every node.
    pub fn api_endpoints(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|n| n.info.api_addr.clone())
            .collect()
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The client address of node `id`.
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`].
    pub fn api_addr(&self, id: NodeId) -> Result<String, LocalError> {
        Ok(self.node(id)?.info.api_addr.clone())
    }

    /// Where node `id` serves Prometheus metrics (`http://ADDR/metrics`).
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`].
    pub fn metrics_addr(&self, id: NodeId) -> Result<String, LocalError> {
        Ok(self.node(id)?.metrics_addr.clone())
    }

    /// Scrapes node `id`'s Prometheus metrics (`name{labels}` → value).
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`], or [`LocalError::Io`] when the node does not answer.
    pub async fn metrics(&self, id: NodeId) -> Result<BTreeMap<String, f64>, LocalError> {
        let addr = self.metrics_addr(id)?;
        ratify_coordinator::metrics::scrape(&addr)
            .await
            .map_err(|e| LocalError::Io(format!("metrics of node {id} at {addr}"), e))
    }

    /// The data folder of node `id`.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// Cuts node `id` off from every other node, both ways (its clients and
    /// participants still reach it). Needs [`Self::start_partitionable`].
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`], or [`LocalError::NotPartitionable`].
    pub fn isolate(&self, id: NodeId) -> Result<(), LocalError> {
        let ip = self
            .node(id)?
            .source_ip
            .ok_or(LocalError::NotPartitionable)?;
        for (&other, proxy) in &self.proxies {
            if other == id {
                proxy.block_all();
            } else {
                proxy.block_sources([ip]);
            }
        }
        Ok(())
    }

    /// Undoes every [`Self::isolate`].
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    fn node(&self, id: NodeId) -> Result<&LocalNode, LocalError> {
        self.nodes.get(&id).ok_or(LocalError::NoSuchNode(id))
    }

    fn spawn(&mut self, id: NodeId) -> Result<(), LocalError> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|(pid, n)| format!("{pid}={},{}", n.info.raft_addr, n.info.api_addr))
            .collect();
        let data_dir = self.data_dir(id);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| LocalError::Io(data_dir.display().to_string(), e))?;
        let log_path = self.dir.join(format!("node{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| LocalError::Io(log_path.display().to_string(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LocalError::Io(log_path.display().to_string(), e))?;
        let node = self.node(id)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("node")
            .arg("--id")
            .arg(id.to_string())
            .arg("--raft-addr")
            .arg(&node.raft_listen)
            .arg("--api-addr")
            .arg(&node.info.api_addr)
            .arg("--metrics-addr")
            .arg(&node.metrics_addr)
            .arg("--data-dir")
            .arg(&data_dir);
        for p in &peers {
            cmd.arg("--peer").arg(p);
        }
        if id == 1 && !node.joining {
            cmd.arg("--init");
        }
        if let Some(ip) = node.source_ip {
            cmd.arg("--raft-source-ip").arg(ip.to_string());
        }
        match &self.tls {
            Some(tls) => {
                let files = tls.node_files(id)?;
                cmd.arg("--tls-ca")
                    .arg(&files.ca)
                    .arg("--tls-cert")
                    .arg(&files.cert)
                    .arg("--tls-key")
                    .arg(&files.key);
            }
            None => {
                cmd.arg("--insecure");
            }
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if !node.failpoints.is_empty() {
            cmd.env(ratify_common::failpoint::ENV_VAR, &node.failpoints);
        }
        let child = cmd
            .spawn()
            .map_err(|e| LocalError::Io(format!("spawn {}", self.binary.display()), e))?;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.child = Some(child);
        }
        Ok(())
    }

    /// SIGKILLs node `id` (no clean shutdown) and reaps it. Killing a dead node is a no-op.
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`], or when the signal cannot be sent.
    pub fn kill(&mut self, id: NodeId) -> Result<(), LocalError> {
        let node = self.nodes.get_mut(&id).ok_or(LocalError::NoSuchNode(id))?;
        if let Some(mut child) = node.child.take() {
            // std's Child::kill sends SIGKILL on Unix.
            child
                .kill()
                .map_err(|e| LocalError::Io(format!("kill node {id}"), e))?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Sends SIGSTOP (`stop`) or SIGCONT to node `id`: a process pause, as a long
    /// stall, a debugger or a VM migration would cause. A stopped node keeps its
    /// sockets; peers and clients see it stop answering.
    ///
    /// # Errors
    /// [`LocalError::NoSuchNode`] when it is not running, or when the signal fails.
    pub fn pause(&mut self, id: NodeId, stop: bool) -> Result<(), LocalError> {
        let pid = self
            .nodes
            .get(&id)
            .and_then(|n| n.child.as_ref())
            .map(Child::id)
            .ok_or(LocalError::NoSuchNode(id))?;
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        let pid = libc::pid_t::try_from(pid).map_err(|_| LocalError::NoSuchNode(id))?;
        // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is shared.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(LocalError::Io(
                format!("signal node {id}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Starts node `id` again on the same addresses and data folder (after [`Self::kill`]).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn restart(&mut self, id: NodeId) -> Result<(), LocalError> {
        self.kill(id)?;
        self.spawn(id)
    }

    /// Starts node `id` again like [`Self::restart`], with `failpoints` as its
    /// `RATIFY_FAILPOINTS` (empty: inherited from this process) from now on.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn restart_with_failpoints(
        &mut self,
        id: NodeId,
        failpoints: &str,
    ) -> Result<(), LocalError> {
        self.kill(id)?;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.failpoints = failpoints.to_string();
        }
        self.spawn(id)
    }

    /// How node `id`'s process ended, once it has exited by itself (a fail point, a
    /// crash), reaping it; `None` while it runs or when it was never started or was
    /// killed through [`Self::kill`].
    pub fn exited(&mut self, id: NodeId) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id)?;
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status)
    }

    /// Is node `id`'s process running?
    pub fn is_running(&mut self, id: NodeId) -> bool {
        match self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for id in self.ids() {
            let _ = self.kill(id);
        }
    }

    /// Asks one node for its status.
    ///
    /// # Errors
    /// Transport failures and statuses, as `tonic::Status`.
    pub async fn status(&self, id: NodeId) -> Result<pb::ClusterStatusResponse, tonic::Status> {
        let addr = self
            .api_addr(id)
            .map_err(|e| tonic::Status::not_found(e.to_string()))?;
        node_status(&addr, &self.transport()).await
    }

    /// Waits until a running node reports itself leader with the cluster named, and
    /// returns its id.
    ///
    /// # Errors
    /// [`LocalError::NoLeader`] after `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, LocalError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            for id in self.ids() {
                if let Ok(s) = self.status(id).await {
                    if s.role == "Leader" && s.leader_id == id && s.cluster_id != "0000000000000000"
                    {
                        return Ok(id);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LocalError::NoLeader(timeout))
    }
}

pub use ratify_coordinator::ask::{node_status, raft_identity};

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
