//! Every process of a chaos run and how to kill and restart it: the coordinator
//! nodes, the participant applications, the Postgres postmaster and the Kafka broker.
//!
//! A process restarted by the nemesis may come back with one fail point armed
//! (`RATIFY_FAILPOINTS="<name>=kill@p"`): it then SIGKILLs itself at that protocol
//! step some time later. [`World::supervise`] notices every process that died by
//! itself, tells an armed fail point's crash (the process logs
//! `ratify failpoint <name>: Kill` first) from an unexpected exit, and starts it again.
//!
//! A restarted process can instead come back with a disk fault armed
//! (`wal.sync=error:EIO@p`, `wal.write=error:ENOSPC@p` in a node, `durable.sync=error:EIO@p`
//! in the store application): a node then stops by itself on the failed write or sync
//! (`the Raft core stopped on a storage failure; the node stops`, then an error exit),
//! and the store keeps running with every later sync failing. The supervisor tells a
//! node's disk-fault stop from an unexpected exit by the fail point's line
//! (`ratify failpoint wal.sync: Error(5)`) and starts it again without the fault.
//!
//! A process can also be paused ([`World::pause`], SIGSTOP) and resumed
//! ([`World::resume`], SIGCONT). A stopped process is alive: the supervisor's
//! `try_wait` (no `WUNTRACED`) does not report it, so it is never taken for a dead one;
//! a SIGKILL ends it all the same, and [`World::heal`] resumes whatever is still
//! stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_common::failpoint;
use ratify_coordinator::types::NodeId;
use ratify_devkit::local::LocalCluster;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::history::History;
use crate::pg::PgEnv;

/// Fail points a coordinator node can be armed with (every protocol step it drives).
pub const NODE_FAILPOINTS: &[&str] = &[
    "coord.before_prepare",
    "coord.after_votes",
    "coord.after_decision",
    "coord.after_phase2_ack",
    "coord.before_complete",
    "coord.recovery",
];

/// Fail points of the participant server and recovery loop, in every application.
const PARTICIPANT_FAILPOINTS: &[&str] = &[
    "participant.after_prepare",
    "participant.before_commit",
    "participant.after_commit",
    "participant.before_rollback",
    "participant.recovery_resolve",
];

/// Fail points of the Postgres adapter.
const PG_FAILPOINTS: &[&str] = &[
    "pg.before_prepare",
    "pg.after_prepare",
    "pg.before_commit_prepared",
    "pg.after_commit_prepared",
    "pg.before_rollback_prepared",
    "pg.after_rollback",
];

/// Fail points of the Kafka adapter.
const KAFKA_FAILPOINTS: &[&str] = &[
    "kafka.after_stage",
    "kafka.before_publish",
    "kafka.after_produce",
    "kafka.after_kafka_commit",
];

/// Disk faults a coordinator node can be armed with: (fail point, action).
pub const NODE_DISK_FAULTS: &[(&str, &str)] =
    &[("wal.sync", "error:EIO"), ("wal.write", "error:ENOSPC")];

/// The disk fault of the store application (its durable store's fdatasync).
pub const STORE_DISK_FAULT: (&str, &str) = ("durable.sync", "error:EIO");

/// What a node logs when it stops on a failed write or sync of its Raft log.
pub const FAIL_STOP_LINE: &str = "the Raft core stopped on a storage failure; the node stops";

/// Is `point` one of the disk-fault fail points?
fn is_disk_point(point: &str) -> bool {
    NODE_DISK_FAULTS.iter().any(|(p, _)| *p == point) || point == STORE_DISK_FAULT.0
}

/// A participant application kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AppKind {
    /// Postgres bank.
    Pg,
    /// Embedded account store.
    Store,
    /// Kafka events.
    Kafka,
}

impl AppKind {
    /// Every kind.
    pub const ALL: [AppKind; 3] = [AppKind::Pg, AppKind::Store, AppKind::Kafka];

    /// Its name (`--kind` of `chaos_participant`, and in the history).
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Pg => "pg",
            AppKind::Store => "store",
            AppKind::Kafka => "kafka",
        }
    }

    /// Its resource name at its participant.
    pub fn resource(self) -> &'static str {
        match self {
            AppKind::Pg => "bank",
            AppKind::Store => "accounts",
            AppKind::Kafka => "events",
        }
    }

    /// The fail points it can be armed with.
    pub fn failpoints(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            AppKind::Pg => PG_FAILPOINTS,
            AppKind::Store => &[],
            AppKind::Kafka => KAFKA_FAILPOINTS,
        };
        PARTICIPANT_FAILPOINTS.iter().chain(own).copied().collect()
    }
}

/// A binary next to the running executable (`target/<profile>/`), or next to its
/// parent folder when running as a test (`target/<profile>/deps/`).
///
/// # Errors
/// When it is in neither place.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no folder")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "{name} is missing next to {}: build it first (`cargo build -p ratify-tests --bin {name}`; \
         the README's test command does)",
        exe.display()
    )
}

/// One participant application process.
struct App {
    /// Its kind.
    kind: AppKind,
    /// Command line (without the binary).
    args: Vec<String>,
    /// Participant service address.
    listen: String,
    /// Work API address.
    app_addr: String,
    /// Its log (stderr, appended across restarts).
    log: PathBuf,
    /// The fail point armed in the running process, if any.
    armed: Option<String>,
    /// Length of the log when the running process started.
    log_offset: u64,
    /// The running process.
    child: Option<Child>,
}

/// How the run reaches the Kafka broker of `tests/infra/kafka.sh`.
#[derive(Debug, Clone)]
pub struct BrokerEnv {
    /// Bootstrap address.
    pub bootstrap: String,
    /// File holding the broker's pid.
    pub pidfile: PathBuf,
    /// Script that starts it again and waits until it is ready.
    pub run_script: PathBuf,
}

impl BrokerEnv {
    /// Reads the variables `tests/infra/kafka.sh start` exports.
    ///
    /// # Errors
    /// A message naming tests/infra when one is missing.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |n: &str| {
            std::env::var(n).with_context(|| {
                format!("{n} is not set: start the broker with tests/infra/kafka.sh (see tests/infra/README.md)")
            })
        };
        Ok(Self {
            bootstrap: var(crate::kafka::KAFKA_VAR)?,
            pidfile: var("RATIFY_TEST_KAFKA_PIDFILE")?.into(),
            run_script: var("RATIFY_TEST_KAFKA_RUN")?.into(),
        })
    }
}

/// Every process of the run.
pub struct World {
    /// The coordinator cluster (partitionable).
    pub cluster: LocalCluster,
    /// Fail points every node always runs with (the deliberate-bug switch).
    node_base_failpoints: String,
    /// The fail point armed in each node, if any.
    node_armed: BTreeMap<NodeId, String>,
    /// Length of each node's log when its running process started.
    node_log_offset: BTreeMap<NodeId, u64>,
    /// The applications.
    apps: BTreeMap<AppKind, App>,
    /// The Postgres server.
    pub pg: PgEnv,
    /// The Kafka broker.
    pub broker: BrokerEnv,
    /// Services killed and not known to be back.
    services_down: std::collections::BTreeSet<Service>,
    /// Processes stopped with SIGSTOP and not resumed (nor killed) yet.
    paused: std::collections::BTreeSet<Process>,
    /// The run's folder (logs).
    dir: PathBuf,
    /// The history, where deaths and restarts are recorded.
    history: History,
}

/// What a file holds from byte `offset` on, as text (empty when unreadable).
fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` bytes of a file, as text.
fn tail(path: &Path, n: u64) -> String {
    log_since(path, log_len(path).saturating_sub(n))
}

/// A fail point armed in a restarted process.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// Its name.
    pub point: String,
    /// What it does when it fires: `kill` (a crash point) or `error:ERRNO` (a disk
    /// fault).
    pub action: String,
    /// Chance that it fires each time it is passed.
    pub probability: f64,
}

impl Arm {
    /// A crash point: the process SIGKILLs itself at `point`.
    pub fn kill(point: &str, probability: f64) -> Self {
        Self {
            point: point.to_string(),
            action: "kill".into(),
            probability,
        }
    }

    /// Is it a disk fault (an injected I/O error)?
    pub fn is_disk_fault(&self) -> bool {
        self.action.starts_with("error:")
    }

    /// `<point>=<action>@<p>`, as in `RATIFY_FAILPOINTS`.
    pub fn spec(&self) -> String {
        format!("{}={}@{}", self.point, self.action, self.probability)
    }
}

/// The `RATIFY_FAILPOINTS` value: the base switches, plus the armed point.
fn failpoint_spec(base: &str, arm: Option<&Arm>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !base.is_empty() {
        parts.push(base.to_string());
    }
    if let Some(a) = arm {
        parts.push(a.spec());
    }
    parts.join(",")
}

/// Sends `sig` to `pid`.
fn signal(pid: i32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    anyhow::ensure!(
        rc == 0,
        "kill -{sig} {pid} failed: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The error or panic message in what a process logged, or its last line.
fn exit_reason(logged: &str) -> String {
    logged
        .lines()
        .find(|l| l.starts_with("Error:") || l.contains("panicked at"))
        .or_else(|| logged.lines().last())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// Size of a file (0 when missing): where a restarted process's log lines begin.
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The fail point that killed a process, from what it logged (each firing is logged
/// as `ratify failpoint <name>: Kill` before the process kills itself).
fn fired_point(logged: &str) -> Option<String> {
    let line = logged
        .lines()
        .rev()
        .find(|l| l.starts_with("ratify failpoint ") && l.ends_with(": Kill"))?;
    Some(
        line.trim_start_matches("ratify failpoint ")
            .trim_end_matches(": Kill")
            .to_string(),
    )
}

/// The disk fault that fired in a process, from what it logged (an I/O fail point logs
/// `ratify failpoint <name>: Error(<errno>)` when it fails the write or sync).
fn fired_disk_fault(logged: &str) -> Option<String> {
    logged.lines().find_map(|l| {
        let rest = l.strip_prefix("ratify failpoint ")?;
        let (name, action) = rest.split_once(": ")?;
        (is_disk_point(name) && action.starts_with("Error(")).then(|| name.to_string())
    })
}

/// How a process that exited by itself died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// An armed crash point SIGKILLed it.
    Crash,
    /// It stopped after an armed disk fault failed a write or sync.
    DiskFault,
    /// Neither: worth reading about.
    Unexpected,
}

impl World {
    /// Starts the cluster and the applications.
    ///
    /// # Errors
    /// When a process cannot start or does not get ready.
    pub async fn start(
        dir: &Path,
        pg: PgEnv,
        broker: BrokerEnv,
        app_args: BTreeMap<AppKind, Vec<String>>,
        node_base_failpoints: &str,
        node_args: Vec<String>,
        history: History,
    ) -> anyhow::Result<Self> {
        let ratify = match std::env::var_os("RATIFY_BIN") {
            Some(p) => PathBuf::from(p),
            None => sibling_binary("ratify")?,
        };
        let cluster =
            LocalCluster::start_partitionable(&ratify, &dir.join("cluster"), 3, node_args).await?;
        let mut world = Self {
            cluster,
            node_base_failpoints: node_base_failpoints.to_string(),
            node_armed: BTreeMap::new(),
            node_log_offset: BTreeMap::new(),
            apps: BTreeMap::new(),
            pg,
            broker,
            services_down: std::collections::BTreeSet::new(),
            paused: std::collections::BTreeSet::new(),
            dir: dir.to_path_buf(),
            history,
        };
        // Started again at once, now with the run's own fail points (the deliberate-bug
        // switches): so every run also kills each node during its first start.
        for id in world.cluster.ids() {
            world.spawn_node(id, None)?;
        }
        world
            .cluster
            .wait_for_leader(Duration::from_secs(30))
            .await?;
        let coordinators = world.cluster.api_endpoints().join(",");
        for (kind, extra) in app_args {
            let listen = format!("127.0.0.1:{}", ratify_devkit::local::free_port()?);
            let app_addr = format!("127.0.0.1:{}", ratify_devkit::local::free_port()?);
            let mut args = vec![
                "--kind".into(),
                kind.name().into(),
                "--listen".into(),
                listen.clone(),
                "--app".into(),
                app_addr.clone(),
                "--coordinator".into(),
                coordinators.clone(),
                "--data-dir".into(),
                dir.join(format!("{}-data", kind.name()))
                    .display()
                    .to_string(),
            ];
            args.extend(extra);
            world.apps.insert(
                kind,
                App {
                    kind,
                    args,
                    listen,
                    app_addr,
                    log: dir.join(format!("{}.log", kind.name())),
                    armed: None,
                    log_offset: 0,
                    child: None,
                },
            );
            world.spawn_app(kind, None)?;
        }
        for kind in AppKind::ALL {
            if world.apps.contains_key(&kind) {
                world.wait_app_ready(kind, Duration::from_secs(90)).await?;
            }
        }
        Ok(world)
    }

    /// The participant endpoint and work address of an application.
    pub fn app_addrs(&self, kind: AppKind) -> Option<(String, String)> {
        self.apps
            .get(&kind)
            .map(|a| (a.listen.clone(), a.app_addr.clone()))
    }

    /// The run's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn_node(&mut self, id: NodeId, arm: Option<&Arm>) -> anyhow::Result<()> {
        let spec = failpoint_spec(&self.node_base_failpoints, arm);
        // The restart SIGKILLs the old process first, stopped or not.
        self.paused.remove(&Process::Node(id));
        self.node_log_offset.insert(id, log_len(&self.node_log(id)));
        self.cluster.restart_with_failpoints(id, &spec)?;
        match arm {
            Some(a) => self.node_armed.insert(id, a.point.clone()),
            None => self.node_armed.remove(&id),
        };
        Ok(())
    }

    /// Node `id`'s log (stderr of every process it ran, appended).
    pub fn node_log(&self, id: NodeId) -> PathBuf {
        self.dir.join("cluster").join(format!("node{id}.log"))
    }

    /// Where `process`'s log is and where its running process's lines begin.
    fn log_of(&self, process: Process) -> Option<(PathBuf, u64)> {
        match process {
            Process::Node(id) => Some((
                self.node_log(id),
                self.node_log_offset.get(&id).copied().unwrap_or(0),
            )),
            Process::App(kind) => self.apps.get(&kind).map(|a| (a.log.clone(), a.log_offset)),
        }
    }

    /// The fail point armed in `process`'s running process, if any.
    pub fn armed(&self, process: Process) -> Option<&str> {
        match process {
            Process::Node(id) => self.node_armed.get(&id).map(String::as_str),
            Process::App(kind) => self.apps.get(&kind)?.armed.as_deref(),
        }
    }

    /// The disk fault that fired in `process`'s running process, if one did (for the
    /// store application, which keeps running with every sync failing).
    pub fn disk_fault_fired(&self, process: Process) -> Option<String> {
        let (log, offset) = self.log_of(process)?;
        fired_disk_fault(&log_since(&log, offset))
    }

    /// (Re)starts a node or an application (without waiting for it to get ready), with
    /// fail point `arm` armed or clean, and records the restart.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn restart(&mut self, process: Process, arm: Option<Arm>) -> anyhow::Result<()> {
        match process {
            Process::Node(id) => self.spawn_node(id, arm.as_ref())?,
            Process::App(kind) => self.spawn_app(kind, arm.as_ref())?,
        }
        let detail = arm.map_or_else(
            || "clean".to_string(),
            |a| {
                if a.is_disk_fault() {
                    format!("armed {}", a.spec())
                } else {
                    format!("armed {}@{}", a.point, a.probability)
                }
            },
        );
        self.history
            .nemesis("restart", "", &process.name(), &detail);
        Ok(())
    }

    /// SIGKILLs node `id` (stopped or not).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill_node(&mut self, id: NodeId) -> anyhow::Result<()> {
        // A node that already died by itself is recorded as such, not as this kill.
        self.reap(Process::Node(id));
        self.paused.remove(&Process::Node(id));
        self.cluster.kill(id)?;
        Ok(())
    }

    /// Sends SIGSTOP (`stop`) or SIGCONT to a running process.
    ///
    /// # Errors
    /// When it is not running or the signal cannot be sent.
    fn stop_or_continue(&mut self, process: Process, stop: bool) -> anyhow::Result<()> {
        match process {
            Process::Node(id) => self.cluster.pause(id, stop)?,
            Process::App(kind) => {
                let child = self
                    .apps
                    .get(&kind)
                    .and_then(|a| a.child.as_ref())
                    .with_context(|| format!("{} is not running", kind.name()))?;
                let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
                signal(i32::try_from(child.id())?, sig)?;
            }
        }
        Ok(())
    }

    /// Stops `process` with SIGSTOP (it stays alive: see the module documentation).
    ///
    /// # Errors
    /// When it is not running or the signal cannot be sent.
    pub fn pause(&mut self, process: Process) -> anyhow::Result<()> {
        self.stop_or_continue(process, true)?;
        self.paused.insert(process);
        Ok(())
    }

    /// Lets a paused `process` run on with SIGCONT (no-op when it is not paused, for
    /// example because it was killed and restarted meanwhile).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn resume(&mut self, process: Process) -> anyhow::Result<()> {
        if self.paused.remove(&process) {
            self.stop_or_continue(process, false)?;
        }
        Ok(())
    }

    /// Puts everything back: the network whole, every stopped process resumed (and
    /// the resume recorded), every service and process running (clean).
    ///
    /// # Errors
    /// When a process or service cannot be started.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        self.cluster.heal();
        let paused: Vec<Process> = self.paused.iter().copied().collect();
        for p in paused {
            self.resume(p)?;
            self.history
                .nemesis("resume", "heal", &p.name(), "SIGCONT while healing");
        }
        self.ensure_running().await
    }

    fn spawn_app(&mut self, kind: AppKind, arm: Option<&Arm>) -> anyhow::Result<()> {
        self.kill_app(kind);
        let app = self.apps.get_mut(&kind).context("no such application")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&app.log)?;
        let mut cmd = Command::new(sibling_binary("chaos_participant")?);
        cmd.args(&app.args)
            .env(failpoint::ENV_VAR, failpoint_spec("", arm))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        app.log_offset = log_len(&app.log);
        app.child = Some(cmd.spawn().context("spawning chaos_participant")?);
        app.armed = arm.map(|a| a.point.clone());
        Ok(())
    }

    /// SIGKILLs application `kind`, stopped or not (no-op when it is not running).
    pub fn kill_app(&mut self, kind: AppKind) {
        // An application that already died by itself is recorded as such.
        self.reap(Process::App(kind));
        self.paused.remove(&Process::App(kind));
        if let Some(mut c) = self.apps.get_mut(&kind).and_then(|a| a.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until application `kind` answers on its work API.
    ///
    /// # Errors
    /// When it does not within `timeout`, or exits.
    pub async fn wait_app_ready(&mut self, kind: AppKind, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let (_, addr) = self.app_addrs(kind).context("no such application")?;
            if app_call(&addr, &json!({"op": "inspect"}), Duration::from_secs(2))
                .await
                .is_ok()
            {
                return Ok(());
            }
            let app = self.apps.get_mut(&kind).context("no such application")?;
            if let Some(c) = app.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    anyhow::bail!(
                        "{} exited during startup ({status}); log tail:\n{}",
                        kind.name(),
                        tail(&app.log, 4096)
                    );
                }
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{} not ready after {timeout:?}; log tail:\n{}",
                kind.name(),
                tail(&app.log, 4096)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs a shared service.
    ///
    /// # Errors
    /// When its pid cannot be read or signalled.
    pub fn kill_service(&mut self, service: Service) -> anyhow::Result<()> {
        self.services_down.insert(service);
        match service {
            Service::Postmaster => self.pg.kill_postmaster(),
            Service::Broker => self.kill_broker(),
        }
    }

    /// Records that `service` is running again.
    pub fn service_up(&mut self, service: Service) {
        self.services_down.remove(&service);
        self.history.nemesis("restart", "", service.name(), "");
    }

    /// Starts a shared service again, on a blocking thread; the handle completes once
    /// it is ready (so the caller can keep supervising meanwhile: a broker restart takes
    /// 10–40 s here).
    pub fn start_service(&self, service: Service) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let pg = self.pg.clone();
        let script = self.broker.run_script.clone();
        tokio::task::spawn_blocking(move || match service {
            Service::Postmaster => pg.start_postmaster(),
            Service::Broker => {
                let status = Command::new(&script)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                anyhow::ensure!(status.success(), "broker restart failed: {status}");
                Ok(())
            }
        })
    }

    fn kill_broker(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.broker.pidfile)
            .with_context(|| format!("read {}", self.broker.pidfile.display()))?;
        let pid: i32 = text.trim().parse().context("broker pid")?;
        signal(pid, libc::SIGKILL)?;
        // Reap-free: the broker was started by a shell script (setsid), not by us;
        // wait until it is really gone so the restart can bind its ports.
        let start = Instant::now();
        // SAFETY: signal 0 only checks the pid.
        while unsafe { libc::kill(pid, 0) } == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Finds every node and application that died by itself, records why, and starts
    /// it again (re-armed with a fail point chosen by `rearm`, or clean; always clean
    /// after a disk fault, as once the disk is fine again).
    ///
    /// # Errors
    /// When a process cannot be restarted.
    pub fn supervise(
        &mut self,
        mut rearm: impl FnMut(Process) -> Option<Arm>,
    ) -> anyhow::Result<()> {
        for p in self.processes_where(|_, _| true) {
            match self.reap(p) {
                None => {}
                Some(Death::DiskFault) => self.restart(p, None)?,
                Some(_) => self.restart(p, rearm(p))?,
            }
        }
        Ok(())
    }

    /// If `process` exited by itself, reaps it, records why, and says how it died.
    fn reap(&mut self, process: Process) -> Option<Death> {
        let dead = match process {
            Process::Node(id) => self.cluster.exited(id).map(|status| {
                let offset = self.node_log_offset.get(&id).copied().unwrap_or(0);
                (self.node_log(id), offset, status)
            }),
            Process::App(kind) => self.apps.get_mut(&kind).and_then(|a| {
                let status = a.child.as_mut()?.try_wait().ok()??;
                a.child = None;
                Some((a.log.clone(), a.log_offset, status))
            }),
        };
        let (log, offset, status) = dead?;
        let armed_disk = self.armed(process).is_some_and(is_disk_point);
        Some(self.record_death(&process.name(), &log, offset, status, armed_disk))
    }

    fn record_death(
        &self,
        target: &str,
        log: &Path,
        offset: u64,
        status: std::process::ExitStatus,
        armed_disk: bool,
    ) -> Death {
        use std::os::unix::process::ExitStatusExt;
        let logged = log_since(log, offset);
        if let Some(point) = fired_point(&logged) {
            if status.signal() == Some(libc::SIGKILL) {
                self.history
                    .nemesis("crash", &format!("failpoint:{point}"), target, "");
                return Death::Crash;
            }
        }
        // An error exit (not a signal) after an armed disk fault failed an I/O: the
        // fail-stop the fault is there to cause.
        match fired_disk_fault(&logged) {
            Some(point) if armed_disk && status.signal().is_none() => {
                let stop = if logged.contains(FAIL_STOP_LINE) {
                    "fail-stop"
                } else {
                    "exited"
                };
                self.history.nemesis(
                    "disk_fault",
                    &format!("disk_fault:{point}"),
                    target,
                    &format!("{stop}, {status}: {}", exit_reason(&logged)),
                );
                Death::DiskFault
            }
            _ => {
                self.history.nemesis(
                    "unexpected_exit",
                    "unexpected_exit",
                    target,
                    &format!("{status}: {}", exit_reason(&logged)),
                );
                Death::Unexpected
            }
        }
    }

    /// Every node and application for which `pred(running, armed)` holds.
    fn processes_where(&mut self, pred: impl Fn(bool, bool) -> bool) -> Vec<Process> {
        let mut out = Vec::new();
        for id in self.cluster.ids() {
            let running = self.cluster.is_running(id);
            if pred(running, self.node_armed.contains_key(&id)) {
                out.push(Process::Node(id));
            }
        }
        for a in self.apps.values() {
            if pred(a.child.is_some(), a.armed.is_some()) {
                out.push(Process::App(a.kind));
            }
        }
        out
    }

    /// Starts (clean) every service, node and application that is not running, for
    /// example after a nemesis action failed half-way (part of [`World::heal`]).
    ///
    /// # Errors
    /// When a process cannot be spawned.
    async fn ensure_running(&mut self) -> anyhow::Result<()> {
        let down: Vec<Service> = self.services_down.iter().copied().collect();
        for service in down {
            self.start_service(service).await??;
            self.service_up(service);
        }
        for p in self.processes_where(|running, _| !running) {
            self.restart(p, None)?;
        }
        Ok(())
    }

    /// Restarts every process that runs with an armed fail point clean, so the end of
    /// the run (quiet period, checks) is not cut short by a crash.
    ///
    /// # Errors
    /// When a process cannot be restarted.
    pub fn disarm_all(&mut self) -> anyhow::Result<()> {
        for p in self.processes_where(|running, armed| running && armed) {
            self.history
                .nemesis("kill", "disarm", &p.name(), "restart clean");
            self.restart(p, None)?;
        }
        Ok(())
    }

    /// SIGKILLs everything this run started (not the shared Postgres and broker).
    pub fn shutdown(&mut self) {
        self.cluster.kill_all();
        let kinds: Vec<AppKind> = self.apps.keys().copied().collect();
        for k in kinds {
            self.kill_app(k);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A process the supervisor restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Process {
    /// A coordinator node.
    Node(NodeId),
    /// An application.
    App(AppKind),
}

impl Process {
    /// Its name in the history (`node2`, `pg`, ...).
    pub fn name(self) -> String {
        match self {
            Process::Node(id) => format!("node{id}"),
            Process::App(kind) => kind.name().to_string(),
        }
    }
}

/// A shared service the nemesis kills and starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// The Postgres postmaster.
    Postmaster,
    /// The Kafka broker.
    Broker,
}

impl Service {
    /// Its name in the history.
    pub fn name(self) -> &'static str {
        match self {
            Service::Postmaster => "postmaster",
            Service::Broker => "broker",
        }
    }
}

/// One request to an application's work API; returns its answer when `ok`.
///
/// # Errors
/// Connection failures, a timeout, or the application's error.
pub async fn app_call(addr: &str, request: &Value, timeout: Duration) -> anyhow::Result<Value> {
    let call = async {
        let socket = tokio::net::TcpStream::connect(addr).await?;
        let (read, mut write) = socket.into_split();
        write.write_all(format!("{request}\n").as_bytes()).await?;
        let line = BufReader::new(read)
            .lines()
            .next_line()
            .await?
            .context("connection closed without an answer")?;
        let answer: Value = serde_json::from_str(&line)?;
        if answer["ok"] == json!(true) {
            Ok(answer)
        } else {
            anyhow::bail!("{}", answer["error"].as_str().unwrap_or("refused"))
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
}
