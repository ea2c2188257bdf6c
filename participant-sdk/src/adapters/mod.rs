//! Adapters that make external systems take part in Ratify transactions, each behind
//! its own cargo feature.
//!
//! # Layout
//! - [`kafka`] (feature `kafka`): exactly-once publication to Apache Kafka.

#[cfg(feature = "kafka")]
pub mod kafka;
