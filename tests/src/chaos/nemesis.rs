//! The nemesis: at seeded random times it SIGKILLs and restarts coordinator nodes,
//! participant applications, the postmaster and the broker, cuts the leader off from
//! its followers, pauses the leader (or a follower) with SIGSTOP and lets it go on with
//! SIGCONT, and arms fail points in the processes it restarts so that they crash at a
//! chosen protocol step later on. Two longer faults: the leader cut off for 8–15 s (long
//! enough, with the cluster's small `--snapshot-every`, for the majority to snapshot and
//! purge past the isolated leader's log, so that it needs a snapshot install when it
//! returns: watched for and recorded), and disk faults (a node restarted with its Raft
//! log's write or fdatasync failing now and then, so that it fail-stops; or the store
//! application with its durable store's fdatasync failing, after which it can vote YES
//! no more until it is restarted).
//!
//! Faults are taken from the enabled list in shuffled rounds, so even a short run
//! covers every kind: single-process kills of nodes and applications and leader
//! pauses twice per round, the other faults once, and broker kills (a broker restart
//! takes 10–40 s here) only in every [`NemesisConfig::broker_every`]-th round,
//! starting with the first. Fail points are armed the same way, in shuffled rounds per
//! process type.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ratify_coordinator::types::NodeId;

use super::history::History;
use super::world::{
    AppKind, Arm, Process, Service, World, NODE_DISK_FAULTS, NODE_FAILPOINTS, STORE_DISK_FAULT,
};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the Raft leader, restart it after a pause.
    Leader,
    /// SIGKILL a follower, restart it after a pause.
    Follower,
    /// SIGKILL the leader and a follower (no majority), restart both after a pause.
    TwoNodes,
    /// SIGKILL a participant application, restart it after a pause.
    App(AppKind),
    /// SIGKILL the Postgres postmaster, start it again.
    Postmaster,
    /// SIGKILL the Kafka broker, start it again.
    Broker,
    /// Cut the leader's Raft traffic off for a few seconds, then heal.
    PartitionLeader,
    /// SIGSTOP the leader for 2–10 s (always longer than the election timeout, so a
    /// new leader is elected meanwhile), then SIGCONT it; one time in
    /// [`PAUSED_KILL_ONE_IN`] SIGKILL it while stopped instead, and restart it.
    PauseLeader,
    /// SIGSTOP a follower for 1–4 s, then SIGCONT it.
    PauseFollower,
    /// Cut the leader's Raft traffic off for 8–15 s (past a snapshot and purge of the
    /// majority, so it returns to a snapshot install), then heal and watch for the
    /// install.
    LongPartition,
    /// Restart a node (leader or follower) with a failing Raft log write or sync armed
    /// ([`DISK_FAULT_PROBABILITY`] of them fail), or the store application with a
    /// failing durable-store sync; wait up to [`DISK_FAULT_WINDOW`] for it to fire; the
    /// node then stops by itself and is restarted clean by the supervisor, the store is
    /// restarted clean by the nemesis after a while.
    DiskFault,
}

/// Chance that an armed disk fault fails each write or sync it is passed by.
pub const DISK_FAULT_PROBABILITY: f64 = 0.05;

/// Longest wait for an armed disk fault to fire before the process is restarted clean.
pub const DISK_FAULT_WINDOW: Duration = Duration::from_secs(10);

/// How long a node whose disk fault fired may take to stop.
const DISK_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long after a long partition heals the nemesis watches for a snapshot install.
const INSTALL_WATCH: Duration = Duration::from_secs(30);

/// What openraft logs (at info) when a node is given a snapshot to install.
const INSTALL_LINE: &str = "install_full_snapshot: meta:";

/// What it logs next when the snapshot turns out not to be needed.
const NO_INSTALL_LINE: &str = "No need to install snapshot";

/// One disk fault: where, and which fail point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskTarget {
    /// A coordinator node's Raft log (fail point, action).
    Node(&'static str, &'static str),
    /// The store application's durable store.
    Store,
}

/// One leader pause in this many ends with a SIGKILL of the stopped process.
pub const PAUSED_KILL_ONE_IN: u32 = 4;

impl Fault {
    /// Every fault, for the given applications.
    pub fn all(apps: &[AppKind]) -> Vec<Fault> {
        let mut v = vec![Fault::Leader, Fault::Follower, Fault::TwoNodes];
        v.extend(apps.iter().map(|k| Fault::App(*k)));
        if apps.contains(&AppKind::Pg) {
            v.push(Fault::Postmaster);
        }
        if apps.contains(&AppKind::Kafka) {
            v.push(Fault::Broker);
        }
        v.extend([
            Fault::PartitionLeader,
            Fault::PauseLeader,
            Fault::PauseFollower,
            Fault::LongPartition,
            Fault::DiskFault,
        ]);
        v
    }
}

/// How the nemesis behaves.
#[derive(Debug, Clone)]
pub struct NemesisConfig {
    /// Faults to inject (in shuffled rounds).
    pub faults: Vec<Fault>,
    /// Pause between two faults, ms (uniform in the range).
    pub interval_ms: (u64, u64),
    /// Chance that a restarted process comes back with a fail point armed.
    pub arm_probability: f64,
    /// Chance that an armed fail point fires each time it is passed.
    pub failpoint_probability: f64,
    /// Broker kills happen in one round out of this many.
    pub broker_every: usize,
}

impl Fault {
    /// How many times it appears in a round (round `n`, counting from 0).
    fn per_round(self, n: usize, broker_every: usize) -> usize {
        match self {
            Fault::Leader
            | Fault::Follower
            | Fault::App(_)
            | Fault::PauseLeader
            | Fault::DiskFault => 2,
            Fault::Broker if !n.is_multiple_of(broker_every.max(1)) => 0,
            _ => 1,
        }
    }
}

/// Shuffled rounds over a list.
struct Rounds<T> {
    /// The items.
    items: Vec<T>,
    /// Position in the current round.
    next: usize,
}

impl<T: Clone> Rounds<T> {
    fn new(items: Vec<T>) -> Self {
        let next = items.len();
        Self { items, next }
    }

    fn pick(&mut self, rng: &mut StdRng) -> Option<T> {
        if self.items.is_empty() {
            return None;
        }
        if self.next >= self.items.len() {
            self.items.shuffle(rng);
            self.next = 0;
        }
        self.next += 1;
        self.items.get(self.next - 1).cloned()
    }
}

/// The nemesis state.
pub struct Nemesis {
    /// Seeded randomness of the fault schedule (which fault, pauses, victims).
    rng: StdRng,
    /// Seeded randomness of arming, apart: crashes come at times the seed does not
    /// fix, and arming on them must not shift the schedule.
    arm_rng: StdRng,
    /// Faults skipped for want of a leader, retried once later in the round.
    skipped: Vec<Fault>,
    /// Its settings.
    config: NemesisConfig,
    /// What is left of the current round of faults.
    round: Vec<Fault>,
    /// Rounds started so far.
    rounds: usize,
    /// Fail points to arm, in rounds, per process type (`node`, or the app name).
    failpoints: BTreeMap<&'static str, Rounds<&'static str>>,
    /// Disk faults, in rounds.
    disk_faults: Rounds<DiskTarget>,
    /// The history.
    history: History,
}

impl Nemesis {
    /// A nemesis drawing from `seed`.
    pub fn new(seed: u64, config: NemesisConfig, apps: &[AppKind], history: History) -> Self {
        let mut failpoints = BTreeMap::new();
        failpoints.insert("node", Rounds::new(NODE_FAILPOINTS.to_vec()));
        for k in apps {
            failpoints.insert(k.name(), Rounds::new(k.failpoints()));
        }
        let mut disk: Vec<DiskTarget> = NODE_DISK_FAULTS
            .iter()
            .map(|(p, a)| DiskTarget::Node(p, a))
            .collect();
        if apps.contains(&AppKind::Store) {
            disk.push(DiskTarget::Store);
        }
        Self {
            rng: StdRng::seed_from_u64(seed),
            arm_rng: StdRng::seed_from_u64(seed ^ 0x5eed_a4a4),
            skipped: Vec::new(),
            round: Vec::new(),
            rounds: 0,
            config,
            failpoints,
            disk_faults: Rounds::new(disk),
            history,
        }
    }

    /// Whether, and with which fail point, a restarted `process` is armed.
    pub fn pick_arm(&mut self, process: Process) -> Option<Arm> {
        if !self
            .arm_rng
            .gen_bool(self.config.arm_probability.clamp(0.0, 1.0))
        {
            return None;
        }
        let key = match process {
            Process::Node(_) => "node",
            Process::App(k) => k.name(),
        };
        let point = self.failpoints.get_mut(key)?.pick(&mut self.arm_rng)?;
        Some(Arm::kill(point, self.config.failpoint_probability))
    }

    /// Sleeps for `d` while restarting processes that die by themselves.
    ///
    /// # Errors
    /// When a process cannot be restarted.
    pub async fn sleep_supervised(&mut self, world: &mut World, d: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + d;
        loop {
            world.supervise(|p| self.pick_arm(p))?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
        }
    }

    /// Restarts processes that die by themselves until `task` completes; returns its
    /// result.
    ///
    /// # Errors
    /// The task's error, or when a process cannot be restarted.
    async fn supervise_until(
        &mut self,
        world: &mut World,
        mut task: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        loop {
            world.supervise(|p| self.pick_arm(p))?;
            tokio::select! {
                done = &mut task => return done?,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// A duration drawn uniformly from `range_ms`.
    fn draw(&mut self, range_ms: (u64, u64)) -> Duration {
        Duration::from_millis(self.rng.gen_range(range_ms.0..=range_ms.1.max(range_ms.0)))
    }

    /// Waits for the next fault time, then injects one fault (and undoes it).
    ///
    /// # Errors
    /// When a process cannot be killed or restarted.
    pub async fn step(&mut self, world: &mut World) -> anyhow::Result<()> {
        let wait = self.draw(self.config.interval_ms);
        self.sleep_supervised(world, wait).await?;
        let Some(fault) = self.next_fault() else {
            return Ok(());
        };
        if let Err(e) = self.inject(world, fault).await {
            // A fault that could not be injected or undone (a restart that failed) is
            // worth reading about, not worth ending the run: put everything back up.
            self.history.nemesis(
                "nemesis_error",
                &format!("{fault:?}"),
                "",
                &format!("{e:#}"),
            );
            world.heal().await?;
        }
        Ok(())
    }

    /// Rounds of faults injected to the end.
    pub fn rounds_completed(&self) -> usize {
        if self.round.is_empty() {
            self.rounds
        } else {
            self.rounds - 1
        }
    }

    fn next_fault(&mut self) -> Option<Fault> {
        if self.round.is_empty() {
            let n = self.rounds;
            self.rounds += 1;
            for f in &self.config.faults {
                for _ in 0..f.per_round(n, self.config.broker_every) {
                    self.round.push(*f);
                }
            }
            self.round.shuffle(&mut self.rng);
            self.skipped.clear();
        }
        self.round.pop()
    }

    async fn leader(&self, world: &World) -> Option<NodeId> {
        world
            .cluster
            .wait_for_leader(Duration::from_secs(5))
            .await
            .ok()
    }

    /// Records that `fault` could not be injected (no leader) and queues it again once,
    /// so a round still has every kind.
    fn skip(&mut self, fault: Fault) {
        self.history
            .nemesis("skip", &format!("{fault:?}"), "", "no leader found");
        if !self.skipped.contains(&fault) {
            self.skipped.push(fault);
            self.round.insert(0, fault);
        }
    }

    /// The current term, asked from any node (0 when none answers).
    async fn term(&self, world: &World) -> u64 {
        for id in world.cluster.ids() {
            if let Ok(s) = world.cluster.status(id).await {
                return s.term;
            }
        }
        0
    }

    /// Measures, in the background, how long the cluster goes without a leader once the
    /// leader of term `term` is lost: polls every node until one reports itself leader,
    /// and records `elected` with the milliseconds in the history. `cut_off`, a leader
    /// that is alive but partitioned away, only counts with a later term. (A killed
    /// leader that restarts before anyone campaigns resumes its term: that counts.)
    fn watch_election(&self, world: &World, term: u64, cut_off: Option<NodeId>) {
        let others: Vec<String> = world
            .cluster
            .ids()
            .into_iter()
            .filter_map(|id| world.cluster.api_addr(id).ok())
            .collect();
        let history = self.history.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            while start.elapsed() < Duration::from_secs(120) {
                for ep in &others {
                    if let Ok(s) = ratify_devkit::local::node_status(ep, &Default::default()).await
                    {
                        let stale = Some(s.node_id) == cut_off && s.term <= term;
                        if s.role == "Leader" && s.leader_id == s.node_id && !stale {
                            let ms = start.elapsed().as_millis().to_string();
                            history.nemesis(
                                "elected",
                                "leader",
                                &format!("node{}", s.node_id),
                                &ms,
                            );
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Watches, in the background, whether node `id`, back from a long partition with
    /// its log ending at `last_log`, is given a snapshot (the majority purged the log it
    /// lacks) or catches up by plain replication; records `snapshot_install` or
    /// `no_snapshot_install` in the history.
    ///
    /// Evidence, read every 250 ms for [`INSTALL_WATCH`]: openraft's info line
    /// [`INSTALL_LINE`] in the node's log since the heal (not followed by
    /// [`NO_INSTALL_LINE`]); or, when the node exports a `ratify_raft_*purged*` gauge,
    /// its last purged index past `last_log` once it has applied past `last_log` (a
    /// snapshot install purges the whole log it replaces). A node that applied past
    /// `last_log` with neither caught up by replication.
    fn watch_snapshot_install(&self, world: &World, id: NodeId, last_log: u64) {
        let log = world.node_log(id);
        let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        let metrics = world.cluster.metrics_addr(id).ok();
        let history = self.history.clone();
        let node = format!("node{id}");
        tokio::spawn(async move {
            let start = Instant::now();
            let mut seen_applied = 0.0;
            while start.elapsed() < INSTALL_WATCH {
                let text = read_from(&log, offset);
                if let Some(at) = text.find(INSTALL_LINE) {
                    let line = text[at..].lines().next().unwrap_or("");
                    let rest = &text[at + line.len()..];
                    let next = rest.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                    if !next.contains(NO_INSTALL_LINE) {
                        let index =
                            snapshot_index(line).map_or_else(|| "?".to_string(), |i| i.to_string());
                        history.nemesis(
                            "snapshot_install",
                            "long_partition",
                            &node,
                            &format!(
                                "installed a snapshot up to index {index} (its log ended at {last_log}) after {} ms",
                                start.elapsed().as_millis()
                            ),
                        );
                        return;
                    }
                }
                if let Some(addr) = &metrics {
                    if let Ok(m) = ratify_coordinator::metrics::scrape(addr).await {
                        let applied = m
                            .get("ratify_raft_last_applied_index")
                            .copied()
                            .unwrap_or(0.0);
                        seen_applied = f64::max(seen_applied, applied);
                        let purged = m
                            .iter()
                            .find(|(k, _)| k.starts_with("ratify_raft_") && k.contains("purged"))
                            .map(|(_, v)| *v);
                        if applied > last_log as f64 {
                            match purged {
                                Some(p) if p > last_log as f64 => {
                                    history.nemesis(
                                        "snapshot_install",
                                        "long_partition",
                                        &node,
                                        &format!(
                                            "last purged index {p} past its log's end {last_log} (metrics)"
                                        ),
                                    );
                                    return;
                                }
                                // Give the log line a moment: it comes before the install
                                // is applied, but is written by another process.
                                _ if start.elapsed() > Duration::from_secs(2) => {
                                    history.nemesis(
                                        "no_snapshot_install",
                                        "long_partition",
                                        &node,
                                        &format!(
                                            "caught up by replication: applied {applied} past its log's end {last_log}"
                                        ),
                                    );
                                    return;
                                }
                                _ => {}
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            history.nemesis(
                "no_snapshot_install",
                "long_partition",
                &node,
                &format!(
                    "not caught up after {} s (applied {seen_applied}, its log ended at {last_log})",
                    INSTALL_WATCH.as_secs()
                ),
            );
        });
    }

    /// Restarts `target` with its disk fault armed, waits for it to fire (up to
    /// [`DISK_FAULT_WINDOW`]), and leaves it clean: a node stops by itself and the
    /// supervisor restarts it clean; the store, which goes on with every sync failing,
    /// is left so for a moment, then restarted clean; a fault that did not fire is
    /// disarmed by a clean restart.
    async fn disk_fault(&mut self, world: &mut World, target: DiskTarget) -> anyhow::Result<()> {
        let (process, point, action, role) = match target {
            DiskTarget::Node(point, action) => {
                let Some(leader) = self.leader(world).await else {
                    self.skip(Fault::DiskFault);
                    return Ok(());
                };
                let id = if self.rng.gen_bool(0.5) {
                    leader
                } else {
                    self.follower_of(world, leader)
                };
                let role = if id == leader { "leader" } else { "follower" };
                (Process::Node(id), point, action, role)
            }
            DiskTarget::Store => (
                Process::App(AppKind::Store),
                STORE_DISK_FAULT.0,
                STORE_DISK_FAULT.1,
                "application",
            ),
        };
        let arm = Arm {
            point: point.to_string(),
            action: action.to_string(),
            probability: DISK_FAULT_PROBABILITY,
        };
        let spec = arm.spec();
        let term = self.term(world).await;
        world.restart(process, Some(arm))?;
        if role == "leader" {
            self.watch_election(world, term, None);
        }
        self.history.nemesis(
            "disk_fault_armed",
            "disk_fault",
            &process.name(),
            &format!("{spec} ({role}, restarted)"),
        );
        let until = Instant::now() + DISK_FAULT_WINDOW;
        let armed = |w: &World| w.armed(process) == Some(point);
        let mut fired: Option<(String, Instant)> = None;
        loop {
            if !armed(world) {
                // It stopped on the fault (recorded by the supervisor) and runs clean
                // again, or another restart replaced it.
                return Ok(());
            }
            if fired.is_none() {
                fired = world.disk_fault_fired(process).map(|f| (f, Instant::now()));
            }
            match (&fired, process) {
                // The store goes on after a failed sync.
                (Some(_), Process::App(_)) => break,
                // A node must stop: the supervisor sees it exit and restarts it clean.
                (Some((f, at)), Process::Node(_)) if at.elapsed() > DISK_STOP_GRACE => {
                    self.history.nemesis(
                        "nemesis_error",
                        "disk_fault",
                        &process.name(),
                        &format!(
                            "{f} failed, and the node still runs {} s later",
                            DISK_STOP_GRACE.as_secs()
                        ),
                    );
                    world.restart(process, None)?;
                    return Ok(());
                }
                (None, _) if Instant::now() >= until => break,
                _ => {}
            }
            self.sleep_supervised(world, Duration::from_millis(200))
                .await?;
        }
        if let Some((fired, _)) = fired {
            // Every later sync fails, so it answers its prepares with errors until it
            // is restarted, as a supervisor would.
            self.history.nemesis(
                "disk_fault",
                &format!("disk_fault:{fired}"),
                &process.name(),
                "sync failed; every later sync of the store fails until a restart",
            );
            let failing = self.draw((500, 3_000));
            self.sleep_supervised(world, failing).await?;
            if armed(world) {
                world.restart(process, None)?;
            }
        } else {
            self.history.nemesis(
                "kill",
                "disarm",
                &process.name(),
                "disk fault did not fire; restart clean",
            );
            world.restart(process, None)?;
        }
        Ok(())
    }

    /// A node other than `leader`, at random.
    fn follower_of(&mut self, world: &World, leader: NodeId) -> NodeId {
        let followers: Vec<NodeId> = world
            .cluster
            .ids()
            .into_iter()
            .filter(|i| *i != leader)
            .collect();
        *followers.choose(&mut self.rng).unwrap_or(&leader)
    }

    /// Restarts `process`, maybe armed.
    fn restart(&mut self, world: &mut World, process: Process) -> anyhow::Result<()> {
        let arm = self.pick_arm(process);
        world.restart(process, arm)
    }

    async fn inject(&mut self, world: &mut World, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Leader | Fault::Follower => {
                let Some(leader) = self.leader(world).await else {
                    self.skip(fault);
                    return Ok(());
                };
                let id = if fault == Fault::Leader {
                    leader
                } else {
                    self.follower_of(world, leader)
                };
                let kind = if id == leader { "leader" } else { "follower" };
                let term = self.term(world).await;
                world.kill_node(id)?;
                if id == leader {
                    self.watch_election(world, term, None);
                }
                self.history.nemesis("kill", kind, &format!("node{id}"), "");
                let down = self.draw((0, 1_500));
                self.sleep_supervised(world, down).await?;
                self.restart(world, Process::Node(id))?;
            }
            Fault::TwoNodes => {
                let Some(leader) = self.leader(world).await else {
                    self.skip(fault);
                    return Ok(());
                };
                let follower = self.follower_of(world, leader);
                // The election can only start once a majority is back: watched after the
                // restarts.
                let term = self.term(world).await;
                for id in [leader, follower] {
                    world.kill_node(id)?;
                    self.history.nemesis(
                        "kill",
                        "two_nodes",
                        &format!("node{id}"),
                        "majority lost",
                    );
                }
                let down = self.draw((1_000, 4_000));
                self.sleep_supervised(world, down).await?;
                for id in [leader, follower] {
                    self.restart(world, Process::Node(id))?;
                }
                self.history
                    .nemesis("heal", "two_nodes", "", "both nodes restarted");
                self.watch_election(world, term, None);
            }
            Fault::App(kind) => {
                world.kill_app(kind);
                self.history
                    .nemesis("kill", &format!("app:{}", kind.name()), kind.name(), "");
                let down = self.draw((0, 1_000));
                self.sleep_supervised(world, down).await?;
                self.restart(world, Process::App(kind))?;
            }
            Fault::Postmaster | Fault::Broker => {
                let (service, down) = if fault == Fault::Postmaster {
                    (Service::Postmaster, (0, 1_000))
                } else {
                    (Service::Broker, (0, 2_000))
                };
                // Already down (an earlier restart failed): start it all the same.
                match world.kill_service(service) {
                    Ok(()) => self
                        .history
                        .nemesis("kill", service.name(), service.name(), ""),
                    Err(e) => self.history.nemesis(
                        "skip",
                        service.name(),
                        service.name(),
                        &format!("not running: {e:#}"),
                    ),
                }
                let down = self.draw(down);
                self.sleep_supervised(world, down).await?;
                let started = world.start_service(service);
                self.supervise_until(world, started).await?;
                world.service_up(service);
            }
            Fault::PartitionLeader | Fault::LongPartition => {
                let Some(leader) = self.leader(world).await else {
                    self.skip(fault);
                    return Ok(());
                };
                let (kind, cut_ms) = if fault == Fault::LongPartition {
                    ("long_partition", (8_000, 15_000))
                } else {
                    ("partition_leader", (2_000, 5_000))
                };
                let term = self.term(world).await;
                // Where its log ended when it was cut off: a snapshot it is given on
                // return must reach past it to replace the log it had.
                let last_log = world
                    .cluster
                    .status(leader)
                    .await
                    .map_or(0, |s| s.last_log_index);
                world.cluster.isolate(leader)?;
                self.watch_election(world, term, Some(leader));
                let cut = self.draw(cut_ms);
                self.history.nemesis(
                    "partition",
                    kind,
                    &format!("node{leader}"),
                    &format!(
                        "Raft traffic to and from the leader dropped for {} ms (its last log index {last_log})",
                        cut.as_millis()
                    ),
                );
                self.sleep_supervised(world, cut).await?;
                world.cluster.heal();
                self.history
                    .nemesis("heal", kind, &format!("node{leader}"), "");
                if fault == Fault::LongPartition {
                    self.watch_snapshot_install(world, leader, last_log);
                }
            }
            Fault::DiskFault => {
                let Some(target) = self.disk_faults.pick(&mut self.rng) else {
                    return Ok(());
                };
                self.disk_fault(world, target).await?;
            }
            Fault::PauseLeader | Fault::PauseFollower => {
                let Some(leader) = self.leader(world).await else {
                    self.skip(fault);
                    return Ok(());
                };
                let (id, kind, stopped_ms) = if fault == Fault::PauseLeader {
                    (leader, "leader", (2_000, 10_000))
                } else {
                    (self.follower_of(world, leader), "follower", (1_000, 4_000))
                };
                let stopped = self.draw(stopped_ms);
                let kill_instead =
                    fault == Fault::PauseLeader && self.rng.gen_ratio(1, PAUSED_KILL_ONE_IN);
                let term = self.term(world).await;
                let node = format!("node{id}");
                world.pause(Process::Node(id))?;
                if id == leader {
                    // Stopped, it cannot answer; resumed, it may still call itself the
                    // leader of its old term for a moment: only a later term counts.
                    self.watch_election(world, term, Some(id));
                }
                self.history.nemesis(
                    "pause",
                    kind,
                    &node,
                    &format!("SIGSTOP for {} ms", stopped.as_millis()),
                );
                self.sleep_supervised(world, stopped).await?;
                if kill_instead {
                    world.kill_node(id)?;
                    self.history
                        .nemesis("kill", "paused_leader", &node, "SIGKILL while stopped");
                    self.restart(world, Process::Node(id))?;
                } else {
                    world.resume(Process::Node(id))?;
                    self.history.nemesis("resume", kind, &node, "SIGCONT");
                }
            }
        }
        Ok(())
    }
}

/// Snapshot installs in a node's log (every process it ran): openraft's
/// [`INSTALL_LINE`]s not followed by [`NO_INSTALL_LINE`]. Streams the file (a long
/// run's log is large); 0 when it cannot be read.
pub fn count_snapshot_installs(path: &std::path::Path) -> usize {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(path) else {
        return 0;
    };
    let (mut n, mut pending) = (0, false);
    for line in std::io::BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
    {
        let line = String::from_utf8_lossy(&line);
        if pending && !line.contains(NO_INSTALL_LINE) {
            n += 1;
        }
        pending = line.contains(INSTALL_LINE);
    }
    n + usize::from(pending)
}

/// What a file holds from byte `offset` on, as text (empty when unreadable).
fn read_from(path: &std::path::Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last log index of the snapshot in openraft's `install_full_snapshot` line
/// (`... last_log_id: Some(LogId { leader_id: ..., index: N }) ...`).
fn snapshot_index(line: &str) -> Option<u64> {
    let after = &line[line.find("last_log_id")?..];
    let digits: String = after[after.find("index: ")? + "index: ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
