//! `ratify probe`: asks a node's `grpc.health.v1.Health` service, so a container
//! image needs no other tool for its health checks (Docker `HEALTHCHECK`, compose,
//! a Kubernetes `exec` liveness probe). Exit 0: SERVING (or, with `--alive`, any
//! answer); exit 1 otherwise, with the status or the error on stderr.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Flags of `ratify probe`.
#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    /// The node's client API address.
    #[arg(long, default_value = "127.0.0.1:7101", value_name = "HOST:PORT")]
    addr: String,
    /// The service to ask about: "" (the node: the ready leader, or a follower that
    /// redirects to a known leader) or ratify.v1.Coordinator (the ready leader only).
    #[arg(long, default_value = "")]
    service: String,
    /// Succeed on any answer, SERVING or not: the process is alive and its gRPC
    /// server answers (a liveness check that does not fail during an election).
    #[arg(long)]
    alive: bool,
    /// Give up after this long.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    timeout_ms: u64,
    /// Mutual TLS (any certificate of the cluster's CA: a node's own will do), or
    /// `--insecure` for a node on loopback.
    #[command(flatten)]
    tls: ratify_coordinator::config::TlsFlags,
}

/// Runs the probe.
///
/// # Errors
/// When the node does not answer in time, or (without `--alive`) is not SERVING.
pub(crate) async fn run(a: ProbeArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let transport = a.tls.transport(
        &ratify_coordinator::config::NodeFile::default(),
        &[("--addr", a.addr.as_str())],
    )?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))
        .with_context(|| format!("{:?} is not HOST:PORT", a.addr))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = transport.channel(endpoint, ratify_common::tls::Expect::Node(None));
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: a.service.clone(),
        })
        .await
        .with_context(|| format!("health check of {:?} at {}", a.service, a.addr))?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if !a.alive && status != ServingStatus::Serving {
        bail!(
            "{} reports {} for {:?}",
            a.addr,
            status.as_str_name(),
            a.service
        );
    }
    Ok(())
}
