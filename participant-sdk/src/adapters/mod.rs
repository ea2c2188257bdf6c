//! Adapters that make existing systems XA participants, each behind its own cargo
//! feature.
//!
//! # Layout
//! - [`kafka`] (feature `kafka`): exactly-once publication to Apache Kafka.
//! - [`postgres`] (feature `postgres`): PostgreSQL branches prepared with
//!   `PREPARE TRANSACTION`.

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "postgres")]
pub mod postgres;
