//! Pieces shared by the demo and the benchmark: embedded participants on loopback.

use std::sync::Arc;
use std::time::Duration;

use ratify_common::tls::Role;
use ratify_devkit::local::LocalCluster;
use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::HostedParticipant;

/// A participant served in this process on loopback as `name`, resolving in-doubt
/// branches every second. On a TLS cluster it presents a certificate of the
/// cluster's CA naming `ratify://participant/<name>`, takes calls from the nodes only
/// and registers its endpoint.
pub(crate) async fn host(
    cluster: &LocalCluster,
    name: &str,
    resource: &str,
    store: Arc<dyn Resource>,
) -> anyhow::Result<HostedParticipant> {
    let transport = cluster.transport_for(name, &[Role::Participant])?;
    let client = CoordinatorClient::new(
        cluster.api_endpoints(),
        ClientConfig {
            transport: transport.clone(),
            ..ClientConfig::default()
        },
    )?;
    Ok(
        HostedParticipant::start_on(resource, store, client, Duration::from_secs(1), transport)
            .await?,
    )
}
