//! Take part in Ratify global transactions.
//!
//! # Layout
//! - [`xid`]: the XA-shaped branch id and its strict, printable encoding.
//! - [`resource`]: the XA-style [`resource::Resource`] trait every participant resource implements.
//! - [`server`]: the participant gRPC server that hosts resources for the coordinator.
//! - [`recovery`]: the participant-side loop that resolves in-doubt branches.
//! - [`client`]: the coordinator client (leader discovery, retries, deadlines).
//! - [`durable`]: sled with a real, group-committed fdatasync.
//! - [`failpoint`]: crash points for tests, chosen through `RATIFY_FAILPOINTS`.
//! - [`accounts`]: an embedded, durable account-balance store for demos and tests.
//! - [`noop`]: a resource that does nothing but prepare durably (benchmarks).
//! - [`adapters`]: existing systems as participants (features `kafka`, `postgres`).

pub mod accounts;
pub mod adapters;
mod branch_log;
pub mod client;
pub mod durable;
pub mod failpoint;
pub mod noop;
pub mod recovery;
pub mod resource;
pub mod server;
pub mod xid;
