//! Baseline: no atomicity, the way a service is often first written.
//!
//! - **A** inserts its `orders` row (autocommit), then hands the event to an
//!   asynchronous producer and does not wait for it.
//! - **B** consumes with auto-committed offsets (every 100 ms, in the background,
//!   for whatever the consumer has handed out), inserts its `shipments` rows
//!   (autocommit) and hands the `order-shipped` events to an asynchronous producer
//!   that lingers 200 ms to batch (longer than the auto-commit interval) and is never
//!   flushed. A SIGKILL therefore loses
//!   the events still in the producer's buffer whose offsets were already committed
//!   (losses), and handles again the events consumed since the last auto-commit
//!   (duplicates, for those whose events did get out).

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::workload;
use crate::order_pipeline::{OrderPlaced, PipelineConfig};

/// Service A of this implementation.
pub struct ServiceA {
    /// A's database.
    dbs: workload::OrderDbs,
    /// Shared fire-and-forget producer.
    producer: FutureProducer,
    /// The orders topic.
    topic: String,
}

/// A producer that batches for `linger_ms` and is never waited for.
fn lazy_producer(bootstrap: &str, linger_ms: &str) -> anyhow::Result<FutureProducer> {
    workload::producer(bootstrap, &[("linger.ms", linger_ms), ("acks", "1")])
}

/// Hands `order`'s event to `producer` without waiting for it.
fn send_and_forget(
    producer: &FutureProducer,
    topic: &str,
    order: &OrderPlaced,
) -> anyhow::Result<()> {
    let value = workload::event_value(order)?;
    // The delivery future is dropped: nobody learns whether the event got out.
    drop(
        producer
            .send_result(
                FutureRecord::to(topic)
                    .key(order.order_id.as_str())
                    .payload(&value),
            )
            .map_err(|(e, _)| e)?,
    );
    Ok(())
}

impl ServiceA {
    /// Opens `clients` connections and the producer.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn start(cfg: &PipelineConfig, clients: usize) -> anyhow::Result<Self> {
        Ok(Self {
            dbs: workload::OrderDbs::open(cfg, clients).await?,
            producer: lazy_producer(&cfg.bootstrap, "100")?,
            topic: cfg.orders_topic.clone(),
        })
    }

    /// Places `order` from client `client`.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn place(&self, client: usize, order: OrderPlaced) -> anyhow::Result<()> {
        workload::insert_order(&*self.dbs.get(client).await, &order).await?;
        send_and_forget(&self.producer, &self.topic, &order)
    }
}

/// Service B of this implementation, until the process is killed or `shutdown`.
///
/// # Errors
/// Kafka or Postgres failures (B then exits; the lab reports it).
pub async fn run_b(
    cfg: &PipelineConfig,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (consumer, db) = workload::open_b(cfg, true).await?;
    let producer = lazy_producer(&cfg.bootstrap, "200")?;
    ready();
    tokio::pin!(shutdown);
    while let Some(batch) = workload::batch_until(&consumer, shutdown.as_mut()).await? {
        let all: Vec<&workload::Consumed> = batch.iter().collect();
        workload::insert_shipments(&db, &all).await?;
        for e in &batch {
            send_and_forget(&producer, &cfg.shipments_topic, &e.order)?;
        }
    }
    Ok(())
}
