//! The order pipeline: service A (orders) → Kafka → service B (shipping) → Kafka, each
//! step one Ratify transaction over a Postgres branch and a Kafka branch.
//!
//! - **Service A** places an order: one global transaction inserts the `orders` row in
//!   A's database and publishes an `order-placed` event (key = order id) to the orders
//!   topic. Both branches are hosted by A's own [`Participant`].
//! - **Service B** consumes the orders topic `read_committed` and, per batch of
//!   events, runs one global transaction that inserts the `shipments` rows in B's
//!   database, publishes `order-shipped` events to the shipments topic and commits B's
//!   consumer offsets **through the Kafka branch** (`send_offsets_to_transaction`).
//!   The offsets therefore move if and only if the shipments rows commit, and a
//!   restarted B resumes exactly after the last committed batch.
//!
//! # Why B is exactly once
//! - The batch stays in memory until its transaction commits; an abort re-runs the
//!   same events in a new transaction (the consumer does not move on).
//! - A restarted B first serves its participant and lets the recovery loop resolve
//!   every branch it left in doubt (prepared Postgres transactions, staged Kafka
//!   branches); only then does it read the group's committed offsets. A decided
//!   commit is thus published (offsets included) before B looks at them, and an
//!   undecided one can only abort (its branches vote NO in the new process).
//! - B starts batch n+1 only once batch n's Kafka branch is published or rolled
//!   back. The adapter publishes concurrent branches in the order phase 2 reaches it,
//!   so two unpublished branches moving the same partition could commit its offset
//!   backwards; one at a time keeps offsets monotonic.
//! - `shipments.order_id` is the primary key: a duplicate would fail B's insert, which
//!   B reports as a fatal error rather than retrying.
//!
//! # Layout
//! - [`PipelineConfig`]: database, topic, group and `transactional.id` names;
//!   [`setup`] creates them.
//! - [`Participant`]: one service's participant (Postgres + Kafka resources, gRPC
//!   server, recovery loop).
//! - [`ServiceA`], [`ServiceB`]: the two services.
//! - [`check`]: counts rows and events of a run and compares them ([`Report`]).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_participant_sdk::adapters::kafka::{
    KafkaConfig, KafkaOffset, KafkaRecord, KafkaResource,
};
use ratify_participant_sdk::adapters::postgres::{PgConfig, PgError, PgResource};
use ratify_participant_sdk::client::CoordinatorClient;
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::{App, AppError, Tx};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::Instrument;

use crate::pg_bank::{connect, with_database};

/// Resource name of a service's Postgres database at its participant.
pub const DB_RESOURCE: &str = "db";
/// Resource name of a service's Kafka producer at its participant.
pub const KAFKA_RESOURCE: &str = "kafka";
/// Partitions of the topics [`setup`] creates.
pub const PARTITIONS: i32 = 4;
/// SQLSTATE of a unique violation: a duplicate order or shipment.
const UNIQUE_VIOLATION: &str = "23505";
/// Timeout of each global transaction.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a service keeps asking for the outcome of a commit before giving up.
const OUTCOME_DEADLINE: Duration = Duration::from_secs(120);

/// Where the pipeline keeps its state: two databases on one Postgres server, two
/// topics, B's consumer group and the services' `transactional.id`s.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// URL of any database of the Postgres server (the services' databases are
    /// created next to it).
    pub pg_url: String,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Names the databases (`<name>_orders`, `<name>_shipping`, also the gid tags) and
    /// the `transactional.id`s: 1 to 30 characters of `[a-z0-9_]`.
    pub name: String,
    /// Topic of `order-placed` events.
    pub orders_topic: String,
    /// Topic of `order-shipped` events.
    pub shipments_topic: String,
    /// Service B's consumer group (its offsets are committed only through B's Kafka
    /// branch).
    pub group: String,
    /// Ledger topics of the services' Kafka adapters: `<prefix>.service_a` and
    /// `<prefix>.service_b`; `None`: both use the adapter's default (shared) ledger.
    /// A restarted adapter reads its ledger until the last stable offset passes the
    /// high watermark, so on a shared ledger A's constant stream of transactions
    /// slowed B's restart after a SIGKILL from ~1.5 s to 7–21 s (trade-off lab).
    pub ledger_prefix: Option<String>,
}

impl PipelineConfig {
    /// Checks the names.
    ///
    /// # Errors
    /// When `name` is not 1 to 30 characters of `[a-z0-9_]` (it becomes database
    /// names and gid tags).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=30).contains(&self.name.len())
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "pipeline name must be 1 to 30 characters of [a-z0-9_], got {:?}",
            self.name
        );
        Ok(())
    }

    /// Service A's database (also its gid tag).
    pub fn orders_db(&self) -> String {
        format!("{}_orders", self.name)
    }

    /// Service B's database (also its gid tag).
    pub fn shipping_db(&self) -> String {
        format!("{}_shipping", self.name)
    }

    /// URL of service A's database.
    pub fn orders_url(&self) -> String {
        with_database(&self.pg_url, &self.orders_db())
    }

    /// URL of service B's database.
    pub fn shipping_url(&self) -> String {
        with_database(&self.pg_url, &self.shipping_db())
    }

    /// `transactional.id` of service `service`'s Kafka branch.
    fn transactional_id(&self, service: &str) -> String {
        format!("{}.{service}", self.name)
    }
}

/// Creates both databases, their tables and both topics if missing.
///
/// # Errors
/// Connection, SQL or Kafka admin failures.
pub async fn setup(cfg: &PipelineConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    let admin = connect(&cfg.pg_url).await?;
    for (db, ddl) in [
        (
            cfg.orders_db(),
            "CREATE TABLE IF NOT EXISTS orders (\
                 order_id text PRIMARY KEY, \
                 amount bigint NOT NULL, \
                 status text NOT NULL, \
                 placed_at timestamptz NOT NULL DEFAULT now())",
        ),
        (
            cfg.shipping_db(),
            "CREATE TABLE IF NOT EXISTS shipments (\
                 order_id text PRIMARY KEY, \
                 amount bigint NOT NULL, \
                 source_partition int NOT NULL, \
                 source_offset bigint NOT NULL, \
                 shipped_at timestamptz NOT NULL DEFAULT now())",
        ),
    ] {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await?
            .is_some();
        if !exists {
            // The name was validated ([a-z0-9_]).
            admin
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await?;
        }
        connect(&with_database(&cfg.pg_url, &db))
            .await?
            .batch_execute(ddl)
            .await?;
    }
    create_topics(&cfg.bootstrap, &[&cfg.orders_topic, &cfg.shipments_topic]).await
}

/// Creates `topics` with [`PARTITIONS`] partitions; existing ones are fine.
async fn create_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(-1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// One service's participant: its Postgres database and its Kafka producer as XA
/// resources of one [`App`] (participant server, recovery loop, transaction scopes).
/// Dropping it stops them.
pub struct Participant {
    /// `host:port` the coordinator calls.
    pub endpoint: String,
    /// The service's database.
    pub pg: Arc<PgResource>,
    /// The service's Kafka producer.
    pub kafka: Arc<KafkaResource>,
    /// Hosts both resources and runs the service's transactions.
    app: App,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A scope's failure, typed so that the caller can tell a duplicate key (an order
/// placed or shipped twice) from other failures.
#[derive(Debug, thiserror::Error)]
enum WorkError {
    /// A unique violation.
    #[error("{0:#}")]
    Duplicate(anyhow::Error),
    /// Anything else.
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl From<anyhow::Error> for WorkError {
    fn from(e: anyhow::Error) -> Self {
        if is_duplicate(&e) {
            Self::Duplicate(e)
        } else {
            Self::Other(e)
        }
    }
}

/// How a transaction scope of a service ended.
#[derive(Debug)]
enum Ended {
    /// Committed.
    Committed,
    /// Aborted, with the coordinator's reason.
    Aborted(String),
    /// The work hit a unique violation (rolled back).
    Duplicate(anyhow::Error),
    /// The commit was sent and its outcome is unknown: the transaction may yet
    /// commit, so its work must not run again in a new one.
    Unknown(anyhow::Error),
    /// The work or the coordinator failed (rolled back, or never begun).
    Failed(anyhow::Error),
}

impl Participant {
    /// Opens both resources (the Kafka stage in `stage_dir`, stable across restarts
    /// of the service, like `transactional_id`), serves them on `listen` and starts
    /// the recovery loop every `recovery_interval`.
    ///
    /// # Errors
    /// The adapters' startup errors, or when `listen` cannot be bound.
    pub async fn open(
        pg_url: &str,
        pg_tag: &str,
        kafka: KafkaConfig,
        stage_dir: &Path,
        listen: &str,
        client: CoordinatorClient,
        recovery_interval: Duration,
    ) -> anyhow::Result<Self> {
        let pg = PgResource::connect(PgConfig {
            pool_size: 16,
            ..PgConfig::new(pg_url, pg_tag)
        })
        .await
        .with_context(|| format!("opening Postgres resource {pg_tag}"))?;
        let kafka = KafkaResource::open(stage_dir, kafka)
            .await
            .context("opening Kafka resource")?;
        let app = App::builder()
            .client(client)
            .listen(listen)
            .recovery_interval(recovery_interval)
            .transaction_timeout(TXN_TIMEOUT)
            .resource(DB_RESOURCE, Arc::clone(&pg) as Arc<dyn Resource>)
            .resource(KAFKA_RESOURCE, Arc::clone(&kafka) as Arc<dyn Resource>)
            .start()
            .await
            .with_context(|| format!("cannot serve the participant on {listen}"))?;
        pg.spawn_stats_logger(Duration::from_secs(10), app.stopped());
        Ok(Self {
            endpoint: app.endpoint().to_owned(),
            pg,
            kafka,
            app,
        })
    }

    /// Runs `work` as one global transaction on both resources. It never gives up on
    /// an unknown outcome: running the work again while the first may still commit
    /// is exactly the duplicate to avoid (the coordinator answers once a majority is
    /// back).
    async fn run<F, Fut>(&self, work: F) -> Ended
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let scope = self
            .app
            .transaction(|tx| async move { work(tx).await.map_err(WorkError::from) })
            .await;
        match scope {
            Ok(()) => Ended::Committed,
            Err(AppError::Aborted { reason, detail, .. }) => {
                Ended::Aborted(format!("{reason:?}: {detail}"))
            }
            Err(AppError::Work(e)) => match e.downcast::<WorkError>() {
                Ok(w) => match *w {
                    WorkError::Duplicate(e) => Ended::Duplicate(e),
                    WorkError::Other(e) => Ended::Failed(e),
                },
                Err(e) => Ended::Failed(anyhow::anyhow!(e)),
            },
            Err(e @ AppError::OutcomeUnknown { .. }) => Ended::Unknown(e.into()),
            Err(e) => Ended::Failed(e.into()),
        }
    }

    /// Branches of this participant that are prepared and not yet finished.
    ///
    /// # Errors
    /// When Postgres cannot be asked.
    pub async fn in_doubt(&self) -> anyhow::Result<usize> {
        Ok(self.pg.recover().await?.len() + self.kafka.prepared_count())
    }

    /// Waits until the coordinator has no live transaction with a branch here: phase
    /// 2 may reach a branch after this participant's own recovery already finished it,
    /// and the coordinator still needs this process to answer before it can record
    /// the transaction COMPLETED. A service that leaves before that strands them.
    ///
    /// # Errors
    /// When the coordinator cannot be asked, or such transactions remain after
    /// `timeout`.
    pub async fn wait_coordinator_done(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.app.client();
        let start = Instant::now();
        loop {
            let mut mine = 0usize;
            let mut token = String::new();
            loop {
                let page = client.list(None, 1000, &token).await?;
                mine += page
                    .transactions
                    .iter()
                    .filter(|t| t.branches.iter().any(|b| b.endpoint == self.endpoint))
                    .count();
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if mine == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{mine} transactions with a branch at {} still live after {timeout:?}",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no branch of this participant is in doubt (phase 2 done for
    /// everything it prepared).
    ///
    /// # Errors
    /// When branches are still in doubt after `timeout`.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let n = self.in_doubt().await?;
            if n == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{n} branches still in doubt after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The Kafka settings of service `service` (`a` or `b`).
pub fn kafka_config(cfg: &PipelineConfig, service: &str) -> KafkaConfig {
    let mut k = KafkaConfig::new(&cfg.bootstrap, cfg.transactional_id(service));
    if let Some(prefix) = &cfg.ledger_prefix {
        k.ledger_topic = format!("{prefix}.{service}");
    }
    k
}

/// Is `e` a unique violation (a duplicate key)?
fn is_duplicate(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<PgError>(), Some(PgError::Db { code, .. }) if code == UNIQUE_VIOLATION)
}

/// An `order-placed` event's value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// Its amount, in cents.
    pub amount: i64,
}

/// The id of order `seq` of run `run_id`: `<run_id>-<seq>` (zero-padded so ids sort).
pub fn order_id(run_id: &str, seq: u64) -> String {
    format!("{run_id}-{seq:07}")
}

/// What [`ServiceA::place_orders`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placed {
    /// Orders placed (committed).
    pub orders: u64,
    /// Transactions that aborted and were retried.
    pub retries: u64,
}

/// Service A: places orders, each one global transaction (row + event).
#[derive(Debug)]
pub struct ServiceA {
    /// Its participant.
    pub participant: Participant,
    /// The orders topic.
    topic: String,
}

impl ServiceA {
    /// Opens A's participant (see [`Participant::open`]).
    ///
    /// # Errors
    /// As [`Participant::open`].
    pub async fn start(
        cfg: &PipelineConfig,
        client: CoordinatorClient,
        stage_dir: &Path,
        listen: &str,
    ) -> anyhow::Result<Self> {
        let participant = Participant::open(
            &cfg.orders_url(),
            &cfg.orders_db(),
            kafka_config(cfg, "service_a"),
            stage_dir,
            listen,
            client,
            Duration::from_millis(500),
        )
        .await?;
        Ok(Self {
            participant,
            topic: cfg.orders_topic.clone(),
        })
    }

    /// Places order `order_id`: inserts its row and publishes its `order-placed`
    /// event in one global transaction; an aborted transaction is retried with a new
    /// one. Returns the number of retries.
    ///
    /// # Errors
    /// Coordinator or database failures; a duplicate order id.
    pub async fn place_order(&self, order_id: &str, amount: i64) -> anyhow::Result<u64> {
        let mut retries = 0;
        loop {
            let ended = self
                .participant
                .run(|tx| async move {
                    let span = tracing::info_span!("place_order", gtrid = tx.gtrid(), order_id);
                    async {
                        let db = self.participant.pg.begin_branch(tx.xid(DB_RESOURCE)?).await?;
                        db.execute(
                            "INSERT INTO orders (order_id, amount, status) VALUES ($1, $2, 'placed')",
                            &[&order_id, &amount],
                        )
                        .await?;
                        let event = serde_json::to_vec(&OrderPlaced {
                            order_id: order_id.to_owned(),
                            amount,
                        })?;
                        self.participant.kafka.branch(tx.xid(KAFKA_RESOURCE)?)?.send(
                            KafkaRecord::new(&self.topic, order_id, event)
                                .header("type", "order-placed")
                                .header("gtrid", tx.gtrid()),
                        )?;
                        Ok(())
                    }
                    .instrument(span)
                    .await
                })
                .await;
            match ended {
                Ended::Committed => return Ok(retries),
                Ended::Aborted(why) => tracing::debug!(order_id, why, "order aborted, retrying"),
                Ended::Duplicate(e) => {
                    return Err(e.context(format!("order {order_id} was already placed")))
                }
                Ended::Failed(e) | Ended::Unknown(e) => return Err(e),
            }
            retries += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Places orders `first..first + count` of run `run_id` from `clients`
    /// concurrent tasks (random amounts), then waits until A has nothing in doubt.
    ///
    /// # Errors
    /// The first failure of any order.
    pub async fn place_orders(
        self: &Arc<Self>,
        run_id: &str,
        first: u64,
        count: u64,
        clients: usize,
    ) -> anyhow::Result<Placed> {
        let next = Arc::new(AtomicU64::new(first));
        let end = first + count;
        let mut tasks = Vec::new();
        for _ in 0..clients.max(1) {
            let (this, next, run_id) = (Arc::clone(self), Arc::clone(&next), run_id.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut placed = Placed::default();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= end {
                        return anyhow::Ok(placed);
                    }
                    let amount = rand::Rng::gen_range(&mut rand::thread_rng(), 100..100_000);
                    placed.retries += this.place_order(&order_id(&run_id, seq), amount).await?;
                    placed.orders += 1;
                }
            }));
        }
        let mut total = Placed::default();
        for t in tasks {
            let p = t.await??;
            total.orders += p.orders;
            total.retries += p.retries;
        }
        self.participant
            .wait_settled(Duration::from_secs(60))
            .await?;
        self.participant
            .wait_coordinator_done(Duration::from_secs(60))
            .await?;
        Ok(total)
    }
}

/// One consumed `order-placed` event.
#[derive(Debug, Clone)]
struct Event {
    /// Source partition.
    partition: i32,
    /// Source offset.
    offset: i64,
    /// The order.
    order: OrderPlaced,
}

/// Settings of [`ServiceB::run`].
#[derive(Debug, Clone)]
pub struct ServiceBOptions {
    /// Most events per transaction.
    pub batch: usize,
    /// How long a batch waits for more events after its first.
    pub linger: Duration,
}

impl Default for ServiceBOptions {
    fn default() -> Self {
        Self {
            batch: 50,
            linger: Duration::from_millis(5),
        }
    }
}

/// Service B: ships each placed order exactly once (see the module docs).
pub struct ServiceB {
    /// Its participant.
    pub participant: Participant,
    /// Topics and group.
    cfg: PipelineConfig,
    /// Events shipped by this process (committed transactions).
    shipped: AtomicU64,
}

impl std::fmt::Debug for ServiceB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceB")
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

impl ServiceB {
    /// Opens B's participant and waits until every branch a previous incarnation left
    /// in doubt is resolved, so the group's committed offsets are final.
    ///
    /// # Errors
    /// As [`Participant::open`], or when branches stay in doubt for 2 minutes.
    pub async fn start(
        cfg: &PipelineConfig,
        client: CoordinatorClient,
        stage_dir: &Path,
        listen: &str,
    ) -> anyhow::Result<Self> {
        let participant = Participant::open(
            &cfg.shipping_url(),
            &cfg.shipping_db(),
            kafka_config(cfg, "service_b"),
            stage_dir,
            listen,
            client,
            Duration::from_millis(200),
        )
        .await?;
        let waiting = participant.in_doubt().await?;
        if waiting > 0 {
            tracing::info!(
                waiting,
                "resolving branches left in doubt before reading offsets"
            );
        }
        participant.wait_settled(Duration::from_secs(120)).await?;
        Ok(Self {
            participant,
            cfg: cfg.clone(),
            shipped: AtomicU64::new(0),
        })
    }

    /// Events shipped by this process so far.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }

    /// A `read_committed` consumer of the orders topic, assigned every partition at
    /// the group's committed offsets (the beginning where there is none). The group
    /// is never joined: offsets are committed only through the Kafka branch.
    fn consumer(&self) -> anyhow::Result<StreamConsumer> {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.cfg.bootstrap)
            .set("group.id", self.cfg.group.clone())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        assigned_consumer(&config, &self.cfg.orders_topic)
    }

    /// Consumes and ships until `shutdown` completes; the batch in progress is
    /// finished first and its Kafka branch published.
    ///
    /// # Errors
    /// Kafka consumer failures, a duplicate shipment (exactly-once violated), or a
    /// transaction whose outcome stays unknown.
    pub async fn run(
        &self,
        options: &ServiceBOptions,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let consumer = self.consumer()?;
        tokio::pin!(shutdown);
        loop {
            let first = tokio::select! {
                () = &mut shutdown => break,
                m = consumer.recv() => event(&m?)?,
            };
            let mut batch = vec![first];
            let linger = tokio::time::sleep(options.linger);
            tokio::pin!(linger);
            while batch.len() < options.batch {
                tokio::select! {
                    () = &mut linger => break,
                    m = consumer.recv() => batch.push(event(&m?)?),
                }
            }
            self.ship_until_committed(&batch).await?;
        }
        self.wait_published().await
    }

    /// Ships `batch`, in new transactions until one commits.
    async fn ship_until_committed(&self, batch: &[Event]) -> anyhow::Result<()> {
        loop {
            // One unpublished Kafka branch at a time keeps offsets monotonic.
            self.wait_published().await?;
            match self.ship(batch).await {
                Ended::Committed => {
                    self.shipped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Ended::Aborted(why) => tracing::debug!(why, "shipment aborted, retrying the batch"),
                Ended::Duplicate(e) => {
                    return Err(e.context(
                        "an order was shipped twice: exactly-once delivery to service B is broken",
                    ))
                }
                // Shipping the batch again could ship it twice; a restarted B waits
                // for its in-doubt branches and reads the offsets they leave.
                Ended::Unknown(e) => {
                    return Err(e.context("a shipment's outcome is unknown: stopping service B"))
                }
                Ended::Failed(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "shipment failed, retrying the batch")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until B's Kafka producer has no branch staged (published or rolled back).
    async fn wait_published(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.participant.kafka.prepared_count() > 0 {
            anyhow::ensure!(
                start.elapsed() < OUTCOME_DEADLINE,
                "a Kafka branch of service B stayed unpublished for {OUTCOME_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// One transaction: shipments rows, `order-shipped` events and the consumer
    /// offsets after the batch.
    async fn ship(&self, batch: &[Event]) -> Ended {
        self.participant
            .run(|tx| async move {
                let span = tracing::info_span!("ship", gtrid = tx.gtrid(), events = batch.len());
                self.ship_in(&tx, batch).instrument(span).await
            })
            .await
    }

    /// The work of [`Self::ship`] in transaction `tx`.
    async fn ship_in(&self, tx: &Tx, batch: &[Event]) -> anyhow::Result<()> {
        let ids: Vec<&str> = batch.iter().map(|e| e.order.order_id.as_str()).collect();
        let amounts: Vec<i64> = batch.iter().map(|e| e.order.amount).collect();
        let parts: Vec<i32> = batch.iter().map(|e| e.partition).collect();
        let offsets: Vec<i64> = batch.iter().map(|e| e.offset).collect();
        let db = self
            .participant
            .pg
            .begin_branch(tx.xid(DB_RESOURCE)?)
            .await?;
        db.execute(
            "INSERT INTO shipments (order_id, amount, source_partition, source_offset) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int8[])",
            &[&ids, &amounts, &parts, &offsets],
        )
        .await?;
        let kafka = self.participant.kafka.branch(tx.xid(KAFKA_RESOURCE)?)?;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for e in batch {
            kafka.send(
                KafkaRecord::new(
                    &self.cfg.shipments_topic,
                    e.order.order_id.as_str(),
                    serde_json::to_vec(&e.order)?,
                )
                .header("type", "order-shipped")
                .header("gtrid", tx.gtrid()),
            )?;
            let at = next.entry(e.partition).or_insert(e.offset + 1);
            *at = (*at).max(e.offset + 1);
        }
        for (partition, offset) in next {
            kafka.commit_offset(KafkaOffset {
                group: self.cfg.group.clone(),
                topic: self.cfg.orders_topic.clone(),
                partition,
                offset,
            })?;
        }
        Ok(())
    }
}

/// A consumer made from `config` (which names the group), assigned every partition
/// of `topic` at the group's committed offsets, the beginning where there is none.
/// The group is never joined (no rebalances: one consumer per group).
///
/// # Errors
/// Kafka failures: creating the consumer, metadata, committed offsets, assignment.
pub fn assigned_consumer(
    config: &rdkafka::ClientConfig,
    topic: &str,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = config
        .clone()
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions(&consumer, topic)? {
        wanted.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(30))?;
    let mut assign = TopicPartitionList::new();
    let mut resumed = BTreeMap::new();
    for e in committed.elements() {
        let at = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        resumed.insert(e.partition(), format!("{at:?}"));
        assign.add_partition_offset(e.topic(), e.partition(), at)?;
    }
    tracing::info!(
        topic,
        ?resumed,
        "resuming from the group's committed offsets"
    );
    consumer.assign(&assign)?;
    Ok(consumer)
}

/// Partitions of `topic`.
///
/// # Errors
/// Metadata failures, or when the topic is unknown.
pub fn partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> anyhow::Result<i32> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not in metadata"))?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    Ok(i32::try_from(t.partitions().len())?)
}

/// Decodes a consumed `order-placed` record.
fn event(m: &impl Message) -> anyhow::Result<Event> {
    let value = m.payload().context("order event without a value")?;
    let order: OrderPlaced = serde_json::from_slice(value)
        .with_context(|| format!("malformed order event at {}/{}", m.partition(), m.offset()))?;
    Ok(Event {
        partition: m.partition(),
        offset: m.offset(),
        order,
    })
}

/// Every record of `topic` a `read_committed` consumer sees, from the beginning to
/// the last stable offsets: (key, `type` header).
///
/// # Errors
/// Kafka failures, or when the end is not reached in 60 s.
pub async fn read_committed(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_committed_blocking(&bootstrap, &topic)).await?
}

/// A consumer context that does not log the end of a partition as an error: reaching
/// it is what [`read_committed`] waits for.
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

fn read_committed_blocking(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let consumer: BaseConsumer<QuietEof> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}.check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let n = partitions(&consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // With read_committed, librdkafka reports the end of a partition at its last
    // stable offset.
    while at_end.len() < usize::try_from(n)? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "did not reach the end of {topic} in 60 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let kind = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h: &Header<'_, &[u8]>| h.key == "type")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                out.push((key, kind));
            }
        }
    }
    Ok(out)
}

/// The order ids of run `run_id` in `table` of the database at `url`.
async fn order_ids(url: &str, table: &str, run_id: &str) -> anyhow::Result<Vec<String>> {
    let c = connect(url).await?;
    // `table` is one of this module's two table names, never input.
    let rows = c
        .query(
            &format!("SELECT order_id FROM {table} WHERE starts_with(order_id, $1) ORDER BY 1"),
            &[&format!("{run_id}-")],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Order ids of run `run_id` in A's `orders` table.
///
/// # Errors
/// Connection or SQL failures.
pub async fn order_rows(cfg: &PipelineConfig, run_id: &str) -> anyhow::Result<Vec<String>> {
    order_ids(&cfg.orders_url(), "orders", run_id).await
}

/// Order ids of run `run_id` in B's `shipments` table.
///
/// # Errors
/// Connection or SQL failures.
pub async fn shipment_rows(cfg: &PipelineConfig, run_id: &str) -> anyhow::Result<Vec<String>> {
    order_ids(&cfg.shipping_url(), "shipments", run_id).await
}

/// Per partition of the orders topic, the offset after the last event B shipped
/// (from B's `shipments` rows): where B's committed consumer offsets must be.
///
/// # Errors
/// Connection or SQL failures.
pub async fn shipped_positions(cfg: &PipelineConfig) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows = connect(&cfg.shipping_url())
        .await?
        .query(
            "SELECT source_partition, max(source_offset) + 1 FROM shipments GROUP BY 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// One stage of the pipeline as [`check`] saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stage {
    /// What was counted.
    pub name: &'static str,
    /// Records or rows of the run.
    pub total: usize,
    /// Distinct order ids among them.
    pub distinct: usize,
    /// Expected order ids that are missing.
    pub missing: usize,
    /// Order ids that are not expected.
    pub unexpected: usize,
}

impl Stage {
    /// Counts `ids` (one per row or record) against the `expected` order ids.
    pub fn new(name: &'static str, ids: &[String], expected: &HashSet<String>) -> Self {
        let set: HashSet<&String> = ids.iter().collect();
        Self {
            name,
            total: ids.len(),
            distinct: set.len(),
            missing: expected.iter().filter(|id| !set.contains(id)).count(),
            unexpected: set.iter().filter(|id| !expected.contains(**id)).count(),
        }
    }

    /// Exactly the expected orders, each once.
    pub fn ok(&self) -> bool {
        self.total == self.distinct && self.missing == 0 && self.unexpected == 0
    }
}

/// What [`check`] found for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Orders of the run.
    pub expected: usize,
    /// `orders` rows, `order-placed` events, `shipments` rows, `order-shipped` events.
    pub stages: Vec<Stage>,
    /// Prepared transactions left in either database.
    pub prepared: i64,
}

impl Report {
    /// Every stage holds every order exactly once and nothing is prepared.
    pub fn ok(&self) -> bool {
        self.prepared == 0 && self.stages.iter().all(Stage::ok)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| stage | records | distinct orders | missing | unexpected |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for s in &self.stages {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} |",
                s.name, s.total, s.distinct, s.missing, s.unexpected
            )?;
        }
        write!(
            f,
            "{} orders expected; {} prepared transactions left; {}",
            self.expected,
            self.prepared,
            if self.ok() {
                "exactly once"
            } else {
                "NOT exactly once"
            }
        )
    }
}

/// Counts run `run_id`'s orders at every stage: `orders` rows, `order-placed` events
/// (read_committed), `shipments` rows, `order-shipped` events, against orders
/// `0..expected`.
///
/// # Errors
/// Connection or Kafka failures.
pub async fn check(cfg: &PipelineConfig, run_id: &str, expected: u64) -> anyhow::Result<Report> {
    let want: HashSet<String> = (0..expected).map(|s| order_id(run_id, s)).collect();
    let orders = order_rows(cfg, run_id).await?;
    let shipments = shipment_rows(cfg, run_id).await?;
    let of_run = |records: Vec<(String, Option<String>)>, kind: &str| -> Vec<String> {
        records
            .into_iter()
            .filter(|(k, t)| k.starts_with(&format!("{run_id}-")) && t.as_deref() == Some(kind))
            .map(|(k, _)| k)
            .collect()
    };
    let placed = of_run(
        read_committed(&cfg.bootstrap, &cfg.orders_topic).await?,
        "order-placed",
    );
    let shipped = of_run(
        read_committed(&cfg.bootstrap, &cfg.shipments_topic).await?,
        "order-shipped",
    );
    Ok(Report {
        expected: want.len(),
        stages: vec![
            Stage::new("orders rows (A's db)", &orders, &want),
            Stage::new("order-placed events (read_committed)", &placed, &want),
            Stage::new("shipments rows (B's db)", &shipments, &want),
            Stage::new("order-shipped events (read_committed)", &shipped, &want),
        ],
        prepared: prepared_left(cfg).await?,
    })
}

/// Prepared transactions in both databases (before a run: left by an earlier one,
/// whose coordinator cluster may be gone).
///
/// # Errors
/// Connection or SQL failures.
pub async fn prepared_left(cfg: &PipelineConfig) -> anyhow::Result<i64> {
    let mut n = 0;
    for url in [cfg.orders_url(), cfg.shipping_url()] {
        n += connect(&url)
            .await?
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
                &[],
            )
            .await?
            .try_get::<_, i64>(0)?;
    }
    Ok(n)
}

/// Number of run `run_id`'s shipments rows.
///
/// # Errors
/// Connection or SQL failures.
pub async fn shipped_count(cfg: &PipelineConfig, run_id: &str) -> anyhow::Result<i64> {
    let c = connect(&cfg.shipping_url()).await?;
    Ok(c.query_one(
        "SELECT count(*) FROM shipments WHERE starts_with(order_id, $1)",
        &[&format!("{run_id}-")],
    )
    .await?
    .try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_count_duplicates_losses_and_strays() {
        let want: HashSet<String> = (0..3).map(|s| order_id("r", s)).collect();
        let ok = Stage::new("x", &want.iter().cloned().collect::<Vec<_>>(), &want);
        assert!(ok.ok());
        let ids = vec![order_id("r", 0), order_id("r", 0), order_id("r", 9)];
        let bad = Stage::new("x", &ids, &want);
        assert_eq!(
            (bad.total, bad.distinct, bad.missing, bad.unexpected),
            (3, 2, 2, 1)
        );
        assert!(!bad.ok());
    }

    #[test]
    fn names_are_validated() {
        let cfg = |name: &str| PipelineConfig {
            pg_url: "postgres://h/db".into(),
            bootstrap: "h:1".into(),
            name: name.into(),
            orders_topic: "orders".into(),
            shipments_topic: "shipments".into(),
            group: "g".into(),
            ledger_prefix: None,
        };
        assert!(cfg("ratify_orders").validate().is_ok());
        assert!(cfg("Bad-Name").validate().is_err());
        assert_eq!(cfg("p").shipping_url(), "postgres://h/p_shipping");
    }
}
