//! 2PC via Ratify: services A and B of [`crate::order_pipeline`], unchanged. A places
//! each order as one global transaction (Postgres branch: the `orders` row; Kafka
//! branch: the event); B ships each batch as one global transaction (Postgres
//! branch: the `shipments` rows; Kafka branch: the events and B's consumer offsets).
//! The coordinator is a local 3-node cluster of `ratify node` processes started by
//! the lab.

use std::path::Path;
use std::sync::Arc;

use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};

use crate::order_pipeline::{self, OrderPlaced, PipelineConfig, ServiceBOptions};

/// Service A of this implementation.
#[derive(Debug)]
pub struct ServiceA {
    /// The order pipeline's service A.
    service: Arc<order_pipeline::ServiceA>,
}

impl ServiceA {
    /// Opens A's participant (stage folder `stage_dir`) against the coordinators.
    ///
    /// # Errors
    /// As [`order_pipeline::ServiceA::start`].
    pub async fn start(
        cfg: &PipelineConfig,
        coordinators: Vec<String>,
        stage_dir: &Path,
    ) -> anyhow::Result<Self> {
        let client = CoordinatorClient::new(coordinators, ClientConfig::default())?;
        let service =
            order_pipeline::ServiceA::start(cfg, client, stage_dir, "127.0.0.1:0").await?;
        Ok(Self {
            service: Arc::new(service),
        })
    }

    /// Places `order`.
    ///
    /// # Errors
    /// Coordinator or database failures.
    pub async fn place(&self, order: OrderPlaced) -> anyhow::Result<()> {
        self.service
            .place_order(&order.order_id, order.amount)
            .await?;
        Ok(())
    }

    /// Waits until A has no branch in doubt (so nothing stays prepared after the run).
    ///
    /// # Errors
    /// When branches stay in doubt for 60 s.
    pub async fn settle(&self) -> anyhow::Result<()> {
        self.service
            .participant
            .wait_settled(std::time::Duration::from_secs(60))
            .await
    }
}

/// Service B of this implementation: the order pipeline's service B, serving its
/// participant on `listen` with its Kafka stage in `data_dir` (both kept across
/// restarts), until the process is killed or `shutdown`.
///
/// # Errors
/// As [`order_pipeline::ServiceB::run`].
pub async fn run_b(
    cfg: &PipelineConfig,
    coordinators: Vec<String>,
    listen: &str,
    data_dir: &Path,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = CoordinatorClient::new(coordinators, ClientConfig::default())?;
    let service = order_pipeline::ServiceB::start(cfg, client, data_dir, listen).await?;
    ready();
    service
        .run(
            &ServiceBOptions {
                batch: super::workload::BATCH,
                linger: super::workload::LINGER,
            },
            shutdown,
        )
        .await
}
