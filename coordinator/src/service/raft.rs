//! The internal Raft service: decodes openraft requests from peers and hands them to
//! the local Raft node. Served on the Raft port only, never on the client port.

use ratify_proto::raft_pb::raft_server::Raft as RaftService;
use ratify_proto::raft_pb::{IdentifyRequest, IdentifyResponse, RaftPayload};
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::raft::codec::{decode, encode};
use crate::types::typ::Raft;
use crate::types::NodeId;

/// Serves peers' Raft RPCs.
#[derive(Clone)]
pub struct RaftServer {
    /// The local node.
    raft: Raft,
    /// Its id: requests meant for another node are refused.
    id: NodeId,
}

impl RaftServer {
    /// Wraps the local Raft node `id`.
    pub fn new(raft: Raft, id: NodeId) -> Self {
        Self { raft, id }
    }

    /// The request's payload, decoded, if it is meant for this node.
    fn request<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<T, Status> {
        let req = req.into_inner();
        if req.target != self.id {
            // Answering would speak for another member with this node's log and
            // vote (docs/design.md, "Membership changes").
            return Err(Status::failed_precondition(format!(
                "this Raft port serves node {}, not node {}",
                self.id, req.target
            )));
        }
        decode(&req.data)
            .map_err(|e| Status::invalid_argument(format!("undecodable Raft payload: {e}")))
    }
}

fn payload<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data, target: 0 }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        payload(&self.raft.append_entries(self.request(req)?).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        payload(&self.raft.vote(self.request(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        payload(&self.raft.install_snapshot(self.request(req)?).await)
    }

    async fn identify(
        &self,
        _req: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        Ok(Response::new(IdentifyResponse { node_id: self.id }))
    }
}
