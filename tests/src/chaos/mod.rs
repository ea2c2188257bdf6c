//! The chaos suite: a Jepsen-style run against real processes.
//!
//! A run starts a 3-node coordinator cluster (separate `ratify node` processes behind
//! fault proxies), three participant applications (`chaos_participant`: Postgres bank
//! accounts, the embedded account store, Kafka events), and concurrent clients moving
//! money between Postgres and the store (half of the transfers also publish a Kafka
//! event; some move money inside one application, a single-branch transaction the
//! coordinator commits in one phase). Meanwhile a seeded nemesis kills and restarts
//! every kind of component, arms protocol fail points, partitions the leader away
//! (briefly, and long enough for a snapshot install on return), pauses it (SIGSTOP, then
//! SIGCONT) and arms disk faults (failing Raft log writes and syncs, a failing store
//! sync). Every client operation
//! and every fault goes to a JSON-lines history. Then everything is healed, the run
//! waits until it is quiet, and the checker compares the history, the coordinator's
//! records and what Postgres, the store and Kafka really hold.
//!
//! # Layout
//! - [`history`]: the recorded history (JSON lines + in memory).
//! - [`world`]: the processes and how to kill, restart and supervise them.
//! - [`workload`]: the clients.
//! - [`nemesis`]: the faults.
//! - [`checker`]: the rules and the evidence they are checked against.
//! - [`run`] ties them together and returns a [`Summary`].

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod workload;
pub mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};
use serde::Serialize;

use self::checker::{Sources, Violation};
use self::history::{History, Told};
use self::nemesis::{Nemesis, NemesisConfig};
use self::world::{AppKind, BrokerEnv, World};
use crate::pg::PgEnv;

/// What one run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seed of the workload and the nemesis (printed first, so a run can be repeated).
    pub seed: u64,
    /// Longest chaos phase.
    pub duration: Duration,
    /// Ends the chaos phase earlier once this many processes were killed (nemesis kills
    /// plus fail-point crashes).
    pub kills: Option<usize>,
    /// The chaos phase lasts at least this many complete rounds of faults (each round
    /// has every enabled fault), even past `duration`.
    pub min_rounds: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Folder for the history, the summary and every process's log.
    pub dir: PathBuf,
    /// The nemesis.
    pub nemesis: NemesisConfig,
    /// Participant applications to run (Postgres and the store always; Kafka optional).
    pub apps: Vec<AppKind>,
    /// `RATIFY_FAILPOINTS` entries every coordinator node always runs with (the
    /// deliberate-bug switches of the checker's own test; empty for a real run).
    pub node_failpoints: String,
    /// `ratify node --snapshot-every`: small, so that a long partition of the leader
    /// outlasts a snapshot and purge of the majority.
    pub snapshot_every: u64,
    /// Longest wait for the healed system to finish every transaction.
    pub quiet_timeout: Duration,
    /// Accounts per application.
    pub accounts: i64,
    /// Opening balance of each account.
    pub balance: i64,
    /// Share of the client transactions that have a single branch (committed in one
    /// phase).
    pub one_phase_share: f64,
    /// The Postgres and store applications answer this share of one-phase commits
    /// late, after committing, by up to this many ms (`chaos_participant
    /// --slow-one-phase`); `None`: never.
    pub slow_one_phase: Option<(f64, u64)>,
    /// An operator resolves random live transactions during the run
    /// ([`workload::operator_loop`]).
    pub operator: bool,
}

impl ChaosConfig {
    /// Defaults: every application and fault, 4 clients, faults every 0.3–1.5 s
    /// (broker kills in one round out of 3), half of the restarts armed with a fail
    /// point that fires on 30 % of its passes; one transaction in 5 one-phase, and
    /// 30 % of one-phase commits answered up to 1.5 s late; a snapshot every 200 log
    /// entries; an operator aborting or committing a random live transaction every
    /// 0.2–0.8 s.
    pub fn new(seed: u64, duration: Duration, dir: PathBuf) -> Self {
        let apps = AppKind::ALL.to_vec();
        Self {
            seed,
            duration,
            kills: None,
            min_rounds: 0,
            clients: 4,
            dir,
            nemesis: NemesisConfig {
                faults: nemesis::Fault::all(&apps),
                interval_ms: (300, 1_500),
                arm_probability: 0.5,
                failpoint_probability: 0.3,
                broker_every: 3,
            },
            apps,
            node_failpoints: String::new(),
            snapshot_every: 200,
            quiet_timeout: Duration::from_secs(120),
            accounts: 20,
            balance: 1_000,
            one_phase_share: 0.2,
            slow_one_phase: Some((0.3, 1_500)),
            operator: true,
        }
    }
}

/// Transaction counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TxnCounts {
    /// Attempts (including failed begins).
    pub attempts: usize,
    /// Told COMMITTED.
    pub committed: usize,
    /// Told ABORTED.
    pub aborted: usize,
    /// No answer within the client deadline.
    pub unknown: usize,
    /// Begin failed.
    pub begin_failed: usize,
    /// Of the unknown ones, how many the coordinator recorded as committed.
    pub unknown_then_committed: usize,
    /// Single-branch (one-phase) attempts, begin failures excluded.
    pub one_phase: usize,
    /// Of those, told COMMITTED.
    pub one_phase_committed: usize,
    /// One-phase commits that got no answer within the short deadline, after which
    /// the client called Rollback.
    pub commit_gave_up: usize,
    /// Answers learned by asking again (GetTransaction) after a call got none.
    pub told_by_get: usize,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Length of the chaos phase, s.
    pub chaos_seconds: f64,
    /// Time to get quiet after healing, s.
    pub quiet_seconds: f64,
    /// Processes killed, by kind (`leader`, `follower`, `two_nodes`, `app:pg`,
    /// `postmaster`, `broker`, `paused_leader`, `failpoint:<name>`, `disarm`).
    pub kills_by_kind: BTreeMap<String, usize>,
    /// All kills.
    pub kills: usize,
    /// Leader partitions, short and long.
    pub partitions: usize,
    /// Leader partitions by kind (`partition_leader`: 2–5 s; `long_partition`: 8–15 s).
    pub partitions_by_kind: BTreeMap<String, usize>,
    /// Long partitions after which the returning leader was given a snapshot.
    pub snapshot_installs: usize,
    /// Snapshot installs of any node, for any reason (a follower back from a kill or a
    /// pause too), from the nodes' logs.
    pub snapshot_installs_all: usize,
    /// Long partitions after which it was not (caught up by replication, or not seen
    /// catching up), and why.
    pub no_snapshot_installs: Vec<String>,
    /// Processes restarted with a disk fault armed.
    pub disk_faults_armed: usize,
    /// Disk faults that fired (a node stopped on a failed log write or sync, or the
    /// store's sync failed).
    pub disk_faults: usize,
    /// Those by fail point (`disk_fault:wal.sync`, ...).
    pub disk_faults_by_kind: BTreeMap<String, usize>,
    /// Nodes that logged the fail-stop line on their disk fault.
    pub disk_fail_stops: usize,
    /// All process pauses (SIGSTOP).
    pub pauses: usize,
    /// Pauses by kind (`leader`, `follower`); a leader SIGKILLed while stopped is in
    /// `kills_by_kind` as `paused_leader`.
    pub pauses_by_kind: BTreeMap<String, usize>,
    /// Processes restarted clean at the end because a fail point was armed in them
    /// (SIGKILLs, not counted in `kills`).
    pub disarm_restarts: usize,
    /// Faults that could not be injected or undone (the run went on).
    pub nemesis_errors: Vec<String>,
    /// Processes that died without being killed (neither the nemesis nor an armed
    /// fail point): crashes worth reading about.
    pub unexpected_exits: Vec<String>,
    /// Transactions.
    pub txns: TxnCounts,
    /// Longest time from a leader kill (alone or with a follower), a leader
    /// partition or a leader pause until a client got a COMMITTED answer again, ms. Other faults
    /// overlapping the window (an application or the postmaster down) count in it.
    pub longest_unavailability_ms: u64,
    /// Longest time from a leader kill, partition or pause (or, for two nodes killed, from
    /// their restart) until another node reported itself leader, ms.
    pub longest_election_ms: u64,
    /// Leader elections measured.
    pub elections: usize,
    /// Operator resolutions during the run, by `<action>_<result>` (result:
    /// `changed`, `unchanged` (already decided), `refused`).
    pub operator_actions: BTreeMap<String, usize>,
    /// Every broken rule.
    pub violations: Vec<Violation>,
    /// Where the history is.
    pub history: PathBuf,
}

impl Summary {
    /// Human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "chaos run, seed {}", self.seed);
        let _ = writeln!(
            s,
            "  chaos phase {:.0} s, quiet after {:.1} s",
            self.chaos_seconds, self.quiet_seconds
        );
        let _ = writeln!(s, "  kills: {}", self.kills);
        for (k, n) in &self.kills_by_kind {
            let _ = writeln!(s, "    {k:<40} {n}");
        }
        let _ = writeln!(
            s,
            "  partitions of the leader: {}, long ones followed by a snapshot install: {} (not: {}); snapshot installs in all: {}",
            self.partitions,
            self.snapshot_installs,
            self.no_snapshot_installs.len(),
            self.snapshot_installs_all
        );
        for (k, n) in &self.partitions_by_kind {
            let _ = writeln!(s, "    {k:<40} {n}");
        }
        for m in self.no_snapshot_installs.iter().take(5) {
            let _ = writeln!(s, "    no install: {m}");
        }
        let _ = writeln!(
            s,
            "  disk faults: {} armed, {} fired ({} node fail-stops)",
            self.disk_faults_armed, self.disk_faults, self.disk_fail_stops
        );
        for (k, n) in &self.disk_faults_by_kind {
            let _ = writeln!(s, "    {k:<40} {n}");
        }
        let _ = writeln!(s, "  pauses (SIGSTOP, then SIGCONT): {}", self.pauses);
        for (k, n) in &self.pauses_by_kind {
            let _ = writeln!(s, "    {k:<40} {n}");
        }
        let t = &self.txns;
        let _ = writeln!(
            s,
            "  transactions: {} attempts, {} committed, {} aborted, {} unknown ({} of them committed), {} begin failures",
            t.attempts, t.committed, t.aborted, t.unknown, t.unknown_then_committed, t.begin_failed
        );
        let _ = writeln!(
            s,
            "  one-phase: {} ({} committed), {} commits given up after the short deadline (then rolled back), {} answers learned by GetTransaction",
            t.one_phase, t.one_phase_committed, t.commit_gave_up, t.told_by_get
        );
        let _ = writeln!(
            s,
            "  after a leader kill, partition or pause: new leader within {} ms at worst ({} elections), first commit answered within {} ms at worst",
            self.longest_election_ms, self.elections, self.longest_unavailability_ms
        );
        let _ = writeln!(
            s,
            "  operator resolutions: {}",
            self.operator_actions.values().sum::<usize>()
        );
        for (k, n) in &self.operator_actions {
            let _ = writeln!(s, "    {k:<40} {n}");
        }
        let _ = writeln!(s, "  nemesis errors: {}", self.nemesis_errors.len());
        for e in self.nemesis_errors.iter().take(5) {
            let _ = writeln!(s, "    {e}");
        }
        let _ = writeln!(s, "  unexpected exits: {}", self.unexpected_exits.len());
        for u in self.unexpected_exits.iter().take(5) {
            let _ = writeln!(s, "    {u}");
        }
        let _ = writeln!(s, "  violations: {}", self.violations.len());
        for v in self.violations.iter().take(20) {
            let _ = writeln!(s, "    [{}] {} {}", v.rule, v.gtrid, v.detail);
        }
        if !self.violations.is_empty() {
            let _ = writeln!(s, "  VIOLATIONS FOUND: repeat with --seed {}", self.seed);
        }
        let _ = writeln!(s, "  history: {}", self.history.display());
        s
    }
}

/// Creates the run's database and tables.
async fn setup_database(
    base_url: &str,
    db: &str,
    accounts: i64,
    balance: i64,
) -> anyhow::Result<String> {
    let admin = ratify_examples::pg_bank::connect(base_url).await?;
    // `db` is built from [a-z0-9_] only.
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let url = ratify_examples::pg_bank::with_database(base_url, db);
    let c = ratify_examples::pg_bank::connect(&url).await?;
    c.batch_execute(
        "CREATE TABLE chaos_accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
         CREATE TABLE chaos_ledger (gtrid text NOT NULL, account int NOT NULL, \
             delta bigint NOT NULL, PRIMARY KEY (gtrid, account))",
    )
    .await?;
    c.execute(
        "INSERT INTO chaos_accounts SELECT g, $2 FROM generate_series(0, $1 - 1) g",
        &[&i32::try_from(accounts)?, &balance],
    )
    .await?;
    Ok(url)
}

/// Runs one chaos run: setup, workload under the nemesis, heal, quiet, check.
///
/// # Errors
/// When the infrastructure is missing or a process cannot be started; broken rules are
/// not errors, they are in [`Summary::violations`].
pub async fn run(config: ChaosConfig) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&config.dir)?;
    // Data left by an earlier run (store, stage, Raft log) would be read as this run's.
    anyhow::ensure!(
        std::fs::read_dir(&config.dir)?.next().is_none(),
        "{} is not empty: give every run a new folder",
        config.dir.display()
    );
    eprintln!(
        "chaos: seed {} (repeat with --seed {})",
        config.seed, config.seed
    );
    let pg = PgEnv::from_env()?;
    let broker = BrokerEnv::from_env()?;
    let run_id = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 1_000_000_000
    );
    let tag = format!("ch{run_id}").replace('_', "-");
    let db_url = setup_database(
        &pg.url,
        &format!("chaos_{run_id}"),
        config.accounts,
        config.balance,
    )
    .await
    .context("creating the run's database")?;
    let topic = format!("chaos.events.{run_id}");
    // Its own ledger topic: another user of the broker cannot make this run look busy.
    let ledger_topic = format!("chaos.ledger.{run_id}");
    let with_kafka = config.apps.contains(&AppKind::Kafka);
    if with_kafka {
        crate::kafka::create_topic(&topic, 4).await?;
    }
    let history = History::create(&config.dir.join("history.jsonl"))?;
    let mut app_args = BTreeMap::new();
    for kind in &config.apps {
        let mut args: Vec<String> = match kind {
            AppKind::Pg => vec![
                "--pg-url".into(),
                db_url.clone(),
                "--tag".into(),
                tag.clone(),
            ],
            AppKind::Store => vec![
                "--accounts".into(),
                config.accounts.to_string(),
                "--balance".into(),
                config.balance.to_string(),
            ],
            AppKind::Kafka => vec![
                "--bootstrap".into(),
                broker.bootstrap.clone(),
                "--topic".into(),
                topic.clone(),
                "--ledger-topic".into(),
                ledger_topic.clone(),
                "--tag".into(),
                tag.clone(),
            ],
        };
        // The one-phase branches are Postgres or store branches.
        if let (Some((share, max_ms)), AppKind::Pg | AppKind::Store) = (config.slow_one_phase, kind)
        {
            args.extend(["--slow-one-phase".into(), format!("{share},{max_ms}")]);
        }
        app_args.insert(*kind, args);
    }
    let mut world = World::start(
        &config.dir,
        pg,
        broker,
        app_args,
        &config.node_failpoints,
        vec!["--snapshot-every".into(), config.snapshot_every.to_string()],
        history.clone(),
    )
    .await?;
    let client = CoordinatorClient::new(world.cluster.api_endpoints(), ClientConfig::default())?;
    let clients = workload::Clients {
        patient: client.clone(),
        impatient: CoordinatorClient::new(
            world.cluster.api_endpoints(),
            ClientConfig {
                attempt_timeout: workload::IMPATIENT_DEADLINE,
                deadline: workload::IMPATIENT_DEADLINE,
                ..ClientConfig::default()
            },
        )?,
    };
    let targets = workload::Targets {
        apps: config
            .apps
            .iter()
            .filter_map(|k| world.app_addrs(*k).map(|(e, a)| (*k, e, a)))
            .collect(),
        accounts: config.accounts,
        one_phase_share: config.one_phase_share,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..config.clients)
        .map(|n| {
            tokio::spawn(workload::client_loop(
                n,
                config.seed,
                clients.clone(),
                targets.clone(),
                history.clone(),
                stopped.clone(),
            ))
        })
        .collect();

    let operator = config.operator.then(|| {
        tokio::spawn(workload::operator_loop(
            config.seed,
            client.clone(),
            history.clone(),
            stopped.clone(),
        ))
    });
    let mut nemesis = Nemesis::new(
        config.seed,
        config.nemesis.clone(),
        &config.apps,
        history.clone(),
    );
    let chaos_start = Instant::now();
    let mut last_progress = Instant::now();
    let kills = |h: &History| h.count_action("kill") + h.count_action("crash");
    loop {
        let time_left = chaos_start.elapsed() < config.duration
            && config.kills.is_none_or(|k| kills(&history) < k);
        if !time_left && nemesis.rounds_completed() >= config.min_rounds {
            break;
        }
        nemesis.step(&mut world).await?;
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            let txns = history.txns();
            eprintln!(
                "chaos: {:>5.0} s, {} kills, {} transactions ({} committed)",
                chaos_start.elapsed().as_secs_f64(),
                kills(&history),
                txns.len(),
                txns.iter().filter(|t| t.told == Told::Committed).count()
            );
        }
    }
    let chaos_seconds = chaos_start.elapsed().as_secs_f64();
    let _ = stop.send(true);
    if let Some(op) = operator {
        let _ = tokio::time::timeout(Duration::from_secs(60), op).await;
    }
    for mut c in clients {
        // A client still stuck after a minute is stopped: its last attempt is not in the
        // history, and the checker treats what it did as a transaction no client ran.
        if tokio::time::timeout(Duration::from_secs(60), &mut c)
            .await
            .is_err()
        {
            c.abort();
        }
    }

    // Heal: every process clean and running (none stopped), the network whole.
    eprintln!("chaos: healing and waiting for quiet");
    world.heal().await?;
    world.disarm_all()?;
    let quiet_start = Instant::now();
    let sources = Sources {
        pg_url: db_url,
        pg_app: world.app_addrs(AppKind::Pg).context("no pg")?.1,
        opening_balance: config.balance,
        store_app: world.app_addrs(AppKind::Store).context("no store")?.1,
        kafka_app: world.app_addrs(AppKind::Kafka).map(|a| a.1),
        topic,
        ledger_topic,
    };
    loop {
        world.supervise(|_| None)?;
        let left = checker::leftovers(&sources, &client).await;
        match left {
            Ok(l) if l.is_empty() => break,
            Ok(l) if quiet_start.elapsed() > config.quiet_timeout => {
                eprintln!(
                    "chaos: still not quiet after {:?}: {l:?}",
                    config.quiet_timeout
                );
                break;
            }
            Err(e) if quiet_start.elapsed() > config.quiet_timeout => {
                eprintln!("chaos: cannot read the leftovers: {e:#}");
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let quiet_seconds = quiet_start.elapsed().as_secs_f64();

    let txns = history.txns();
    let evidence = checker::gather(&sources, &client).await?;
    let mut gtrids: std::collections::BTreeSet<String> = txns
        .iter()
        .filter(|t| !t.gtrid.is_empty())
        .map(|t| t.gtrid.clone())
        .collect();
    gtrids.extend(evidence.pg.iter().cloned());
    gtrids.extend(evidence.store.iter().cloned());
    gtrids.extend(evidence.kafka.keys().cloned());
    let recorded = checker::recorded(&client, gtrids).await;
    let opening = config.accounts * config.balance * 2;
    let violations = checker::check(&txns, &evidence, &recorded, opening);
    history.flush()?;
    world.shutdown();
    let snapshot_installs_all = world
        .cluster
        .ids()
        .into_iter()
        .map(|id| nemesis::count_snapshot_installs(&world.node_log(id)))
        .sum();

    let mut summary = summarize(
        &config,
        &history,
        &recorded,
        violations,
        chaos_seconds,
        quiet_seconds,
    );
    summary.snapshot_installs_all = snapshot_installs_all;
    std::fs::write(
        config.dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

fn summarize(
    config: &ChaosConfig,
    history: &History,
    recorded: &BTreeMap<String, checker::Recorded>,
    violations: Vec<Violation>,
    chaos_seconds: f64,
    quiet_seconds: f64,
) -> Summary {
    let txns = history.txns();
    let nemesis = history.nemesis_records();
    let mut counts = TxnCounts {
        attempts: txns.len(),
        ..TxnCounts::default()
    };
    for t in &txns {
        if t.one_phase && t.told != Told::BeginFailed {
            counts.one_phase += 1;
            counts.one_phase_committed += usize::from(t.told == Told::Committed);
        }
        counts.commit_gave_up += usize::from(t.asked == workload::COMMIT_GAVE_UP);
        counts.told_by_get += usize::from(t.told_by == "get");
        match t.told {
            Told::Committed => counts.committed += 1,
            Told::Aborted => counts.aborted += 1,
            Told::BeginFailed => counts.begin_failed += 1,
            Told::Unknown => {
                counts.unknown += 1;
                if matches!(
                    recorded.get(&t.gtrid),
                    Some(checker::Recorded::Decided {
                        committed: true,
                        ..
                    })
                ) {
                    counts.unknown_then_committed += 1;
                }
            }
        }
    }
    let mut kills_by_kind = BTreeMap::new();
    let mut unexpected_exits = Vec::new();
    let mut nemesis_errors = Vec::new();
    let mut disarm_restarts = 0;
    let mut partitions_by_kind = BTreeMap::new();
    let mut snapshot_installs = 0;
    let mut no_snapshot_installs = Vec::new();
    let mut disk_faults_armed = 0;
    let mut disk_faults_by_kind = BTreeMap::new();
    let mut disk_fail_stops = 0;
    let mut pauses_by_kind = BTreeMap::new();
    let mut operator_actions = BTreeMap::new();
    let mut leader_losses: Vec<u64> = Vec::new();
    for r in &nemesis {
        match r.action.as_str() {
            // Disarming restarts at the end are SIGKILLs too, but not faults: listed,
            // not counted.
            "kill" if r.kind == "disarm" => disarm_restarts += 1,
            "kill" | "crash" => *kills_by_kind.entry(r.kind.clone()).or_insert(0) += 1,
            "partition" => *partitions_by_kind.entry(r.kind.clone()).or_insert(0) += 1,
            "snapshot_install" => snapshot_installs += 1,
            "no_snapshot_install" => {
                no_snapshot_installs.push(format!("{} at {} ms: {}", r.target, r.at_ms, r.detail))
            }
            "disk_fault_armed" => disk_faults_armed += 1,
            "disk_fault" => {
                *disk_faults_by_kind.entry(r.kind.clone()).or_insert(0) += 1;
                disk_fail_stops += usize::from(r.detail.starts_with("fail-stop"));
            }
            "pause" => *pauses_by_kind.entry(r.kind.clone()).or_insert(0) += 1,
            "operator" => *operator_actions.entry(r.kind.clone()).or_insert(0) += 1,
            "unexpected_exit" => {
                unexpected_exits.push(format!("{} at {} ms: {}", r.target, r.at_ms, r.detail))
            }
            "nemesis_error" => {
                nemesis_errors.push(format!("{} at {} ms: {}", r.kind, r.at_ms, r.detail))
            }
            _ => {}
        }
        // When the cluster lost its leader: a leader kill, partition, pause or disk-fault
        // restart at once;
        // two nodes down only once they are back (the outage itself is deliberate).
        let lost_at = match (r.action.as_str(), r.kind.as_str()) {
            ("kill", "leader") | ("partition", _) | ("pause", "leader") | ("heal", "two_nodes") => {
                Some(r.at_ms)
            }
            // A leader restarted to arm a disk fault.
            ("disk_fault_armed", _) if r.detail.contains("(leader,") => Some(r.at_ms),
            _ => None,
        };
        leader_losses.extend(lost_at);
    }
    // Until the first COMMITTED answer after the loss; a loss after which no client got
    // any answer (the end of the run) says nothing.
    let longest_unavailability_ms = leader_losses
        .iter()
        .filter(|&&t| txns.iter().any(|x| x.end_ms > t))
        .map(|&t| {
            txns.iter()
                .filter(|x| x.told == Told::Committed && x.end_ms > t)
                .map(|x| x.end_ms - t)
                .min()
                .unwrap_or_else(|| txns.iter().map(|x| x.end_ms).max().unwrap_or(t) - t)
        })
        .max()
        .unwrap_or(0);
    let election_ms: Vec<u64> = nemesis
        .iter()
        .filter(|r| r.action == "elected")
        .filter_map(|r| r.detail.parse().ok())
        .collect();
    Summary {
        seed: config.seed,
        longest_election_ms: election_ms.iter().copied().max().unwrap_or(0),
        elections: election_ms.len(),
        chaos_seconds,
        quiet_seconds,
        kills: kills_by_kind.values().sum(),
        kills_by_kind,
        partitions: partitions_by_kind.values().sum(),
        partitions_by_kind,
        snapshot_installs,
        snapshot_installs_all: 0,
        no_snapshot_installs,
        disk_faults_armed,
        disk_faults: disk_faults_by_kind.values().sum(),
        disk_faults_by_kind,
        disk_fail_stops,
        pauses: pauses_by_kind.values().sum(),
        pauses_by_kind,
        nemesis_errors,
        disarm_restarts,
        unexpected_exits,
        txns: counts,
        longest_unavailability_ms,
        operator_actions,
        violations,
        history: config.dir.join("history.jsonl"),
    }
}
