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

/// A global transaction id: the cluster id and the transaction's number, which the
/// replicated table assigns to each Begin in log order (dense, never reused).
///
/// Rendered as 32 lowercase hex digits (16 for the cluster, 16 for the number), so it is
/// unique forever across leader changes and across clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gtrid {
    /// Random id chosen once when the cluster was created.
    pub cluster: u64,
    /// The transaction's number (from 1).
    pub index: u64,
}

impl fmt::Display for Gtrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.cluster, self.index)
    }
}

/// A gtrid that is not 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed gtrid {0:?}: expected 32 lowercase hex digits")]
pub struct MalformedGtrid(pub String);

impl std::str::FromStr for Gtrid {
    type Err = MalformedGtrid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MalformedGtrid(s.chars().take(64).collect());
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let cluster = u64::from_str_radix(&s[..16], 16).map_err(|_| bad())?;
        let index = u64::from_str_radix(&s[16..], 16).map_err(|_| bad())?;
        Ok(Self { cluster, index })
    }
}

/// Milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtrid_round_trips_and_rejects_garbage() {
        let g = Gtrid {
            cluster: 0xdead_beef,
            index: 42,
        };
        let s = g.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<Gtrid>(), Ok(g));
        for bad in [
            "",
            "xyz",
            &s.to_uppercase(),
            &format!("{s}0"),
            "00000000deadbeef000000000000002'",
            "0000000000000000000000000000000é",
        ] {
            assert!(bad.parse::<Gtrid>().is_err(), "accepted {bad:?}");
        }
    }
}
