//! Pieces shared by the demo and the benchmark: embedded participants on loopback.

use std::sync::Arc;
use std::time::Duration;

use ratify_participant_sdk::client::CoordinatorClient;
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::HostedParticipant;

/// A participant served in this process on loopback, resolving in-doubt branches
/// every second.
pub(crate) async fn host(
    name: &str,
    resource: Arc<dyn Resource>,
    client: CoordinatorClient,
) -> anyhow::Result<HostedParticipant> {
    Ok(HostedParticipant::start(name, resource, client, Duration::from_secs(1)).await?)
}
