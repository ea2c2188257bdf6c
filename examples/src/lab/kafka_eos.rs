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
use crate::pg_bank::connect;

/// Service A of this implementation.
pub struct ServiceA {
    /// One transactional producer per client (a transaction is per producer).
    producers: Vec<FutureProducer>,
    /// One connection per client to A's database.
    dbs: Vec<tokio_postgres::Client>,
    /// The orders topic.
    topic: String,
}

impl std::fmt::Debug for ServiceA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceA")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ServiceA {
    /// Opens `clients` producers and connections.
    ///
    /// # Errors
    /// Kafka or Postgres failures.
    pub async fn start(cfg: &PipelineConfig, run_id: &str, clients: usize) -> anyhow::Result<Self> {
        let mut producers = Vec::new();
        let mut dbs = Vec::new();
        for c in 0..clients.max(1) {
            let (bootstrap, id) = (cfg.bootstrap.clone(), format!("lab.{run_id}.eos.a.{c}"));
            producers.push(
                tokio::task::spawn_blocking(move || {
                    workload::transactional_producer(&bootstrap, &id)
                })
                .await??,
            );
            dbs.push(connect(&cfg.orders_url()).await?);
        }
        Ok(Self {
            producers,
            dbs,
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
        self.dbs[client % self.dbs.len()]
            .execute(
                "INSERT INTO orders (order_id, amount, status) VALUES ($1, $2, 'placed') \
                 ON CONFLICT DO NOTHING",
                &[&order.order_id, &order.amount],
            )
            .await?;
        Ok(())
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
    let consumer = crate::order_pipeline::assigned_consumer(
        &workload::consumer_config(&cfg.bootstrap, &cfg.group, false),
        &cfg.orders_topic,
    )?;
    let cgm = Arc::new(
        consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("consumer has no group metadata"))?,
    );
    let db = connect(&cfg.shipping_url()).await?;
    ready();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return Ok(()),
            b = workload::next_batch(&consumer) => b?,
        };
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
}
