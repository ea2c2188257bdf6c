//! The public `Coordinator` and `Admin` gRPC services: input validation, then the
//! driver. Bad input is refused here, before anything reaches the log.

use ratify_common::tls::{Caller, Role};
use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use ratify_proto::pb;
use ratify_proto::pb::admin_server::Admin;
use ratify_proto::pb::coordinator_server::Coordinator;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::attention::{self, Concern, Thresholds};
use super::{convert, to_status};
use crate::driver::participants::endpoint_uri;
use crate::driver::{DriveError, Driver, OperatorRequest, QueryAnswer};
use crate::membership::{self, Membership};
use crate::raft::log_store::LogStore;
use crate::txn::{
    BranchSpec, Decision, Lookup, OperatorAction, Seed, TxnRecord, MAX_BRANCHES, MAX_LABELS,
    MAX_LABEL_BYTES, MAX_TIMEOUT_MS,
};
use crate::types::{Gtrid, NodeInfo};
use ratify_common::wire;

/// The span of a client's call about a transaction: the root of the coordinator's
/// part of its trace, a child of the `traceparent` the client sent if any
/// (docs/design.md, "Tracing").
fn client_span(
    op: &'static str,
    gtrid: Option<Gtrid>,
    caller: Option<&SpanContext>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "transaction",
        op,
        gtrid = tracing::field::Empty,
        otel.kind = "server",
    );
    if let Some(g) = gtrid {
        span.record("gtrid", tracing::field::display(g));
    }
    if let Some(c) = caller {
        ratify_proto::trace::adopt_remote(&span, c.clone());
    }
    span
}

/// Runs `fut`, a client's call about `gtrid` that drives it, in its [`client_span`]
/// and with the caller's trace context inherited (for a node without an
/// OpenTelemetry layer, see `ratify_proto::trace`): the runs it starts take it along
/// and pass the trace id on to the participants. The header is read once.
fn traced<F: std::future::Future>(
    op: &'static str,
    gtrid: Gtrid,
    metadata: &MetadataMap,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    let caller = ratify_proto::trace::extract(metadata);
    let span = client_span(op, Some(gtrid), caller.as_ref());
    ratify_proto::trace::scope(
        caller.unwrap_or_else(SpanContext::empty_context),
        fut.instrument(span),
    )
}

/// Serves the client API and the admin API of one node.
#[derive(Clone)]
pub struct CoordinatorService {
    /// The engine behind every call.
    driver: Driver,
    /// For the sync counter in cluster status.
    log: LogStore,
    /// Membership changes (leader only, one at a time).
    membership: Membership,
}

impl CoordinatorService {
    /// Creates the service.
    pub fn new(driver: Driver, log: LogStore) -> Self {
        Self {
            membership: Membership::new(driver.clone()),
            driver,
            log,
        }
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    to_status(DriveError::Invalid(msg.into()))
}

/// Which endpoint rule a branch is checked by.
#[derive(Clone, Copy)]
enum EndpointRule {
    /// A branch named now (Begin, Enlist): the wire rule, and dialable.
    New,
    /// A branch a client names again (Commit's and Rollback's lists): possibly
    /// recorded by an earlier version under a looser rule: "a URI tonic takes, 1 to
    /// 256 bytes, no white space or control characters" before a427543, the wire rule
    /// without the authority check from then to f5027dc (so `a:b:80` may be on
    /// record). Only what every version refused is refused here: length, white space
    /// and control characters. Refusing more would answer a retried Commit with
    /// INVALID_ARGUMENT instead of its recorded outcome; a branch that cannot be
    /// dialled is unreachable to the driver, which the operator resolves.
    Recorded,
}

fn validate_endpoint(endpoint: &str, rule: EndpointRule) -> Result<(), Status> {
    match rule {
        EndpointRule::New => match wire::Endpoint::parse(endpoint) {
            Err(e) => Err(invalid(format!("participant {e}"))),
            Ok(_) if tonic::transport::Endpoint::from_shared(endpoint_uri(endpoint)).is_err() => {
                Err(invalid(format!(
                    "participant endpoint {} is not a URI that can be dialled",
                    wire::preview(endpoint)
                )))
            }
            Ok(_) => Ok(()),
        },
        EndpointRule::Recorded => {
            let ok = (1..=wire::MAX_ENDPOINT_LEN).contains(&endpoint.len())
                && !endpoint
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control());
            if ok {
                Ok(())
            } else {
                Err(invalid(format!(
                    "participant endpoint {} is not host:port or a URI",
                    wire::preview(endpoint)
                )))
            }
        }
    }
}

fn validate_branch(b: pb::BranchSpec, rule: EndpointRule) -> Result<BranchSpec, Status> {
    validate_endpoint(&b.endpoint, rule)?;
    if !wire::is_valid_name(&b.resource) {
        return Err(invalid(format!(
            "resource name {} must be {}",
            wire::preview(&b.resource),
            wire::NAME_RULE
        )));
    }
    Ok(BranchSpec {
        endpoint: b.endpoint,
        resource: b.resource,
    })
}

/// The client's branch list of `gtrid` (Commit and Rollback): bquals 1..n in order,
/// each branch valid and named once.
fn validate_branch_list(
    gtrid: Gtrid,
    list: Option<pb::BranchList>,
) -> Result<Option<Vec<BranchSpec>>, Status> {
    let Some(list) = list else {
        return Ok(None);
    };
    if list.branches.len() > MAX_BRANCHES {
        return Err(invalid(format!(
            "at most {MAX_BRANCHES} branches per transaction"
        )));
    }
    let gtrid_text = gtrid.to_string();
    let mut specs: Vec<BranchSpec> = Vec::with_capacity(list.branches.len());
    for (i, b) in list.branches.into_iter().enumerate() {
        let want = (i + 1).to_string();
        match &b.xid {
            Some(x) if x.gtrid == gtrid_text && x.bqual == want => {}
            _ => {
                return Err(invalid(format!(
                    "branches[{i}] must carry xid {gtrid}.{want} (the list is in bqual \
                     order, from 1)"
                )))
            }
        }
        let spec = validate_branch(
            pb::BranchSpec {
                endpoint: b.endpoint,
                resource: b.resource,
            },
            EndpointRule::Recorded,
        )?;
        if specs.contains(&spec) {
            return Err(invalid(format!("branches[{i}] names a branch twice")));
        }
        specs.push(spec);
    }
    Ok(Some(specs))
}

/// The label that records who began a transaction (the `ratify://client/<name>` of
/// its certificate), set by the coordinator under TLS; clients may not set labels
/// under [`RESERVED_LABEL_PREFIX`] (docs/design.md, "Security").
pub const OWNER_LABEL: &str = "ratify.owner";

/// Label keys the coordinator keeps for itself.
pub const RESERVED_LABEL_PREFIX: &str = "ratify.";

/// The client name a request is made under: `None` for plaintext (`--insecure`:
/// anyone may do anything), the certificate's `ratify://client/<name>` otherwise.
fn client_of<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    match Caller::of(req) {
        Some(Caller::Anyone) => Ok(None),
        _ => Caller::require(req, Role::Client).map(Some),
    }
}

/// Refuses a caller that is not `role` (PERMISSION_DENIED; plaintext passes).
fn require<T>(req: &Request<T>, role: Role) -> Result<(), Status> {
    match Caller::of(req) {
        Some(Caller::Anyone) => Ok(()),
        _ => Caller::require(req, role).map(drop),
    }
}

fn validate_labels(
    labels: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Status> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in &labels {
        if k.starts_with(RESERVED_LABEL_PREFIX) {
            return Err(invalid(format!(
                "label key {} is reserved (keys starting with {RESERVED_LABEL_PREFIX:?} are \
                 the coordinator's)",
                wire::preview(k)
            )));
        }
        if k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
            return Err(invalid(format!(
                "label keys must be 1 to {MAX_LABEL_BYTES} bytes and values at most {MAX_LABEL_BYTES}"
            )));
        }
    }
    Ok(labels.into_iter().collect())
}

/// A Commit or Rollback answer: the decision, or FORGOTTEN (a domain answer, in the
/// response, not a status).
fn answer_fields(r: Result<Decision, DriveError>) -> Result<(i32, i32, String), Status> {
    match r {
        Ok(d) => Ok(convert::decision_fields(&d)),
        Err(DriveError::Forgotten(detail)) => Ok((pb::Outcome::Forgotten as i32, 0, detail)),
        Err(e) => Err(to_status(e)),
    }
}

impl CoordinatorService {
    fn gtrid(&self, s: &str) -> Result<Gtrid, Status> {
        self.driver.resolve(s).map_err(to_status)
    }

    fn live_pb(&self, gtrid: Gtrid, rec: &TxnRecord) -> pb::Transaction {
        convert::live(gtrid, rec, self.driver.is_preparing(gtrid.index), |bqual| {
            self.driver.trouble(gtrid.index, bqual)
        })
    }

    /// A transaction this leader holds in memory only (ACTIVE, or PREPARING while its
    /// first entry is on its way).
    fn memory_pb(&self, gtrid: Gtrid, seed: Seed) -> pb::Transaction {
        self.live_pb(gtrid, &seed.into_record())
    }

    /// Where `gtrid` stands, for Get and for an operator's answer.
    fn transaction_pb(&self, gtrid: Gtrid) -> Result<pb::Transaction, Status> {
        let memory = self.driver.held(gtrid.index);
        let sm = self.driver.sm().read();
        let txn = match (sm.table.lookup(gtrid.index), &memory) {
            (Lookup::Absent | Lookup::Unknown, Some(seed)) => self.memory_pb(gtrid, seed.clone()),
            (Lookup::Live(rec), _) => self.live_pb(gtrid, rec),
            (Lookup::Finished(f), _) => convert::completed(gtrid, &f.decision),
            (Lookup::Forgotten, _) => pb::Transaction {
                gtrid: gtrid.to_string(),
                state: pb::TxnState::Completed as i32,
                outcome: pb::Outcome::Forgotten as i32,
                detail: format!(
                    "transaction {gtrid} completed and its outcome was forgotten (older than \
                     the coordinator's outcome retention)"
                ),
                ..Default::default()
            },
            (Lookup::Unknown, _) => {
                return Err(to_status(DriveError::NotFound(format!(
                    "no transaction {gtrid}"
                ))))
            }
            (Lookup::Absent, _) => {
                return Err(to_status(DriveError::NotFound(format!(
                    "no record of transaction {gtrid}: begun on a leader that failed before \
                     it committed; it is aborted once asked about"
                ))))
            }
        };
        Ok(txn)
    }

    /// Refuses `client` acting on `gtrid` when another client began it
    /// (PERMISSION_DENIED). A transaction with no owner (begun without TLS, or
    /// re-created on a new leader from a Commit's branch list) and one no longer live
    /// (its outcome is only read) pass.
    fn check_owner(&self, gtrid: Gtrid, client: Option<&str>) -> Result<(), Status> {
        let Some(client) = client else { return Ok(()) };
        match self.driver.live_label(gtrid.index, OWNER_LABEL) {
            Some(owner) if owner != client => Err(Status::permission_denied(format!(
                "transaction {gtrid} belongs to ratify://client/{owner}, not to \
                 ratify://client/{client}"
            ))),
            _ => Ok(()),
        }
    }

    /// Under TLS, refuses branches naming an endpoint no participant is registered at
    /// (FAILED_PRECONDITION): the coordinator dials registered participants only.
    fn check_registered<'a>(
        &self,
        specs: impl IntoIterator<Item = &'a BranchSpec>,
    ) -> Result<(), Status> {
        if !self.driver.transport().is_tls() {
            return Ok(());
        }
        let sm = self.driver.sm().read();
        for s in specs {
            if sm.table.participant_at(&s.endpoint).is_none() {
                return Err(Status::failed_precondition(format!(
                    "no participant is registered at {}: a branch must name a registered \
                     participant's endpoint exactly (ratify participant register, or the \
                     participant registers itself); nothing was changed",
                    wire::preview(&s.endpoint)
                )));
            }
        }
        Ok(())
    }

    /// Whether this leader knows `gtrid` (live, held, finished or forgotten): a branch
    /// list sent with its Commit is then not what the driver goes by.
    fn knows(&self, gtrid: Gtrid) -> bool {
        self.driver.held(gtrid.index).is_some()
            || !matches!(
                self.driver.sm().read().table.lookup(gtrid.index),
                Lookup::Absent | Lookup::Unknown
            )
    }

    /// Under TLS, a branch list that would make this leader drive an unknown
    /// transaction is used only if it names registered participants (current or
    /// earlier endpoints); otherwise the transaction is driven as if no list came:
    /// aborted (LEADER_LOST), which is what it is, since no participant can be asked
    /// at an unregistered endpoint. Refusing instead would leave the owner's retried
    /// Commit without an answer.
    ///
    /// The list must also come with the owner token Begin or Enlist gave the client
    /// that began the transaction with exactly these branches (`owner_token.rs`):
    /// another client, or a subset of the branches, would otherwise drive it (and
    /// its owner's retry be told COMMITTED for branches never prepared).
    fn usable_list(
        &self,
        gtrid: Gtrid,
        list: Option<Vec<BranchSpec>>,
        client: Option<&str>,
        token: &str,
    ) -> Option<Vec<BranchSpec>> {
        let specs = list?;
        if !self.driver.transport().is_tls() || self.knows(gtrid) {
            return Some(specs);
        }
        let sm = self.driver.sm().read();
        let registered = specs
            .iter()
            .all(|s| sm.table.owner_of_endpoint(&s.endpoint).is_some());
        let proven = match (&sm.table.secret, client) {
            (Some(secret), Some(owner)) => {
                super::owner_token::verify(secret, gtrid, owner, &specs, token)
            }
            _ => false,
        };
        if !registered || !proven {
            tracing::warn!(
                %gtrid,
                registered,
                proven,
                "a branch list of a transaction this leader does not know was not used"
            );
            return None;
        }
        Some(specs)
    }

    /// A Commit's or Rollback's branch list, checked ([`validate_branch_list`]) and
    /// kept only if this leader may drive `gtrid` from it ([`Self::usable_list`]).
    fn branch_list(
        &self,
        gtrid: Gtrid,
        list: Option<pb::BranchList>,
        client: Option<&str>,
    ) -> Result<Option<Vec<BranchSpec>>, Status> {
        let token = list
            .as_ref()
            .map(|l| l.owner_token.clone())
            .unwrap_or_default();
        Ok(self.usable_list(gtrid, validate_branch_list(gtrid, list)?, client, &token))
    }

    /// The owner token of `gtrid` as its branches stand, for `owner` (TLS only;
    /// empty before the cluster has its key).
    fn owner_token(&self, gtrid: Gtrid, owner: Option<&str>) -> String {
        let Some(owner) = owner else {
            return String::new();
        };
        let specs = match self.driver.held(gtrid.index) {
            Some(seed) => seed.branches,
            None => match self.driver.sm().read().table.lookup(gtrid.index) {
                Lookup::Live(rec) => rec.branches.iter().map(|b| b.spec.clone()).collect(),
                _ => return String::new(),
            },
        };
        let sm = self.driver.sm().read();
        sm.table
            .secret
            .as_ref()
            .map(|secret| super::owner_token::token(secret, gtrid, owner, &specs))
            .unwrap_or_default()
    }

    /// A participant asks only about its own branches: the branch's endpoint must be
    /// registered under its name (where this leader still knows the branch).
    fn check_branch_owner(&self, gtrid: Gtrid, bqual: u32, name: &str) -> Result<(), Status> {
        let endpoint = match self.driver.held(gtrid.index) {
            Some(seed) => seed
                .branches
                .get((bqual as usize).wrapping_sub(1))
                .map(|b| b.endpoint.clone()),
            None => match self.driver.sm().read().table.lookup(gtrid.index) {
                Lookup::Live(rec) => rec
                    .branches
                    .iter()
                    .find(|b| b.bqual == bqual)
                    .map(|b| b.spec.endpoint.clone()),
                _ => None,
            },
        };
        let known = self.driver.held(gtrid.index).is_some()
            || matches!(
                self.driver.sm().read().table.lookup(gtrid.index),
                Lookup::Live(_)
            );
        let Some(endpoint) = endpoint else {
            // A transaction this leader knows has no such branch: nobody's to ask
            // about. One it does not hold live (finished, absent) only has an outcome.
            return if known {
                Err(Status::permission_denied(format!(
                    "transaction {gtrid} has no branch {bqual}"
                )))
            } else {
                Ok(())
            };
        };
        let sm = self.driver.sm().read();
        match sm.table.owner_of_endpoint(&endpoint) {
            Some(owner) if owner == name => Ok(()),
            owner => Err(Status::permission_denied(format!(
                "branch {gtrid}.{bqual} is at {} ({}), not participant {name}'s",
                wire::preview(&endpoint),
                owner.map_or("not registered".to_string(), |o| format!("participant {o}"))
            ))),
        }
    }

    /// Every call is served by a caught-up leader, so that clients see one history.
    /// It is checked before the request's gtrid is looked at: a node that is not
    /// ready may not know the cluster id yet, and must redirect rather than answer
    /// NOT_FOUND, which clients take as final.
    async fn leader_only(&self) -> Result<(), Status> {
        self.driver.ensure_leader().await.map_err(to_status)
    }

    /// [`Self::leader_only`], then the gtrid parsed and checked.
    async fn leader_gtrid(&self, gtrid: &str) -> Result<Gtrid, Status> {
        self.leader_only().await?;
        self.gtrid(gtrid)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn begin(
        &self,
        req: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let client = client_of(&req)?;
        let caller = ratify_proto::trace::extract(req.metadata());
        let span = client_span("begin", None, caller.as_ref());
        let req = req.into_inner();
        let timeout = match u64::from(req.timeout_ms) {
            0 => self.driver.default_txn_timeout(),
            ms if ms > MAX_TIMEOUT_MS => {
                return Err(invalid(format!(
                    "timeout_ms {ms} is over the maximum of {MAX_TIMEOUT_MS}"
                )))
            }
            ms => Duration::from_millis(ms),
        };
        if req.branches.len() > MAX_BRANCHES {
            return Err(invalid(format!(
                "at most {MAX_BRANCHES} branches per transaction"
            )));
        }
        let mut labels = validate_labels(req.labels)?;
        if let Some(owner) = &client {
            labels.insert(OWNER_LABEL.to_string(), owner.clone());
        }
        let branches = req
            .branches
            .into_iter()
            .map(|b| validate_branch(b, EndpointRule::New))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_registered(&branches)?;
        let begun = self
            .driver
            .begin(timeout, labels, branches)
            .instrument(span.clone())
            .await
            .map_err(to_status)?;
        span.record("gtrid", tracing::field::display(begun.gtrid));
        span.in_scope(|| tracing::debug!("begun"));
        let owner_token = self.owner_token(begun.gtrid, client.as_deref());
        Ok(Response::new(pb::BeginResponse {
            owner_token,
            gtrid: begun.gtrid.to_string(),
            branches: begun
                .branches
                .iter()
                .map(|b| convert::branch(begun.gtrid, b, None))
                .collect(),
            deadline_unix_ms: begun.deadline_ms,
        }))
    }

    async fn enlist(
        &self,
        req: Request<pb::EnlistRequest>,
    ) -> Result<Response<pb::EnlistResponse>, Status> {
        let client = client_of(&req)?;
        let req = req.into_inner();
        let spec = validate_branch(
            req.branch.ok_or_else(|| invalid("branch is required"))?,
            EndpointRule::New,
        )?;
        let gtrid = self.leader_gtrid(&req.gtrid).await?;
        self.check_owner(gtrid, client.as_deref())?;
        self.check_registered([&spec])?;
        let b = self.driver.enlist(gtrid, spec).await.map_err(to_status)?;
        Ok(Response::new(pb::EnlistResponse {
            branch: Some(convert::branch(gtrid, &b, None)),
            owner_token: self.owner_token(gtrid, client.as_deref()),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let client = client_of(&req)?;
        let (metadata, _, req) = req.into_parts();
        let gtrid = self.leader_gtrid(&req.gtrid).await?;
        self.check_owner(gtrid, client.as_deref())?;
        let branches = self.branch_list(gtrid, req.branches, client.as_deref())?;
        // The driver runs the commit on its own task, so a client that disconnects
        // cannot stop it half-way. That task's span, and its participant calls', are
        // children of this one, and so of the client's trace.
        let (outcome, reason, detail) = answer_fields(
            traced(
                "commit",
                gtrid,
                &metadata,
                self.driver.commit(gtrid, branches),
            )
            .await,
        )?;
        Ok(Response::new(pb::CommitResponse {
            outcome,
            reason,
            detail,
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let client = client_of(&req)?;
        let (metadata, _, req) = req.into_parts();
        let gtrid = self.leader_gtrid(&req.gtrid).await?;
        self.check_owner(gtrid, client.as_deref())?;
        let branches = self.branch_list(gtrid, req.branches, client.as_deref())?;
        let (outcome, reason, detail) = answer_fields(
            traced(
                "rollback",
                gtrid,
                &metadata,
                self.driver.rollback(gtrid, branches),
            )
            .await,
        )?;
        Ok(Response::new(pb::RollbackResponse {
            outcome,
            reason,
            detail,
        }))
    }

    async fn get_transaction(
        &self,
        req: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        // An operator reads any transaction, a client its own.
        let client = match require(&req, Role::Operator) {
            Ok(()) => None,
            Err(_) => client_of(&req)?,
        };
        let gtrid = self.leader_gtrid(&req.into_inner().gtrid).await?;
        self.check_owner(gtrid, client.as_deref())?;
        let txn = self.transaction_pb(gtrid)?;
        Ok(Response::new(pb::GetTransactionResponse {
            transaction: Some(txn),
        }))
    }

    async fn list_transactions(
        &self,
        req: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        require(&req, Role::Operator)?;
        self.leader_only().await?;
        let req = req.into_inner();
        let want = pb::TxnState::try_from(req.state)
            .map_err(|_| invalid(format!("unknown state {}", req.state)))?;
        let page_size = match req.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(self.gtrid(&req.page_token)?.index)
        };
        let memory = self.driver.in_memory(after);
        let sm = self.driver.sm().read();
        let cluster = sm.table.cluster_id;
        let range = match after {
            Some(a) => sm.table.live.range(a.saturating_add(1)..),
            None => sm.table.live.range(..),
        };
        // The table's live transactions and this leader's in-memory ones, merged in
        // number order (a number is in one or the other, the table winning).
        let mut memory = memory.into_iter().peekable();
        let mut range = range.peekable();
        let merged = std::iter::from_fn(|| {
            let next_mem = memory.peek().map(|(t, _)| *t);
            let next_tab = range.peek().map(|(t, _)| **t);
            match (next_mem, next_tab) {
                (Some(m), Some(t)) if m < t => memory.next().map(|(i, s)| (i, Err(s))),
                (Some(m), Some(t)) if m == t => {
                    memory.next();
                    range.next().map(|(&i, r)| (i, Ok(r)))
                }
                (_, Some(_)) => range.next().map(|(&i, r)| (i, Ok(r))),
                (Some(_), None) => memory.next().map(|(i, s)| (i, Err(s))),
                (None, None) => None,
            }
        });
        let mut transactions = Vec::new();
        let mut next_page_token = String::new();
        for (index, rec) in merged {
            let gtrid = Gtrid { cluster, index };
            let t = match rec {
                Ok(rec) => self.live_pb(gtrid, rec),
                Err(seed) => self.memory_pb(gtrid, seed),
            };
            if want != pb::TxnState::Unspecified && t.state != want as i32 {
                continue;
            }
            if transactions.len() == page_size {
                next_page_token = transactions
                    .last()
                    .map(|t: &pb::Transaction| t.gtrid.clone())
                    .unwrap_or_default();
                break;
            }
            transactions.push(t);
        }
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions,
            next_page_token,
        }))
    }

    async fn query_outcome(
        &self,
        req: Request<pb::QueryOutcomeRequest>,
    ) -> Result<Response<pb::QueryOutcomeResponse>, Status> {
        require(&req, Role::Participant)?;
        let participant = match Caller::of(&req) {
            Some(Caller::Certified(_)) => Caller::require(&req, Role::Participant).ok(),
            _ => None,
        };
        let xid = req
            .into_inner()
            .xid
            .ok_or_else(|| invalid("xid is required"))?;
        if xid.format_id != ratify_proto::XID_FORMAT_ID {
            return Err(invalid(format!(
                "xid format id {:#x} is not Ratify's",
                xid.format_id
            )));
        }
        if xid.bqual.is_empty()
            || xid.bqual.len() > 8
            || !xid.bqual.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid("xid bqual must be 1 to 8 decimal digits"));
        }
        let gtrid = self.leader_gtrid(&xid.gtrid).await?;
        if let (Some(name), Ok(bqual)) = (&participant, xid.bqual.parse::<u32>()) {
            self.check_branch_owner(gtrid, bqual, name)?;
        }
        let answer = self.driver.query(gtrid).await.map_err(to_status)?;
        let (outcome, reason) = match answer {
            QueryAnswer::Decided(d) => (
                convert::outcome(&d) as i32,
                pb::Reason::from(d.reason) as i32,
            ),
            QueryAnswer::InProgress => (pb::Outcome::InProgress as i32, 0),
            QueryAnswer::Forgotten => (pb::Outcome::Forgotten as i32, 0),
        };
        Ok(Response::new(pb::QueryOutcomeResponse { outcome, reason }))
    }
}

/// The host of `host:port` (or a URI of one), lower case, IPv6 without brackets.
fn endpoint_host(endpoint: &str) -> String {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn participant_pb(name: &str, p: &crate::txn::Participant) -> pb::RegisteredParticipant {
    pb::RegisteredParticipant {
        name: name.to_string(),
        endpoint: p.endpoint.clone(),
        registered_by: p.by.clone(),
        registered_unix_ms: p.at_ms,
    }
}

#[tonic::async_trait]
impl Admin for CoordinatorService {
    async fn register_participant(
        &self,
        req: Request<pb::RegisterParticipantRequest>,
    ) -> Result<Response<pb::RegisterParticipantResponse>, Status> {
        // An operator names anyone (and an empty name is its own participant name,
        // if it has one); a participant only itself, at a host its certificate names.
        let (by, own, operator, hosts) = match Caller::of(&req) {
            Some(Caller::Anyone) => ("an --insecure caller".to_string(), None, true, None),
            Some(caller @ Caller::Certified(_)) => {
                let own = caller.name_as(Role::Participant).map(str::to_string);
                let operator = caller.name_as(Role::Operator).is_some();
                if own.is_none() && !operator {
                    Caller::require(&req, Role::Participant)?;
                }
                let hosts = req
                    .extensions()
                    .get::<ratify_common::tls::ConnInfo>()
                    .map(|i| i.hosts.clone());
                (caller.describe(), own, operator, hosts)
            }
            None => {
                return Err(Status::unauthenticated(
                    "the request came on no known connection",
                ))
            }
        };
        let r = req.into_inner();
        let name = match (own, r.name.is_empty()) {
            (Some(own), true) => own,
            (Some(own), false) if own == r.name => own,
            (_, false) if operator => r.name,
            (Some(own), false) => {
                return Err(Status::permission_denied(format!(
                    "participant {own} may register itself only, not {}",
                    wire::preview(&r.name)
                )))
            }
            (None, _) => {
                return Err(invalid(
                    "name is required (an operator names the participant)",
                ))
            }
        };
        if !wire::is_valid_name(&name) {
            return Err(invalid(format!(
                "participant name {} must be {}",
                wire::preview(&name),
                wire::NAME_RULE
            )));
        }
        // A participant registers only where its certificate says it is reached: the
        // coordinator then never dials a host a participant merely named.
        if let (false, Some(hosts)) = (operator, &hosts) {
            let host = endpoint_host(&r.endpoint);
            if !hosts.contains(&host) {
                return Err(Status::permission_denied(format!(
                    "participant {name}'s certificate does not name the host {} (it names {}); \
                     an operator may register it there",
                    wire::preview(&host),
                    if hosts.is_empty() {
                        "none".to_string()
                    } else {
                        hosts.join(", ")
                    }
                )));
            }
        }
        validate_endpoint(&r.endpoint, EndpointRule::New)?;
        self.leader_only().await?;
        let changed = self
            .driver
            .change_registry(crate::txn::Command::Register {
                name: name.clone(),
                endpoint: r.endpoint,
                by,
                at_ms: crate::types::now_ms(),
            })
            .await
            .map_err(to_status)?;
        let sm = self.driver.sm().read();
        let participant = sm
            .table
            .participants
            .get(&name)
            .map(|p| participant_pb(&name, p));
        Ok(Response::new(pb::RegisterParticipantResponse {
            changed,
            participant,
        }))
    }

    async fn unregister_participant(
        &self,
        req: Request<pb::UnregisterParticipantRequest>,
    ) -> Result<Response<pb::UnregisterParticipantResponse>, Status> {
        require(&req, Role::Operator)?;
        let name = req.into_inner().name;
        self.leader_only().await?;
        let changed = self
            .driver
            .change_registry(crate::txn::Command::Unregister { name })
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UnregisterParticipantResponse { changed }))
    }

    async fn list_participants(
        &self,
        req: Request<pb::ListParticipantsRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        require(&req, Role::Operator)?;
        self.leader_only().await?;
        let sm = self.driver.sm().read();
        let participants = sm
            .table
            .participants
            .iter()
            .map(|(n, p)| participant_pb(n, p))
            .collect();
        Ok(Response::new(pb::ListParticipantsResponse { participants }))
    }

    async fn resolve_transaction(
        &self,
        req: Request<pb::ResolveTransactionRequest>,
    ) -> Result<Response<pb::ResolveTransactionResponse>, Status> {
        require(&req, Role::Operator)?;
        // The audit trail records who acted as the certificate says (rule 17); the
        // name the request gives is kept beside it when it differs.
        let certified = match Caller::of(&req) {
            Some(c @ Caller::Certified(_)) => c.name_as(Role::Operator).map(str::to_string),
            _ => None,
        };
        let mut req = req.into_inner();
        if let Some(name) = certified {
            if req.operator.is_empty() || req.operator == name {
                req.operator = name;
            } else {
                let both = format!("{name} (as {})", req.operator);
                req.operator = crate::txn::cut_to(both, crate::txn::MAX_OPERATOR_BYTES);
            }
        }
        let action = match pb::ResolveAction::try_from(req.action) {
            Ok(pb::ResolveAction::Abort) => OperatorAction::Abort,
            Ok(pb::ResolveAction::Commit) => OperatorAction::Commit,
            Ok(pb::ResolveAction::SettleHeuristic) => OperatorAction::SettleHeuristic,
            Ok(pb::ResolveAction::Unspecified) | Err(_) => {
                return Err(invalid(format!(
                    "action {} is not ABORT, COMMIT or SETTLE_HEURISTIC",
                    req.action
                )))
            }
        };
        let gtrid = self.leader_gtrid(&req.gtrid).await?;
        let resolution = self
            .driver
            .operator_action(
                gtrid,
                OperatorRequest {
                    action,
                    bquals: req.bquals,
                    operator: req.operator,
                    reason: req.reason,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ResolveTransactionResponse {
            changed: resolution.changed,
            transaction: Some(self.transaction_pb(gtrid)?),
        }))
    }

    async fn list_needing_attention(
        &self,
        req: Request<pb::ListNeedingAttentionRequest>,
    ) -> Result<Response<pb::ListNeedingAttentionResponse>, Status> {
        require(&req, Role::Operator)?;
        self.leader_only().await?;
        let req = req.into_inner();
        let stuck_after_ms = match req.stuck_after_ms {
            0 => 30_000,
            ms => ms,
        };
        let page_size = match req.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let now = crate::types::now_ms();
        // One pass over the table under its read lock, taking no other lock (the
        // failing calls are copied first) and building no message; then the page's
        // messages, oldest first, from a second short look.
        let trouble = self.driver.trouble_snapshot();
        let mut found: Vec<(u64, u64, Vec<String>)> = {
            let sm = self.driver.sm().read();
            sm.table
                .live
                .iter()
                .filter_map(|(&index, rec)| {
                    let why: Vec<String> = attention::concerns(
                        rec,
                        |bqual| trouble.get(&(index, bqual)).cloned(),
                        now,
                        Thresholds::both(stuck_after_ms),
                    )
                    .iter()
                    .map(Concern::describe)
                    .collect();
                    (!why.is_empty()).then(|| (now.saturating_sub(rec.created_ms), index, why))
                })
                .collect()
        };
        found.sort_by_key(|(age, index, _)| (std::cmp::Reverse(*age), *index));
        let truncated = found.len() > page_size;
        found.truncate(page_size);
        let records: Vec<(u64, Gtrid, Option<TxnRecord>)> = {
            let sm = self.driver.sm().read();
            let cluster = sm.table.cluster_id;
            found
                .iter()
                .map(|(age, index, _)| {
                    let gtrid = Gtrid {
                        cluster,
                        index: *index,
                    };
                    (*age, gtrid, sm.table.live.get(index).cloned())
                })
                .collect()
        };
        let transactions = records
            .into_iter()
            .zip(found)
            .filter_map(|((age_ms, gtrid, rec), (_, _, why))| {
                // (Completed meanwhile: no longer needs anyone.)
                rec.map(|rec| pb::NeedingAttention {
                    transaction: Some(self.live_pb(gtrid, &rec)),
                    why,
                    age_ms,
                })
            })
            .collect();
        Ok(Response::new(pb::ListNeedingAttentionResponse {
            transactions,
            truncated,
        }))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        // Operators, and the leader checking a node it is asked to add.
        if require(&req, Role::Operator).is_err() {
            require(&req, Role::Peer)?;
        }
        let m = self.driver.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                raft_addr: n.raft_addr.clone(),
                api_addr: n.api_addr.clone(),
                voter: membership.voter_ids().any(|v| v == *id),
            })
            .collect();
        let leader_api_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.api_addr.clone()))
            .unwrap_or_default();
        let in_memory = self.driver.held_count() as u64;
        let (live, cluster) = {
            let sm = self.driver.sm().read();
            (sm.table.live.len() as u64 + in_memory, sm.table.cluster_id)
        };
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: m.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            leader_api_addr,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            members,
            live_transactions: live,
            log_syncs: self.log.sync_count(),
            cluster_id: format!("{cluster:016x}"),
        }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        require(&req, Role::Operator)?;
        let r = req.into_inner();
        let node = NodeInfo {
            raft_addr: r.raft_addr,
            api_addr: r.api_addr,
        };
        let m = self.membership.clone();
        let changed = detached(async move { m.add(r.id, node).await }).await?;
        Ok(Response::new(pb::AddMemberResponse {
            changed,
            members: members_pb(&self.membership),
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        require(&req, Role::Operator)?;
        let id = req.into_inner().id;
        let m = self.membership.clone();
        let changed = detached(async move { m.remove(id).await }).await?;
        Ok(Response::new(pb::RemoveMemberResponse {
            changed,
            members: members_pb(&self.membership),
        }))
    }

    async fn replace_member(
        &self,
        req: Request<pb::ReplaceMemberRequest>,
    ) -> Result<Response<pb::ReplaceMemberResponse>, Status> {
        require(&req, Role::Operator)?;
        let r = req.into_inner();
        let node = NodeInfo {
            raft_addr: r.raft_addr,
            api_addr: r.api_addr,
        };
        let m = self.membership.clone();
        let changed = detached(async move { m.replace(r.old_id, r.new_id, node).await }).await?;
        Ok(Response::new(pb::ReplaceMemberResponse {
            changed,
            members: members_pb(&self.membership),
        }))
    }
}

/// Runs a membership change on a task of its own, so a client that hangs up (or
/// whose deadline passes) cannot stop it between its steps.
async fn detached(
    change: impl std::future::Future<Output = Result<bool, membership::MembershipError>>
        + Send
        + 'static,
) -> Result<bool, Status> {
    tokio::spawn(change)
        .await
        .map_err(|e| Status::internal(format!("the membership change failed: {e}")))?
        .map_err(super::membership_status)
}

/// The membership in force on this node, in id order.
fn members_pb(m: &Membership) -> Vec<pb::Member> {
    membership::members(&m.current())
        .into_iter()
        .map(|(id, n, voter)| pb::Member {
            id,
            raft_addr: n.raft_addr,
            api_addr: n.api_addr,
            voter,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new branch follows the wire rule; a branch named again in a Commit's list
    /// may have been recorded by an earlier version under its looser rule, and must
    /// still be taken (a retried Commit gets the recorded outcome, not a refusal).
    #[test]
    fn recorded_endpoints_are_judged_by_the_rule_they_were_recorded_under() {
        let spec = |endpoint: &str| pb::BranchSpec {
            endpoint: endpoint.into(),
            resource: "r".into(),
        };
        for old in ["svc", "127.0.0.1:7000/x", "http://svc:7000/x"] {
            assert!(
                validate_branch(spec(old), EndpointRule::New).is_err(),
                "{old}"
            );
            assert!(
                validate_branch(spec(old), EndpointRule::Recorded).is_ok(),
                "{old}"
            );
        }
        for never in ["", "a b:1", "x\n:1"] {
            assert!(
                validate_branch(spec(never), EndpointRule::Recorded).is_err(),
                "{never:?}"
            );
        }
        for bad in ["a:b:80", "[::1:80", "a]:80"] {
            assert!(
                validate_branch(spec(bad), EndpointRule::New).is_err(),
                "{bad}"
            );
            // Accepted by a427543..f5027dc, so possibly on record.
            assert!(
                validate_branch(spec(bad), EndpointRule::Recorded).is_ok(),
                "{bad}"
            );
        }
        assert!(validate_branch(spec("[::1]:7101"), EndpointRule::New).is_ok());
        assert!(validate_branch(spec("node-2.ratify:7101"), EndpointRule::New).is_ok());
    }
}
