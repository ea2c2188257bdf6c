//! The internal Raft service: decodes openraft requests from peers and hands them to
//! the local Raft node. Served on the Raft port only, never on the client port.
//!
//! # Who may call (docs/design.md, "Security")
//! Under TLS only a certificate with a `ratify://peer/<id>` name is served, only for
//! that id (a Vote from the candidate it names, an AppendEntries or InstallSnapshot
//! from the leader it names), and only while that id is a voter of this node's
//! membership as its log stands (a learner neither campaigns nor leads). Every one of these requests can
//! change the vote or the log (an empty AppendEntries still saves a higher vote and
//! may truncate), so no request from a non-member is taken by a voter, whatever it
//! claims about the membership.
//!
//! The exception: a node whose own membership does not name it (none yet, or a new
//! node replaying an old log whose memberships name the founders only) takes
//! AppendEntries and InstallSnapshot from any peer as the leader it names; refusing
//! would wedge every join under a leader added after the cluster began. Such a node
//! counts for nothing, and whatever a stranger makes it believe, the cluster's voters
//! take no Vote or entries from it until they hold it a voter. A learner they name
//! is strict like a voter (a learner fed a forged membership must not lead).
//!
//! The cost: a voter that missed a membership change naming a new node cannot hear
//! from that node, should it lead, until it is replaced (it shows as lagging).

use ratify_proto::raft_pb::raft_server::Raft as RaftService;
use ratify_proto::raft_pb::{IdentifyRequest, IdentifyResponse, RaftPayload};
use serde::Serialize;
use tonic::{Request, Response, Status};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use ratify_common::tls::{Caller, Role};

use crate::raft::codec::{decode, encode};
use crate::types::typ::{Raft, Vote};
use crate::types::{NodeId, TypeConfig};

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

    /// The calling node's id from its certificate (`None`: plaintext, anyone).
    fn caller<T>(req: &Request<T>) -> Result<Option<NodeId>, Status> {
        match Caller::of(req) {
            Some(Caller::Anyone) => Ok(None),
            _ => {
                let name = Caller::require(req, Role::Peer)?;
                name.parse::<NodeId>().map(Some).map_err(|_| {
                    Status::permission_denied(format!(
                        "ratify://peer/{name} does not name a node id"
                    ))
                })
            }
        }
    }

    /// Whether `id` is a voter of this node's effective membership; true while it
    /// has none. Only voters campaign and lead.
    fn knows(&self, id: NodeId) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let mut nodes = membership.nodes().peekable();
        nodes.peek().is_none() || membership.voter_ids().any(|v| v == id)
    }

    /// Whether this node's own membership names it (as voter or learner).
    fn named(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let named = m
            .membership_config
            .membership()
            .nodes()
            .any(|(n, _)| *n == self.id);
        named
    }

    /// Refuses a request from `caller` that claims `vote` (a candidacy, or with
    /// `leader` a leadership) unless `vote` is the caller's own and the caller is a
    /// voter, or it leads and this node's membership does not name it yet (see the
    /// module docs).
    fn check_vote(&self, caller: Option<NodeId>, vote: &Vote, leader: bool) -> Result<(), Status> {
        let Some(id) = caller else { return Ok(()) };
        if vote.leader_id().voted_for() != Some(id) {
            return Err(Status::permission_denied(format!(
                "node {id} may not speak for node {:?}",
                vote.leader_id().voted_for()
            )));
        }
        if self.knows(id) || (leader && !self.named()) {
            Ok(())
        } else {
            Err(not_member(id))
        }
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

fn not_member(id: NodeId) -> Status {
    Status::permission_denied(format!("node {id} is not a member of this cluster"))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let caller = Self::caller(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = self.request(req)?;
        self.check_vote(caller, &rpc.vote, true)?;
        payload(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = Self::caller(&req)?;
        let rpc: VoteRequest<NodeId> = self.request(req)?;
        self.check_vote(caller, &rpc.vote, false)?;
        payload(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let caller = Self::caller(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = self.request(req)?;
        self.check_vote(caller, &rpc.vote, true)?;
        payload(&self.raft.install_snapshot(rpc).await)
    }

    async fn identify(
        &self,
        req: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        Self::caller(&req)?;
        Ok(Response::new(IdentifyResponse { node_id: self.id }))
    }
}
