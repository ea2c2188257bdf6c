//! Kafka exactly-once: consume-process-produce in Kafka transactions.
//!
//! - **A** publishes the `order-placed` event in a Kafka transaction (one
//!   transactional producer per client), then writes its `orders` row idempotently
//!   (`ON CONFLICT DO NOTHING`). Kafka is the source of truth; the row follows it.
//!   A crash of A between the two would leave an event without its row until A
//!   replays it (the lab never kills A).
//! - **B** consumes `read_committed` and, per batch, upserts its `shipments` rows,
//!   then in one Kafka transaction publishes the `order-shipped` events and commits
//!   its consumer offsets (`send_offsets_to_transaction`). A killed B leaves an open
//!   transaction that the restarted B's `init_transactions` (same `transactional.id`)
//!   aborts; until then `read_committed` readers of its partitions stall.

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;

use super::workload::{self, Consumed};
use crate::order_pipeline::{OrderPlaced, PipelineConfig};

/// Service A of this implementation.
pub struct ServiceA {
    /// One transactional producer per client (a transaction is per producer).
    producers: Vec<FutureProducer>,
    /// A's database.
    dbs: workload::OrderDbs,
    /// The orders topic.
    topic: String,
}

impl ServiceA {
    /// Opens `clients` producers and connections.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn start(cfg: &PipelineConfig, run_id: &str, clients: usize) -> anyhow::Result<Self> {
        let mut producers = Vec::new();
        for c in 0..clients.max(1) {
            let (bootstrap, id) = (cfg.bootstrap.clone(), format!("lab.{run_id}.eos.a.{c}"));
            producers.push(
                tokio::task::spawn_blocking(move || {
                    workload::transactional_producer(&bootstrap, &id)
                })
                .await??,
            );
        }
        Ok(Self {
            producers,
            dbs: workload::OrderDbs::open(cfg, clients).await?,
            topic: cfg.orders_topic.clone(),
        })
    }

    /// Places `order` from client `client`.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn place(&self, client: usize, order: OrderPlaced) -> anyhow::Result<()> {
        let p = self.producers[client % self.producers.len()].clone();
        let topic = self.topic.clone();
        let event = order.clone();
        tokio::task::spawn_blocking(move || {
            workload::kafka_transaction(&p, &topic, &[event], None)
        })
        .await??;
        workload::insert_order(&*self.dbs.get(client).await, &order).await
    }
}

/// Service B of this implementation, until the process is killed or `shutdown`.
///
/// # Errors
/// Kafka or Postgres failures (B then exits; the lab reports it).
pub async fn run_b(
    cfg: &PipelineConfig,
    run_id: &str,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (bootstrap, id) = (cfg.bootstrap.clone(), format!("lab.{run_id}.eos.b"));
    // init_transactions first: it aborts what a killed predecessor left open, so the
    // committed offsets read next are final.
    let producer: Arc<FutureProducer> = Arc::new(
        tokio::task::spawn_blocking(move || workload::transactional_producer(&bootstrap, &id))
            .await??,
    );
    let (consumer, db) = workload::open_b(cfg, false).await?;
    let cgm = Arc::new(
        consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("consumer has no group metadata"))?,
    );
    ready();
    tokio::pin!(shutdown);
    while let Some(batch) = workload::batch_until(&consumer, shutdown.as_mut()).await? {
        let all: Vec<&Consumed> = batch.iter().collect();
        workload::insert_shipments(&db, &all).await?;
        let tpl = workload::offsets_after(&cfg.orders_topic, &batch)?;
        let orders: Vec<OrderPlaced> = batch.iter().map(|e| e.order.clone()).collect();
        let (p, cgm, topic) = (
            Arc::clone(&producer),
            Arc::clone(&cgm),
            cfg.shipments_topic.clone(),
        );
        tokio::task::spawn_blocking(move || {
            workload::kafka_transaction(&p, &topic, &orders, Some((&tpl, &cgm)))
        })
        .await??;
    }
    Ok(())
}
