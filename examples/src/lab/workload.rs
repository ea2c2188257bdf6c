//! What every implementation shares: the names of a run's databases and topics, the
//! Kafka clients and batching helpers the services use, the order clients of service
//! A, consumer C (the checker at the end of the pipeline) and the statistics.
//!
//! Time is measured on one monotonic clock: service A and consumer C both run in the
//! lab process, so A notes when it creates an order and C when the final event
//! arrives, and no timestamp has to travel in the events (whose format is then the
//! same for every implementation: key = order id, value = [`OrderPlaced`] JSON).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::order_pipeline::{self, OrderPlaced, PipelineConfig};

/// Most events a service B handles in one transaction (or one local commit).
pub const BATCH: usize = 100;
/// How long a batch waits for more events after its first.
pub const LINGER: Duration = Duration::from_millis(5);

/// The databases, topics and group of implementation `slug` in run `run_id`:
/// databases `lab_<slug>_orders` (A) and `lab_<slug>_shipping` (B), topics
/// `lab.<run>.<slug>.orders` (A → B) and `lab.<run>.<slug>.shipments` (B → C),
/// 2PC's Kafka ledgers `lab.<run>.ledger.service_a` / `_b`.
pub fn pipeline_config(pg_url: &str, bootstrap: &str, run_id: &str, slug: &str) -> PipelineConfig {
    PipelineConfig {
        pg_url: pg_url.to_owned(),
        bootstrap: bootstrap.to_owned(),
        name: format!("lab_{slug}"),
        orders_topic: format!("lab.{run_id}.{slug}.orders"),
        shipments_topic: format!("lab.{run_id}.{slug}.shipments"),
        group: format!("lab.{run_id}.{slug}.b"),
        // One ledger per service and run (see `PipelineConfig::ledger_prefix`: on the
        // shared ledger, B's restart waits on A's open transactions).
        ledger_prefix: Some(format!("lab.{run_id}.ledger")),
    }
}

/// A producer with `settings` on top of the bootstrap servers.
///
/// # Errors
/// When librdkafka rejects the configuration.
pub fn producer(bootstrap: &str, settings: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in settings {
        c.set(*k, *v);
    }
    Ok(c.create()?)
}

/// An idempotent producer: the broker drops the duplicates of its own retries
/// (what the outbox relays and the idempotent-consumer services publish with).
///
/// # Errors
/// As [`producer`].
pub fn idempotent_producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    producer(
        bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "1"),
        ],
    )
}

/// A transactional producer with `transactional.id` `id`, initialised (which fences
/// an older instance with the same id and aborts its open transaction). Blocking.
///
/// # Errors
/// Kafka failures.
pub fn transactional_producer(bootstrap: &str, id: &str) -> anyhow::Result<FutureProducer> {
    let p = producer(bootstrap, &[("transactional.id", id), ("linger.ms", "1")])?;
    p.init_transactions(Duration::from_secs(30))?;
    Ok(p)
}

/// The consumer settings of service B: group `group`, `read_committed`, offsets
/// committed by hand (or `auto_commit`: every 100 ms in the background, the
/// baseline's non-atomic choice).
pub fn consumer_config(bootstrap: &str, group: &str, auto_commit: bool) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set(
            "enable.auto.commit",
            if auto_commit { "true" } else { "false" },
        )
        .set("auto.commit.interval.ms", "100");
    c
}

/// One consumed event.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The order.
    pub order: OrderPlaced,
}

/// The next batch: waits for one event, then takes what arrives within [`LINGER`],
/// up to [`BATCH`] events.
///
/// # Errors
/// Consumer failures or a malformed event.
pub async fn next_batch(consumer: &StreamConsumer) -> anyhow::Result<Vec<Consumed>> {
    let decode = |m: &rdkafka::message::BorrowedMessage<'_>| -> anyhow::Result<Consumed> {
        let order: OrderPlaced = serde_json::from_slice(m.payload().unwrap_or_default())
            .with_context(|| format!("malformed event at {}/{}", m.partition(), m.offset()))?;
        Ok(Consumed {
            partition: m.partition(),
            offset: m.offset(),
            order,
        })
    };
    let mut batch = vec![decode(&consumer.recv().await?)?];
    let linger = tokio::time::sleep(LINGER);
    tokio::pin!(linger);
    while batch.len() < BATCH {
        tokio::select! {
            () = &mut linger => break,
            m = consumer.recv() => batch.push(decode(&m?)?),
        }
    }
    Ok(batch)
}

/// What every service B starts with: a consumer of the orders topic at the group's
/// committed offsets (`auto_commit`: see [`consumer_config`]) and a connection to
/// B's database.
///
/// # Errors
/// Kafka or Postgres failures.
pub async fn open_b(
    cfg: &PipelineConfig,
    auto_commit: bool,
) -> anyhow::Result<(StreamConsumer, tokio_postgres::Client)> {
    let consumer = order_pipeline::assigned_consumer(
        &consumer_config(&cfg.bootstrap, &cfg.group, auto_commit),
        &cfg.orders_topic,
    )?;
    Ok((
        consumer,
        crate::pg_bank::connect(&cfg.shipping_url()).await?,
    ))
}

/// The next batch ([`next_batch`]), or `None` once `shutdown` completes.
///
/// # Errors
/// As [`next_batch`].
pub async fn batch_until(
    consumer: &StreamConsumer,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<Vec<Consumed>>> {
    tokio::select! {
        () = shutdown => Ok(None),
        b = next_batch(consumer) => b.map(Some),
    }
}

/// The offsets to commit after `batch` (per partition, one past its last event).
///
/// # Errors
/// Never in practice (librdkafka rejects only invalid partitions).
pub fn offsets_after(topic: &str, batch: &[Consumed]) -> anyhow::Result<TopicPartitionList> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for e in batch {
        let at = next.entry(e.partition).or_insert(e.offset + 1);
        *at = (*at).max(e.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    Ok(tpl)
}

/// The event of `order` for `topic`: key = order id, value = JSON.
///
/// # Errors
/// Serialization failures.
pub fn event_value(order: &OrderPlaced) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(order)?)
}

/// Publishes the events of `orders` to `topic` and waits until the broker has
/// acknowledged every one.
///
/// # Errors
/// The first failed delivery.
pub async fn publish_acked(
    producer: &FutureProducer,
    topic: &str,
    orders: &[OrderPlaced],
) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(orders.len());
    for o in orders {
        let value = event_value(o)?;
        let rec = FutureRecord::to(topic)
            .key(o.order_id.as_str())
            .payload(&value);
        deliveries.push(producer.send_result(rec).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await
            .map_err(|_| anyhow::anyhow!("delivery cancelled"))?
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// One Kafka transaction on `producer`: the events of `orders` to `topic` and, if
/// given, consumer offsets. Deliveries are awaited before `commit_transaction`
/// (docs/design.md §9: a commit with records in flight costs a 100 ms flush poll). Blocking.
///
/// # Errors
/// Kafka failures; the transaction is then aborted (best effort).
pub fn kafka_transaction(
    producer: &FutureProducer,
    topic: &str,
    orders: &[OrderPlaced],
    offsets: Option<(
        &TopicPartitionList,
        &rdkafka::consumer::ConsumerGroupMetadata,
    )>,
) -> anyhow::Result<()> {
    producer.begin_transaction()?;
    let run = || -> anyhow::Result<()> {
        futures::executor::block_on(publish_acked(producer, topic, orders))?;
        if let Some((tpl, cgm)) = offsets {
            producer.send_offsets_to_transaction(tpl, cgm, Duration::from_secs(30))?;
        }
        producer.commit_transaction(Duration::from_secs(30))?;
        Ok(())
    };
    run().inspect_err(|_| {
        let _ = producer.abort_transaction(Duration::from_secs(10));
    })
}

/// Inserts B's `shipments` rows of `batch` (an order already shipped is left as it
/// is: every service B writes its state idempotently or behind a processed-id check).
///
/// # Errors
/// SQL failures.
pub async fn insert_shipments(
    db: &impl tokio_postgres::GenericClient,
    batch: &[&Consumed],
) -> anyhow::Result<()> {
    let ids: Vec<&str> = batch.iter().map(|e| e.order.order_id.as_str()).collect();
    let amounts: Vec<i64> = batch.iter().map(|e| e.order.amount).collect();
    let parts: Vec<i32> = batch.iter().map(|e| e.partition).collect();
    let offsets: Vec<i64> = batch.iter().map(|e| e.offset).collect();
    db.execute(
        "INSERT INTO shipments (order_id, amount, source_partition, source_offset) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int8[]) \
         ON CONFLICT (order_id) DO NOTHING",
        &[&ids, &amounts, &parts, &offsets],
    )
    .await?;
    Ok(())
}

/// Records the order ids of `batch` in B's `processed` table and returns the events
/// not processed before (the idempotent-consumer check; in the caller's transaction).
///
/// # Errors
/// SQL failures.
pub async fn first_time<'a>(
    txn: &tokio_postgres::Transaction<'_>,
    batch: &'a [Consumed],
) -> anyhow::Result<Vec<&'a Consumed>> {
    let ids: Vec<&str> = batch.iter().map(|e| e.order.order_id.as_str()).collect();
    let new: std::collections::HashSet<String> = txn
        .query(
            "INSERT INTO processed (order_id) SELECT unnest($1::text[]) \
             ON CONFLICT DO NOTHING RETURNING order_id",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(batch
        .iter()
        .filter(|e| new.contains(&e.order.order_id))
        .collect())
}

/// Creates B's `processed` table (order ids handled, for the idempotent check).
///
/// # Errors
/// Connection or SQL failures.
pub async fn create_processed_table(cfg: &PipelineConfig) -> anyhow::Result<()> {
    crate::pg_bank::connect(&cfg.shipping_url())
        .await?
        .batch_execute("CREATE TABLE IF NOT EXISTS processed (order_id text PRIMARY KEY)")
        .await?;
    Ok(())
}

/// Service A's connections to its database: one per order client, so a client can
/// hold a transaction open without waiting for the others.
#[derive(Debug)]
pub struct OrderDbs(Vec<tokio::sync::Mutex<tokio_postgres::Client>>);

impl OrderDbs {
    /// Opens `clients` connections to A's database.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn open(cfg: &PipelineConfig, clients: usize) -> anyhow::Result<Self> {
        let mut dbs = Vec::new();
        for _ in 0..clients.max(1) {
            dbs.push(tokio::sync::Mutex::new(
                crate::pg_bank::connect(&cfg.orders_url()).await?,
            ));
        }
        Ok(Self(dbs))
    }

    /// Client `client`'s connection.
    pub async fn get(&self, client: usize) -> tokio::sync::MutexGuard<'_, tokio_postgres::Client> {
        self.0[client % self.0.len()].lock().await
    }
}

/// Inserts A's `orders` row of `order` (idempotently: a replay leaves it as it is).
///
/// # Errors
/// SQL failures.
pub async fn insert_order(
    db: &impl tokio_postgres::GenericClient,
    order: &OrderPlaced,
) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO orders (order_id, amount, status) VALUES ($1, $2, 'placed') \
         ON CONFLICT (order_id) DO NOTHING",
        &[&order.order_id, &order.amount],
    )
    .await?;
    Ok(())
}

/// What happened to the orders of one run, as A and C saw them.
#[derive(Debug)]
pub struct Tracker {
    /// Zero of every time in the run.
    pub start: Instant,
    /// The state, behind a short lock.
    inner: Mutex<TrackerState>,
}

/// The mutable part of [`Tracker`].
#[derive(Debug, Default)]
struct TrackerState {
    /// When A created each order (before its transaction began).
    created: HashMap<String, Instant>,
    /// Orders A committed, in commit order.
    committed: Vec<String>,
    /// A's commit latency per committed order, ms.
    commit_ms: Vec<f64>,
    /// Orders whose transaction failed (not committed as far as A knows).
    failed: u64,
    /// Final events C received per order id.
    seen: HashMap<String, u32>,
    /// Every delivery at C, seconds since `start`.
    arrivals: Vec<f64>,
    /// Creation to first arrival at C per order, ms.
    e2e_ms: Vec<f64>,
    /// Deliveries whose id A never created.
    strangers: u64,
}

/// A copy of what a [`Tracker`] holds, for the statistics.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Orders A committed.
    pub committed: Vec<String>,
    /// A's commit latencies, ms.
    pub commit_ms: Vec<f64>,
    /// Failed order transactions.
    pub failed: u64,
    /// Final events per order id at C.
    pub seen: HashMap<String, u32>,
    /// Every delivery at C, seconds since the start.
    pub arrivals: Vec<f64>,
    /// Creation to first arrival, ms.
    pub e2e_ms: Vec<f64>,
    /// Deliveries whose id A never created.
    pub strangers: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// An empty tracker whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::new(TrackerState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // A panic while holding this lock loses nothing worth refusing to read.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A is about to place order `id`.
    pub fn created(&self, id: &str) {
        self.state().created.insert(id.to_owned(), Instant::now());
    }

    /// A committed order `id` after `latency`.
    pub fn committed(&self, id: &str, latency: Duration) {
        let mut s = self.state();
        s.committed.push(id.to_owned());
        s.commit_ms.push(latency.as_secs_f64() * 1e3);
    }

    /// A's transaction for an order failed.
    pub fn failed(&self) {
        self.state().failed += 1;
    }

    /// C received the final event of order `id`.
    pub fn arrived(&self, id: &str) {
        let now = Instant::now();
        let mut s = self.state();
        s.arrivals
            .push(now.duration_since(self.start).as_secs_f64());
        let n = s.seen.entry(id.to_owned()).or_insert(0);
        *n += 1;
        if *n == 1 {
            match s.created.get(id) {
                Some(&c) => {
                    let ms = now.duration_since(c).as_secs_f64() * 1e3;
                    s.e2e_ms.push(ms);
                }
                None => s.strangers += 1,
            }
        }
    }

    /// Orders committed by A so far.
    pub fn committed_count(&self) -> usize {
        self.state().committed.len()
    }

    /// Distinct orders C has seen so far.
    pub fn seen_count(&self) -> usize {
        self.state().seen.len()
    }

    /// Deliveries at C so far.
    pub fn delivered_count(&self) -> usize {
        self.state().arrivals.len()
    }

    /// Has C seen every order A committed?
    pub fn all_seen(&self) -> bool {
        let s = self.state();
        s.committed.iter().all(|id| s.seen.contains_key(id))
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.state();
        Snapshot {
            committed: s.committed.clone(),
            commit_ms: s.commit_ms.clone(),
            failed: s.failed,
            seen: s.seen.clone(),
            arrivals: s.arrivals.clone(),
            e2e_ms: s.e2e_ms.clone(),
            strangers: s.strangers,
        }
    }
}

/// Runs `clients` order clients until `deadline`: each creates orders
/// `<prefix>-<n>` one after the other through `place(client, order)` and records
/// them in `tracker`. A failed order is counted and the client goes on after a short
/// pause (what a caller would do: it does not know the order).
///
/// # Errors
/// Only when a client task panics.
pub async fn run_clients<F, Fut>(
    clients: usize,
    deadline: Instant,
    prefix: String,
    tracker: Arc<Tracker>,
    place: F,
) -> anyhow::Result<()>
where
    F: Fn(usize, OrderPlaced) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients.max(1) {
        let (next, tracker, place, prefix) = (
            Arc::clone(&next),
            Arc::clone(&tracker),
            place.clone(),
            prefix.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut warned = false;
            while Instant::now() < deadline {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let order = OrderPlaced {
                    order_id: order_pipeline::order_id(&prefix, seq),
                    amount: rand::Rng::gen_range(&mut rand::thread_rng(), 100..100_000),
                };
                let id = order.order_id.clone();
                tracker.created(&id);
                let t0 = Instant::now();
                match place(client, order).await {
                    Ok(()) => tracker.committed(&id, t0.elapsed()),
                    Err(e) => {
                        tracker.failed();
                        if !warned {
                            tracing::warn!(error = %format!("{e:#}"), order = id, "order failed");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Consumer C: reads `topic` `read_committed` from the beginning and records every
/// event in `tracker`, until `stop` is set.
///
/// # Errors
/// Consumer failures.
pub async fn consume_c(
    bootstrap: String,
    topic: String,
    tracker: Arc<Tracker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{topic}.c"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // Arrival times are what C measures: fetch as soon as anything is there.
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..order_pipeline::partitions(&consumer, &topic)? {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return Ok(());
                }
            }
            m = consumer.recv() => {
                let m = m?;
                let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                tracker.arrived(&id);
            }
        }
    }
}

/// The `q` quantile (0..=1) of `sorted`, 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_end_to_end_once() {
        let t = Tracker::new();
        t.created("a");
        t.committed("a", Duration::from_millis(3));
        t.arrived("a");
        t.arrived("a");
        t.arrived("zz");
        let s = t.snapshot();
        assert_eq!(s.seen["a"], 2);
        assert_eq!(s.e2e_ms.len(), 1);
        assert_eq!(s.strangers, 1);
        assert_eq!(s.arrivals.len(), 3);
        assert!(t.all_seen());
    }

    #[test]
    fn quantiles_of_small_samples() {
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.99), 3.0);
    }

    #[test]
    fn offsets_point_past_each_partitions_last_event() -> anyhow::Result<()> {
        let ev = |partition, offset| Consumed {
            partition,
            offset,
            order: OrderPlaced {
                order_id: "x".into(),
                amount: 1,
            },
        };
        let tpl = offsets_after("t", &[ev(0, 5), ev(1, 2), ev(0, 7)])?;
        let got: Vec<(i32, Offset)> = tpl
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(got, vec![(0, Offset::Offset(8)), (1, Offset::Offset(3))]);
        Ok(())
    }
}
