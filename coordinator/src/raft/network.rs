//! The Raft network: openraft RPCs carried over the internal `ratify.v1.raft.Raft`
//! gRPC service, one lazily connected channel per peer.
//!
//! # Bounded AppendEntries
//! openraft 0.9 gives each AppendEntries one heartbeat interval (100 ms) and sends up
//! to `max_payload_entries` entries in it, whatever their size; a follower that fell
//! behind by a burst of large entries would get the same oversized batch, time out,
//! and get it again, forever. So an AppendEntries over [`MAX_APPEND_BYTES`] with more
//! than one entry is not sent: it answers `PayloadTooLarge` with how many entries
//! would fit, and openraft sends that many (for its next few RPCs). One entry is at
//! most about 512 KiB (the batcher bounds entries by bytes), so every batch fits.

use std::net::IpAddr;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ratify_common::tls::{Expect, Transport};
use ratify_proto::raft_pb::raft_client::RaftClient;
use ratify_proto::raft_pb::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::codec::{decode, encode};
use crate::types::typ::{RaftError, RpcError};
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Largest AppendEntries sent with more than one entry, encoded.
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// Builds one [`PeerConnection`] per target node.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Source address for connections to peers (`None`: the OS picks). Lets a test
    /// proxy tell nodes apart on loopback, to cut one node off (see `netfault`).
    pub source_ip: Option<IpAddr>,
    /// Plaintext or mutual TLS (the node's own certificate is presented; the peer's
    /// must be of the cluster's CA and name its host).
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConnection {
            target,
            addr: node.raft_addr.clone(),
            source_ip: self.source_ip,
            transport: self.transport.clone(),
            client: None,
        }
    }
}

/// A connection to one peer's Raft service.
#[derive(Debug)]
pub struct PeerConnection {
    /// The peer's id, for error reports.
    target: NodeId,
    /// The peer's Raft address.
    addr: String,
    /// Source address of the connection, if fixed.
    source_ip: Option<IpAddr>,
    /// Plaintext or mutual TLS.
    transport: Transport,
    /// Created on first use so that a dead peer costs nothing until contacted.
    client: Option<RaftClient<Channel>>,
}

/// Which RPC of the Raft service to call.
#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerConnection {
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let client = RaftClient::new(self.transport.channel_from(
            endpoint,
            self.source_ip,
            Expect::Node(Some(self.target)),
        ))
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = encode(req).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        self.call_encoded(rpc, data, option).await
    }

    async fn call_encoded<Resp, E>(
        &mut self,
        rpc: Rpc,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.client().map_err(RpcError::Unreachable)?;
        // Addressed: whatever answers at the address must be that node.
        let mut request = tonic::Request::new(RaftPayload {
            data,
            target: self.target,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let payload = match reply {
            Ok(r) => r.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                ) =>
            {
                // Connection refused or reset, or another node at the target's
                // address: let openraft back off instead of spinning.
                return Err(RpcError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => return Err(RpcError::Network(NetworkError::new(&status))),
        };
        let result: Result<Resp, RaftError<E>> =
            decode(&payload.data).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let data = encode(&rpc).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        let n = rpc.entries.len();
        if n > 1 && data.len() > MAX_APPEND_BYTES {
            let fit = (n * MAX_APPEND_BYTES / data.len()).clamp(1, n - 1);
            tracing::debug!(
                entries = n,
                bytes = data.len(),
                fit,
                "AppendEntries too large; asking openraft for a smaller batch"
            );
            return Err(RpcError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit as u64),
            ));
        }
        self.call_encoded(Rpc::Append, data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
