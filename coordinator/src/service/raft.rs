//! The internal Raft service: decodes openraft requests from peers and hands them to
//! the local Raft node. Served on the Raft port only, never on the client port.

use ratify_proto::raft_pb::raft_server::Raft as RaftService;
use ratify_proto::raft_pb::RaftPayload;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::raft::codec::{decode, encode};
use crate::types::typ::Raft;

/// Serves peers' Raft RPCs.
#[derive(Clone)]
pub struct RaftServer {
    /// The local node.
    raft: Raft,
}

impl RaftServer {
    /// Wraps the local Raft node.
    pub fn new(raft: Raft) -> Self {
        Self { raft }
    }
}

fn payload<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

fn request<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    decode(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft payload: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        payload(&self.raft.append_entries(request(req)?).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        payload(&self.raft.vote(request(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        payload(&self.raft.install_snapshot(request(req)?).await)
    }
}
