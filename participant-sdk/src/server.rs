//! The participant gRPC server that hosts resources for the coordinator.
//!
//! [`ParticipantServer`] implements `ratify.v1.Participant` over a set of named
//! [`Resource`]s. Votes and phase-2 results travel in responses; gRPC status codes
//! only say that a call could not be answered, and `status_of` is the one place
//! that decides which code.

use ratify_common::tls::{Caller, Role, Transport};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use ratify_proto::pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::resource::{is_valid_name, CommitResult, Resource, ResourceError, RollbackResult, Vote};
use crate::wire::NAME_RULE;
use crate::xid::{Xid, XidError};

/// Errors building or running a [`ParticipantServer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A resource name is not 1 to 64 characters of `[A-Za-z0-9_.-]`.
    #[error("invalid resource name {0:?}: use {rule}", rule = NAME_RULE)]
    InvalidResourceName(String),
    /// Two resources were registered under one name.
    #[error("resource {0:?} is registered twice")]
    DuplicateResource(String),
    /// The gRPC server failed.
    #[error("participant server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// No listening socket could be set up.
    #[error("cannot listen: {0}")]
    Bind(#[source] std::io::Error),
}

impl ServerError {
    /// True when running the server again may work (a transport failure); building
    /// errors are fixed in code.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transport(_) | Self::Bind(_))
    }
}

/// Why one participant call could not be answered. Turned into a gRPC status only by
/// [`status_of`].
#[derive(Debug)]
enum CallError {
    /// The request names a resource with characters outside the alphabet.
    BadResourceName,
    /// No resource of that name is hosted here.
    UnknownResource(String),
    /// The request has no xid.
    MissingXid,
    /// The xid is malformed.
    BadXid(XidError),
    /// The resource failed.
    Resource(ResourceError),
    /// The task running the resource call panicked or was cancelled.
    Crashed(String),
}

/// The only place a participant-side failure becomes a gRPC status.
fn status_of(e: CallError) -> Status {
    match e {
        CallError::BadResourceName => {
            Status::invalid_argument(format!("resource must be {NAME_RULE}"))
        }
        // The coordinator treats NOT_FOUND as a NO vote at prepare.
        CallError::UnknownResource(name) => {
            Status::not_found(format!("no resource named {name:?} is hosted here"))
        }
        CallError::MissingXid => Status::invalid_argument("xid is required"),
        CallError::BadXid(e) => Status::invalid_argument(e.to_string()),
        CallError::Resource(ResourceError::Unavailable(m)) => Status::unavailable(m),
        CallError::Resource(ResourceError::Failed(m)) => Status::internal(m),
        CallError::Crashed(m) => Status::internal(format!("resource call crashed: {m}")),
    }
}

/// Hosts named [`Resource`]s and serves the `ratify.v1.Participant` gRPC service.
#[derive(Clone, Default)]
pub struct ParticipantServer {
    /// Resources by name, as the coordinator addresses them in requests.
    resources: HashMap<String, Arc<dyn Resource>>,
    /// Plaintext (anyone may call) or mutual TLS (only the coordinator cluster's
    /// nodes, `ratify://peer/<id>`, may call; docs/design.md, "Security").
    transport: Transport,
}

impl std::fmt::Debug for ParticipantServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.resources.keys().collect();
        names.sort();
        f.debug_struct("ParticipantServer")
            .field("resources", &names)
            .finish()
    }
}

impl ParticipantServer {
    /// A server hosting no resources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts `resource` under `name` (the name branches are enlisted with).
    ///
    /// # Errors
    /// [`ServerError::InvalidResourceName`], [`ServerError::DuplicateResource`].
    pub fn with_resource(
        mut self,
        name: impl Into<String>,
        resource: Arc<dyn Resource>,
    ) -> Result<Self, ServerError> {
        let name = name.into();
        if !is_valid_name(&name) {
            return Err(ServerError::InvalidResourceName(name));
        }
        if self.resources.contains_key(&name) {
            return Err(ServerError::DuplicateResource(name));
        }
        self.resources.insert(name, resource);
        Ok(self)
    }

    /// Serves over `transport`: with TLS, only a coordinator node's certificate
    /// (`ratify://peer/<id>` of the CA) may call Prepare, Commit, Rollback and
    /// Recover; others are refused with PERMISSION_DENIED and no resource is touched.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The tonic service, to embed in a server that hosts other services too. With
    /// a TLS transport, that server must take its connections from
    /// [`Transport::incoming`] (which tells the service who calls); any other
    /// connection is refused.
    pub fn into_service(self) -> pb::participant_server::ParticipantServer<Self> {
        pb::participant_server::ParticipantServer::new(self)
    }

    /// Serves on `listener` until `shutdown` completes, then lets in-flight calls
    /// finish.
    ///
    /// # Errors
    /// [`ServerError::Transport`] when the server fails.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, resources = ?self, tls = self.transport.is_tls(), "participant server listening");
        let transport = self.transport.clone();
        transport.watch();
        // Nagle off (in both transports): small RPCs must not wait for delayed ACKs.
        let result = tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(transport.incoming(listener), shutdown)
            .await;
        result?;
        Ok(())
    }

    /// Refuses a caller other than a coordinator node, under TLS.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.transport.is_tls() {
            Caller::require(request, Role::Peer)?;
        }
        Ok(())
    }

    fn resource(&self, name: &str) -> Result<Arc<dyn Resource>, CallError> {
        if !is_valid_name(name) {
            return Err(CallError::BadResourceName);
        }
        self.resources
            .get(name)
            .cloned()
            .ok_or_else(|| CallError::UnknownResource(name.to_owned()))
    }

    /// Resolves the resource and xid of a request and runs `call` on them in its own
    /// task, inside a span that names both and continues the coordinator's trace
    /// (the `traceparent` in `metadata`; docs/design.md, "Tracing").
    ///
    /// The task is spawned so that a coordinator giving up on the RPC (which drops
    /// this future) cannot cancel a resource halfway through a prepare or commit.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        resource: &str,
        xid: Option<&pb::Xid>,
        call: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Resource>, Xid) -> Fut,
        Fut: Future<Output = Result<T, ResourceError>> + Send + 'static,
    {
        let span = tracing::info_span!(
            "participant",
            op,
            resource,
            gtrid = tracing::field::Empty,
            xid = tracing::field::Empty,
            otel.kind = "server",
        );
        ratify_proto::trace::adopt(&span, metadata);
        let prepared = (|| {
            let r = self.resource(resource)?;
            let xid = Xid::from_pb(xid.ok_or(CallError::MissingXid)?).map_err(CallError::BadXid)?;
            Ok((r, xid))
        })();
        let outcome = match prepared {
            Ok((r, xid)) => {
                span.record("gtrid", xid.gtrid());
                span.record("xid", tracing::field::display(&xid));
                match tokio::spawn(call(r, xid).instrument(span.clone())).await {
                    Ok(result) => result.map_err(CallError::Resource),
                    Err(e) => Err(CallError::Crashed(e.to_string())),
                }
            }
            Err(e) => Err(e),
        };
        let _entered = span.enter();
        outcome.map_err(|e| {
            tracing::warn!(error = ?e, "participant call failed");
            status_of(e)
        })
    }
}

#[tonic::async_trait]
impl pb::participant_server::Participant for ParticipantServer {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.authorize(&request)?;
        let (metadata, _, req) = request.into_parts();
        let vote = self
            .run(
                "prepare",
                &metadata,
                &req.resource,
                req.xid.as_ref(),
                |r, xid| async move { r.prepare(&xid).await },
            )
            .await?;
        // The vote is decided (and, for YES, durable) but not yet sent.
        crate::failpoint::hit("participant.after_prepare").await;
        tracing::debug!(?vote, resource = %req.resource, "voted");
        let (vote, detail) = match vote {
            Vote::Yes => (pb::Vote::Yes, String::new()),
            Vote::No(reason) => (pb::Vote::No, reason),
            Vote::ReadOnly => (pb::Vote::ReadOnly, String::new()),
        };
        Ok(Response::new(pb::PrepareResponse {
            vote: vote.into(),
            detail,
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::BranchCommitRequest>,
    ) -> Result<Response<pb::BranchCommitResponse>, Status> {
        self.authorize(&request)?;
        let (metadata, _, req) = request.into_parts();
        let one_phase = req.one_phase;
        let xid = req.xid.clone();
        crate::failpoint::hit("participant.before_commit").await;
        let result = self
            .run(
                if one_phase {
                    "commit_one_phase"
                } else {
                    "commit"
                },
                &metadata,
                &req.resource,
                req.xid.as_ref(),
                move |r, xid| async move { r.commit(&xid, one_phase).await },
            )
            .await?;
        // Committed locally, not yet acknowledged.
        crate::failpoint::hit("participant.after_commit").await;
        let result = match result {
            CommitResult::Committed => pb::BranchCommitResult::Committed,
            // A branch rolled back under a COMMIT decision (a person, or a tombstone
            // that got there first): passed on as it is, so the coordinator records a
            // heuristic outcome for a person (rule 11). An error status would be
            // retried for ever and the contradiction never seen.
            CommitResult::RolledBack if !one_phase => {
                // `run` accepted the xid, so it parses; the fallback is never used.
                let xid = xid
                    .as_ref()
                    .and_then(|x| Xid::from_pb(x).ok())
                    .map(|x| x.render())
                    .unwrap_or_default();
                tracing::warn!(
                    resource = %req.resource,
                    %xid,
                    "two-phase commit of a branch that was rolled back: heuristic outcome"
                );
                pb::BranchCommitResult::RolledBack
            }
            CommitResult::RolledBack => pb::BranchCommitResult::RolledBack,
        };
        Ok(Response::new(pb::BranchCommitResponse {
            result: result.into(),
            detail: String::new(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::BranchRollbackRequest>,
    ) -> Result<Response<pb::BranchRollbackResponse>, Status> {
        self.authorize(&request)?;
        let (metadata, _, req) = request.into_parts();
        crate::failpoint::hit("participant.before_rollback").await;
        let result = self
            .run(
                "rollback",
                &metadata,
                &req.resource,
                req.xid.as_ref(),
                |r, xid| async move { r.rollback(&xid).await },
            )
            .await?;
        let result = match result {
            RollbackResult::RolledBack => pb::BranchRollbackResult::RolledBack,
            RollbackResult::AlreadyCommitted => pb::BranchRollbackResult::AlreadyCommitted,
        };
        Ok(Response::new(pb::BranchRollbackResponse {
            result: result.into(),
            detail: String::new(),
        }))
    }

    async fn recover(
        &self,
        request: Request<pb::RecoverRequest>,
    ) -> Result<Response<pb::RecoverResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let span = tracing::info_span!("participant", op = "recover", resource = %req.resource);
        let r = self.resource(&req.resource).map_err(status_of)?;
        let xids = tokio::spawn(async move { r.recover().await }.instrument(span))
            .await
            .map_err(|e| CallError::Crashed(e.to_string()))
            .and_then(|r| r.map_err(CallError::Resource))
            .map_err(status_of)?;
        Ok(Response::new(pb::RecoverResponse {
            xids: xids.iter().map(Xid::to_pb).collect(),
        }))
    }
}

/// A participant hosted in this process on a loopback port, with its recovery loop:
/// what demos, benchmarks and tests embed. A one-resource [`crate::App`] (which it
/// wraps); dropping it stops both.
pub struct HostedParticipant {
    /// `host:port` to enlist.
    pub endpoint: String,
    /// The app serving it (stopped when dropped).
    _app: crate::App,
}

impl HostedParticipant {
    /// Serves `resource` as `name` on `127.0.0.1:<free port>` and resolves its in-doubt
    /// branches with `client` every `recovery_interval`.
    ///
    /// # Errors
    /// [`crate::AppError::Server`]: an invalid resource name, or no port to bind.
    pub async fn start(
        name: &str,
        resource: Arc<dyn Resource>,
        client: crate::client::CoordinatorClient,
        recovery_interval: std::time::Duration,
    ) -> Result<Self, crate::AppError> {
        Self::start_on(name, resource, client, recovery_interval, Transport::Plain).await
    }

    /// [`HostedParticipant::start`] serving over `transport`: under TLS only the
    /// coordinator's nodes may call it, and it registers its endpoint with `client`
    /// (whose certificate must name `ratify://participant/<name>`).
    ///
    /// # Errors
    /// As [`HostedParticipant::start`], and [`crate::AppError::Client`] when the
    /// registration is refused.
    pub async fn start_on(
        name: &str,
        resource: Arc<dyn Resource>,
        client: crate::client::CoordinatorClient,
        recovery_interval: std::time::Duration,
        transport: Transport,
    ) -> Result<Self, crate::AppError> {
        let app = crate::App::builder()
            .transport(transport)
            .client(client)
            .resource(name, resource)
            .recovery_interval(recovery_interval)
            .start()
            .await?;
        Ok(Self {
            endpoint: app.endpoint().to_string(),
            _app: app,
        })
    }
}

impl std::fmt::Debug for HostedParticipant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedParticipant")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

pub use ratify_common::stopped;

#[cfg(test)]
mod tests {
    use super::*;

    // The server over real resources is tested in ratify-devkit's
    // tests/participant_server.rs (the demo resources live there).
    #[test]
    fn resource_errors_map_to_retry_or_give_up_codes() {
        let unavailable = status_of(CallError::Resource(ResourceError::Unavailable("x".into())));
        assert_eq!(unavailable.code(), tonic::Code::Unavailable);
        let failed = status_of(CallError::Resource(ResourceError::Failed("x".into())));
        assert_eq!(failed.code(), tonic::Code::Internal);
    }
}
