//! Pieces shared by the demo and the benchmark: embedded participants on loopback and
//! latency statistics.

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

/// Latency samples in microseconds.
#[derive(Default, Debug, Clone)]
pub(crate) struct Latencies(pub Vec<u64>);

impl Latencies {
    /// Records one sample.
    pub(crate) fn record(&mut self, d: Duration) {
        self.0.push(d.as_micros() as u64);
    }

    /// Merges another set of samples.
    pub(crate) fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `p`-th percentile (0..=100), in milliseconds.
    pub(crate) fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[rank.min(self.0.len() - 1)] as f64 / 1000.0
    }
}
