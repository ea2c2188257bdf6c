//! Ratify's coordinator: a node of an openraft cluster whose replicated log holds every
//! transaction decision, and whose leader drives two-phase commit over gRPC.
//!
//! # Layout
//! - [`types`]: Raft type config and aliases, node identity, the gtrid encoding.
//! - [`txn`]: transaction states, decisions, log commands and the table they change —
//!   the only place a transaction's state changes.
//! - [`raft`]: where bytes hit disk and cross between nodes (the segment-file log with
//!   real fdatasync, state machine snapshots in a synced file, Raft network).
//! - [`driver`]: leader-only 2PC engine (prepare fan-out, decisions, phase 2,
//!   timeouts, failover recovery).
//! - [`ask`]: one question to one node (its status, its Raft identity).
//! - [`membership`]: membership changes (add, remove, replace a node; the quorum
//!   check), run by the leader for the Admin service.
//! - [`service`]: the gRPC services; the only place errors become `Status`. Also the
//!   Prometheus endpoint and the web console.
//! - [`metrics`]: the node's counters and their Prometheus text rendering.
//! - [`server`]: [`server::run`] wires a node together; [`config`]: its settings
//!   (flags, environment, file) and the `node` command both binaries run.
//! - [`telemetry`]: logs (text or JSON) and OpenTelemetry tracing for a process.

// openraft's StorageError and ConfigError are large by design, and the storage traits
// must return them as they are.
#![allow(clippy::result_large_err)]

pub mod ask;
pub mod config;
pub mod driver;
pub mod membership;
pub mod metrics;
pub mod raft;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod txn;
pub mod types;
