//! Runnable examples of Ratify. Each binary in `src/bin/` is one example; this library
//! holds what they share.
//!
//! # Layout
//! - [`init_tracing`]: logging set up the same way in every example.

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
