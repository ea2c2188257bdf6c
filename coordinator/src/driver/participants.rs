//! Calls to participants: one lazily connected channel per endpoint, and the mapping of
//! their answers (including garbage) onto protocol outcomes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ratify_common::tls::{Expect, Transport};
use ratify_common::wire;
use ratify_proto::pb;
use ratify_proto::pb::participant_client::ParticipantClient;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use crate::raft::SharedSm;

/// The URI to dial for a participant endpoint: `host:port` gets `http://`, a URI is
/// taken as it is. New endpoints pass the wire rule (`ratify_common::wire`); ones an
/// earlier version recorded under its looser rule (any URI tonic takes) are dialled
/// the way that version dialled them, so their transactions still finish.
pub fn endpoint_uri(endpoint: &str) -> String {
    if let Ok(e) = wire::Endpoint::parse(endpoint) {
        return e.uri();
    }
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Largest participant answer accepted.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Largest Recover answer accepted (a list of every prepared xid of a resource).
const MAX_RECOVER_BYTES: usize = 16 * 1024 * 1024;

/// A participant's answer to prepare, as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Prepared durably.
    Yes,
    /// Nothing to commit.
    ReadOnly,
    /// Rolled back locally; detail says why.
    No(String),
    /// The participant says it does not host the resource (NOT_FOUND): a NO for a
    /// first prepare, but not proof that an earlier prepare never happened (the
    /// endpoint may now be served by another process), so a re-driven commit asks
    /// again (docs/design.md, rule 16).
    NotHosted(String),
    /// No answer in time, or a transport failure.
    Unreachable(String),
    /// An answer outside the protocol.
    Garbage(String),
}

/// A participant's answer to a phase-2 or one-phase call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase2Outcome {
    /// The branch is committed.
    Committed,
    /// The branch is rolled back.
    RolledBack,
    /// Retry later (transport failure, timeout, garbage, unknown resource).
    Retry(String),
}

/// The branch a participant call is about, named in its span.
#[derive(Debug, Clone, Copy)]
struct Branch<'a> {
    /// `prepare`, `commit`, `commit_one_phase`, `rollback` or `recover`.
    op: &'static str,
    endpoint: &'a str,
    resource: &'a str,
    /// None for a call about the whole resource (Recover).
    xid: Option<&'a pb::Xid>,
}

/// Most participant channels kept open; past it the least recently used goes.
pub const MAX_CHANNELS: usize = 4_096;

/// A cached channel and when it was last used.
#[derive(Debug)]
struct Cached {
    /// The client (a tonic channel reconnects by itself).
    client: ParticipantClient<Channel>,
    /// Last use, for closing idle channels.
    used: Instant,
}

/// Cached gRPC channels to participants, bounded: idle ones are closed by
/// [`ParticipantPool::close_idle`], and at most [`MAX_CHANNELS`] are kept (endpoint
/// strings come from clients, so they cannot be trusted to be few).
#[derive(Debug, Default)]
pub struct ParticipantPool {
    /// Channel per endpoint string.
    clients: Mutex<HashMap<String, Cached>>,
    /// Plaintext or mutual TLS.
    transport: Transport,
    /// The replicated table, for the participant registry: a branch recorded at an
    /// endpoint its participant has since left is called where it is now.
    sm: Option<SharedSm>,
}

impl ParticipantPool {
    /// A pool dialling over `transport`, following the registry of `sm` if given.
    pub fn new(transport: Transport, sm: Option<SharedSm>) -> Self {
        Self {
            clients: Mutex::default(),
            transport,
            sm,
        }
    }

    /// Where a branch recorded at `endpoint` is called, and the participant
    /// registered there (docs/design.md, "Security"), in one look at the registry.
    fn target(&self, endpoint: &str) -> (String, Option<String>) {
        let Some(sm) = &self.sm else {
            return (endpoint.to_string(), None);
        };
        let sm = sm.read();
        let table = &sm.table;
        if table.participants.is_empty() {
            return (endpoint.to_string(), None);
        }
        let target = table.route(endpoint).unwrap_or(endpoint).to_string();
        let owner = table.owner_of_endpoint(endpoint).map(str::to_string);
        (target, owner)
    }

    /// Closes channels unused for `idle` or longer.
    pub fn close_idle(&self, idle: Duration) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|_, c| c.used.elapsed() < idle);
    }

    /// Open channels.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// No channel open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channel to `endpoint` whose server must be participant `owner` (any
    /// participant when `None`); cached per both, so an endpoint that changed hands
    /// is dialled afresh as its new owner's.
    fn client(
        &self,
        endpoint: &str,
        owner: Option<String>,
    ) -> Result<ParticipantClient<Channel>, String> {
        let key = format!("{endpoint}\u{0}{}", owner.as_deref().unwrap_or(""));
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get_mut(&key) {
            c.used = Instant::now();
            return Ok(c.client.clone());
        }
        if clients.len() >= MAX_CHANNELS {
            if let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
            {
                clients.remove(&oldest);
            }
        }
        let ep = Endpoint::from_shared(endpoint_uri(endpoint))
            .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        // A participant's answer is a vote and a short detail: anything larger is
        // refused by the decoder rather than buffered.
        // The server must be a participant, the one registered there if any.
        let client = ParticipantClient::new(self.transport.channel(ep, Expect::Participant(owner)))
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        clients.insert(
            key,
            Cached {
                client: client.clone(),
                used: Instant::now(),
            },
        );
        Ok(client)
    }

    /// One unary call to a participant, bounded by `timeout`, in a span of its own
    /// (a child of the transaction's span) whose W3C trace context travels with the
    /// request (docs/design.md, "Tracing"). A failure carries the status code (none
    /// for a timeout or a bad endpoint) and a detail naming the endpoint.
    async fn call<Req, Resp, F, Fut>(
        &self,
        branch: Branch<'_>,
        timeout: Duration,
        req: Req,
        rpc: F,
    ) -> Result<Resp, (Option<tonic::Code>, String)>
    where
        F: FnOnce(ParticipantClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let Branch {
            op,
            endpoint,
            resource,
            xid,
        } = branch;
        let span = tracing::info_span!(
            "branch_call",
            op,
            endpoint,
            resource,
            gtrid = tracing::field::Empty,
            xid = tracing::field::Empty,
        );
        if let Some(xid) = xid {
            span.record("gtrid", xid.gtrid.as_str());
            span.record(
                "xid",
                tracing::field::display(format_args!(
                    "{:08x}.{}.{}",
                    xid.format_id, xid.gtrid, xid.bqual
                )),
            );
        }
        let (target, owner) = self.target(endpoint);
        let client = self.client(&target, owner).map_err(|e| (None, e))?;
        let mut req = tonic::Request::new(req);
        req.set_timeout(timeout);
        ratify_proto::trace::inject(req.metadata_mut(), &span);
        let answer = tokio::time::timeout(timeout, rpc(client, req))
            .instrument(span)
            .await;
        match answer {
            Err(_) => Err((None, format!("{target}: no answer within {timeout:?}"))),
            Ok(Err(status)) => Err((Some(status.code()), format!("{target}: {status}"))),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    /// Phase 1 on one branch, bounded by `timeout`.
    pub async fn prepare(
        &self,
        endpoint: &str,
        resource: &str,
        xid: pb::Xid,
        timeout: Duration,
    ) -> PrepareOutcome {
        let branch = Branch {
            op: "prepare",
            endpoint,
            resource,
            xid: Some(&xid),
        };
        let req = pb::PrepareRequest {
            resource: resource.to_string(),
            xid: Some(xid.clone()),
        };
        let resp = self
            .call(branch, timeout, req, |mut c, r| async move {
                c.prepare(r).await
            })
            .await;
        match resp {
            // The participant does not host the resource: it cannot have prepared.
            Err((Some(tonic::Code::NotFound), detail)) => PrepareOutcome::NotHosted(detail),
            Err((_, detail)) => PrepareOutcome::Unreachable(detail),
            Ok(resp) => match pb::Vote::try_from(resp.vote) {
                Ok(pb::Vote::Yes) => PrepareOutcome::Yes,
                Ok(pb::Vote::ReadOnly) => PrepareOutcome::ReadOnly,
                Ok(pb::Vote::No) => {
                    PrepareOutcome::No(format!("{endpoint}/{resource}: {}", resp.detail))
                }
                Ok(pb::Vote::Unspecified) | Err(_) => PrepareOutcome::Garbage(format!(
                    "{endpoint}/{resource}: vote {} is not a vote",
                    resp.vote
                )),
            },
        }
    }

    /// Commit (two-phase or one-phase) on one branch, bounded by `timeout`.
    pub async fn commit(
        &self,
        endpoint: &str,
        resource: &str,
        xid: pb::Xid,
        one_phase: bool,
        timeout: Duration,
    ) -> Phase2Outcome {
        let branch = Branch {
            op: if one_phase {
                "commit_one_phase"
            } else {
                "commit"
            },
            endpoint,
            resource,
            xid: Some(&xid),
        };
        let req = pb::BranchCommitRequest {
            resource: resource.to_string(),
            xid: Some(xid.clone()),
            one_phase,
        };
        let resp = self
            .call(
                branch,
                timeout,
                req,
                |mut c, r| async move { c.commit(r).await },
            )
            .await;
        match resp {
            Err((_, detail)) => Phase2Outcome::Retry(detail),
            Ok(resp) => match pb::BranchCommitResult::try_from(resp.result) {
                Ok(pb::BranchCommitResult::Committed) => Phase2Outcome::Committed,
                Ok(pb::BranchCommitResult::RolledBack) => Phase2Outcome::RolledBack,
                _ => Phase2Outcome::Retry(format!(
                    "{endpoint}/{resource}: commit result {} is not a result",
                    resp.result
                )),
            },
        }
    }

    /// The xids `resource` at `endpoint` holds prepared (its Recover answer), bounded
    /// by `timeout`. Used to check that a branch is prepared before an operator
    /// commits (docs/design.md, rule 17); the list may be long, so it is allowed up
    /// to [`MAX_RECOVER_BYTES`].
    pub async fn recover(
        &self,
        endpoint: &str,
        resource: &str,
        timeout: Duration,
    ) -> Result<Vec<pb::Xid>, String> {
        let branch = Branch {
            op: "recover",
            endpoint,
            resource,
            xid: None,
        };
        let req = pb::RecoverRequest {
            resource: resource.to_string(),
        };
        self.call(branch, timeout, req, |c, r| async move {
            c.max_decoding_message_size(MAX_RECOVER_BYTES)
                .recover(r)
                .await
        })
        .await
        .map(|resp| resp.xids)
        .map_err(|(_, detail)| detail)
    }

    /// Rollback on one branch, bounded by `timeout`.
    pub async fn rollback(
        &self,
        endpoint: &str,
        resource: &str,
        xid: pb::Xid,
        timeout: Duration,
    ) -> Phase2Outcome {
        let branch = Branch {
            op: "rollback",
            endpoint,
            resource,
            xid: Some(&xid),
        };
        let req = pb::BranchRollbackRequest {
            resource: resource.to_string(),
            xid: Some(xid.clone()),
        };
        let resp = self
            .call(branch, timeout, req, |mut c, r| async move {
                c.rollback(r).await
            })
            .await;
        match resp {
            Err((_, detail)) => Phase2Outcome::Retry(detail),
            Ok(resp) => match pb::BranchRollbackResult::try_from(resp.result) {
                Ok(pb::BranchRollbackResult::RolledBack) => Phase2Outcome::RolledBack,
                Ok(pb::BranchRollbackResult::AlreadyCommitted) => Phase2Outcome::Committed,
                _ => Phase2Outcome::Retry(format!(
                    "{endpoint}/{resource}: rollback result {} is not a result",
                    resp.result
                )),
            },
        }
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint_uri;

    /// Endpoints an earlier version accepted are dialled as it dialled them.
    #[test]
    fn old_endpoints_are_dialled_as_before() {
        assert_eq!(endpoint_uri("127.0.0.1:7000"), "http://127.0.0.1:7000");
        assert_eq!(endpoint_uri("svc"), "http://svc");
        assert_eq!(endpoint_uri("svc:7000/x"), "http://svc:7000/x");
        assert_eq!(endpoint_uri("https://svc:7000"), "https://svc:7000");
    }
}
