//! `order_pipeline`: service A (orders) → Kafka → service B (shipping) → Kafka, each
//! step one Ratify transaction over a Postgres branch and a Kafka branch; B processes
//! every order exactly once (its consumer offsets commit in its Kafka branch).
//!
//! ```sh
//! eval "$(tests/infra/postgres.sh start .tmp/pg)"
//! eval "$(tests/infra/kafka.sh start .tmp/kafka)"
//! cargo build -p ratify-coordinator --bin ratify
//! cargo run -p ratify-examples --bin order_pipeline -- run --orders 1000
//! ```
//!
//! Subcommands: `run` (everything in one process: a local 3-node cluster unless
//! `--coordinator` is given, both services, the check), `service-a` and `service-b`
//! (one service per process, what the integration test SIGKILLs), `setup` and
//! `check`. See [`ratify_examples::order_pipeline`] for how B stays exactly once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ratify_examples::order_pipeline::{self, PipelineConfig, ServiceA, ServiceB, ServiceBOptions};
use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};

/// Orders placed by service A and shipped exactly once by service B, through Ratify.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the databases, tables and topics if missing.
    Setup(Common),
    /// Run A and B end to end on fresh topics, then check exactly-once.
    Run(RunArgs),
    /// Service A: place orders, wait until its branches are finished, exit.
    ServiceA(ServiceAArgs),
    /// Service B: ship placed orders until SIGTERM or Ctrl-C.
    ServiceB(ServiceBArgs),
    /// Count a run's orders at every stage; exit non-zero unless exactly once.
    Check(CheckArgs),
}

/// Where the pipeline's state lives.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Postgres URL of any database on the server (the services' databases are
    /// created next to it).
    #[arg(long, env = "RATIFY_TEST_PG_URL")]
    pg_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "RATIFY_TEST_KAFKA")]
    bootstrap: String,
    /// Databases `<name>_orders` and `<name>_shipping`, `transactional.id`s
    /// `<name>.service_a`/`_b`.
    #[arg(long, default_value = "ratify_orders")]
    name: String,
    /// Topic of order-placed events (`run` appends `.<run-id>`).
    #[arg(long, default_value = "orders")]
    orders_topic: String,
    /// Topic of order-shipped events (`run` appends `.<run-id>`).
    #[arg(long, default_value = "shipments")]
    shipments_topic: String,
    /// Service B's consumer group (default `<name>.shipping`; `run` appends `.<run-id>`).
    #[arg(long)]
    group: Option<String>,
    /// Ledger topics `<prefix>.service_a` / `_b` for the services' Kafka adapters
    /// (default: both use the adapter's shared ledger).
    #[arg(long)]
    ledger_prefix: Option<String>,
}

impl Common {
    fn config(&self) -> anyhow::Result<PipelineConfig> {
        let cfg = PipelineConfig {
            pg_url: self.pg_url.clone(),
            bootstrap: self.bootstrap.clone(),
            name: self.name.clone(),
            orders_topic: self.orders_topic.clone(),
            shipments_topic: self.shipments_topic.clone(),
            group: self
                .group
                .clone()
                .unwrap_or_else(|| format!("{}.shipping", self.name)),
            ledger_prefix: self.ledger_prefix.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Coordinator API addresses; none starts a local 3-node cluster (needs the
    /// `ratify` binary: `cargo build -p ratify-coordinator --bin ratify`).
    #[arg(long = "coordinator")]
    coordinators: Vec<String>,
    /// Orders to place.
    #[arg(long, default_value_t = 500)]
    orders: u64,
    /// Concurrent order clients in service A.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Most events per service B transaction.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Run id (order ids are `<run-id>-<n>`); default: random.
    #[arg(long)]
    run_id: Option<String>,
}

/// What a service process needs to be one service across restarts.
#[derive(Args, Debug)]
struct ServiceArgs {
    #[command(flatten)]
    common: Common,
    /// Coordinator API addresses.
    #[arg(long = "coordinator", required = true)]
    coordinators: Vec<String>,
    /// Address to serve the participant on; keep it across restarts (the coordinator
    /// calls the address the branches were enlisted with).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The Kafka adapter's stage folder; keep it across restarts.
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Args, Debug)]
struct ServiceAArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Run id (order ids are `<run-id>-<n>`).
    #[arg(long)]
    run_id: String,
    /// First order number.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Orders to place.
    #[arg(long, default_value_t = 500)]
    orders: u64,
    /// Concurrent order clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

#[derive(Args, Debug)]
struct ServiceBArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Most events per transaction.
    #[arg(long, default_value_t = 50)]
    batch: usize,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// The run to check.
    #[arg(long)]
    run_id: String,
    /// Orders the run placed (order numbers 0..N).
    #[arg(long)]
    orders: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ratify_examples::init_tracing()?;
    match Cli::parse().cmd {
        Cmd::Setup(c) => {
            let cfg = c.config()?;
            order_pipeline::setup(&cfg).await?;
            println!(
                "created {}, {}, topics {} and {}",
                cfg.orders_db(),
                cfg.shipping_db(),
                cfg.orders_topic,
                cfg.shipments_topic
            );
            Ok(())
        }
        Cmd::Run(a) => run(a).await,
        Cmd::ServiceA(a) => service_a(a).await,
        Cmd::ServiceB(a) => service_b(a).await,
        Cmd::Check(a) => {
            let report = order_pipeline::check(&a.common.config()?, &a.run_id, a.orders).await?;
            println!("{report}");
            anyhow::ensure!(report.ok(), "not exactly once");
            Ok(())
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let run_id = a
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    // Fresh topics and group per run: events of an earlier run (maybe cut short with
    // branches staged in a temp folder that is gone) never reach this one.
    let mut cfg = a.common.config()?;
    cfg.orders_topic = format!("{}.{run_id}", cfg.orders_topic);
    cfg.shipments_topic = format!("{}.{run_id}", cfg.shipments_topic);
    cfg.group = format!("{}.{run_id}", cfg.group);
    order_pipeline::setup(&cfg).await?;
    let stale = order_pipeline::prepared_left(&cfg).await?;
    anyhow::ensure!(
        stale == 0,
        "{stale} prepared transactions are left in {} / {} by an earlier run whose \
         coordinator is gone; ROLLBACK PREPARED them (see pg_prepared_xacts) or pick \
         another --name",
        cfg.orders_db(),
        cfg.shipping_db()
    );
    let tmp = tempfile::tempdir()?;
    let (_cluster, endpoints) = if a.coordinators.is_empty() {
        println!("starting a local 3-node coordinator cluster");
        let cluster = ratify_examples::local_cluster(&tmp.path().join("cluster")).await?;
        let eps = cluster.api_endpoints();
        (Some(cluster), eps)
    } else {
        (None, a.coordinators.clone())
    };
    let client = CoordinatorClient::new(endpoints, ClientConfig::default())?;
    let service_a = Arc::new(
        ServiceA::start(
            &cfg,
            client.clone(),
            &tmp.path().join("a-stage"),
            "127.0.0.1:0",
        )
        .await?,
    );
    let service_b = Arc::new(
        ServiceB::start(
            &cfg,
            client.clone(),
            &tmp.path().join("b-stage"),
            "127.0.0.1:0",
        )
        .await?,
    );
    println!(
        "run {run_id}: {} orders from {} clients; topics {} and {}",
        a.orders, a.clients, cfg.orders_topic, cfg.shipments_topic
    );
    let (stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
    let b_task = {
        let (b, options) = (
            Arc::clone(&service_b),
            ServiceBOptions {
                batch: a.batch,
                ..Default::default()
            },
        );
        tokio::spawn(async move {
            b.run(&options, async {
                let _ = b_stopped.await;
            })
            .await
        })
    };

    let start = Instant::now();
    let placed = service_a
        .place_orders(&run_id, 0, a.orders, a.clients)
        .await?;
    let placed_in = start.elapsed();
    let want = i64::try_from(a.orders)?;
    loop {
        if b_task.is_finished() {
            b_task.await??;
            anyhow::bail!("service B stopped before shipping every order");
        }
        if order_pipeline::shipped_count(&cfg, &run_id).await? >= want {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "service B did not ship every order in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shipped_in = start.elapsed();
    let _ = stop_b.send(());
    b_task.await??;
    service_b
        .participant
        .wait_settled(Duration::from_secs(60))
        .await?;
    let report = order_pipeline::check(&cfg, &run_id, a.orders).await?;
    println!(
        "A placed {} orders in {:.1} s ({:.0} orders/s, {} aborted transactions retried); \
         B shipped the last one {:.1} s after the start ({:.0} orders/s end to end)",
        placed.orders,
        placed_in.as_secs_f64(),
        placed.orders as f64 / placed_in.as_secs_f64(),
        placed.retries,
        shipped_in.as_secs_f64(),
        a.orders as f64 / shipped_in.as_secs_f64(),
    );
    println!("{report}");
    anyhow::ensure!(report.ok(), "not exactly once");
    Ok(())
}

fn service_client(s: &ServiceArgs) -> anyhow::Result<(PipelineConfig, CoordinatorClient)> {
    Ok((
        s.common.config()?,
        CoordinatorClient::new(s.coordinators.clone(), ClientConfig::default())?,
    ))
}

async fn service_a(a: ServiceAArgs) -> anyhow::Result<()> {
    let s = &a.service;
    let (cfg, client) = service_client(s)?;
    let service = Arc::new(ServiceA::start(&cfg, client, &s.data_dir, &s.listen).await?);
    println!("service A ready on {}", service.participant.endpoint);
    let start = Instant::now();
    let placed = service
        .place_orders(&a.run_id, a.first, a.orders, a.clients)
        .await?;
    println!(
        "placed {} orders in {:.1} s, {} aborted transactions retried",
        placed.orders,
        start.elapsed().as_secs_f64(),
        placed.retries
    );
    Ok(())
}

async fn service_b(a: ServiceBArgs) -> anyhow::Result<()> {
    let s = &a.service;
    let (cfg, client) = service_client(s)?;
    let service = ServiceB::start(&cfg, client, &s.data_dir, &s.listen).await?;
    println!("service B ready on {}", service.participant.endpoint);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let options = ServiceBOptions {
        batch: a.batch,
        ..Default::default()
    };
    service
        .run(&options, async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    println!("shipped {} orders", service.shipped());
    Ok(())
}
