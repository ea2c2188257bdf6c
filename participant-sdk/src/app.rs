//! The high-level SDK: an [`App`] hosts an application's resources in one
//! participant server, with the recovery loop that resolves their in-doubt branches,
//! and runs transaction scopes over them.
//!
//! ```no_run
//! # async fn demo(db: std::sync::Arc<dyn ratify_participant_sdk::Resource>)
//! # -> Result<(), ratify_participant_sdk::AppError> {
//! use ratify_participant_sdk::App;
//!
//! let app = App::builder()
//!     .coordinators(["127.0.0.1:7101"])
//!     .resource("db", db.clone())
//!     .start()
//!     .await?;
//! let moved = app
//!     .transaction(|tx| async move {
//!         let xid = tx.xid("db")?;
//!         // The branch's work, on the resource, under `xid` (for Postgres:
//!         // `PgResource::begin_branch(xid)` and SQL on the branch it gives).
//!         Ok::<_, anyhow::Error>(xid.to_string())
//!     })
//!     .await?;
//! app.shutdown().await;
//! # let _ = moved; Ok(())
//! # }
//! ```
//!
//! [`App::transaction`] begins a transaction with a branch on every resource of the
//! app (or those named, [`App::transaction_on`]), hands the closure a [`Tx`] whose
//! [`Tx::xid`] gives each branch's id by resource name, rolls back if the closure
//! fails, commits otherwise, and keeps asking while the outcome is unknown (a commit
//! is idempotent: asking again returns the recorded decision, never a second run).
//! It returns the closure's value once the transaction committed, or
//! [`AppError::Aborted`] with the coordinator's reason.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratify_proto::pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{BeginOptions, ClientConfig, ClientError, CoordinatorClient, Outcome};
use crate::recovery::RecoveryLoop;
use crate::resource::Resource;
use crate::server::{stopped, ParticipantServer, ServerError};
use crate::xid::Xid;

/// Why an [`App`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The builder was given no coordinator (neither endpoints nor a client).
    #[error("no coordinator: give App::builder() its endpoints or a client")]
    NoCoordinator,
    /// The builder was given no resource.
    #[error("no resource: an app hosts at least one")]
    NoResource,
    /// The participant server could not be set up (a bad resource name, a name given
    /// twice, a port that cannot be bound).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A coordinator call failed in a way asking again does not cure.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The transaction names a resource this app does not host.
    #[error("no resource named {0:?} in this app (or not in this transaction)")]
    NoSuchResource(String),
    /// The coordinator aborted the transaction: nothing of it took effect.
    #[error("transaction {gtrid} aborted ({reason:?}): {detail}")]
    Aborted {
        /// The transaction.
        gtrid: String,
        /// Why, as the coordinator recorded it.
        reason: pb::Reason,
        /// The coordinator's detail.
        detail: String,
    },
    /// The transaction's work failed; the transaction was rolled back.
    #[error("the transaction's work failed (rolled back): {0}")]
    Work(Box<dyn std::error::Error + Send + Sync>),
    /// The outcome is unknown: it stayed so for longer than
    /// [`AppBuilder::outcome_timeout`], or the coordinator answered the commit with
    /// something asking again cannot cure (a protocol error, a refusal). The
    /// transaction may yet commit: do not run its work again in a new one. Ask with
    /// [`App::client`] (`commit` again, or `get`).
    #[error(
        "the outcome of {gtrid} is still unknown after {waited:?} (it may commit): {last_error}"
    )]
    OutcomeUnknown {
        /// The transaction.
        gtrid: String,
        /// How long the app asked.
        waited: Duration,
        /// The last failure seen.
        last_error: String,
    },
}

/// Sets up an [`App`]: where the coordinator is, what the app hosts, where its
/// participant server listens.
#[must_use]
pub struct AppBuilder {
    coordinators: Vec<String>,
    client_config: ClientConfig,
    transport: ratify_common::tls::Transport,
    client: Option<CoordinatorClient>,
    listen: String,
    advertise: Option<String>,
    resources: Vec<(String, Arc<dyn Resource>)>,
    recovery_interval: Option<Duration>,
    txn_timeout: Duration,
    outcome_timeout: Option<Duration>,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("coordinators", &self.coordinators)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field(
                "resources",
                &self.resources.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    /// The coordinator nodes' client addresses (`host:port`); any of them will do,
    /// the client finds the leader.
    pub fn coordinators<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.coordinators = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Settings of the coordinator client made from [`AppBuilder::coordinators`].
    pub fn client_config(mut self, config: ClientConfig) -> Self {
        self.client_config = config;
        self
    }

    /// Mutual TLS for both sides of the app (docs/design.md, "Security"): the
    /// coordinator client presents `tls`'s certificate (which should name
    /// `ratify://client/<name>` and, for [`CoordinatorClient::query_outcome`] from
    /// recovery, `ratify://participant/<name>`), and the participant server accepts
    /// only the coordinator nodes' certificates. Without it, both are plaintext.
    pub fn tls(self, tls: Arc<ratify_common::tls::Tls>) -> Self {
        self.transport(ratify_common::tls::Transport::Tls(tls))
    }

    /// [`AppBuilder::tls`], or plaintext ([`ratify_common::tls::Transport::Plain`],
    /// the default).
    pub fn transport(mut self, transport: ratify_common::tls::Transport) -> Self {
        self.client_config.transport = transport.clone();
        self.transport = transport;
        self
    }

    /// Uses this coordinator client (instead of [`AppBuilder::coordinators`]).
    pub fn client(mut self, client: CoordinatorClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Hosts `resource` under `name` (1 to 64 of `[A-Za-z0-9_.-]`).
    pub fn resource(mut self, name: impl Into<String>, resource: Arc<dyn Resource>) -> Self {
        self.resources.push((name.into(), resource));
        self
    }

    /// Where the participant server listens (default `127.0.0.1:0`: a free loopback
    /// port, for a coordinator on the same machine).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// The address coordinators dial to reach this app (default: the address the
    /// server is bound to). Needed when it listens on `0.0.0.0` or behind NAT.
    pub fn advertise(mut self, endpoint: impl Into<String>) -> Self {
        self.advertise = Some(endpoint.into());
        self
    }

    /// How often the recovery loop asks about in-doubt branches (default 2 s).
    pub fn recovery_interval(mut self, every: Duration) -> Self {
        self.recovery_interval = Some(every);
        self
    }

    /// Runs no recovery loop: in-doubt branches wait for the coordinator's phase 2
    /// instead of asking about their outcome. Only for tests that watch a branch stay
    /// prepared: an abort whose rollback the coordinator abandoned (rule 12) reaches a
    /// branch only through the loop, so an application wants it.
    pub fn without_recovery(mut self) -> Self {
        self.recovery_interval = None;
        self
    }

    /// Timeout of the transactions the app begins (default 30 s): an undecided one
    /// older than this is aborted.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.txn_timeout = timeout;
        self
    }

    /// How long a transaction scope keeps asking for an unknown outcome before it
    /// returns [`AppError::OutcomeUnknown`] (default: until it is known).
    pub fn outcome_timeout(mut self, timeout: Duration) -> Self {
        self.outcome_timeout = Some(timeout);
        self
    }

    /// How long [`App::shutdown`] waits for the coordinator to finish the branches
    /// still prepared here (default 10 s). A commit is answered once it is decided;
    /// phase 2 reaches the participants just after, so a process that stops right
    /// after its last transaction would otherwise leave that branch prepared until
    /// it runs again.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Binds the participant server, starts it and the recovery loop.
    ///
    /// # Errors
    /// [`AppError::NoCoordinator`], [`AppError::NoResource`], [`AppError::Server`]
    /// (bad or repeated resource name, address not bindable), [`AppError::Client`]
    /// (bad coordinator endpoint).
    pub async fn start(mut self) -> Result<App, AppError> {
        if self.resources.is_empty() {
            return Err(AppError::NoResource);
        }
        // `tls` wins over a later `client_config` that left the transport plain.
        if self.transport.is_tls() && !self.client_config.transport.is_tls() {
            self.client_config.transport = self.transport.clone();
        }
        let client = match self.client {
            Some(c) => c,
            None if self.coordinators.is_empty() => return Err(AppError::NoCoordinator),
            None => CoordinatorClient::new(self.coordinators, self.client_config)?,
        };
        let mut server = ParticipantServer::new().with_transport(self.transport.clone());
        let mut names = Vec::new();
        for (name, resource) in &self.resources {
            server = server.with_resource(name, Arc::clone(resource))?;
            names.push(name.clone());
        }
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .map_err(ServerError::Bind)?;
        let bound = listener.local_addr().map_err(ServerError::Bind)?;
        let endpoint = self.advertise.unwrap_or_else(|| bound.to_string());
        // Under TLS the coordinator calls registered participants only: the app
        // registers its endpoint under its certificate's participant name.
        if self.transport.is_tls() {
            client.register_participant("", &endpoint).await?;
        }
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(server.serve(listener, stopped(rx.clone())));
        let hosted = self.resources.clone();
        let recovery = match self.recovery_interval {
            Some(every) => {
                RecoveryLoop::new(self.resources, client.clone()).spawn(every, stopped(rx))
            }
            None => tokio::spawn(async {}),
        };
        tracing::info!(%endpoint, resources = ?names, "app ready");
        Ok(App {
            endpoint,
            client,
            resources: names,
            txn_timeout: self.txn_timeout,
            outcome_timeout: self.outcome_timeout,
            shutdown_grace: self.shutdown_grace,
            hosted,
            stop,
            tasks: Some((server, recovery)),
        })
    }
}

/// The participant server's task.
type ServerTask = JoinHandle<Result<(), ServerError>>;

/// An application taking part in global transactions: its resources hosted in one
/// participant server, the recovery loop, and a coordinator client (see the module
/// docs). [`App::shutdown`] stops them gracefully; dropping it stops them too.
pub struct App {
    endpoint: String,
    client: CoordinatorClient,
    resources: Vec<String>,
    txn_timeout: Duration,
    outcome_timeout: Option<Duration>,
    shutdown_grace: Duration,
    /// The resources, for the shutdown's wait on prepared branches.
    hosted: Vec<(String, Arc<dyn Resource>)>,
    stop: watch::Sender<bool>,
    /// The server and the recovery loop (taken by [`App::shutdown`]).
    tasks: Option<(ServerTask, JoinHandle<()>)>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("endpoint", &self.endpoint)
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

/// One transaction as its scope sees it: its gtrid and a branch per resource.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tx {
    inner: Arc<TxInner>,
}

#[derive(Debug)]
struct TxInner {
    gtrid: String,
    branches: BTreeMap<String, Xid>,
}

impl Tx {
    /// The global transaction id.
    pub fn gtrid(&self) -> &str {
        &self.inner.gtrid
    }

    /// The branch id to do `resource`'s work under.
    ///
    /// # Errors
    /// [`AppError::NoSuchResource`] when the transaction has no branch there.
    pub fn xid(&self, resource: &str) -> Result<&Xid, AppError> {
        self.inner
            .branches
            .get(resource)
            .ok_or_else(|| AppError::NoSuchResource(resource.to_string()))
    }
}

impl App {
    /// Starts setting up an app.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            coordinators: Vec::new(),
            client_config: ClientConfig::default(),
            transport: ratify_common::tls::Transport::Plain,
            client: None,
            listen: "127.0.0.1:0".into(),
            advertise: None,
            resources: Vec::new(),
            recovery_interval: Some(Duration::from_secs(2)),
            txn_timeout: Duration::from_secs(30),
            outcome_timeout: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// The endpoint coordinators call this app's participant server at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Resolves once the app stops ([`App::shutdown`] or drop): for the app's own
    /// background tasks (a statistics logger, a consumer loop).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        stopped(self.stop.subscribe())
    }

    /// The coordinator client (for `get`, `list`, and transactions spanning other
    /// services' participants).
    pub fn client(&self) -> &CoordinatorClient {
        &self.client
    }

    /// Runs `work` in a new transaction with a branch on every resource of the app
    /// (see the module docs).
    ///
    /// # Errors
    /// [`AppError::Work`] (rolled back), [`AppError::Aborted`], [`AppError::Client`]
    /// (Begin refused or failed; a commit answer outside the protocol),
    /// [`AppError::OutcomeUnknown`] (only with an outcome timeout).
    pub async fn transaction<T, E, F, Fut>(&self, work: F) -> Result<T, AppError>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let all: Vec<&str> = self.resources.iter().map(String::as_str).collect();
        self.transaction_on(&all, work).await
    }

    /// [`App::transaction`] with branches on the `resources` named only.
    ///
    /// # Errors
    /// As [`App::transaction`], and [`AppError::NoSuchResource`] for a name this app
    /// does not host.
    pub async fn transaction_on<T, E, F, Fut>(
        &self,
        resources: &[&str],
        work: F,
    ) -> Result<T, AppError>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(unknown) = resources
            .iter()
            .find(|r| !self.resources.iter().any(|h| h == *r))
        {
            return Err(AppError::NoSuchResource((*unknown).to_string()));
        }
        let begun = self
            .client
            .begin(BeginOptions {
                timeout: self.txn_timeout,
                branches: resources
                    .iter()
                    .map(|r| (self.endpoint.clone(), (*r).to_string()))
                    .collect(),
                ..BeginOptions::default()
            })
            .await?;
        let tx = Tx {
            inner: Arc::new(TxInner {
                gtrid: begun.gtrid.clone(),
                branches: begun
                    .branches
                    .iter()
                    .map(|b| (b.resource.clone(), b.xid.clone()))
                    .collect(),
            }),
        };
        let value = match work(tx).await {
            Ok(v) => v,
            Err(e) => {
                // The branch that failed votes NO anyway; rolling back now releases
                // the others sooner. Its answer changes nothing for the caller.
                let _ = self.client.rollback(&begun.gtrid).await;
                return Err(AppError::Work(e.into()));
            }
        };
        self.commit_until_known(&begun.gtrid).await?;
        Ok(value)
    }

    /// Commits `gtrid`, asking again while the outcome is unknown.
    async fn commit_until_known(&self, gtrid: &str) -> Result<(), AppError> {
        let start = Instant::now();
        loop {
            match self.client.commit(gtrid).await {
                Ok(d) if d.outcome == Outcome::Committed => return Ok(()),
                Ok(d) => {
                    return Err(AppError::Aborted {
                        gtrid: gtrid.to_string(),
                        reason: d.reason,
                        detail: d.detail,
                    })
                }
                // Every other answer leaves the outcome unknown: the commit was
                // sent, and may have been decided. Asking again may tell (no leader,
                // a run in progress: FAILED_PRECONDITION); a refusal asking again
                // cannot cure is reported as unknown at once, never as a failure the
                // caller could take as "not committed" and run the work again.
                Err(e) => {
                    let may_cure = e.is_retryable()
                        || matches!(&e, ClientError::Rejected { code, .. } if *code == tonic::Code::FailedPrecondition);
                    let out_of_time = self
                        .outcome_timeout
                        .is_some_and(|limit| start.elapsed() >= limit);
                    if !may_cure || out_of_time {
                        return Err(AppError::OutcomeUnknown {
                            gtrid: gtrid.to_string(),
                            waited: start.elapsed(),
                            last_error: e.to_string(),
                        });
                    }
                    tracing::debug!(gtrid, error = %e, "commit outcome unknown, asking again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Stops the participant server and the recovery loop. First it waits, up to the
    /// shutdown grace ([`AppBuilder::shutdown_grace`]), until no branch is prepared
    /// here any more (the coordinator's phase 2 of the last commits); then it lets
    /// calls and a recovery round in progress finish.
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + self.shutdown_grace;
        while Instant::now() < deadline && self.any_prepared().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        if let Some((server, recovery)) = self.tasks.take() {
            let _ = server.await;
            let _ = recovery.await;
        }
    }
}

impl App {
    /// Does a resource hold a prepared branch (or cannot say)?
    async fn any_prepared(&self) -> bool {
        for (_, r) in &self.hosted {
            match r.recover().await {
                Ok(xids) if xids.is_empty() => {}
                _ => return true,
            }
        }
        false
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake;
    use crate::testing::Prepared;

    /// A commit the coordinator refuses (here NOT_FOUND) leaves the outcome unknown
    /// to the app: it must say so, not report a failure a caller could take as "not
    /// committed" and run the work again in a new transaction.
    #[tokio::test]
    async fn a_refused_commit_is_an_unknown_outcome_not_a_failure() -> anyhow::Result<()> {
        let (leader, _) = fake::start(fake::leader(&[])).await?;
        let app = App::builder()
            .coordinators([leader.to_string()])
            .without_recovery()
            .resource("r", Arc::new(Prepared::default()))
            .start()
            .await?;
        let ran = app
            .transaction(|tx| async move { anyhow::Ok(tx.gtrid().to_owned()) })
            .await;
        assert!(
            matches!(&ran, Err(AppError::OutcomeUnknown { last_error, .. }) if last_error.contains("NotFound")),
            "{ran:?}"
        );
        app.shutdown().await;
        Ok(())
    }
}
