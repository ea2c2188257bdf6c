//! `pg_bank`: a bank transfer between two Postgres databases through Ratify.
//!
//! ```sh
//! eval "$(tests/infra/postgres.sh start .tmp/pg)"    # or any server with max_prepared_transactions > 0
//! cargo build -p ratify-coordinator --bin ratify
//! cargo run -p ratify-examples --bin pg_bank -- demo --pg-url "$RATIFY_TEST_PG_URL"
//! ```
//!
//! Subcommands: `demo` (starts a local 3-node cluster unless `--coordinator` is given,
//! runs transfers, checks the total), `participant` (serves both banks and optionally
//! runs transfers: what the integration tests SIGKILL), `setup` (creates and resets the
//! databases) and `bench` (Ratify next to raw 2PC, plain commits and, when Java is
//! there, Narayana JTA).

mod bench;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ratify_examples::local_cluster;
use ratify_examples::pg_bank::{self, Bank, BankDbs};
use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};
use ratify_participant_sdk::AppError;

/// A bank transfer between two Postgres databases, made atomic by Ratify.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create (if missing) and reset both bank databases.
    Setup(Common),
    /// Run transfers through Ratify and check that money is conserved.
    Demo(DemoArgs),
    /// Serve both banks as a participant (and optionally run transfers).
    Participant(ParticipantArgs),
    /// Ratify vs raw PREPARE/COMMIT PREPARED vs plain single-database commits vs
    /// Narayana JTA (an in-process XA transaction manager; skipped without Java).
    Bench(bench::BenchArgs),
}

/// Flags every subcommand takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Postgres URL of any database on the server (the banks are created next to it).
    #[arg(long, env = "RATIFY_TEST_PG_URL")]
    pg_url: String,
    /// The banks are the databases `<prefix>_a` and `<prefix>_b`.
    #[arg(long, default_value = "ratify_bank")]
    db_prefix: String,
    /// Accounts per bank (ids 0..N).
    #[arg(long, default_value_t = 1000)]
    accounts: i32,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1000)]
    balance: i64,
}

#[derive(Args, Debug)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Coordinator API addresses; none starts a local 3-node cluster (needs the
    /// `ratify` binary: `cargo build -p ratify-coordinator --bin ratify`).
    #[arg(long = "coordinator")]
    coordinators: Vec<String>,
    /// Transfers to run.
    #[arg(long, default_value_t = 200)]
    transfers: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: u64,
}

#[derive(Args, Debug)]
struct ParticipantArgs {
    #[command(flatten)]
    common: Common,
    /// Coordinator API addresses.
    #[arg(long = "coordinator", required = true)]
    coordinators: Vec<String>,
    /// Address to serve on; keep it across restarts (the coordinator remembers it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Transfers to run once serving (one after another).
    #[arg(long, default_value_t = 0)]
    transfers: u64,
    /// Debit this account of bank A.
    #[arg(long, default_value_t = 1)]
    from: i32,
    /// Credit this account of bank B.
    #[arg(long, default_value_t = 2)]
    to: i32,
    /// Amount of each transfer.
    #[arg(long, default_value_t = 10)]
    amount: i64,
    /// Recovery loop interval; 0 turns the loop off (phase 2 then only comes from the
    /// coordinator).
    #[arg(long, default_value_t = 500)]
    recovery_interval_ms: u64,
    /// Reset the databases first.
    #[arg(long)]
    setup: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ratify_examples::init_tracing()?;
    match Cli::parse().cmd {
        Cmd::Setup(c) => {
            let dbs = BankDbs::new(&c.pg_url, &c.db_prefix)?;
            pg_bank::setup(&c.pg_url, &dbs, c.accounts, c.balance).await?;
            println!("created {} and {}", dbs.a_name, dbs.b_name);
            Ok(())
        }
        Cmd::Demo(a) => demo(a).await,
        Cmd::Participant(a) => participant(a).await,
        Cmd::Bench(a) => bench::run(a).await,
    }
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let dbs = BankDbs::new(&c.pg_url, &c.db_prefix)?;
    pg_bank::setup(&c.pg_url, &dbs, c.accounts, c.balance).await?;
    let before = pg_bank::total(&dbs.a_url).await? + pg_bank::total(&dbs.b_url).await?;
    let tmp = tempfile::tempdir()?;
    let (_cluster, endpoints) = if a.coordinators.is_empty() {
        println!("starting a local 3-node coordinator cluster");
        let cluster = local_cluster(&tmp.path().join("cluster")).await?;
        let eps = cluster.api_endpoints();
        (Some(cluster), eps)
    } else {
        (None, a.coordinators.clone())
    };
    let client = CoordinatorClient::new(endpoints, ClientConfig::default())?;
    let bank = Arc::new(Bank::open(&dbs, 32).await?);
    let app = Arc::new(
        bank.host(client, "127.0.0.1:0", Some(Duration::from_secs(1)))
            .await?,
    );

    let committed = Arc::new(AtomicU64::new(0));
    let aborted = Arc::new(AtomicU64::new(0));
    // An outcome the client could not learn (or a failure before the commit) is not
    // an abort: the transfer may have committed, and the totals say so.
    let unknown = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients.max(1) {
        let (bank, app) = (Arc::clone(&bank), Arc::clone(&app));
        let (committed, aborted, unknown, next) = (
            Arc::clone(&committed),
            Arc::clone(&aborted),
            Arc::clone(&unknown),
            Arc::clone(&next),
        );
        let (accounts, transfers) = (c.accounts, a.transfers);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < transfers {
                let (from, to, amount) = {
                    use rand::Rng;
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(0..accounts),
                        rng.gen_range(0..accounts),
                        rng.gen_range(1..=100),
                    )
                };
                match bank.transfer(&app, from, to, amount, |_| {}).await {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e @ AppError::Aborted { .. }) => {
                        tracing::debug!(error = %e, "transfer aborted");
                        aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "transfer failed or its outcome is unknown");
                        unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    // Phase 2 may still be running: wait for every branch to be finished.
    let settle = Instant::now();
    while !(pg_bank::prepared_gids(&dbs.a_url).await?.is_empty()
        && pg_bank::prepared_gids(&dbs.b_url).await?.is_empty())
    {
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(30),
            "prepared branches left after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = pg_bank::total(&dbs.a_url).await? + pg_bank::total(&dbs.b_url).await?;
    if let Ok(app) = Arc::try_unwrap(app) {
        app.shutdown().await;
    }
    let (ok, ko, unsure) = (
        committed.load(Ordering::Relaxed),
        aborted.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
    );
    println!(
        "{ok} committed, {ko} aborted, {unsure} failed or unknown in {:.1} s ({:.0} transfers/s); total before {before}, after {after}; no prepared transaction left",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    anyhow::ensure!(
        before == after,
        "money was created or destroyed: {before} != {after}"
    );
    Ok(())
}

async fn participant(a: ParticipantArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let dbs = BankDbs::new(&c.pg_url, &c.db_prefix)?;
    if a.setup {
        pg_bank::setup(&c.pg_url, &dbs, c.accounts, c.balance).await?;
    }
    let client = CoordinatorClient::new(a.coordinators.clone(), ClientConfig::default())?;
    let bank = Bank::open(&dbs, 16).await?;
    let recovery =
        (a.recovery_interval_ms > 0).then(|| Duration::from_millis(a.recovery_interval_ms));
    let app = bank.host(client, &a.listen, recovery).await?;
    println!("ready {}", app.endpoint());
    for _ in 0..a.transfers {
        // The gtrid is printed once the work is done, before the commit (what the
        // tests wait for); the outcome after it.
        let seen = std::sync::Mutex::new(String::new());
        let said = |gtrid: &str| {
            println!("begun {gtrid}");
            if let Ok(mut s) = seen.lock() {
                *s = gtrid.to_owned();
            }
        };
        let outcome = match bank.transfer(&app, a.from, a.to, a.amount, said).await {
            Ok(_) => "committed".to_string(),
            Err(AppError::Aborted { reason, .. }) => format!("aborted {reason:?}"),
            Err(AppError::Work(e)) => return Err(anyhow::anyhow!(e)),
            Err(e) => format!("unknown {e}"),
        };
        let gtrid = seen.lock().map(|s| s.clone()).unwrap_or_default();
        println!("outcome {gtrid} {outcome}");
    }
    tokio::signal::ctrl_c().await?;
    app.shutdown().await;
    Ok(())
}
