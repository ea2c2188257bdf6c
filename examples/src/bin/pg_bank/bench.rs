//! `pg_bank bench`: transfers across the two databases through Ratify, next to the
//! same transfers with raw `PREPARE TRANSACTION` / `COMMIT PREPARED` and no
//! coordinator, and next to plain single-database commits, at several client counts;
//! and, when Java is there, next to the same transfer driven by Narayana JTA, an
//! in-process XA transaction manager (the harness in `examples/narayana/`, built with
//! Maven on first use; `--no-narayana` skips it).
//!
//! Each client transfers between accounts of its own partition, so clients never wait
//! for each other's row locks (a cross-database lock cycle would stall both until the
//! transaction timeout: that is a workload property, not what is measured here).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::Rng;
use ratify_devkit::latency::Latencies;
use ratify_examples::narayana;
use ratify_examples::pg_bank::{self, Bank, BankDbs};
use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};

use crate::Common;

/// Flags of `pg_bank bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent clients for each round (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    clients: Vec<usize>,
    /// Seconds per round.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Skip the Narayana JTA row (otherwise measured when `java` is there).
    #[arg(long)]
    no_narayana: bool,
    /// A prebuilt Narayana harness jar (default: build `examples/narayana` with Maven).
    #[arg(long, env = narayana::JAR_ENV)]
    narayana_jar: Option<PathBuf>,
}

/// The Narayana row label.
const NARAYANA_LABEL: &str = "Narayana JTA 2PC (2 dbs, in-process XA TM)";

/// Measures the Narayana JTA rows, or says why not (never fails the bench).
async fn narayana_rows(
    a: &BenchArgs,
    dbs: &BankDbs,
    per_client: i32,
    store: &std::path::Path,
) -> Result<narayana::Report, String> {
    if a.no_narayana {
        return Err("--no-narayana".into());
    }
    let harness = narayana::prepare(a.narayana_jar.as_deref()).await?;
    let w = narayana::Workload {
        a_url: &dbs.a_url,
        b_url: &dbs.b_url,
        clients: &a.clients,
        secs: a.duration,
        per_client,
        store,
    };
    narayana::run(&harness, &w)
        .await
        .map_err(|e| format!("{e:#}"))
}

/// Numbers raw-2PC gids.
static RAW_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What one round measured.
#[derive(Default)]
struct Round {
    /// Finished transfers.
    done: u64,
    /// Aborted or failed transfers.
    failed: u64,
    /// Whole-transfer latency.
    total: Latencies,
    /// Ratify only: Begin at the coordinator plus the SQL on both branches.
    begin: Latencies,
    /// Ratify only: Commit at the coordinator (prepare alongside the commit marker).
    commit: Latencies,
    /// Wall time.
    elapsed: Duration,
}

impl Round {
    fn merge(&mut self, o: Round) {
        self.done += o.done;
        self.failed += o.failed;
        self.total.extend(&o.total);
        self.begin.extend(&o.begin);
        self.commit.extend(&o.commit);
    }

    fn tps(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    Raw2pc,
    Ratify,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain commit (1 db)",
            Mode::Raw2pc => "raw 2PC (2 dbs, no coordinator)",
            Mode::Ratify => "Ratify 2PC (2 dbs, 3-node cluster)",
        }
    }
}

/// Shared by every client of a round.
struct Ctx {
    dbs: BankDbs,
    bank: Bank,
    /// Hosts both banks; runs the Ratify transfers.
    app: ratify_participant_sdk::App,
    /// Accounts per client partition.
    per_client: i32,
}

/// Two accounts and an amount from client `i`'s partition.
fn pick(ctx: &Ctx, i: usize) -> (i32, i32, i64) {
    let base = i as i32 * ctx.per_client;
    let mut rng = rand::thread_rng();
    (
        base + rng.gen_range(0..ctx.per_client),
        base + rng.gen_range(0..ctx.per_client),
        rng.gen_range(1..=10),
    )
}

async fn client_loop(ctx: Arc<Ctx>, mode: Mode, i: usize, until: Instant) -> anyhow::Result<Round> {
    let mut r = Round::default();
    let (a, b) = (
        pg_bank::connect(&ctx.dbs.a_url).await?,
        pg_bank::connect(&ctx.dbs.b_url).await?,
    );
    while Instant::now() < until {
        let (from, to, amount) = pick(&ctx, i);
        let t = Instant::now();
        let ok = match mode {
            Mode::Plain => {
                // One round trip: the whole transaction in one simple-query message.
                a.batch_execute(&format!(
                    "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
                     UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; COMMIT"
                ))
                .await
                .is_ok()
            }
            Mode::Raw2pc => {
                // The leanest hand-written 2PC: per database one message for
                // BEGIN + UPDATE + PREPARE, then one for COMMIT PREPARED, both
                // databases in parallel.
                // Gids are unique server-wide, not per database: one per branch, and
                // unique across rounds.
                let n = RAW_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (ga, gb) = (format!("rawbench_{n}_a"), format!("rawbench_{n}_b"));
                let sa = format!(
                    "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
                     PREPARE TRANSACTION '{ga}'"
                );
                let sb = format!(
                    "BEGIN; UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; \
                     PREPARE TRANSACTION '{gb}'"
                );
                let prepared =
                    futures::try_join!(a.batch_execute(&sa), b.batch_execute(&sb)).is_ok();
                let verb = if prepared { "COMMIT" } else { "ROLLBACK" };
                let (fa, fb) = (
                    format!("{verb} PREPARED '{ga}'"),
                    format!("{verb} PREPARED '{gb}'"),
                );
                let (ra, rb) = futures::join!(a.batch_execute(&fa), b.batch_execute(&fb));
                if !prepared {
                    // A branch that failed to prepare may still be an open, aborted
                    // transaction on its connection.
                    let _ =
                        futures::join!(a.batch_execute("ROLLBACK"), b.batch_execute("ROLLBACK"));
                }
                prepared && ra.is_ok() && rb.is_ok()
            }
            Mode::Ratify => match ctx.bank.transfer(&ctx.app, from, to, amount, |_| {}).await {
                Ok(t) => {
                    r.begin.record(t.work);
                    r.commit.record(t.total - t.work);
                    true
                }
                Err(_) => false,
            },
        };
        if ok {
            r.done += 1;
            r.total.record(t.elapsed());
        } else {
            r.failed += 1;
        }
    }
    Ok(r)
}

async fn round(ctx: &Arc<Ctx>, mode: Mode, clients: usize, secs: u64) -> anyhow::Result<Round> {
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client_loop(Arc::clone(ctx), mode, i, until)))
        .collect();
    let mut total = Round::default();
    for t in tasks {
        total.merge(t.await??);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Runs every mode at every client count and prints one table.
pub(crate) async fn run(a: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; use `cargo run --release -p ratify-examples --bin pg_bank -- bench` for real figures");
    }
    let c = &a.common;
    let dbs = BankDbs::new(&c.pg_url, &c.db_prefix)?;
    let max_clients = a.clients.iter().copied().max().unwrap_or(1).max(1);
    let accounts = c.accounts.max(max_clients as i32 * 10);
    pg_bank::setup(&c.pg_url, &dbs, accounts, c.balance).await?;
    let before = pg_bank::total(&dbs.a_url).await? + pg_bank::total(&dbs.b_url).await?;
    let tmp = tempfile::tempdir()?;
    let cluster = ratify_examples::local_cluster(&tmp.path().join("cluster")).await?;
    let client = CoordinatorClient::new(cluster.api_endpoints(), ClientConfig::default())?;
    let bank = Bank::open(&dbs, max_clients * 2 + 4).await?;
    let app = bank
        .host(client, "127.0.0.1:0", Some(Duration::from_secs(1)))
        .await?;
    let ctx = Arc::new(Ctx {
        dbs: dbs.clone(),
        bank,
        app,
        per_client: accounts / max_clients as i32,
    });

    // Warm-up: connections, statement caches, the cluster's first entries.
    for mode in [Mode::Plain, Mode::Raw2pc, Mode::Ratify] {
        round(&ctx, mode, 4, 1).await?;
    }

    let mut rows = Vec::new();
    for &clients in &a.clients {
        let mut by_mode = Vec::new();
        for mode in [Mode::Plain, Mode::Raw2pc, Mode::Ratify] {
            let r = round(&ctx, mode, clients, a.duration).await?;
            eprintln!("{} x{clients}: {:.0} txn/s", mode.label(), r.tps());
            by_mode.push((mode, r));
        }
        rows.push((clients, by_mode));
    }

    // The same transfer under Narayana JTA, after the other modes (the Ratify cluster
    // stays up, idle). Its store is on the same file system as the cluster's logs.
    eprintln!("Narayana JTA: {:?} clients", a.clients);
    let narayana =
        narayana_rows(&a, &dbs, ctx.per_client, &tmp.path().join("narayana-store")).await;
    if let Ok(report) = &narayana {
        for r in &report.rounds {
            eprintln!("{NARAYANA_LABEL} x{}: {:.0} txn/s", r.clients, r.tps());
        }
    }

    println!();
    println!("| clients | mode | txn/s | p50 ms | p99 ms | failed | vs raw 2PC | vs plain |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut breakdown = Vec::new();
    // The harness prints its rounds in the order of --clients, as `rows` is.
    let narayana_round = |i: usize| narayana.as_ref().ok().and_then(|r| r.rounds.get(i));
    for (i, (clients, by_mode)) in rows.iter_mut().enumerate() {
        let plain = by_mode[0].1.tps();
        let raw = by_mode[1].1.tps();
        for (mode, r) in by_mode.iter_mut() {
            println!(
                "| {clients} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
                mode.label(),
                r.tps(),
                r.total.percentile_ms(50.0),
                r.total.percentile_ms(99.0),
                r.failed,
                r.tps() / raw,
                r.tps() / plain,
            );
            if *mode == Mode::Ratify {
                breakdown.push(format!(
                    "| {clients} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    r.begin.percentile_ms(50.0),
                    r.begin.percentile_ms(99.0),
                    r.commit.percentile_ms(50.0),
                    r.commit.percentile_ms(99.0),
                    r.total.percentile_ms(50.0),
                ));
            }
        }
        if let Some(r) = narayana_round(i) {
            println!(
                "| {clients} | {NARAYANA_LABEL} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
                r.tps(),
                r.p50_ms,
                r.p99_ms,
                r.failed,
                r.tps() / raw,
                r.tps() / plain,
            );
        }
    }
    println!();
    match &narayana {
        Ok(report) => {
            println!("Narayana: {}", report.config);
            for r in report.rounds.iter().filter(|r| r.one_phase > 0) {
                println!(
                    "warning: Narayana committed {} transfers one-phase at {} clients: not 2PC",
                    r.one_phase, r.clients
                );
            }
            println!();
            println!("| clients | Ratify / Narayana | Ratify / raw 2PC | Narayana / raw 2PC | Narayana prepares per transfer |");
            println!("|---:|---:|---:|---:|---:|");
            for (i, (clients, by_mode)) in rows.iter().enumerate() {
                let raw = by_mode[1].1.tps();
                let ratify = by_mode[2].1.tps();
                if let Some(r) = narayana_round(i) {
                    println!(
                        "| {clients} | {:.2} | {:.2} | {:.2} | {:.2} |",
                        ratify / r.tps(),
                        ratify / raw,
                        r.tps() / raw,
                        r.prepares as f64 / r.done.max(1) as f64,
                    );
                }
            }
        }
        Err(why) => println!("Narayana JTA row skipped: {why}"),
    }
    println!();
    println!("Where a Ratify transfer's time goes (ms): begin = coordinator Begin (answered from the leader's memory, no Raft entry) + SQL on both branches; commit = prepare on both, alongside the commit marker (one Raft entry; answered once both are done)");
    println!();
    println!("| clients | begin+SQL p50 | begin+SQL p99 | commit p50 | commit p99 | total p50 |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for line in breakdown {
        println!("{line}");
    }

    // Settle and check the invariant, so the benchmark is also a test.
    let settle = Instant::now();
    while !(pg_bank::prepared_gids(&dbs.a_url).await?.is_empty()
        && pg_bank::prepared_gids(&dbs.b_url).await?.is_empty())
    {
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(30),
            "prepared branches left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = pg_bank::total(&dbs.a_url).await? + pg_bank::total(&dbs.b_url).await?;
    // Plain commits move money inside bank A only, so the sum is conserved too.
    anyhow::ensure!(before == after, "total changed: {before} -> {after}");
    println!();
    println!("total conserved ({after}); no prepared transaction left");
    if let Ok(ctx) = Arc::try_unwrap(ctx) {
        ctx.app.shutdown().await;
    }
    drop(cluster);
    Ok(())
}
