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

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG`, else by `default`
/// (e.g. `warn` for an example that reports its progress itself).
pub fn init_tracing_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
) -> anyhow::Result<ratify_coordinator::local::LocalCluster> {
    let cluster =
        ratify_coordinator::local::LocalCluster::start(&ratify_binary(None)?, dir, 3, vec![])?;
    cluster
        .wait_for_leader(std::time::Duration::from_secs(20))
        .await?;
    Ok(cluster)
}
