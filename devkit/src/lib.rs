//! Ratify's development kit: what demos, benchmarks and tests need and a product does
//! not (docs/design.md, "Crates"). Nothing here is part of the coordinator or the SDK.
//!
//! - [`local`]: a local cluster of `ratify node` processes on loopback (start, kill,
//!   pause, restart, isolate, scrape metrics).
//! - [`netfault`]: a TCP proxy that cuts a node off from its peers, for partitions.
//! - [`accounts`]: an embedded, durable account-balance store (the demo's banks).
//! - [`noop`]: a resource that does nothing but prepare durably (benchmarks).
//! - [`latency`]: latency samples and their percentiles (an HDR histogram).
//! - [`certs`]: throwaway certificate authorities and the certificates they issue.
//!
//! The `ratify-dev` binary runs the demo, a dev cluster and the benchmark on these.

pub mod accounts;
pub mod certs;
pub mod latency;
pub mod local;
pub mod netfault;
pub mod noop;
