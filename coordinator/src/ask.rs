//! One question to one node, on a fresh connection with short timeouts: what the
//! membership check asks a joining node, and what local clusters and tests poll.

use std::time::Duration;

use ratify_common::tls::{Expect, Transport};
use ratify_proto::pb;
use ratify_proto::pb::admin_client::AdminClient;

use crate::types::NodeId;

/// Asks the node serving the client API at `addr` for its status, on a fresh connection
/// (a node that was just restarted answers at once).
///
/// # Errors
/// Transport failures and statuses, as `tonic::Status`.
pub async fn node_status(
    addr: &str,
    transport: &Transport,
) -> Result<pb::ClusterStatusResponse, tonic::Status> {
    node_status_of(addr, transport, None).await
}

/// [`node_status`] of the node that must be `id` (under TLS its certificate must
/// name `ratify://peer/<id>`, or the connection is hung up on).
///
/// # Errors
/// As [`node_status`].
pub async fn node_status_of(
    addr: &str,
    transport: &Transport,
    id: Option<NodeId>,
) -> Result<pb::ClusterStatusResponse, tonic::Status> {
    let channel = dial_quickly(addr, transport, id).await?;
    Ok(AdminClient::new(channel)
        .cluster_status(pb::ClusterStatusRequest {})
        .await?
        .into_inner())
}

/// A channel to `addr` for one short question: 300 ms to connect, 1 s per call.
async fn dial_quickly(
    addr: &str,
    transport: &Transport,
    id: Option<NodeId>,
) -> Result<tonic::transport::Channel, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(1));
    // A new channel: a fresh connection, made by the call (its failure is
    // UNAVAILABLE).
    Ok(transport.channel(endpoint, Expect::Node(id)))
}

/// The id of the node serving the Raft port at `addr` (`Raft.Identify`).
///
/// # Errors
/// When it cannot be reached or does not answer within a second.
pub async fn raft_identity(addr: &str, transport: &Transport) -> Result<NodeId, tonic::Status> {
    raft_identity_of(addr, transport, None).await
}

/// [`raft_identity`] of the node that must be `id` (its certificate, under TLS).
///
/// # Errors
/// As [`raft_identity`].
pub async fn raft_identity_of(
    addr: &str,
    transport: &Transport,
    id: Option<NodeId>,
) -> Result<NodeId, tonic::Status> {
    let channel = dial_quickly(addr, transport, id).await?;
    Ok(ratify_proto::raft_pb::raft_client::RaftClient::new(channel)
        .identify(ratify_proto::raft_pb::IdentifyRequest {})
        .await?
        .into_inner()
        .node_id)
}
