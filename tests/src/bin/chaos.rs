//! `chaos`: runs Ratify's chaos suite against real processes and prints what it found.
//!
//! Needs the Postgres server and the Kafka broker of `tests/infra` (their scripts print
//! the environment to use) and the `ratify` and `chaos_participant` binaries built
//! next to this one. See the README's "Chaos suite" section.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ratify_tests::chaos::{self, world::AppKind, ChaosConfig};

#[derive(Parser, Debug)]
#[command(
    about = "Chaos suite: kills, pauses, partitions, crash points and disk faults under a transfer workload, then an atomicity check",
    long_about = "Starts a 3-node Ratify cluster and three participant applications (Postgres bank, \
embedded account store, Kafka events) as separate processes, runs concurrent transfers while a \
seeded nemesis SIGKILLs and restarts the leader, followers, two nodes at once, the applications, \
the postmaster and the broker, arms protocol fail points, partitions the leader away (for 2-5 s, \
and for 8-15 s, past a snapshot and purge of the majority) and pauses it (SIGSTOP, then SIGCONT), \
and arms disk faults (failing Raft log writes and syncs, a failing store sync). Some transfers stay inside one application: one branch, committed in one \
phase, some with a short commit deadline and a slow answer. Then it heals everything, waits until the system is quiet and checks atomicity, exactly-once delivery, \
acknowledged commits, leftovers and conservation of money. Exits 1 when a rule is broken."
)]
struct Args {
    /// Seed of the workload and the nemesis (default: random, printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest chaos phase, seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// End the chaos phase once this many processes were killed.
    #[arg(long)]
    kills: Option<usize>,
    /// Keep going past --duration until this many full rounds of faults (every kind
    /// once at least) are done.
    #[arg(long, default_value_t = 0)]
    min_rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Share of transfers inside one application (one branch, committed in one phase).
    #[arg(long, default_value_t = 0.2)]
    one_phase_share: f64,
    /// Pause between faults, ms: MIN,MAX.
    #[arg(long, value_delimiter = ',', default_values_t = [300, 1500])]
    interval_ms: Vec<u64>,
    /// Run without the Kafka application (and without broker kills).
    #[arg(long)]
    no_kafka: bool,
    /// Folder for the history, the summary and the logs (default: a new temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Longest wait for quiet after healing, seconds.
    #[arg(long, default_value_t = 120)]
    quiet_timeout: u64,
    /// `ratify node --snapshot-every` of the cluster (small, so that a long partition
    /// of the leader ends in a snapshot install).
    #[arg(long, default_value_t = 200)]
    snapshot_every: u64,
    /// No operator resolving random live transactions during the run.
    #[arg(long)]
    no_operator: bool,
    /// Break a rule on purpose (to see the checker catch it): `commit-before-decision`.
    #[arg(long)]
    bug: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ratify_tests::init_logging_stderr();
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = match args.dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("ratify-chaos-")
            .tempdir()?
            .keep(),
    };
    let mut config = ChaosConfig::new(seed, Duration::from_secs(args.duration), dir);
    config.kills = args.kills;
    config.min_rounds = args.min_rounds;
    config.clients = args.clients;
    config.one_phase_share = args.one_phase_share;
    config.quiet_timeout = Duration::from_secs(args.quiet_timeout);
    config.snapshot_every = args.snapshot_every;
    config.operator = !args.no_operator;
    match args.interval_ms[..] {
        [min, max] => config.nemesis.interval_ms = (min, max.max(min)),
        _ => anyhow::bail!("--interval-ms takes MIN,MAX"),
    }
    if args.no_kafka {
        config.apps.retain(|k| *k != AppKind::Kafka);
        config.nemesis.faults = chaos::nemesis::Fault::all(&config.apps);
    }
    match args.bug.as_deref() {
        None => {}
        Some("commit-before-decision") => {
            config.node_failpoints = "bug.commit_before_decision=on".into();
        }
        Some(other) => anyhow::bail!("unknown --bug {other:?} (known: commit-before-decision)"),
    }
    let summary = chaos::run(config).await?;
    println!("{}", summary.render());
    if !summary.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
