//! Take part in Ratify global transactions.
//!
//! Start with [`App`]: it hosts your resources (a Postgres database, a Kafka
//! producer, your own [`Resource`]) in one participant server with its recovery
//! loop, and [`App::transaction`] runs a closure as one global transaction over
//! them. The modules below are the pieces it is made of, for what it does not cover.
//!
//! # Layout
//! - [`App`], [`AppBuilder`], [`Tx`]: the high-level SDK (module `app`).
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
mod app;
mod branch_log;
pub mod client;
pub mod durable;
pub mod failpoint;
pub mod noop;
pub mod recovery;
pub mod resource;
pub mod server;
pub mod xid;

pub use app::{App, AppBuilder, AppError, Tx};
pub use client::{ClientConfig, ClientError, CoordinatorClient, Decision, Outcome};
pub use resource::Resource;
pub use xid::Xid;

#[cfg(feature = "kafka")]
pub use adapters::kafka::{KafkaConfig, KafkaRecord, KafkaResource};
#[cfg(feature = "postgres")]
pub use adapters::postgres::{PgConfig, PgResource};
