//! Runnable examples of Ratify. Each binary in `src/bin/` is one example; this library
//! holds what they share.
//!
//! # Layout
//! - [`init_tracing`]: logging set up the same way in every example.
//! - [`pg_bank`]: the two-database Postgres bank of `src/bin/pg_bank.rs`, shared with
//!   the integration tests.

pub mod pg_bank;

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
