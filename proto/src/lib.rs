//! Ratify's gRPC contract, package `ratify.v1`, and the Rust code generated from it.
//!
//! # Layout
//! - `proto/ratify/v1/*.proto`: the contract other languages use directly.
//! - [`pb`]: generated messages, clients and servers for the public services
//!   (`Coordinator`, `Admin`, `Participant`).
//! - [`raft_pb`]: the internal node-to-node Raft service; never exposed to clients.
//! - [`trace`]: the W3C `traceparent` every call may carry, bridged to `tracing` spans.
//! - [`FILE_DESCRIPTOR_SET`]: the public services' descriptors, for server reflection.

/// Generated code for the public `ratify.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ratify.v1");
}

/// Generated code for the internal `ratify.v1.raft` package.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod raft_pb {
    tonic::include_proto!("ratify.v1.raft");
}

pub mod trace;

/// The encoded `FileDescriptorSet` of the public `ratify.v1` files (common,
/// coordinator, participant; not the internal Raft service), for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ratify_descriptor");

/// Metadata key that carries the leader's client address (`host:port`) on an
/// UNAVAILABLE answer from a node that is not the leader.
pub const LEADER_METADATA_KEY: &str = "ratify-leader";

/// The XA format id Ratify uses in every [`pb::Xid`]: ASCII "RTFY".
pub const XID_FORMAT_ID: u32 = 0x5254_4659;
