//! Runnable examples of Ratify. Each binary in `src/bin/` is one example; this library
//! holds what they share.
//!
//! # Layout
//! - [`init_tracing`]: logging set up the same way in every example.
//! - [`ratify_binary`], [`local_cluster`]: the local 3-node cluster examples start
//!   when no `--coordinator` is given.
//! - [`pg_bank`]: the two-database Postgres bank of `src/bin/pg_bank.rs`, shared with
//!   the integration tests.
//! - [`order_pipeline`]: service A → Kafka → service B → Kafka of
//!   `src/bin/order_pipeline.rs`, shared with the integration tests.
//! - [`narayana`]: the Narayana JTA row of `pg_bank bench` (runs the Java harness of
//!   `examples/narayana/`).
//! - [`lab`]: the trade-off lab of `src/bin/tradeoff_lab.rs`: the pipeline five ways,
//!   measured side by side.

pub mod lab;
pub mod narayana;
pub mod order_pipeline;
pub mod pg_bank;

use ratify_coordinator::telemetry::{self, Telemetry, TelemetryConfig};

/// Sets up logs on stderr, filtered by `RUST_LOG` (default `info`), and tracing; see
/// [`init_tracing_with_default`]. Keep the guard until the end of `main`.
pub fn init_tracing() -> anyhow::Result<Telemetry> {
    init_tracing_with_default("info")
}

/// Sets up logs on stderr, filtered by `RUST_LOG`, else by `default` (e.g. `warn`
/// for an example that reports its progress itself), as text or JSON lines
/// (`RATIFY_LOG_FORMAT`), and trace spans exported to `RATIFY_OTLP_ENDPOINT` if
/// set (the coordinator's `ratify_coordinator::telemetry`). INFO has no line per
/// transaction or branch: those are DEBUG.
///
/// # Errors
/// When the settings are bad or logging is set up already.
pub fn init_tracing_with_default(default: &str) -> anyhow::Result<Telemetry> {
    Ok(telemetry::init(&TelemetryConfig::from_env(
        default,
        "ratify-examples",
    )?)?)
}

/// The `ratify` binary: `explicit`, else `$RATIFY_BIN`, else next to this executable.
///
/// # Errors
/// When it does not exist.
pub fn ratify_binary(explicit: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("RATIFY_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("executable has no folder")?
        .join("ratify");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p ratify-coordinator --bin ratify` \
         (add --release for a release example), or set RATIFY_BIN, or pass --coordinator",
        bin.display()
    );
    Ok(bin)
}

/// A local 3-node cluster of `ratify node` processes (binary from [`ratify_binary`])
/// with its data under `dir`, once it has a leader.
///
/// # Errors
/// When the binary is missing or no leader is elected in 20 s.
pub async fn local_cluster(
    dir: &std::path::Path,
) -> anyhow::Result<ratify_devkit::local::LocalCluster> {
    let cluster = ratify_devkit::local::LocalCluster::start(&ratify_binary(None)?, dir, 3, vec![])?;
    cluster
        .wait_for_leader(std::time::Duration::from_secs(20))
        .await?;
    Ok(cluster)
}
