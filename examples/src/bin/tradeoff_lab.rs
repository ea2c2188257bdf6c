//! `tradeoff_lab`: the order pipeline (A → Kafka → B → Kafka → C) five ways — 2PC via
//! Ratify, Kafka exactly-once, transactional outbox (polling and CDC relays),
//! idempotent consumer, and a baseline without atomicity — on the same Postgres and
//! Kafka, with service B SIGKILLed and restarted mid-run, measured side by side.
//!
//! ```sh
//! eval "$(tests/infra/postgres.sh start .tmp/pg)"     # wal_level=logical (CDC relay)
//! eval "$(tests/infra/kafka.sh start .tmp/kafka)"
//! cargo build --release -p ratify-coordinator --bin ratify
//! cargo run --release -p ratify-examples --bin tradeoff_lab -- --duration 20 --clients 8 --out docs/lab
//! ```
//!
//! Writes `README.md`, `results.json` and SVG charts into `--out`. See
//! [`ratify_examples::lab`] for what each implementation does and what is measured.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ratify_examples::lab::{self, Impl, LabOptions, ServiceBArgs};

/// The order pipeline five ways, measured side by side.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Service B of one implementation (the lab starts, kills and restarts it).
    #[command(hide = true)]
    ServiceB(ServiceBArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Postgres URL of any database of a server with `max_prepared_transactions` > 0
    /// and `wal_level=logical` (the lab creates `lab_*` databases next to it).
    #[arg(long, env = "RATIFY_TEST_PG_URL")]
    pg_url: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "RATIFY_TEST_KAFKA")]
    bootstrap: Option<String>,
    /// Implementations to run, comma separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    impls: Vec<Impl>,
    /// Seconds each implementation places orders.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Concurrent order clients in service A.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// When B is SIGKILLed, as a fraction of the duration.
    #[arg(long, default_value_t = 0.4)]
    kill_at: f64,
    /// Seconds B stays dead before it is restarted.
    #[arg(long, default_value_t = 1.0)]
    pause: f64,
    /// Seconds C's stream must stay quiet after A stops before missing orders count
    /// as lost.
    #[arg(long, default_value_t = 5.0)]
    drain_quiet: f64,
    /// A few seconds per implementation (4 s, kill at 40 %, 0.5 s pause, 2 s drain):
    /// what the test suite runs.
    #[arg(long)]
    smoke: bool,
    /// Report folder.
    #[arg(long, default_value = "docs/lab")]
    out: PathBuf,
    /// A note for the report, e.g. what else was running on the machine.
    #[arg(long)]
    note: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The run reports its progress itself; the libraries' info logs (every recovery
    // round of 2PC's participants) would bury it.
    let _telemetry = ratify_examples::init_tracing_with_default("warn")?;
    let cli = Cli::parse();
    if let Some(Cmd::ServiceB(b)) = cli.cmd {
        return lab::service_b(b).await;
    }
    let a = cli.run;
    let secs = |s: f64| -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("bad duration {s}: {e}"))
    };
    let (duration, pause, drain_quiet) = if a.smoke {
        (secs(4.0)?, secs(0.5)?, secs(2.0)?)
    } else {
        (secs(a.duration)?, secs(a.pause)?, secs(a.drain_quiet)?)
    };
    anyhow::ensure!(
        (0.0..1.0).contains(&a.kill_at),
        "--kill-at is a fraction of the duration in [0, 1)"
    );
    let opts = LabOptions {
        pg_url: a
            .pg_url
            .ok_or_else(|| anyhow::anyhow!("--pg-url (or RATIFY_TEST_PG_URL) is required"))?,
        bootstrap: a
            .bootstrap
            .ok_or_else(|| anyhow::anyhow!("--bootstrap (or RATIFY_TEST_KAFKA) is required"))?,
        impls: if a.impls.is_empty() {
            Impl::ALL.to_vec()
        } else {
            a.impls
        },
        duration,
        clients: a.clients,
        kill_at: duration.mul_f64(a.kill_at),
        pause,
        drain_quiet,
        out: a.out,
        smoke: a.smoke,
        note: a.note,
    };
    let report = lab::run_lab(&opts).await?;
    println!("{}", lab::report::table(&report.results));
    let failed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.title.as_str())
        .collect();
    anyhow::ensure!(failed.is_empty(), "not measured: {}", failed.join(", "));
    Ok(())
}
