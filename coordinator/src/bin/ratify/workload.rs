//! Pieces shared by the demo and the benchmark: embedded participants on loopback and
//! latency statistics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ratify_participant_sdk::client::CoordinatorClient;
use ratify_participant_sdk::recovery::RecoveryLoop;
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::ParticipantServer;
use tokio::sync::watch;

/// A participant served in this process on a loopback port, with its recovery loop.
pub(crate) struct EmbeddedParticipant {
    /// `host:port` to enlist.
    pub(crate) endpoint: String,
    /// Stops the server and the recovery loop when set.
    stop: watch::Sender<bool>,
}

async fn wait(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl EmbeddedParticipant {
    /// Serves `resource` under `name` and resolves its in-doubt branches every second.
    pub(crate) async fn start(
        name: &str,
        resource: Arc<dyn Resource>,
        client: CoordinatorClient,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind participant")?;
        let endpoint = listener.local_addr()?.to_string();
        let (stop, rx) = watch::channel(false);
        let server = ParticipantServer::new().with_resource(name, Arc::clone(&resource))?;
        tokio::spawn(server.serve(listener, wait(rx.clone())));
        RecoveryLoop::new(vec![(name.to_string(), resource)], client)
            .spawn(Duration::from_secs(1), wait(rx));
        Ok(Self { endpoint, stop })
    }
}

impl Drop for EmbeddedParticipant {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
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
