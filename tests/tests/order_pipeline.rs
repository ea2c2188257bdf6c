//! The order pipeline of `examples/src/bin/order_pipeline.rs` (service A → Kafka →
//! service B → Kafka) with A and B as separate processes, against the Postgres of
//! `tests/infra/postgres.sh`, the Apache Kafka of `tests/infra/kafka.sh` and a real
//! 3-node coordinator cluster. Service B is SIGKILLed mid-stream three ways and
//! restarted each time; every order must still be placed once and shipped once.
//!
//! Counts of Kafka records come from `KafkaCheck`, the independent Java
//! `read_committed` consumer; rows from SQL. Needs `RATIFY_TEST_PG_URL` and
//! `RATIFY_TEST_KAFKA`; without them the test fails.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_devkit::local::free_port;
use ratify_examples::order_pipeline::{self, order_id, PipelineConfig, Stage};
use ratify_tests::kafka;
use ratify_tests::pg::PgEnv;
use ratify_tests::TestCluster;

/// Orders service A places.
const ORDERS: u64 = 300;

/// The `order_pipeline` example binary next to the `ratify` binary.
fn pipeline_binary() -> anyhow::Result<PathBuf> {
    ratify_tests::example_binary("order_pipeline", "ORDER_PIPELINE_BIN")
}

/// One service process; SIGKILLed on drop.
struct Service {
    /// The process.
    child: Child,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Service {
    /// Starts `order_pipeline <args>` with fail points `failpoints`, logging to `log`.
    fn spawn(args: &[String], failpoints: &str, log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(pipeline_binary()?)
            .args(args)
            .env(ratify_common::failpoint::ENV_VAR, failpoints)
            // (RUST_LOG is inherited: unset, the example logs at its default level.)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("spawning order_pipeline")?;
        Ok(Self { child, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    async fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "exited ({status}) before logging {needle:?}: {}",
                    self.log_text()
                );
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{needle:?} not logged after {timeout:?}: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits until the process exits and returns whether it succeeded.
    async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "still running after {timeout:?}; log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pipeline's flags for a service process of cluster `c`.
fn service_args(cfg: &PipelineConfig, c: &TestCluster, listen: &str, stage: &Path) -> Vec<String> {
    let mut args = vec![
        "--pg-url".into(),
        cfg.pg_url.clone(),
        "--bootstrap".into(),
        cfg.bootstrap.clone(),
        "--name".into(),
        cfg.name.clone(),
        "--orders-topic".into(),
        cfg.orders_topic.clone(),
        "--shipments-topic".into(),
        cfg.shipments_topic.clone(),
        "--group".into(),
        cfg.group.clone(),
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        stage.display().to_string(),
    ];
    for e in c.nodes.api_endpoints() {
        args.extend(["--coordinator".into(), e]);
    }
    args
}

/// Most INFO lines a service may print in a whole run: start-up, readiness, recovery
/// summaries. A line per order, transaction or branch would be hundreds.
const MAX_INFO_LINES: usize = 40;

/// Checks that a service run at the default level (INFO) printed no line per branch or
/// per transaction (docs/design.md, "Logs"): few INFO lines, none naming a gtrid.
fn assert_quiet(service: &str, log: &str) {
    // (Written to a file, the lines have no colour codes.)
    assert!(
        !log.contains('\x1b'),
        "{service} wrote terminal colours to a file"
    );
    let info: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    let naming_a_gtrid: Vec<&&str> = info
        .iter()
        .filter(|l| {
            l.split(|c: char| !c.is_ascii_hexdigit())
                .any(|w| w.len() == 32)
        })
        .collect();
    assert!(
        naming_a_gtrid.is_empty(),
        "{service} logged transactions at INFO: {naming_a_gtrid:#?}"
    );
    assert!(
        info.len() <= MAX_INFO_LINES,
        "{service} printed {} INFO lines (at most {MAX_INFO_LINES}): {info:#?}",
        info.len()
    );
}

/// Service B as a process that can be killed and started again as the same
/// participant (same port, stage folder and `transactional.id`).
struct ServiceB {
    /// Its flags.
    args: Vec<String>,
    /// Log folder.
    dir: PathBuf,
    /// Incarnations so far (each logs to its own file).
    starts: usize,
}

impl ServiceB {
    /// Starts an incarnation with `failpoints` and waits until it has resolved what
    /// the previous one left in doubt and is consuming.
    async fn start(&mut self, failpoints: &str) -> anyhow::Result<Service> {
        self.starts += 1;
        let log = self.dir.join(format!("service-b-{}.log", self.starts));
        let mut s = Service::spawn(&self.args, failpoints, log)?;
        s.wait_log("service B ready on", Duration::from_secs(120))
            .await?;
        Ok(s)
    }
}

/// Waits until B has shipped at least `n` orders of run `run_id` (or exits).
async fn wait_shipped(cfg: &PipelineConfig, run_id: &str, n: i64) -> anyhow::Result<i64> {
    let start = Instant::now();
    loop {
        let shipped = order_pipeline::shipped_count(cfg, run_id).await?;
        if shipped >= n {
            return Ok(shipped);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "only {shipped} of {n} orders shipped after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Service A places orders while service B is SIGKILLed three times mid-stream: by a
/// fail point right after one of its branches voted YES (the transaction then aborts
/// and B must process the batch again), by a fail point after its Kafka branch
/// produced the shipped events and offsets inside the open Kafka transaction (the
/// decision is COMMIT: the restarted B must publish them before it reads its
/// offsets), and by a plain SIGKILL at a random moment. Every order then appears
/// exactly once as an `orders` row, an `order-placed` event, a `shipments` row and an
/// `order-shipped` event; B's committed offsets sit right after the last event it
/// shipped; nothing stays prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_b_killed_mid_stream_ships_every_order_exactly_once() -> anyhow::Result<()> {
    let pg = PgEnv::from_env()?;
    let bootstrap = kafka::bootstrap()?;
    let c = TestCluster::start(&["--prepare-timeout-ms", "2000"]).await?;
    let name = format!("op_{}", std::process::id());
    let cfg = PipelineConfig {
        pg_url: pg.url.clone(),
        bootstrap,
        orders_topic: format!("{name}.orders"),
        shipments_topic: format!("{name}.shipments"),
        group: format!("{name}.shipping"),
        name,
        ledger_prefix: None,
    };
    order_pipeline::setup(&cfg).await?;
    let run_id = format!("t{:08x}", rand::random::<u32>());
    let dir = c.dir.path().to_path_buf();

    let mut b = ServiceB {
        args: [
            vec!["service-b".into(), "--batch".into(), "10".into()],
            service_args(
                &cfg,
                &c,
                &format!("127.0.0.1:{}", free_port()?),
                &dir.join("b-stage"),
            ),
        ]
        .concat(),
        dir: dir.clone(),
        starts: 0,
    };
    let mut service_b = b.start("participant.after_prepare=kill@0.2").await?;
    let mut service_a = Service::spawn(
        &[
            vec![
                "service-a".into(),
                "--run-id".into(),
                run_id.clone(),
                "--orders".into(),
                ORDERS.to_string(),
                "--clients".into(),
                "4".into(),
            ],
            service_args(&cfg, &c, "127.0.0.1:0", &dir.join("a-stage")),
        ]
        .concat(),
        "",
        dir.join("service-a.log"),
    )?;

    // 1. Killed after a branch voted YES, before the vote reached the coordinator.
    assert!(
        !service_b.wait_exit(Duration::from_secs(90)).await?,
        "service B exited cleanly"
    );
    assert!(
        service_b
            .log_text()
            .contains("ratify failpoint participant.after_prepare"),
        "service B died, but not at participant.after_prepare: {}",
        service_b.log_text()
    );

    // 2. Killed with its shipped events and offsets inside an open Kafka transaction
    //    of a committed global transaction.
    service_b = b.start("kafka.after_produce=kill").await?;
    assert!(!service_b.wait_exit(Duration::from_secs(90)).await?);
    assert!(
        service_b
            .log_text()
            .contains("ratify failpoint kafka.after_produce"),
        "service B died, but not at kafka.after_produce: {}",
        service_b.log_text()
    );

    // 3. The restart must publish that branch before reading offsets; then a plain
    //    SIGKILL at a random moment while it ships.
    service_b = b.start("").await?;
    assert!(
        service_b
            .log_text()
            .contains("resolving branches left in doubt before reading offsets"),
        "the restarted service B did not find the committed branch in doubt: {}",
        service_b.log_text()
    );
    let before = order_pipeline::shipped_count(&cfg, &run_id).await?;
    wait_shipped(&cfg, &run_id, before + 10).await?;
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 300)).await;
    service_b.kill();

    // 4. The last incarnation catches up.
    service_b = b.start("").await?;
    assert!(
        service_a.wait_exit(Duration::from_secs(120)).await?,
        "service A failed: {}",
        service_a.log_text()
    );
    wait_shipped(&cfg, &run_id, i64::try_from(ORDERS)?).await?;
    c.wait_all_completed(Duration::from_secs(60)).await?;
    service_b.kill();
    if std::env::var_os("RUST_LOG").is_none() {
        assert_quiet("service A", &service_a.log_text());
        assert_quiet("service B", &service_b.log_text());
    }

    let want: HashSet<String> = (0..ORDERS).map(|s| order_id(&run_id, s)).collect();
    let keys = |records: Vec<kafka::SeenRecord>, kind: &str| -> Vec<String> {
        records
            .into_iter()
            .filter(|r| r.headers.get("type").cloned().flatten().as_deref() == Some(kind))
            .filter_map(|r| r.key)
            .collect()
    };
    let stages = [
        Stage::new(
            "orders rows",
            &order_pipeline::order_rows(&cfg, &run_id).await?,
            &want,
        ),
        Stage::new(
            "order-placed events",
            &keys(
                kafka::read_committed(&cfg.orders_topic).await?,
                "order-placed",
            ),
            &want,
        ),
        Stage::new(
            "shipments rows",
            &order_pipeline::shipment_rows(&cfg, &run_id).await?,
            &want,
        ),
        Stage::new(
            "order-shipped events",
            &keys(
                kafka::read_committed(&cfg.shipments_topic).await?,
                "order-shipped",
            ),
            &want,
        ),
    ];
    for s in &stages {
        assert!(s.ok(), "not exactly once: {s:?}");
    }
    assert_eq!(
        order_pipeline::prepared_left(&cfg).await?,
        0,
        "prepared transactions left in pg_prepared_xacts"
    );
    // The offsets went in with the shipments: the group's committed position in each
    // partition is right after the last event shipped from it.
    let committed = kafka::group_offsets(&cfg.group).await?;
    for (partition, next) in order_pipeline::shipped_positions(&cfg).await? {
        assert_eq!(
            committed.get(&format!("{}/{partition}", cfg.orders_topic)),
            Some(&next),
            "group offsets {committed:?} do not match the shipments of partition {partition}"
        );
    }
    Ok(())
}
