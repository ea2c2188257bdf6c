//! Kafka transactions through Ratify next to Kafka-only transactions, in one run.
//!
//! ```sh
//! eval "$(tests/infra/kafka.sh start .tmp/bench-kafka)"      # Apache Kafka on loopback
//! eval "$(tests/infra/postgres.sh start .tmp/bench-pg)"      # optional: the Postgres rows
//! cargo build --release -p ratify-coordinator --bin ratify
//! cargo run --release -p ratify-examples --bin kafka_bench -- --clients 1,16 --duration 5
//! tests/infra/kafka.sh stop .tmp/bench-kafka
//! ```
//!
//! Every scenario publishes `--batch` records per transaction from each of
//! `--clients` concurrent clients for `--duration` seconds; the table gives
//! transactions per second and the latency of one transaction (p50, p99).
//! Scenarios (one row each per client count):
//! - `ratify 2pc: kafka + noop`: Begin with a Kafka branch and a no-op durable branch,
//!   stage the records, Commit (prepare fsyncs the stage, commit publishes it in a
//!   Kafka transaction with the ledger marker). Latency = Begin to Commit answer.
//! - `ratify 2pc: postgres + kafka`: Begin with a Postgres branch (one `INSERT` of an
//!   order row) and a Kafka branch (the records): the order service of the
//!   `order_pipeline` example. Needs `--pg-url` (or `RATIFY_TEST_PG_URL`).
//! - `ratify 2pc: postgres + noop`: the same `INSERT` with a no-op durable branch
//!   instead of Kafka, to separate the Postgres cost from the Kafka cost.
//! - `kafka only`: one transactional producer per client, begin, send, wait for the
//!   deliveries, commit — what the adapter does at commit, without Ratify.
//!
//! A new row is one more [`Scenario`] variant and its `run_one` arm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ratify_devkit::latency::Latencies;
use ratify_devkit::local::LocalCluster;
use ratify_devkit::noop::NoopResource;
use ratify_examples::pg_bank::{connect, with_database};
use ratify_participant_sdk::adapters::kafka::{KafkaConfig, KafkaRecord, KafkaResource};
use ratify_participant_sdk::adapters::postgres::{PgConfig, PgResource};
use ratify_participant_sdk::client::{BeginOptions, ClientConfig, CoordinatorClient, Outcome};
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::HostedParticipant;
use ratify_participant_sdk::xid::Xid;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

#[derive(Parser, Debug)]
#[command(about = "Kafka transactions via Ratify vs Kafka-only transactions")]
struct Args {
    /// Kafka bootstrap servers (tests/infra/kafka.sh exports RATIFY_TEST_KAFKA).
    #[arg(long, env = "RATIFY_TEST_KAFKA")]
    bootstrap: String,
    /// Client counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    clients: Vec<usize>,
    /// Seconds per round.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Records per transaction.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// The `ratify` binary (default: next to this one).
    #[arg(long)]
    ratify_bin: Option<std::path::PathBuf>,
    /// Postgres URL of any database of a server with `max_prepared_transactions` >
    /// clients (the bench creates `ratify_kafka_bench` next to it); without it the
    /// Postgres rows are skipped.
    #[arg(long, env = "RATIFY_TEST_PG_URL")]
    pg_url: Option<String>,
}

/// Database of the Postgres rows (also their gid tag).
const BENCH_DB: &str = "ratify_kafka_bench";

/// One way of doing "a transaction that publishes `batch` records".
enum Scenario {
    /// Through Ratify: a Kafka branch and a no-op durable branch, two-phase.
    Ratify {
        client: CoordinatorClient,
        kafka: Arc<KafkaResource>,
        branches: Vec<(String, String)>,
    },
    /// Through Ratify: a Postgres branch (one row) and a second branch, two-phase;
    /// `kafka` set: the second branch is Kafka and carries the records, else a no-op.
    RatifyPg {
        client: CoordinatorClient,
        pg: Arc<PgResource>,
        kafka: Option<Arc<KafkaResource>>,
        branches: Vec<(String, String)>,
    },
    /// Kafka's own transactions, one transactional producer per client.
    KafkaOnly { producers: Vec<FutureProducer> },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Self::Ratify { .. } => "ratify 2pc: kafka + noop",
            Self::RatifyPg { kafka: Some(_), .. } => "ratify 2pc: postgres + kafka",
            Self::RatifyPg { kafka: None, .. } => "ratify 2pc: postgres + noop",
            Self::KafkaOnly { .. } => "kafka only",
        }
    }

    async fn run_one(
        &self,
        client_idx: usize,
        topic: &str,
        value: &[u8],
        batch: usize,
    ) -> anyhow::Result<()> {
        match self {
            Self::Ratify {
                client,
                kafka,
                branches,
            } => {
                let t = client
                    .begin(BeginOptions {
                        branches: branches.clone(),
                        ..Default::default()
                    })
                    .await?;
                stage_records(kafka, &t.branches[0].xid, client_idx, topic, value, batch)?;
                let d = client.commit(&t.gtrid).await?;
                anyhow::ensure!(d.outcome == Outcome::Committed, "not committed: {d:?}");
                Ok(())
            }
            Self::RatifyPg {
                client,
                pg,
                kafka,
                branches,
            } => {
                let t = client
                    .begin(BeginOptions {
                        branches: branches.clone(),
                        ..Default::default()
                    })
                    .await?;
                let row = pg.begin_branch(&t.branches[0].xid).await?;
                let (client_no, records) = (i32::try_from(client_idx)?, i32::try_from(batch)?);
                row.execute(
                    "INSERT INTO bench_orders (client, records) VALUES ($1, $2)",
                    &[&client_no, &records],
                )
                .await?;
                if let Some(kafka) = kafka {
                    stage_records(kafka, &t.branches[1].xid, client_idx, topic, value, batch)?;
                }
                let d = client.commit(&t.gtrid).await?;
                anyhow::ensure!(d.outcome == Outcome::Committed, "not committed: {d:?}");
                Ok(())
            }
            Self::KafkaOnly { producers } => {
                let p = producers
                    .get(client_idx)
                    .context("no producer for this client")?
                    .clone();
                let (topic, value) = (topic.to_string(), value.to_vec());
                tokio::task::spawn_blocking(move || {
                    kafka_only_txn(&p, &topic, &value, client_idx, batch)
                })
                .await?
            }
        }
    }
}

/// Adds `batch` records to the Kafka branch `xid`.
fn stage_records(
    kafka: &Arc<KafkaResource>,
    xid: &Xid,
    client_idx: usize,
    topic: &str,
    value: &[u8],
    batch: usize,
) -> anyhow::Result<()> {
    let b = kafka.branch(xid)?;
    for i in 0..batch {
        b.send(KafkaRecord::new(
            topic,
            format!("{client_idx}-{i}"),
            value.to_vec(),
        ))?;
    }
    Ok(())
}

/// Creates the bench database and its table (emptied) next to `url`'s database.
async fn pg_setup(url: &str) -> anyhow::Result<String> {
    let admin = connect(url).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&BENCH_DB])
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {BENCH_DB}"))
            .await?;
    }
    let db_url = with_database(url, BENCH_DB);
    connect(&db_url)
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_orders (\
                 id bigserial PRIMARY KEY, client int NOT NULL, records int NOT NULL); \
             TRUNCATE bench_orders",
        )
        .await?;
    Ok(db_url)
}

/// One Kafka transaction: deliveries drained before commit (docs/design.md §9).
fn kafka_only_txn(
    p: &FutureProducer,
    topic: &str,
    value: &[u8],
    client_idx: usize,
    batch: usize,
) -> anyhow::Result<()> {
    p.begin_transaction()?;
    let mut deliveries = Vec::with_capacity(batch);
    for i in 0..batch {
        let key = format!("{client_idx}-{i}");
        let rec: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).key(key.as_str()).payload(value);
        deliveries.push(p.send_result(rec).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        futures::executor::block_on(d)
            .map_err(|_| anyhow::anyhow!("delivery cancelled"))?
            .map_err(|(e, _)| e)?;
    }
    p.commit_transaction(Duration::from_secs(30))?;
    Ok(())
}

/// Result of one round.
struct Row {
    scenario: &'static str,
    /// Whether the scenario publishes records (the Postgres + noop row does not).
    publishes: bool,
    clients: usize,
    txns: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn round(s: Arc<Scenario>, clients: usize, args: &Args, topic: &str) -> anyhow::Result<Row> {
    let value = vec![b'x'; args.value_bytes];
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (s, topic, value, batch) =
            (Arc::clone(&s), topic.to_string(), value.clone(), args.batch);
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                s.run_one(c, &topic, &value, batch).await?;
                lat.record(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.extend(&t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Row {
        scenario: s.name(),
        publishes: !matches!(&*s, Scenario::RatifyPg { kafka: None, .. }),
        clients,
        txns: usize::try_from(all.len()).unwrap_or(usize::MAX),
        secs,
        p50_ms: all.percentile_ms(50.0),
        p99_ms: all.percentile_ms(99.0),
    })
}

fn ratify_binary(arg: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    let bin = match arg {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent folder")?
            .join("ratify"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build --release -p ratify-coordinator --bin ratify",
        bin.display()
    );
    Ok(bin)
}

fn transactional_producer(bootstrap: &str, id: &str) -> anyhow::Result<FutureProducer> {
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("linger.ms", "1")
        .create()?;
    p.init_transactions(Duration::from_secs(30))?;
    Ok(p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ratify_examples::init_tracing()?;
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let run = format!("{:x}", rand_id());
    let topic = format!("ratify-bench-{run}");
    create_topic(&args.bootstrap, &topic).await?;

    eprintln!("starting a 3-node coordinator cluster");
    let nodes = LocalCluster::start(
        &ratify_binary(args.ratify_bin.as_deref())?,
        &dir.path().join("cluster"),
        3,
        Vec::new(),
    )?;
    nodes.wait_for_leader(Duration::from_secs(30)).await?;
    let client = CoordinatorClient::new(nodes.api_endpoints(), ClientConfig::default())?;
    let kafka = KafkaResource::open(
        dir.path().join("kafka-stage"),
        KafkaConfig::new(&args.bootstrap, format!("bench-{run}")),
    )
    .await?;
    let noop: Arc<dyn Resource> = Arc::new(NoopResource::open(dir.path().join("noop"))?);
    let kafka_res: Arc<dyn Resource> = kafka.clone();
    let interval = Duration::from_secs(1);
    let kafka_srv = HostedParticipant::start("kafka", kafka_res, client.clone(), interval).await?;
    let noop_srv = HostedParticipant::start("noop", noop, client.clone(), interval).await?;
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let mut producers = Vec::new();
    for c in 0..max_clients {
        producers.push(transactional_producer(
            &args.bootstrap,
            &format!("bench-{run}-direct-{c}"),
        )?);
    }
    let mut scenarios = vec![Arc::new(Scenario::Ratify {
        client: client.clone(),
        kafka: Arc::clone(&kafka),
        branches: vec![
            (kafka_srv.endpoint.clone(), "kafka".into()),
            (noop_srv.endpoint.clone(), "noop".into()),
        ],
    })];
    // Kept alive for the whole run: dropping it stops the server.
    let _pg_srv = if let Some(url) = &args.pg_url {
        let pg = PgResource::connect(PgConfig {
            pool_size: max_clients + 4,
            ..PgConfig::new(pg_setup(url).await?, BENCH_DB)
        })
        .await?;
        let pg_res: Arc<dyn Resource> = pg.clone();
        let srv = HostedParticipant::start("pg", pg_res, client.clone(), interval).await?;
        let pg_branch = (srv.endpoint.clone(), "pg".to_string());
        scenarios.push(Arc::new(Scenario::RatifyPg {
            client: client.clone(),
            pg: Arc::clone(&pg),
            kafka: Some(Arc::clone(&kafka)),
            branches: vec![
                pg_branch.clone(),
                (kafka_srv.endpoint.clone(), "kafka".into()),
            ],
        }));
        scenarios.push(Arc::new(Scenario::RatifyPg {
            client: client.clone(),
            pg,
            kafka: None,
            branches: vec![pg_branch, (noop_srv.endpoint.clone(), "noop".into())],
        }));
        Some(srv)
    } else {
        eprintln!("no --pg-url (or RATIFY_TEST_PG_URL): skipping the Postgres rows");
        None
    };
    scenarios.push(Arc::new(Scenario::KafkaOnly { producers }));
    let mut rows = Vec::new();
    for s in &scenarios {
        for &clients in &args.clients {
            eprintln!(
                "{} with {clients} clients for {} s",
                s.name(),
                args.duration
            );
            rows.push(round(Arc::clone(s), clients, &args, &topic).await?);
        }
    }
    println!(
        "\n{} records of {} bytes per transaction, {} s per round\n",
        args.batch, args.value_bytes, args.duration
    );
    println!("| scenario | clients | txn/s | records/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let tps = r.txns as f64 / r.secs;
        let records = if r.publishes {
            format!("{:.0}", tps * args.batch as f64)
        } else {
            "-".into()
        };
        println!(
            "| {} | {} | {:.0} | {records} | {:.2} | {:.2} |",
            r.scenario, r.clients, tps, r.p50_ms, r.p99_ms
        );
    }
    drop(nodes);
    Ok(())
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
        ^ u64::from(std::process::id())
}

async fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, 4, TopicReplication::Fixed(-1));
    for r in admin.create_topics([&t], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
    }
    Ok(())
}
