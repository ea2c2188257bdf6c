//! The coordinator client: leader discovery, retries, deadlines (docs/design.md, rule 9).
//! Applications reach it through the participant SDK (`ratify_participant_sdk::client`);
//! the `ratify` admin commands use it directly.
//!
//! Only the Raft leader serves the `Coordinator` API. [`CoordinatorClient`] remembers
//! the current leader; a node that is not the leader answers UNAVAILABLE with the
//! leader's address in the `ratify-leader` metadata, and the client retries there at
//! once. Without a hint (transport error, connection refused, no answer within
//! [`ClientConfig::attempt_timeout`]) it moves to the next configured endpoint after
//! a jittered exponential backoff. INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION
//! (and other codes that say the request itself is wrong) are returned at once as
//! [`ClientError::Rejected`]. Every call gives up after [`ClientConfig::deadline`]
//! with [`ClientError::DeadlineExceeded`].
//!
//! # Idempotency
//! Commit, rollback, enlist, get, list and query-outcome are idempotent on the
//! server, so retrying them is safe: a retried commit returns the recorded outcome.
//! Begin is not: a retried begin may leave an orphan transaction behind, which is
//! harmless (nothing is enlisted in it by this client, and the leader aborts it when
//! its timeout passes).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use ratify_proto::{pb, LEADER_METADATA_KEY};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use ratify_common::tls::Transport;
use ratify_common::wire::{is_valid_name, preview, Endpoint as WireEndpoint, NAME_RULE};
use ratify_common::xid::{validate_gtrid, Xid, XidError};

/// How many leader hints are followed back to back before backing off, so two nodes
/// that point at each other during an election do not make the client spin.
const MAX_IMMEDIATE_REDIRECTS: u32 = 3;

/// Timeouts and backoff of a [`CoordinatorClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for one attempt (one RPC to one node). Default 3 s.
    pub attempt_timeout: Duration,
    /// Longest wait for a whole call, retries included. Default 15 s.
    pub deadline: Duration,
    /// Longest wait for a TCP connection to a node. Default 500 ms.
    pub connect_timeout: Duration,
    /// First backoff between attempts on different nodes. Default 20 ms.
    pub backoff_initial: Duration,
    /// Largest backoff (it doubles each time up to this). Default 250 ms.
    pub backoff_max: Duration,
    /// Plaintext (the default, for coordinators run with `--insecure`) or mutual
    /// TLS: the certificate presented names this client (`ratify://client/<name>`),
    /// and the transactions it begins are its own (docs/design.md, "Security").
    pub transport: Transport,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(15),
            connect_timeout: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(250),
            transport: Transport::Plain,
        }
    }
}

/// Errors of [`CoordinatorClient`] calls.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No coordinator endpoint was given.
    #[error("no coordinator endpoints given")]
    NoEndpoints,
    /// An endpoint is not `host:port` or `http://host:port`.
    #[error("invalid coordinator endpoint {endpoint}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given (shortened, escaped).
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument was refused before anything was sent (malformed gtrid, ...).
    #[error("invalid argument: {0}")]
    InvalidInput(String),
    /// The coordinator refused the request (INVALID_ARGUMENT, NOT_FOUND,
    /// FAILED_PRECONDITION, ...); retrying it will not help.
    #[error("coordinator refused the request: {code:?}: {message}")]
    Rejected {
        /// The gRPC status code.
        code: Code,
        /// The coordinator's message.
        message: String,
    },
    /// The call's deadline passed without an answer. For [`CoordinatorClient::commit`]
    /// this means the outcome is UNKNOWN: the transaction may have committed. Ask
    /// again (commit is idempotent) or look it up with [`CoordinatorClient::get`].
    #[error("coordinator call deadline exceeded; last error: {last_error}")]
    DeadlineExceeded {
        /// The last failure seen before giving up.
        last_error: String,
    },
    /// A single node asked directly did not answer.
    #[error("coordinator node {endpoint} unreachable: {message}")]
    Unreachable {
        /// The node.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The coordinator answered something outside the protocol.
    #[error("coordinator protocol error: {0}")]
    Protocol(String),
    /// The transaction completed so long ago that the coordinator no longer keeps its
    /// outcome (older than its retention). Distinct from a gtrid it never issued
    /// ([`ClientError::Rejected`] with NOT_FOUND). Final: the participants still know
    /// what their branches did.
    #[error("outcome forgotten: {0}")]
    Forgotten(String),
}

impl ClientError {
    /// True when calling again later may succeed (the coordinator was unreachable
    /// or had no leader). Safe to act on for every call except begin, which may
    /// then start a second transaction.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::DeadlineExceeded { .. } | Self::Unreachable { .. }
        )
    }
}

impl From<XidError> for ClientError {
    fn from(e: XidError) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

/// Codes that say the request itself is wrong, so no other node or later attempt
/// will answer differently.
fn is_rejection(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// Turns `host:port`, `http://host:port` or (with a TLS transport) `https://host:port`
/// into `host:port`, strictly (the wire rule of `ratify_common::wire::Endpoint`).
fn normalize_endpoint(raw: &str, tls: bool) -> Result<String, ClientError> {
    let parsed = WireEndpoint::parse(raw).map_err(|e| ClientError::InvalidEndpoint {
        endpoint: e.endpoint,
        reason: e.reason.to_owned(),
    })?;
    if parsed.tls && !tls {
        return Err(ClientError::InvalidEndpoint {
            endpoint: preview(raw),
            reason: "https:// needs TLS settings (ClientConfig::transport)".to_owned(),
        });
    }
    Endpoint::from_shared(parsed.uri()).map_err(|e| ClientError::InvalidEndpoint {
        endpoint: preview(raw),
        reason: e.to_string(),
    })?;
    Ok(parsed.host_port)
}

/// How [`CoordinatorClient::begin`] starts a transaction.
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// Transaction timeout; zero means the coordinator's default (30 s).
    pub timeout: Duration,
    /// Labels for operators (at most 16 pairs of at most 64 bytes each).
    pub labels: HashMap<String, String>,
    /// Branches to enlist right away: (participant endpoint, resource name).
    pub branches: Vec<(String, String)>,
}

/// A branch as the coordinator recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnlistedBranch {
    /// The id the participant's work must use.
    pub xid: Xid,
    /// Participant endpoint.
    pub endpoint: String,
    /// Resource name at that participant.
    pub resource: String,
}

/// A started transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    /// Its global transaction id.
    pub gtrid: String,
    /// The branches enlisted with it, in request order.
    pub branches: Vec<EnlistedBranch>,
    /// When it times out, Unix ms (leader clock).
    pub deadline_unix_ms: u64,
}

/// A transaction's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every branch commits.
    Committed,
    /// Every branch rolls back.
    Aborted,
}

/// The answer to commit or rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What was decided.
    pub outcome: Outcome,
    /// Why.
    pub reason: pb::Reason,
    /// Human-readable detail (which branch voted no, and what it said).
    pub detail: String,
}

impl Decision {
    fn from_wire(outcome: i32, reason: i32, detail: String) -> Result<Self, ClientError> {
        let outcome = match pb::Outcome::try_from(outcome) {
            Ok(pb::Outcome::Committed) => Outcome::Committed,
            Ok(pb::Outcome::Aborted) => Outcome::Aborted,
            Ok(pb::Outcome::Forgotten) => return Err(ClientError::Forgotten(detail)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "decision must be COMMITTED or ABORTED, got {other:?}"
                )))
            }
        };
        // A reason added by a newer coordinator is still a decision; keep it vague.
        let reason = pb::Reason::try_from(reason).unwrap_or(pb::Reason::Unspecified);
        Ok(Self {
            outcome,
            reason,
            detail,
        })
    }
}

/// Jittered exponential backoff.
struct Backoff {
    /// The next base delay.
    next: Duration,
    /// The cap.
    max: Duration,
}

impl Backoff {
    /// A delay between half and all of the base, so clients that failed together do
    /// not retry together.
    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        let half = base / 2;
        let jitter_us = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::thread_rng().gen_range(0..=jitter_us))
    }
}

/// Shared state behind a [`CoordinatorClient`].
#[derive(Debug)]
struct Inner {
    /// Configured endpoints, `host:port`.
    endpoints: Vec<String>,
    /// Timeouts and backoff.
    config: ClientConfig,
    /// One lazily connected channel per address, reused across calls.
    channels: Mutex<HashMap<String, Channel>>,
    /// The node that last served a leader-only call, or that a hint named.
    leader: Mutex<Option<String>>,
    /// Where the next rotation starts when the current node is not in `endpoints`.
    cursor: AtomicUsize,
    /// The branches of the transactions begun through this client, for Commit and
    /// Rollback to send along (see [`Known`]).
    known: Mutex<HashMap<String, Known>>,
}

/// What this client knows of a transaction it began: every branch enlisted through
/// it, by bqual. A leader keeps ACTIVE transactions in memory only; if it fails, the
/// next leader drives the commit from this list (docs/design.md, rule 16).
#[derive(Debug, Clone, Default)]
struct Known {
    /// Branches by bqual: (endpoint, resource).
    branches: std::collections::BTreeMap<u32, (String, String)>,
    /// The owner token (TLS) of the largest branch set the coordinator answered
    /// with, and that set's size: sent only while it covers every known branch.
    token: (usize, String),
    /// When the transaction times out, Unix ms (entries are dropped some time after).
    deadline_unix_ms: u64,
}

/// Most transactions whose branches one client remembers; past it, those whose
/// deadline passed a minute ago are dropped, and if none has, a new transaction is
/// not remembered (its Commit then carries no branch list: after a leader change it
/// is aborted, LEADER_LOST, rather than this map growing without bound).
const MAX_KNOWN: usize = 65_536;

/// A client of the Ratify coordinator cluster. Cheap to clone; clones share
/// connections and the known leader.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    /// Shared state.
    inner: Arc<Inner>,
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The leader address a not-leader node put in its answer, if valid.
fn leader_hint(status: &Status) -> Option<String> {
    let hint = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    normalize_endpoint(hint, true).ok()
}

type CoordinatorRpc = pb::coordinator_client::CoordinatorClient<Channel>;

impl CoordinatorClient {
    /// A client for the coordinator nodes at `endpoints` (`host:port` or
    /// `http://host:port`). Connections are made lazily, on first use.
    ///
    /// # Errors
    /// [`ClientError::NoEndpoints`], [`ClientError::InvalidEndpoint`].
    pub fn new(endpoints: Vec<String>, config: ClientConfig) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let endpoints = endpoints
            .iter()
            .map(|e| normalize_endpoint(e, config.transport.is_tls()))
            .collect::<Result<Vec<_>, _>>()?;
        // Start at a random node so many clients do not all ask the same follower.
        let cursor = rand::thread_rng().gen_range(0..endpoints.len());
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                config,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                cursor: AtomicUsize::new(cursor),
                known: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The node believed to be the leader, if any.
    pub fn leader(&self) -> Option<String> {
        lock(&self.inner.leader).clone()
    }

    /// Starts a global transaction, enlisting `options.branches` in the same step.
    ///
    /// Retried like every call; a retry after a lost answer may start a second
    /// transaction, which nobody uses and which the leader aborts at its timeout.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`], [`ClientError::Rejected`],
    /// [`ClientError::DeadlineExceeded`], [`ClientError::Protocol`].
    pub async fn begin(&self, options: BeginOptions) -> Result<Begun, ClientError> {
        let timeout_ms = u32::try_from(options.timeout.as_millis())
            .map_err(|_| ClientError::InvalidInput("timeout is too long".into()))?;
        let branches = options
            .branches
            .into_iter()
            .map(|(endpoint, resource)| branch_spec(endpoint, resource))
            .collect::<Result<Vec<_>, _>>()?;
        let request = pb::BeginRequest {
            timeout_ms,
            labels: options.labels,
            branches,
        };
        let span = tracing::info_span!("coordinator", op = "begin", gtrid = tracing::field::Empty);
        let response = self
            .leader_call("begin", request, |ch, r| async move {
                CoordinatorRpc::new(ch).begin(r).await
            })
            .instrument(span.clone())
            .await?;
        validate_gtrid(&response.gtrid).map_err(|e| ClientError::Protocol(e.to_string()))?;
        span.record("gtrid", response.gtrid.as_str());
        let begun = Begun {
            branches: response
                .branches
                .iter()
                .cloned()
                .map(enlisted)
                .collect::<Result<_, _>>()?,
            gtrid: response.gtrid.clone(),
            deadline_unix_ms: response.deadline_unix_ms,
        };
        self.remember(
            &begun.gtrid,
            begun.deadline_unix_ms,
            &begun.branches,
            &response.owner_token,
        );
        Ok(begun)
    }

    /// Notes branches of `gtrid` (begun through this client).
    fn remember(
        &self,
        gtrid: &str,
        deadline_unix_ms: u64,
        branches: &[EnlistedBranch],
        token: &str,
    ) {
        let mut known = lock(&self.inner.known);
        if known.len() >= MAX_KNOWN && !known.contains_key(gtrid) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            known.retain(|_, k| k.deadline_unix_ms.saturating_add(60_000) > now);
            if known.len() >= MAX_KNOWN {
                tracing::debug!(
                    gtrid,
                    "too many open transactions to remember their branches; this one's \
                     commit carries no branch list"
                );
                return;
            }
        }
        let entry = known.entry(gtrid.to_owned()).or_default();
        if deadline_unix_ms > 0 {
            entry.deadline_unix_ms = deadline_unix_ms;
        }
        for b in branches {
            if let Ok(bqual) = b.xid.bqual().parse::<u32>() {
                entry
                    .branches
                    .insert(bqual, (b.endpoint.clone(), b.resource.clone()));
            }
        }
        // The answer's token covers the branches as they stood after this call: at
        // least the highest bqual it named (answers may arrive out of order).
        let covers = branches
            .iter()
            .filter_map(|b| b.xid.bqual().parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        if !token.is_empty() && covers >= entry.token.0 {
            entry.token = (covers, token.to_owned());
        }
    }

    /// The decision a Commit or Rollback of `gtrid` answered; once there is one, the
    /// transaction's branches need not be remembered.
    fn decided(
        &self,
        gtrid: &str,
        outcome: i32,
        reason: i32,
        detail: String,
    ) -> Result<Decision, ClientError> {
        let d = Decision::from_wire(outcome, reason, detail);
        if d.is_ok() {
            lock(&self.inner.known).remove(gtrid);
        }
        d
    }

    /// The branch list to send with Commit or Rollback of `gtrid`: only for a
    /// transaction begun through this client, and only when its bquals run from 1
    /// without a gap (a branch enlisted elsewhere would make the list incomplete).
    fn branch_list(&self, gtrid: &str) -> Option<pb::BranchList> {
        let known = lock(&self.inner.known);
        let k = known.get(gtrid)?;
        let complete = k.branches.keys().copied().eq(1..=k.branches.len() as u32);
        let token = if k.token.0 == k.branches.len() {
            k.token.1.clone()
        } else {
            String::new()
        };
        complete.then(|| pb::BranchList {
            owner_token: token,
            branches: k
                .branches
                .iter()
                .map(|(bqual, (endpoint, resource))| pb::Branch {
                    xid: Some(pb::Xid {
                        format_id: ratify_proto::XID_FORMAT_ID,
                        gtrid: gtrid.to_owned(),
                        bqual: bqual.to_string(),
                    }),
                    endpoint: endpoint.clone(),
                    resource: resource.clone(),
                    ..Default::default()
                })
                .collect(),
        })
    }

    /// Enlists (participant `endpoint`, `resource`) in the ACTIVE transaction
    /// `gtrid`. Idempotent: enlisting the same pair again returns the same branch.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`], [`ClientError::Rejected`] (FAILED_PRECONDITION
    /// when the transaction is no longer ACTIVE), [`ClientError::DeadlineExceeded`],
    /// [`ClientError::Protocol`].
    pub async fn enlist(
        &self,
        gtrid: &str,
        endpoint: &str,
        resource: &str,
    ) -> Result<EnlistedBranch, ClientError> {
        validate_gtrid(gtrid)?;
        let request = pb::EnlistRequest {
            gtrid: gtrid.to_owned(),
            branch: Some(branch_spec(endpoint.to_owned(), resource.to_owned())?),
        };
        let response = self
            .leader_call("enlist", request, |ch, r| async move {
                CoordinatorRpc::new(ch).enlist(r).await
            })
            .instrument(tracing::info_span!("coordinator", op = "enlist", gtrid))
            .await?;
        let branch = enlisted(
            response
                .branch
                .ok_or_else(|| ClientError::Protocol("enlist answer has no branch".into()))?,
        )?;
        if lock(&self.inner.known).contains_key(gtrid) {
            self.remember(
                gtrid,
                0,
                std::slice::from_ref(&branch),
                &response.owner_token,
            );
        }
        Ok(branch)
    }

    /// Runs two-phase commit of `gtrid` and returns the decision. Once this returns
    /// [`Outcome::Committed`], every branch commits eventually.
    ///
    /// # Errors
    /// [`ClientError::DeadlineExceeded`] is the only way an UNKNOWN outcome is
    /// reported: the transaction may or may not have committed; call `commit` again
    /// (idempotent) or [`CoordinatorClient::get`] to learn it. Also
    /// [`ClientError::InvalidInput`], [`ClientError::Rejected`] (NOT_FOUND for a
    /// gtrid never issued), [`ClientError::Forgotten`] (completed long ago, outcome
    /// no longer kept), [`ClientError::Protocol`].
    pub async fn commit(&self, gtrid: &str) -> Result<Decision, ClientError> {
        validate_gtrid(gtrid)?;
        let request = pb::CommitRequest {
            gtrid: gtrid.to_owned(),
            branches: self.branch_list(gtrid),
        };
        let r = self
            .leader_call("commit", request, |ch, r| async move {
                CoordinatorRpc::new(ch).commit(r).await
            })
            .instrument(tracing::info_span!("coordinator", op = "commit", gtrid))
            .await?;
        self.decided(gtrid, r.outcome, r.reason, r.detail)
    }

    /// Aborts `gtrid` unless it is already decided, and returns the decision (which
    /// is [`Outcome::Committed`] if it had committed). Idempotent.
    ///
    /// # Errors
    /// As [`CoordinatorClient::commit`].
    pub async fn rollback(&self, gtrid: &str) -> Result<Decision, ClientError> {
        validate_gtrid(gtrid)?;
        let request = pb::RollbackRequest {
            gtrid: gtrid.to_owned(),
            branches: self.branch_list(gtrid),
        };
        let r = self
            .leader_call("rollback", request, |ch, r| async move {
                CoordinatorRpc::new(ch).rollback(r).await
            })
            .instrument(tracing::info_span!("coordinator", op = "rollback", gtrid))
            .await?;
        self.decided(gtrid, r.outcome, r.reason, r.detail)
    }

    /// Returns one transaction.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`], [`ClientError::Rejected`] (NOT_FOUND),
    /// [`ClientError::DeadlineExceeded`], [`ClientError::Protocol`].
    pub async fn get(&self, gtrid: &str) -> Result<pb::Transaction, ClientError> {
        validate_gtrid(gtrid)?;
        let request = pb::GetTransactionRequest {
            gtrid: gtrid.to_owned(),
        };
        self.leader_call("get", request, |ch, r| async move {
            CoordinatorRpc::new(ch).get_transaction(r).await
        })
        .instrument(tracing::info_span!("coordinator", op = "get", gtrid))
        .await?
        .transaction
        .ok_or_else(|| ClientError::Protocol("answer has no transaction".into()))
    }

    /// Lists live transactions (optionally only those in `state`), in gtrid order,
    /// `page_size` at a time (0: server default), after `page_token` ("" for the
    /// first page).
    ///
    /// # Errors
    /// [`ClientError::Rejected`], [`ClientError::DeadlineExceeded`].
    pub async fn list(
        &self,
        state: Option<pb::TxnState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListTransactionsResponse, ClientError> {
        let request = pb::ListTransactionsRequest {
            state: state.unwrap_or(pb::TxnState::Unspecified).into(),
            page_size,
            page_token: page_token.to_owned(),
        };
        self.leader_call("list", request, |ch, r| async move {
            CoordinatorRpc::new(ch).list_transactions(r).await
        })
        .instrument(tracing::info_span!("coordinator", op = "list"))
        .await
    }

    /// Asks what happened to `xid`'s transaction. When nothing was decided and it can
    /// no longer commit, the leader durably decides ABORT first (presumed abort).
    ///
    /// # Errors
    /// [`ClientError::Rejected`], [`ClientError::DeadlineExceeded`].
    pub async fn query_outcome(&self, xid: &Xid) -> Result<pb::QueryOutcomeResponse, ClientError> {
        let request = pb::QueryOutcomeRequest {
            xid: Some(xid.to_pb()),
        };
        self.leader_call("query_outcome", request, |ch, r| async move {
            CoordinatorRpc::new(ch).query_outcome(r).await
        })
        .instrument(tracing::info_span!("coordinator", op = "query_outcome", %xid))
        .await
    }

    /// Adds node `id` (at `raft_addr`, `api_addr`) to the cluster as a voter
    /// (`Admin.AddMember`): the leader adds it as a learner, waits until it has caught
    /// up, then promotes it. The node must be running (`ratify node` without
    /// `--init`). Safe to retry: adding a voter with the same addresses answers
    /// `changed` false. A change can take a minute (a new node fetching the log): use
    /// a client whose [`ClientConfig::attempt_timeout`] allows for it.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] (INVALID_ARGUMENT, ALREADY_EXISTS, FAILED_PRECONDITION
    /// "would lose the quorum: ..." and the other refusals; nothing changed),
    /// [`ClientError::DeadlineExceeded`].
    pub async fn add_member(
        &self,
        id: u64,
        raft_addr: &str,
        api_addr: &str,
    ) -> Result<pb::AddMemberResponse, ClientError> {
        let request = pb::AddMemberRequest {
            id,
            raft_addr: raft_addr.to_owned(),
            api_addr: api_addr.to_owned(),
        };
        self.leader_call("add_member", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch).add_member(r).await
        })
        .instrument(tracing::info_span!("coordinator", op = "add_member", id))
        .await
    }

    /// Removes member `id`, voter or learner (`Admin.RemoveMember`). Safe to retry:
    /// removing a node that is not a member answers `changed` false.
    ///
    /// # Errors
    /// As [`CoordinatorClient::add_member`].
    pub async fn remove_member(&self, id: u64) -> Result<pb::RemoveMemberResponse, ClientError> {
        let request = pb::RemoveMemberRequest { id };
        self.leader_call("remove_member", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .remove_member(r)
                .await
        })
        .instrument(tracing::info_span!("coordinator", op = "remove_member", id))
        .await
    }

    /// Registers participant `name` at `endpoint` (`Admin.RegisterParticipant`):
    /// under TLS, branches may only name registered endpoints. An operator names
    /// anyone; a participant's certificate registers its own name only (`name`
    /// empty: the certificate's). Safe to retry.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] (PERMISSION_DENIED, INVALID_ARGUMENT,
    /// FAILED_PRECONDITION: the endpoint is another name's), [`ClientError::DeadlineExceeded`].
    pub async fn register_participant(
        &self,
        name: &str,
        endpoint: &str,
    ) -> Result<pb::RegisterParticipantResponse, ClientError> {
        let request = pb::RegisterParticipantRequest {
            name: name.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        self.leader_call("register_participant", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .register_participant(r)
                .await
        })
        .instrument(tracing::info_span!(
            "coordinator",
            op = "register_participant",
            name,
            endpoint
        ))
        .await
    }

    /// Removes participant `name` from the registry (operators). Safe to retry.
    ///
    /// # Errors
    /// As [`CoordinatorClient::register_participant`].
    pub async fn unregister_participant(
        &self,
        name: &str,
    ) -> Result<pb::UnregisterParticipantResponse, ClientError> {
        let request = pb::UnregisterParticipantRequest {
            name: name.to_owned(),
        };
        self.leader_call("unregister_participant", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .unregister_participant(r)
                .await
        })
        .instrument(tracing::info_span!(
            "coordinator",
            op = "unregister_participant",
            name
        ))
        .await
    }

    /// The registered participants, by name (operators).
    ///
    /// # Errors
    /// As [`CoordinatorClient::register_participant`].
    pub async fn list_participants(&self) -> Result<pb::ListParticipantsResponse, ClientError> {
        self.leader_call(
            "list_participants",
            pb::ListParticipantsRequest {},
            |ch, r| async move {
                pb::admin_client::AdminClient::new(ch)
                    .list_participants(r)
                    .await
            },
        )
        .instrument(tracing::info_span!("coordinator", op = "list_participants"))
        .await
    }

    /// Replaces voter `old_id` (typically dead) by the new node `new_id` at
    /// `raft_addr`, `api_addr`, in one call (`Admin.ReplaceMember`): the new node is
    /// added as a learner and, once caught up, swapped in by one joint change. Safe to
    /// retry.
    ///
    /// # Errors
    /// As [`CoordinatorClient::add_member`].
    pub async fn replace_member(
        &self,
        old_id: u64,
        new_id: u64,
        raft_addr: &str,
        api_addr: &str,
    ) -> Result<pb::ReplaceMemberResponse, ClientError> {
        let request = pb::ReplaceMemberRequest {
            old_id,
            new_id,
            raft_addr: raft_addr.to_owned(),
            api_addr: api_addr.to_owned(),
        };
        self.leader_call("replace_member", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .replace_member(r)
                .await
        })
        .instrument(tracing::info_span!(
            "coordinator",
            op = "replace_member",
            old_id,
            new_id
        ))
        .await
    }

    /// Health and Raft state of one node: `endpoint` if given (one attempt), else
    /// any configured node that answers (retried until the deadline).
    ///
    /// # Errors
    /// [`ClientError::InvalidEndpoint`], [`ClientError::Unreachable`] (the named node
    /// did not answer), [`ClientError::Rejected`], [`ClientError::DeadlineExceeded`].
    pub async fn cluster_status(
        &self,
        endpoint: Option<&str>,
    ) -> Result<pb::ClusterStatusResponse, ClientError> {
        let rpc = |ch: Channel, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .cluster_status(r)
                .await
        };
        let span = tracing::info_span!("coordinator", op = "cluster_status");
        let Some(endpoint) = endpoint else {
            return self
                .call("cluster_status", false, pb::ClusterStatusRequest {}, rpc)
                .instrument(span)
                .await;
        };
        let addr = normalize_endpoint(endpoint, self.inner.config.transport.is_tls())?;
        let timeout = self.inner.config.attempt_timeout;
        match self
            .attempt(&addr, timeout, pb::ClusterStatusRequest {}, &rpc)
            .instrument(span)
            .await
        {
            Ok(r) => Ok(r),
            Err(s) if is_rejection(s.code()) => Err(ClientError::Rejected {
                code: s.code(),
                message: s.message().to_owned(),
            }),
            Err(s) => Err(ClientError::Unreachable {
                endpoint: addr,
                message: format!("{:?}: {}", s.code(), s.message()),
            }),
        }
    }

    /// An operator's action on `gtrid` (`Admin.ResolveTransaction`): abort it,
    /// commit it (only if every branch is prepared), or mark its heuristic outcome
    /// settled; `operator` and `reason` go into the transaction's audit trail.
    /// Idempotent: a repeated call answers the recorded outcome (`changed` false).
    ///
    /// # Errors
    /// [`ClientError::Rejected`] (FAILED_PRECONDITION when the action is not allowed
    /// in the transaction's state, with the reason; INVALID_ARGUMENT), or
    /// [`ClientError::DeadlineExceeded`].
    pub async fn resolve(
        &self,
        gtrid: &str,
        action: pb::ResolveAction,
        operator: &str,
        reason: &str,
    ) -> Result<pb::ResolveTransactionResponse, ClientError> {
        self.resolve_branches(gtrid, action, &[], operator, reason)
            .await
    }

    /// [`CoordinatorClient::resolve`] naming branches: a SETTLE_HEURISTIC settles only
    /// the outcomes of `bquals` (the ones the person repaired), and requires them.
    ///
    /// # Errors
    /// As [`CoordinatorClient::resolve`].
    pub async fn resolve_branches(
        &self,
        gtrid: &str,
        action: pb::ResolveAction,
        bquals: &[u32],
        operator: &str,
        reason: &str,
    ) -> Result<pb::ResolveTransactionResponse, ClientError> {
        validate_gtrid(gtrid)?;
        let request = pb::ResolveTransactionRequest {
            gtrid: gtrid.to_owned(),
            action: action.into(),
            operator: operator.to_owned(),
            reason: reason.to_owned(),
            bquals: bquals.to_vec(),
        };
        self.leader_call("resolve", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .resolve_transaction(r)
                .await
        })
        .instrument(tracing::info_span!("coordinator", op = "resolve", gtrid))
        .await
    }

    /// Live transactions that need a person (`Admin.ListNeedingAttention`): heuristic
    /// outcomes, and phase 2 or branch calls stuck for `stuck_after` or longer.
    ///
    /// # Errors
    /// [`ClientError::Rejected`], [`ClientError::DeadlineExceeded`].
    pub async fn needing_attention(
        &self,
        stuck_after: Duration,
        page_size: u32,
    ) -> Result<pb::ListNeedingAttentionResponse, ClientError> {
        let request = pb::ListNeedingAttentionRequest {
            stuck_after_ms: u64::try_from(stuck_after.as_millis()).unwrap_or(u64::MAX),
            page_size,
        };
        self.leader_call("needing_attention", request, |ch, r| async move {
            pb::admin_client::AdminClient::new(ch)
                .list_needing_attention(r)
                .await
        })
        .instrument(tracing::info_span!("coordinator", op = "needing_attention"))
        .await
    }

    /// A call only the leader serves.
    async fn leader_call<Req, Resp, F, Fut>(
        &self,
        op: &'static str,
        req: Req,
        rpc: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.call(op, true, req, rpc).await
    }

    /// The channel to `addr`, created on first use.
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = lock(&self.inner.channels);
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::InvalidEndpoint {
                endpoint: preview(addr),
                reason: e.to_string(),
            })?
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true);
        let ch = self
            .inner
            .config
            .transport
            .channel(endpoint, ratify_common::tls::Expect::Node(None));
        channels.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// One RPC to one node, bounded by `timeout` (also sent as the gRPC deadline).
    async fn attempt<Req, Resp, F, Fut>(
        &self,
        addr: &str,
        timeout: Duration,
        req: Req,
        rpc: &F,
    ) -> Result<Resp, Status>
    where
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let channel = self
            .channel(addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = Request::new(req);
        request.set_timeout(timeout);
        // The caller's trace goes with the call (a `traceparent`, when the app traces
        // with OpenTelemetry): the coordinator continues it into every participant.
        ratify_proto::trace::inject(request.metadata_mut(), &tracing::Span::current());
        match tokio::time::timeout(timeout, rpc(channel, request)).await {
            Ok(result) => result.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    /// The next configured endpoint after `addr` (or after the rotation cursor when
    /// `addr` is not one of them, for example a stale leader hint).
    fn rotate_from(&self, addr: &str) -> String {
        let eps = &self.inner.endpoints;
        let i = match eps.iter().position(|e| e == addr) {
            Some(i) => i + 1,
            None => self.inner.cursor.fetch_add(1, Ordering::Relaxed),
        };
        eps[i % eps.len()].clone()
    }

    /// Forgets `addr` as leader, unless another call already learned a newer one.
    fn forget_leader(&self, addr: &str) {
        let mut leader = lock(&self.inner.leader);
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    fn set_leader(&self, addr: &str) {
        *lock(&self.inner.leader) = Some(addr.to_owned());
    }

    /// The retry loop. `leader_only` calls follow leader hints and remember the node
    /// that answered as the leader.
    async fn call<Req, Resp, F, Fut>(
        &self,
        op: &'static str,
        leader_only: bool,
        req: Req,
        rpc: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.deadline;
        let mut backoff = Backoff {
            next: config.backoff_initial,
            max: config.backoff_max,
        };
        let start = self.inner.cursor.load(Ordering::Relaxed) % self.inner.endpoints.len();
        let mut addr = self
            .leader()
            .filter(|_| leader_only)
            .unwrap_or_else(|| self.inner.endpoints[start].clone());
        let mut redirects = 0;
        let mut last_error = String::from("no attempt finished");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                tracing::warn!(op, %last_error, "coordinator call deadline exceeded");
                return Err(ClientError::DeadlineExceeded { last_error });
            }
            let timeout = remaining.min(config.attempt_timeout);
            let status = match self.attempt(&addr, timeout, req.clone(), &rpc).await {
                Ok(response) => {
                    if leader_only {
                        self.set_leader(&addr);
                    }
                    return Ok(response);
                }
                Err(status) => status,
            };
            if is_rejection(status.code()) {
                return Err(ClientError::Rejected {
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
            last_error = format!("{addr}: {:?}: {}", status.code(), status.message());
            let hint = match status.code() {
                Code::Unavailable if leader_only => leader_hint(&status),
                _ => None,
            };
            match hint {
                Some(leader) if leader != addr && redirects < MAX_IMMEDIATE_REDIRECTS => {
                    tracing::debug!(op, from = %addr, to = %leader, "following leader hint");
                    redirects += 1;
                    self.set_leader(&leader);
                    addr = leader;
                    continue;
                }
                // The named leader cannot serve yet (or hints loop): try it again
                // after a pause.
                Some(leader) => {
                    self.set_leader(&leader);
                    addr = leader;
                }
                None => {
                    self.forget_leader(&addr);
                    addr = self.rotate_from(&addr);
                }
            }
            redirects = 0;
            let pause = backoff
                .delay()
                .min(deadline.saturating_duration_since(Instant::now()));
            tracing::debug!(op, error = %last_error, next = %addr, ?pause, "retrying coordinator call");
            tokio::time::sleep(pause).await;
        }
    }
}

fn branch_spec(endpoint: String, resource: String) -> Result<pb::BranchSpec, ClientError> {
    if !is_valid_name(&resource) {
        return Err(ClientError::InvalidInput(format!(
            "resource {} must be {NAME_RULE}",
            preview(&resource)
        )));
    }
    // The coordinator refuses what the wire rule refuses; say so before sending.
    if let Err(e) = WireEndpoint::parse(&endpoint) {
        return Err(ClientError::InvalidInput(format!("participant {e}")));
    }
    Ok(pb::BranchSpec { endpoint, resource })
}

fn enlisted(branch: pb::Branch) -> Result<EnlistedBranch, ClientError> {
    let xid = branch
        .xid
        .as_ref()
        .ok_or_else(|| ClientError::Protocol("branch has no xid".into()))
        .and_then(|x| Xid::from_pb(x).map_err(|e| ClientError::Protocol(e.to_string())))?;
    Ok(EnlistedBranch {
        xid,
        endpoint: branch.endpoint,
        resource: branch.resource,
    })
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! An in-process fake coordinator node for unit tests (feature `fake`): a leader
    //! that answers from a table, or a follower that redirects to it.

    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use ratify_proto::{pb, LEADER_METADATA_KEY};
    use tonic::{Request, Response, Status};

    /// How the fake node behaves.
    #[derive(Clone)]
    pub enum Role {
        /// Serves calls; outcomes by gtrid (unknown gtrid: NOT_FOUND).
        Leader(Arc<Mutex<HashMap<String, pb::Outcome>>>),
        /// Answers UNAVAILABLE, with this leader hint if any.
        Follower(Option<String>),
    }

    struct FakeNode {
        role: Role,
        calls: Arc<AtomicUsize>,
    }

    impl FakeNode {
        fn check(&self) -> Result<&Mutex<HashMap<String, pb::Outcome>>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match &self.role {
                Role::Leader(table) => Ok(table),
                Role::Follower(hint) => {
                    let mut s = Status::unavailable("not the leader");
                    if let Some(h) = hint.as_ref().and_then(|h| h.parse().ok()) {
                        s.metadata_mut().insert(LEADER_METADATA_KEY, h);
                    }
                    Err(s)
                }
            }
        }

        fn outcome(&self, gtrid: &str) -> Result<pb::Outcome, Status> {
            let table = self.check()?;
            let table = table.lock().map_err(|_| Status::internal("poisoned"))?;
            table
                .get(gtrid)
                .copied()
                .ok_or_else(|| Status::not_found("unknown gtrid"))
        }
    }

    #[tonic::async_trait]
    impl pb::coordinator_server::Coordinator for FakeNode {
        /// Hands out a gtrid its table does not know (so a commit of it is
        /// NOT_FOUND unless the test adds it), with the branches asked for.
        async fn begin(
            &self,
            r: Request<pb::BeginRequest>,
        ) -> Result<Response<pb::BeginResponse>, Status> {
            self.check()?;
            let n = self.calls.load(Ordering::SeqCst);
            let gtrid = format!("{:016x}{n:016x}", 0xfa4e_u64);
            let branches = r
                .into_inner()
                .branches
                .into_iter()
                .enumerate()
                .map(|(i, b)| pb::Branch {
                    xid: Some(pb::Xid {
                        format_id: ratify_proto::XID_FORMAT_ID,
                        gtrid: gtrid.clone(),
                        bqual: (i + 1).to_string(),
                    }),
                    endpoint: b.endpoint,
                    resource: b.resource,
                    ..Default::default()
                })
                .collect();
            Ok(Response::new(pb::BeginResponse {
                gtrid,
                branches,
                deadline_unix_ms: 0,
                owner_token: String::new(),
            }))
        }
        async fn enlist(
            &self,
            _: Request<pb::EnlistRequest>,
        ) -> Result<Response<pb::EnlistResponse>, Status> {
            self.check()?;
            Err(Status::unimplemented("fake"))
        }
        async fn commit(
            &self,
            r: Request<pb::CommitRequest>,
        ) -> Result<Response<pb::CommitResponse>, Status> {
            let outcome = self.outcome(&r.into_inner().gtrid)?;
            Ok(Response::new(pb::CommitResponse {
                outcome: outcome.into(),
                reason: pb::Reason::ClientCommit.into(),
                detail: String::new(),
            }))
        }
        async fn rollback(
            &self,
            _: Request<pb::RollbackRequest>,
        ) -> Result<Response<pb::RollbackResponse>, Status> {
            self.check()?;
            Err(Status::unimplemented("fake"))
        }
        async fn get_transaction(
            &self,
            _: Request<pb::GetTransactionRequest>,
        ) -> Result<Response<pb::GetTransactionResponse>, Status> {
            self.check()?;
            Err(Status::unimplemented("fake"))
        }
        async fn list_transactions(
            &self,
            _: Request<pb::ListTransactionsRequest>,
        ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
            self.check()?;
            Err(Status::unimplemented("fake"))
        }
        async fn query_outcome(
            &self,
            r: Request<pb::QueryOutcomeRequest>,
        ) -> Result<Response<pb::QueryOutcomeResponse>, Status> {
            let gtrid = r.into_inner().xid.map(|x| x.gtrid).unwrap_or_default();
            let outcome = self.outcome(&gtrid)?;
            Ok(Response::new(pb::QueryOutcomeResponse {
                outcome: outcome.into(),
                reason: pb::Reason::Unspecified.into(),
            }))
        }
    }

    /// Starts a fake node on 127.0.0.1; it runs until the test's runtime ends. Returns
    /// its address and a counter of the calls it got.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(role: Role) -> std::io::Result<(SocketAddr, Arc<AtomicUsize>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let node = FakeNode {
            role,
            calls: calls.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::coordinator_server::CoordinatorServer::new(node))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok((addr, calls))
    }

    /// A leader whose table holds `entries`.
    pub fn leader(entries: &[(&str, pb::Outcome)]) -> Role {
        let table = entries.iter().map(|(g, o)| ((*g).to_owned(), *o)).collect();
        Role::Leader(Arc::new(Mutex::new(table)))
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{self, Role};
    use super::*;

    const GTRID: &str = "00000000000000010000000000000007";

    #[test]
    fn remembered_branch_lists_are_bounded() -> anyhow::Result<()> {
        let client = CoordinatorClient::new(vec!["127.0.0.1:1".to_string()], quick())?;
        let far = u64::MAX / 2;
        let branch = |gtrid: &str| -> anyhow::Result<EnlistedBranch> {
            Ok(EnlistedBranch {
                xid: Xid::new(gtrid, "1")?,
                endpoint: "127.0.0.1:2".into(),
                resource: "r".into(),
            })
        };
        for i in 0..MAX_KNOWN {
            let g = format!("{:032x}", i + 1);
            client.remember(&g, far, &[branch(&g)?], "");
        }
        let first = format!("{:032x}", 1);
        let extra = format!("{:032x}", MAX_KNOWN + 1);
        client.remember(&extra, far, &[branch(&extra)?], "");
        assert_eq!(lock(&client.inner.known).len(), MAX_KNOWN);
        assert!(
            client.branch_list(&extra).is_none(),
            "past the cap: not remembered"
        );
        assert!(
            client.branch_list(&first).is_some(),
            "those remembered stay"
        );
        // One whose deadline passed long ago makes room.
        client.remember(&first, 1, &[], "");
        client.remember(&extra, far, &[branch(&extra)?], "");
        assert!(client.branch_list(&extra).is_some());
        Ok(())
    }

    fn quick() -> ClientConfig {
        ClientConfig {
            attempt_timeout: Duration::from_millis(300),
            deadline: Duration::from_millis(1_500),
            ..ClientConfig::default()
        }
    }

    /// An address nothing listens on (bound, then closed).
    async fn dead_addr() -> anyhow::Result<String> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok(l.local_addr()?.to_string())
    }

    #[tokio::test]
    async fn follows_the_leader_hint_and_remembers_it() -> anyhow::Result<()> {
        let (leader, leader_calls) =
            fake::start(fake::leader(&[(GTRID, pb::Outcome::Committed)])).await?;
        let (follower, follower_calls) =
            fake::start(Role::Follower(Some(leader.to_string()))).await?;
        let client = CoordinatorClient::new(vec![format!("http://{follower}")], quick())?;
        let decision = client.commit(GTRID).await?;
        assert_eq!(decision.outcome, Outcome::Committed);
        assert_eq!(client.leader(), Some(leader.to_string()));
        client.commit(GTRID).await?;
        assert_eq!(
            follower_calls.load(Ordering::SeqCst),
            1,
            "second call should go to the leader"
        );
        assert_eq!(leader_calls.load(Ordering::SeqCst), 2);
        Ok(())
    }

    #[tokio::test]
    async fn rotates_past_dead_and_hintless_nodes() -> anyhow::Result<()> {
        let (leader, _) = fake::start(fake::leader(&[(GTRID, pb::Outcome::Aborted)])).await?;
        let (lost, _) = fake::start(Role::Follower(None)).await?;
        let endpoints = vec![dead_addr().await?, lost.to_string(), leader.to_string()];
        for _ in 0..3 {
            // Every starting point must reach the leader.
            let client = CoordinatorClient::new(endpoints.clone(), quick())?;
            let decision = client.commit(GTRID).await?;
            assert_eq!(decision.outcome, Outcome::Aborted);
        }
        Ok(())
    }

    #[tokio::test]
    async fn rejections_are_not_retried() -> anyhow::Result<()> {
        let (leader, calls) = fake::start(fake::leader(&[])).await?;
        let client = CoordinatorClient::new(vec![leader.to_string()], quick())?;
        let err = client.commit(GTRID).await.err();
        assert!(
            matches!(
                &err,
                Some(ClientError::Rejected {
                    code: Code::NotFound,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!err.is_some_and(|e| e.is_retryable()));
        Ok(())
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() -> anyhow::Result<()> {
        let (lost, _) = fake::start(Role::Follower(None)).await?;
        let client = CoordinatorClient::new(vec![lost.to_string(), dead_addr().await?], quick())?;
        let started = std::time::Instant::now();
        let err = client.commit(GTRID).await.err();
        assert!(
            matches!(&err, Some(ClientError::DeadlineExceeded { .. })),
            "{err:?}"
        );
        assert!(err.is_some_and(|e| e.is_retryable()));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "deadline not kept"
        );
        Ok(())
    }

    #[test]
    fn endpoints_are_validated() {
        for ok in [
            "127.0.0.1:7000",
            "http://node-1.example:7000",
            "http://[::1]:7000/",
        ] {
            assert!(normalize_endpoint(ok, false).is_ok(), "refused {ok}");
        }
        for bad in [
            "",
            "node",
            "node:",
            ":7000",
            "node:0",
            "node:99999",
            "https://node:7000",
            "http://node:7000/path",
            "no de:7000",
            "user@node:7000",
        ] {
            assert!(normalize_endpoint(bad, false).is_err(), "accepted {bad:?}");
        }
        assert!(matches!(
            CoordinatorClient::new(vec![], ClientConfig::default()),
            Err(ClientError::NoEndpoints)
        ));
    }

    #[tokio::test]
    async fn malformed_gtrid_is_refused_locally() -> anyhow::Result<()> {
        let client = CoordinatorClient::new(vec![dead_addr().await?], quick())?;
        assert!(matches!(
            client.commit("'; DROP TABLE t").await,
            Err(ClientError::InvalidInput(_))
        ));
        Ok(())
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut b = Backoff {
            next: Duration::from_millis(20),
            max: Duration::from_millis(500),
        };
        let delays: Vec<Duration> = (0..10).map(|_| b.delay()).collect();
        assert!(delays[0] >= Duration::from_millis(10) && delays[0] <= Duration::from_millis(20));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(500)));
        assert!(delays[9] >= Duration::from_millis(250));
    }
}
