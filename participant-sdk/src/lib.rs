//! Take part in Ratify global transactions.
//!
//! Start with [`App`]: it hosts your resources (a Postgres database, a Kafka
//! producer, your own [`Resource`]) in one participant server with its recovery
//! loop, and [`App::transaction`] runs a closure as one global transaction over
//! them. The modules below are the pieces it is made of, for what it does not cover.
//!
//! # Layout
//! - [`App`], [`AppBuilder`], [`Tx`]: the high-level SDK (module `app`).
//! - [`xid`], [`wire`], [`failpoint`]: shared with the coordinator, from `ratify-common`:
//!   identifiers, wire rules, crash points for tests.
//! - [`resource`]: the XA-style [`resource::Resource`] trait every participant resource implements.
//! - [`server`]: the participant gRPC server that hosts resources for the coordinator.
//! - [`recovery`]: the participant-side loop that resolves in-doubt branches.
//! - [`client`]: the coordinator client (leader discovery, retries, deadlines), from
//!   `ratify-client`.
//! - [`durable`]: sled with a real, group-committed fdatasync.
//! - [`branch_log`]: storage pieces for a resource of your own on [`durable`]
//!   (finished-branch records, prepared listing).
//! - [`adapters`]: existing systems as participants (features `kafka`, `postgres`).

pub mod adapters;
mod app;
pub mod branch_log;
pub mod durable;
pub mod recovery;
pub mod resource;
pub mod server;
#[cfg(test)]
mod testing;

pub use app::{App, AppBuilder, AppError, Tx};
pub use client::{ClientConfig, ClientError, CoordinatorClient, Decision, Outcome};
pub use ratify_client as client;
pub use ratify_common::{failpoint, group, wire, xid};
pub use resource::Resource;
pub use xid::{Gtrid, Xid};

#[cfg(feature = "kafka")]
pub use adapters::kafka::{KafkaConfig, KafkaRecord, KafkaResource};
#[cfg(feature = "postgres")]
pub use adapters::postgres::{PgConfig, PgResource};
