//! The trade-off lab (docs/design.md §10): one workload — service A places an order (a
//! Postgres row and an event), service B consumes it, writes its own row and emits a
//! second event, consumer C receives it (A → Kafka → B → Kafka → C) — implemented
//! five ways on the same Postgres and Kafka, each run for the same time with the
//! same load while B is SIGKILLed and restarted mid-run, and measured side by side.
//!
//! # Layout
//! - [`Impl`]: the implementations; one module each: [`twopc`] (Ratify),
//!   [`kafka_eos`] (Kafka transactions), [`outbox`] (transactional outbox, relayed
//!   by polling or by change data capture), [`idempotent`] (processed-id table) and
//!   [`baseline`] (no atomicity).
//! - [`workload`]: names, Kafka helpers, A's order clients, consumer C, the tracker.
//! - [`run_lab`] runs the chosen implementations and writes the report
//!   ([`report`]: Markdown, SVG charts, JSON).
//! - [`service_b`]: the hidden `service-b` subcommand: B of one implementation in its
//!   own process (the lab re-executes its own binary so it can SIGKILL B).
//!
//! # What is measured, per implementation
//! - A's commit latency and throughput (closed loop: `clients` tasks placing orders
//!   one after the other as fast as the implementation allows);
//! - end-to-end latency: A creating the order → C receiving the final event;
//! - duplicates (order ids C received more than once) and losses (orders A committed
//!   that C never received after the stream went quiet);
//! - the kill: recovery time (kill → C receiving at half its pre-kill rate again),
//!   the longest gap in C's stream, the oldest Postgres prepared transaction seen.

pub mod baseline;
pub mod idempotent;
pub mod kafka_eos;
pub mod outbox;
pub mod report;
pub mod twopc;
pub mod workload;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::order_pipeline::{self, OrderPlaced, PipelineConfig};
use report::{ImplResult, KillResult, LabReport};
use workload::Tracker;

/// The line service B prints on stdout once it consumes.
pub const READY: &str = "lab service B ready";

/// One way to implement the pipeline.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Impl {
    /// 2PC via Ratify: a Postgres branch and a Kafka branch at each stage.
    #[value(name = "2pc")]
    #[serde(rename = "2pc")]
    TwoPc,
    /// Kafka transactions: consume-process-produce with `send_offsets_to_transaction`.
    KafkaEos,
    /// Transactional outbox, relayed by polling the outbox table.
    OutboxPoll,
    /// Transactional outbox, relayed by change data capture (logical decoding).
    OutboxCdc,
    /// Idempotent consumer: at-least-once delivery, processed-id table.
    Idempotent,
    /// No atomicity: write the row, then send the event.
    Baseline,
}

impl Impl {
    /// Every implementation, in report order.
    pub const ALL: [Impl; 6] = [
        Impl::TwoPc,
        Impl::KafkaEos,
        Impl::OutboxPoll,
        Impl::OutboxCdc,
        Impl::Idempotent,
        Impl::Baseline,
    ];

    /// The name on the command line and in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            Impl::TwoPc => "2pc",
            Impl::KafkaEos => "kafka-eos",
            Impl::OutboxPoll => "outbox-poll",
            Impl::OutboxCdc => "outbox-cdc",
            Impl::Idempotent => "idempotent",
            Impl::Baseline => "baseline",
        }
    }

    /// Part of its database, topic and slot names (`[a-z0-9_]`).
    pub fn slug(self) -> &'static str {
        match self {
            Impl::TwoPc => "twopc",
            Impl::KafkaEos => "eos",
            Impl::OutboxPoll => "outbox_poll",
            Impl::OutboxCdc => "outbox_cdc",
            Impl::Idempotent => "idem",
            Impl::Baseline => "baseline",
        }
    }

    /// Its name in the report.
    pub fn title(self) -> &'static str {
        match self {
            Impl::TwoPc => "2PC (Ratify)",
            Impl::KafkaEos => "Kafka exactly-once",
            Impl::OutboxPoll => "Outbox, polling relay",
            Impl::OutboxCdc => "Outbox, CDC relay",
            Impl::Idempotent => "Idempotent consumer",
            Impl::Baseline => "Baseline (no atomicity)",
        }
    }

    /// Does it promise that every committed order reaches C, and is applied once?
    pub fn atomic(self) -> bool {
        self != Impl::Baseline
    }

    /// Is delivery at least once, with duplicates removed by each consumer's
    /// processed-id check (so C must dedupe too)? Otherwise every delivery counts.
    pub fn consumer_dedups(self) -> bool {
        matches!(self, Impl::OutboxPoll | Impl::OutboxCdc | Impl::Idempotent)
    }
}

/// Flags of the hidden `service-b` subcommand: everything B needs to be the same
/// service across restarts.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceBArgs {
    /// The implementation.
    #[arg(long = "impl", value_enum)]
    pub implementation: Impl,
    /// Postgres URL of any database of the server.
    #[arg(long)]
    pub pg_url: String,
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub bootstrap: String,
    /// The lab run (names topics and `transactional.id`s).
    #[arg(long)]
    pub run_id: String,
    /// Coordinator API addresses (2PC only).
    #[arg(long = "coordinator")]
    pub coordinators: Vec<String>,
    /// Participant address (2PC only; kept across restarts).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Kafka stage folder (2PC only; kept across restarts).
    #[arg(long)]
    pub data_dir: PathBuf,
}

impl ServiceBArgs {
    /// The flags that reproduce `self`.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--impl".to_owned(),
            self.implementation.name().to_owned(),
            "--pg-url".to_owned(),
            self.pg_url.clone(),
            "--bootstrap".to_owned(),
            self.bootstrap.clone(),
            "--run-id".to_owned(),
            self.run_id.clone(),
            "--listen".to_owned(),
            self.listen.clone(),
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
        ];
        for c in &self.coordinators {
            v.extend(["--coordinator".to_owned(), c.clone()]);
        }
        v
    }
}

/// Service B of `a.implementation` until SIGTERM (or SIGKILL, which is the point).
/// Prints [`READY`] on stdout once it consumes.
///
/// # Errors
/// The implementation's failures.
pub async fn service_b(a: ServiceBArgs) -> anyhow::Result<()> {
    let cfg =
        workload::pipeline_config(&a.pg_url, &a.bootstrap, &a.run_id, a.implementation.slug());
    let ready = || {
        println!("{READY}");
        let _ = std::io::stdout().flush();
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        term.recv().await;
    };
    match a.implementation {
        Impl::TwoPc => {
            twopc::run_b(
                &cfg,
                a.coordinators.clone(),
                &a.listen,
                &a.data_dir,
                ready,
                shutdown,
            )
            .await
        }
        Impl::KafkaEos => kafka_eos::run_b(&cfg, &a.run_id, ready, shutdown).await,
        Impl::OutboxPoll => outbox::run_b(&cfg, outbox::Relay::Poll, ready, shutdown).await,
        Impl::OutboxCdc => {
            let slot = outbox::slot_name(&cfg, "b");
            outbox::run_b(&cfg, outbox::Relay::Cdc(slot), ready, shutdown).await
        }
        Impl::Idempotent => idempotent::run_b(&cfg, ready, shutdown).await,
        Impl::Baseline => baseline::run_b(&cfg, ready, shutdown).await,
    }
}

/// How to run the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Postgres URL of any database of the server.
    pub pg_url: String,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Implementations to run, in this order.
    pub impls: Vec<Impl>,
    /// How long A places orders, per implementation.
    pub duration: Duration,
    /// Concurrent order clients in A.
    pub clients: usize,
    /// When B is SIGKILLed, from the start of the run.
    pub kill_at: Duration,
    /// How long B stays dead before it is started again.
    pub pause: Duration,
    /// After A stops: how long C's stream must stay quiet before the orders it has
    /// not seen count as lost.
    pub drain_quiet: Duration,
    /// Report folder.
    pub out: PathBuf,
    /// Smoke mode (recorded in the report).
    pub smoke: bool,
    /// A note for the report (e.g. what else was running on the machine).
    pub note: Option<String>,
}

/// Service A of one implementation.
enum OrderService {
    /// 2PC via Ratify.
    TwoPc(twopc::ServiceA),
    /// Kafka transactions.
    KafkaEos(kafka_eos::ServiceA),
    /// Row + outbox row.
    Outbox(outbox::ServiceA),
    /// Row + acknowledged event in one open transaction.
    Idempotent(idempotent::ServiceA),
    /// Row, then a fire-and-forget event.
    Baseline(baseline::ServiceA),
}

impl OrderService {
    async fn place(&self, client: usize, order: OrderPlaced) -> anyhow::Result<()> {
        match self {
            Self::TwoPc(a) => a.place(order).await,
            Self::KafkaEos(a) => a.place(client, order).await,
            Self::Outbox(a) => a.place(client, order).await,
            Self::Idempotent(a) => a.place(client, order).await,
            Self::Baseline(a) => a.place(client, order).await,
        }
    }
}

/// Service B as a child process of the lab binary, killable and restartable as the
/// same service.
struct ServiceBProcess {
    /// The lab binary.
    exe: PathBuf,
    /// `service-b` flags.
    args: Vec<String>,
    /// Folder of its logs.
    dir: PathBuf,
    /// Incarnations so far (each logs to its own file).
    starts: usize,
    /// The running incarnation.
    child: Option<Child>,
}

impl ServiceBProcess {
    fn log(&self) -> PathBuf {
        self.dir.join(format!("service-b-{}.log", self.starts))
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let out = std::fs::File::create(self.log())?;
        let child = Command::new(&self.exe)
            .arg("service-b")
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("spawning {} service-b", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn is_ready(&self) -> bool {
        self.log_text().contains(READY)
    }

    /// Fails when the running incarnation has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                let text = self.log_text();
                let tail: String = text.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                anyhow::bail!("service B exited ({status}); last log lines, newest first:\n{tail}");
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.is_ready() {
            self.check_alive()?;
            anyhow::ensure!(
                start.elapsed() < timeout,
                "service B not ready after {timeout:?}; log {}",
                self.log().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `timeout`.
    async fn terminate(&mut self, timeout: Duration) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
                // own unreaped child, so it cannot name another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let start = Instant::now();
            while start.elapsed() < timeout {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill();
    }
}

impl Drop for ServiceBProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs every implementation of `opts` one after the other, writes the report folder
/// and returns the report. An implementation that fails is reported with its error
/// and the others still run.
///
/// # Errors
/// When the report cannot be written.
pub async fn run_lab(opts: &LabOptions) -> anyhow::Result<LabReport> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let work = tempfile::Builder::new().prefix("ratify-lab-").tempdir()?;
    // Service B's logs and the coordinator nodes' data live there.
    let keep = std::env::var_os("RATIFY_KEEP_TEST_DIRS").is_some_and(|v| v == "1");
    let exe = std::env::current_exe()?;
    let load_before = report::load_average();
    let mut results = Vec::new();
    eprintln!(
        "trade-off lab run {run_id}: {} implementations, {:.0} s each, {} clients, B killed at {:.1} s for {:.1} s",
        opts.impls.len(),
        opts.duration.as_secs_f64(),
        opts.clients,
        opts.kill_at.as_secs_f64(),
        opts.pause.as_secs_f64()
    );
    for (i, &imp) in opts.impls.iter().enumerate() {
        eprintln!(
            "== [{}/{}] {} ({})",
            i + 1,
            opts.impls.len(),
            imp.title(),
            imp.name()
        );
        let r = match run_impl(opts, imp, &run_id, work.path(), &exe).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("   FAILED: {e:#}");
                ImplResult::not_measured(imp, format!("{e:#}"))
            }
        };
        eprintln!("   {}", r.summary());
        results.push(r);
    }
    if keep {
        eprintln!("logs and data kept in {}", work.keep().display());
    }
    let report = LabReport::new(opts, &run_id, load_before, results);
    report::write(&opts.out, &report)?;
    eprintln!("report written to {}", opts.out.display());
    Ok(report)
}

/// Rolls back prepared transactions an earlier lab run left in the 2PC databases:
/// their coordinator cluster (a temp folder of that run) is gone, and they would
/// hold locks and block logical slot creation.
async fn clear_stale_prepared(cfg: &PipelineConfig) -> anyhow::Result<()> {
    for name in [cfg.orders_db(), cfg.shipping_db()] {
        let db =
            crate::pg_bank::connect(&crate::pg_bank::with_database(&cfg.pg_url, &name)).await?;
        let stale = db
            .query(
                "SELECT gid FROM pg_prepared_xacts WHERE database = $1",
                &[&name],
            )
            .await?;
        let gids = stale.iter().map(|r| r.get::<_, String>(0));
        for gid in gids {
            tracing::warn!(
                gid,
                "rolling back a prepared transaction of an earlier lab run"
            );
            // Gids come from the server's own list, but quote them anyway.
            db.batch_execute(&format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''")))
                .await?;
        }
    }
    Ok(())
}

/// Samples Postgres prepared transactions of `dbs` every 50 ms until `stop`:
/// returns the oldest age seen, seconds.
async fn sample_prepared(
    pg_url: String,
    dbs: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<f64> {
    let db = crate::pg_bank::connect(&pg_url).await?;
    let mut oldest: f64 = 0.0;
    while !*stop.borrow() {
        let age: f64 = db
            .query_one(
                "SELECT coalesce(extract(epoch from max(now() - prepared)), 0)::float8 \
                 FROM pg_prepared_xacts WHERE database = ANY($1)",
                &[&dbs],
            )
            .await?
            .get(0);
        oldest = oldest.max(age);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
    Ok(oldest)
}

/// Prepared transactions left in `dbs`.
async fn prepared_count(pg_url: &str, dbs: &[String]) -> anyhow::Result<i64> {
    Ok(crate::pg_bank::connect(pg_url)
        .await?
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = ANY($1)",
            &[&dbs],
        )
        .await?
        .get(0))
}

/// When things happened around the kill, seconds since the start of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct KillTimes {
    /// B SIGKILLed.
    pub killed: Option<f64>,
    /// B started again.
    pub restarted: Option<f64>,
    /// The new B consuming.
    pub ready: Option<f64>,
    /// A stopped placing orders.
    pub a_end: f64,
}

/// One implementation: setup, A, B (killed and restarted), C, drain, measurements.
async fn run_impl(
    opts: &LabOptions,
    imp: Impl,
    run_id: &str,
    work: &Path,
    exe: &Path,
) -> anyhow::Result<ImplResult> {
    let cfg = workload::pipeline_config(&opts.pg_url, &opts.bootstrap, run_id, imp.slug());
    order_pipeline::setup(&cfg).await?;
    match imp {
        Impl::TwoPc => clear_stale_prepared(&cfg).await?,
        Impl::OutboxPoll => outbox::setup(&cfg, false).await?,
        Impl::OutboxCdc => outbox::setup(&cfg, true).await?,
        Impl::Idempotent => workload::create_processed_table(&cfg).await?,
        Impl::KafkaEos | Impl::Baseline => {}
    }
    let dir = work.join(imp.slug());
    std::fs::create_dir_all(&dir)?;
    let cluster = if imp == Impl::TwoPc {
        eprintln!("   starting a local 3-node coordinator cluster");
        Some(crate::local_cluster(&dir.join("cluster")).await?)
    } else {
        None
    };
    let coordinators = cluster
        .as_ref()
        .map(|c| c.api_endpoints())
        .unwrap_or_default();
    let a = match imp {
        Impl::TwoPc => OrderService::TwoPc(
            twopc::ServiceA::start(&cfg, coordinators.clone(), &dir.join("a-stage")).await?,
        ),
        Impl::KafkaEos => {
            OrderService::KafkaEos(kafka_eos::ServiceA::start(&cfg, run_id, opts.clients).await?)
        }
        Impl::OutboxPoll | Impl::OutboxCdc => {
            OrderService::Outbox(outbox::ServiceA::start(&cfg, opts.clients).await?)
        }
        Impl::Idempotent => {
            OrderService::Idempotent(idempotent::ServiceA::start(&cfg, opts.clients).await?)
        }
        Impl::Baseline => {
            OrderService::Baseline(baseline::ServiceA::start(&cfg, opts.clients).await?)
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let a_relay = match imp {
        Impl::OutboxPoll => Some(outbox::Relay::Poll),
        Impl::OutboxCdc => Some(outbox::Relay::Cdc(outbox::slot_name(&cfg, "a"))),
        _ => None,
    }
    .map(|relay| {
        let (url, bootstrap, topic, stopped) = (
            cfg.orders_url(),
            cfg.bootstrap.clone(),
            cfg.orders_topic.clone(),
            stopped.clone(),
        );
        tokio::spawn(
            async move { outbox::run_relay(&url, &bootstrap, &topic, relay, stopped).await },
        )
    });

    let b_args = ServiceBArgs {
        implementation: imp,
        pg_url: opts.pg_url.clone(),
        bootstrap: opts.bootstrap.clone(),
        run_id: run_id.to_owned(),
        coordinators,
        listen: format!("127.0.0.1:{}", ratify_devkit::local::free_port()?),
        data_dir: dir.join("b-stage"),
    };
    let mut b = ServiceBProcess {
        exe: exe.to_path_buf(),
        args: b_args.to_args(),
        dir: dir.clone(),
        starts: 0,
        child: None,
    };
    b.start()?;
    b.wait_ready(Duration::from_secs(120)).await?;

    let tracker = Arc::new(Tracker::new());
    let c_task = tokio::spawn(workload::consume_c(
        cfg.bootstrap.clone(),
        cfg.shipments_topic.clone(),
        Arc::clone(&tracker),
        stopped.clone(),
    ));
    let dbs = vec![cfg.orders_db(), cfg.shipping_db()];
    let sampler = tokio::spawn(sample_prepared(
        opts.pg_url.clone(),
        dbs.clone(),
        stopped.clone(),
    ));
    let a = Arc::new(a);
    let deadline = tracker.start + opts.duration;
    let clients = {
        let a = Arc::clone(&a);
        tokio::spawn(workload::run_clients(
            opts.clients,
            deadline,
            format!("{run_id}.{}", imp.slug()),
            Arc::clone(&tracker),
            move |client, order| {
                let a = Arc::clone(&a);
                async move { a.place(client, order).await }
            },
        ))
    };

    let mut times = KillTimes::default();
    let mut last_progress = Instant::now();
    let progress = |phase: &str, times: &KillTimes| {
        let t = tracker.start.elapsed().as_secs_f64();
        let committed = tracker.committed_count();
        let kill = match (times.killed, times.ready) {
            (None, _) => String::new(),
            (Some(k), None) => format!(" | B killed at {k:.1} s"),
            (Some(k), Some(r)) => format!(" | B killed at {k:.1} s, back at {r:.1} s"),
        };
        eprintln!(
            "   [{}] {phase} {t:5.1}/{:.0} s | A committed {committed} ({:.0}/s) | C saw {} orders{kill}",
            imp.name(),
            opts.duration.as_secs_f64(),
            committed as f64 / t.min(opts.duration.as_secs_f64()).max(0.001),
            tracker.seen_count(),
        );
    };
    let run_result: anyhow::Result<()> = async {
        while !clients.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t = tracker.start.elapsed().as_secs_f64();
            match times {
                KillTimes { killed: None, .. } if t >= opts.kill_at.as_secs_f64() => {
                    b.kill();
                    times.killed = Some(t);
                }
                KillTimes {
                    killed: Some(k),
                    restarted: None,
                    ..
                } if t >= k + opts.pause.as_secs_f64() => {
                    b.start()?;
                    times.restarted = Some(t);
                }
                KillTimes {
                    restarted: Some(_),
                    ready: None,
                    ..
                } if b.is_ready() => times.ready = Some(t),
                _ => {}
            }
            b.check_alive()?;
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress("run", &times);
                last_progress = Instant::now();
            }
        }
        times.a_end = tracker.start.elapsed().as_secs_f64();
        if times.restarted.is_some() && times.ready.is_none() {
            b.wait_ready(Duration::from_secs(120)).await?;
            times.ready = Some(tracker.start.elapsed().as_secs_f64());
        }
        // Drain: until C has every committed order and the stream has been quiet for a
        // moment (late duplicates), or it has been quiet for `drain_quiet`.
        let (mut last_count, mut last_change) = (tracker.delivered_count(), Instant::now());
        let drain_start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.check_alive()?;
            let n = tracker.delivered_count();
            if n != last_count {
                (last_count, last_change) = (n, Instant::now());
            }
            let quiet = last_change.elapsed();
            if (tracker.all_seen() && quiet >= Duration::from_millis(500).min(opts.drain_quiet))
                || quiet >= opts.drain_quiet
                || drain_start.elapsed() >= Duration::from_secs(120)
            {
                break;
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress("drain", &times);
                last_progress = Instant::now();
            }
        }
        Ok(())
    }
    .await;
    let _ = stop.send(true);
    clients.await??;
    run_result?;
    let snapshot = tracker.snapshot();
    let max_prepared = sampler.await??;
    c_task.await??;
    b.terminate(Duration::from_secs(10)).await;
    if let Some(r) = a_relay {
        r.await??;
    }
    if let OrderService::TwoPc(a) = &*a {
        a.settle().await?;
    }
    let prepared_after = prepared_count(&opts.pg_url, &dbs).await?;
    if imp == Impl::OutboxCdc {
        outbox::teardown(&cfg).await?;
    }
    drop(cluster);
    Ok(report::measure(
        imp,
        &snapshot,
        times,
        opts,
        KillResult {
            max_prepared_age_s: max_prepared,
            prepared_after_drain: prepared_after,
            ..KillResult::default()
        },
    ))
}
