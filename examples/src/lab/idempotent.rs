//! Idempotent consumer: at-least-once delivery, a processed-id table in the
//! consumer's transaction.
//!
//! - **A** inserts its `orders` row and, inside the same open Postgres transaction,
//!   publishes the event and waits for the broker's acknowledgement; only then does
//!   it commit. A committed row therefore always has its event (at least once); a
//!   crash between the acknowledgement and the commit would publish an event whose
//!   row never committed (the lab never kills A, and C counts such strangers).
//! - **B** consumes with offsets committed by hand after processing. Per batch, one
//!   Postgres transaction records the order ids in `processed` (`ON CONFLICT DO
//!   NOTHING RETURNING`: the ids seen for the first time), inserts their `shipments`
//!   rows, publishes their `order-shipped` events and waits for the acknowledgements,
//!   and commits; then B commits its offsets. A redelivered event finds its id in
//!   `processed` and is skipped, so B applies it once; a B killed after the
//!   acknowledgements and before its commit publishes the events again on restart,
//!   so C receives duplicates and must be an idempotent consumer too (it is: see
//!   `Impl::consumer_dedups`).

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureProducer;

use super::workload;
use crate::order_pipeline::{OrderPlaced, PipelineConfig};

/// Service A of this implementation.
pub struct ServiceA {
    /// A's database.
    dbs: workload::OrderDbs,
    /// Shared idempotent producer.
    producer: FutureProducer,
    /// The orders topic.
    topic: String,
}

impl ServiceA {
    /// Opens `clients` connections and the producer.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn start(cfg: &PipelineConfig, clients: usize) -> anyhow::Result<Self> {
        Ok(Self {
            dbs: workload::OrderDbs::open(cfg, clients).await?,
            producer: workload::idempotent_producer(&cfg.bootstrap)?,
            topic: cfg.orders_topic.clone(),
        })
    }

    /// Places `order` from client `client`.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn place(&self, client: usize, order: OrderPlaced) -> anyhow::Result<()> {
        let mut db = self.dbs.get(client).await;
        let txn = db.transaction().await?;
        workload::insert_order(&txn, &order).await?;
        workload::publish_acked(&self.producer, &self.topic, std::slice::from_ref(&order)).await?;
        txn.commit().await?;
        Ok(())
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
    let (consumer, mut db) = workload::open_b(cfg, false).await?;
    let producer = workload::idempotent_producer(&cfg.bootstrap)?;
    ready();
    tokio::pin!(shutdown);
    while let Some(batch) = workload::batch_until(&consumer, shutdown.as_mut()).await? {
        let txn = db.transaction().await?;
        let new = workload::first_time(&txn, &batch).await?;
        workload::insert_shipments(&txn, &new).await?;
        let orders: Vec<OrderPlaced> = new.iter().map(|e| e.order.clone()).collect();
        workload::publish_acked(&producer, &cfg.shipments_topic, &orders).await?;
        txn.commit().await?;
        consumer.commit(
            &workload::offsets_after(&cfg.orders_topic, &batch)?,
            CommitMode::Async,
        )?;
    }
    Ok(())
}
