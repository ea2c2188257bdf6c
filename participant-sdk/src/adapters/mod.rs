//! Adapters that make existing systems XA participants, each behind a cargo feature.
//!
//! # Layout
//! - [`postgres`] (feature `postgres`): PostgreSQL branches prepared with
//!   `PREPARE TRANSACTION`.

#[cfg(feature = "postgres")]
pub mod postgres;
