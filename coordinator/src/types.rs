//! Raft type configuration, node identity and the gtrid encoding.
//!
//! Everything else names openraft types through the short aliases in [`typ`], so no
//! module spells out `<TypeConfig as RaftTypeConfig>::…`.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::txn::{CommandResult, Proposal};

/// A coordinator node's Raft id.
pub type NodeId = u64;

/// What the cluster stores about each member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Internal Raft address (`host:port`), for other nodes only.
    pub raft_addr: String,
    /// Client API address (`host:port`), sent to clients as the leader hint.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// Ratify's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Short aliases for openraft types instantiated with [`TypeConfig`].
pub mod typ {
    use super::{NodeId, NodeInfo, TypeConfig};

    /// The Raft handle.
    pub type Raft = openraft::Raft<TypeConfig>;
    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A log id.
    pub type LogId = openraft::LogId<NodeId>;
    /// A vote.
    pub type Vote = openraft::Vote<NodeId>;
    /// Storage error.
    pub type StorageError = openraft::StorageError<NodeId>;
    /// Membership as stored with the last applied index.
    pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Raft API error.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    /// RPC error seen by the network layer.
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, NodeInfo, RaftError<E>>;
    /// Error of a client write.
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeInfo>;
    /// Error of a linearizable read.
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, NodeInfo>;
    /// Raft metrics.
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
}

pub use ratify_common::xid::Gtrid;

/// Milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
