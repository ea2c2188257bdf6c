//! Operator resolution (docs/design.md, rule 17) against a real 3-node cluster: each
//! action is logged with who and why, and refused where the protocol forbids it.
//!
//! The participants are scripted fakes (`Scripted`): they remember what they
//! prepared (their Recover answer), can hold a prepare open, and can answer phase 2
//! against the decision or fail it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratify_participant_sdk::client::{BeginOptions, ClientError, CoordinatorClient, Outcome};
use ratify_proto::pb;
use ratify_tests::{serve_fake_participant, TestCluster};
use tonic::{Request, Response, Status};

/// How a scripted participant answers phase 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase2 {
    /// As asked.
    Obey,
    /// COMMIT answered ROLLED_BACK (a heuristic outcome).
    RolledBack,
    /// Every call fails (UNAVAILABLE): the branch is stuck.
    Fail,
}

#[derive(Debug)]
struct State {
    /// `gtrid.bqual` of each branch prepared (answered YES or holding the answer).
    prepared: HashSet<(String, String)>,
    /// The first prepare of a branch holds its answer until `release` (after
    /// recording the branch), as if the answer were lost; a repeated one answers.
    hold_prepare: bool,
    phase2: Phase2,
    commits: usize,
    rollbacks: usize,
}

/// A participant whose answers the test sets.
#[derive(Debug, Clone)]
struct Scripted {
    state: Arc<Mutex<State>>,
    release: Arc<tokio::sync::Notify>,
}

impl Scripted {
    fn new(phase2: Phase2) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                prepared: HashSet::new(),
                hold_prepare: false,
                phase2,
                commits: 0,
                rollbacks: 0,
            })),
            release: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn serve(&self) -> anyhow::Result<String> {
        serve_fake_participant(self.clone()).await
    }
}

fn key(xid: Option<&pb::Xid>) -> Result<(String, String), Status> {
    let x = xid.ok_or_else(|| Status::invalid_argument("xid"))?;
    Ok((x.gtrid.clone(), x.bqual.clone()))
}

#[tonic::async_trait]
impl pb::participant_server::Participant for Scripted {
    async fn prepare(
        &self,
        req: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let k = key(req.get_ref().xid.as_ref())?;
        let hold = {
            let mut s = self.state();
            let first = s.prepared.insert(k);
            s.hold_prepare && first
        };
        if hold {
            self.release.notified().await;
        }
        Ok(Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            detail: String::new(),
        }))
    }

    async fn commit(
        &self,
        _req: Request<pb::BranchCommitRequest>,
    ) -> Result<Response<pb::BranchCommitResponse>, Status> {
        let mut s = self.state();
        let result = match s.phase2 {
            Phase2::Fail => return Err(Status::unavailable("disk offline")),
            Phase2::RolledBack => pb::BranchCommitResult::RolledBack,
            Phase2::Obey => pb::BranchCommitResult::Committed,
        };
        s.commits += 1;
        Ok(Response::new(pb::BranchCommitResponse {
            result: result as i32,
            detail: String::new(),
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::BranchRollbackRequest>,
    ) -> Result<Response<pb::BranchRollbackResponse>, Status> {
        let k = key(req.get_ref().xid.as_ref())?;
        let mut s = self.state();
        if s.phase2 == Phase2::Fail {
            return Err(Status::unavailable("disk offline"));
        }
        s.prepared.remove(&k);
        s.rollbacks += 1;
        Ok(Response::new(pb::BranchRollbackResponse {
            result: pb::BranchRollbackResult::RolledBack as i32,
            detail: String::new(),
        }))
    }

    async fn recover(
        &self,
        _req: Request<pb::RecoverRequest>,
    ) -> Result<Response<pb::RecoverResponse>, Status> {
        let xids = self
            .state()
            .prepared
            .iter()
            .map(|(gtrid, bqual)| pb::Xid {
                format_id: ratify_proto::XID_FORMAT_ID,
                gtrid: gtrid.clone(),
                bqual: bqual.clone(),
            })
            .collect();
        Ok(Response::new(pb::RecoverResponse { xids }))
    }
}

/// Begins a transaction with one branch at each endpoint.
async fn begin(client: &CoordinatorClient, endpoints: &[&str]) -> anyhow::Result<String> {
    let begun = client
        .begin(BeginOptions {
            timeout: Duration::from_secs(120),
            branches: endpoints
                .iter()
                .map(|e| (e.to_string(), "r".to_string()))
                .collect(),
            ..BeginOptions::default()
        })
        .await?;
    Ok(begun.gtrid)
}

/// The refusal's status code and message.
fn rejected(r: Result<pb::ResolveTransactionResponse, ClientError>) -> (tonic::Code, String) {
    match r {
        Err(ClientError::Rejected { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not happen in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_state(
    client: &CoordinatorClient,
    gtrid: &str,
    state: pb::TxnState,
) -> anyhow::Result<pb::Transaction> {
    let start = Instant::now();
    loop {
        let t = client.get(gtrid).await?;
        if t.state == state as i32 {
            return Ok(t);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "{gtrid} is not {state:?} after 20 s: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An ACTIVE transaction (held in the leader's memory) aborted by an operator: the
/// abort is logged with who and why, the client's commit learns it, a repeated
/// action answers the record, and the branches are rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_aborts_an_active_transaction() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let (a, b) = (Scripted::new(Phase2::Obey), Scripted::new(Phase2::Obey));
    let (ea, eb) = (a.serve().await?, b.serve().await?);
    let gtrid = begin(&c.client, &[&ea, &eb]).await?;

    let r = c
        .client
        .resolve(
            &gtrid,
            pb::ResolveAction::Abort,
            "alice",
            "customer cancelled",
        )
        .await?;
    assert!(r.changed, "{r:?}");
    let t = r.transaction.expect("transaction");
    assert_eq!(t.outcome, pb::Outcome::Aborted as i32, "{t:?}");
    assert_eq!(t.reason, pb::Reason::Operator as i32, "{t:?}");
    assert_eq!(t.audit.len(), 1, "{t:?}");
    assert_eq!(t.audit[0].operator, "alice");
    assert_eq!(t.audit[0].reason, "customer cancelled");
    assert_eq!(t.audit[0].action, pb::ResolveAction::Abort as i32);

    // The client learns the operator's decision.
    let d = c.client.commit(&gtrid).await?;
    assert_eq!(d.outcome, Outcome::Aborted, "{d:?}");
    assert_eq!(d.reason, pb::Reason::Operator, "{d:?}");
    // Asked again (abort or commit), the record answers and nothing changes.
    for action in [pb::ResolveAction::Abort, pb::ResolveAction::Commit] {
        let again = c.client.resolve(&gtrid, action, "bob", "again").await?;
        assert!(!again.changed, "{again:?}");
        let t = again.transaction.expect("transaction");
        assert_eq!(t.outcome, pb::Outcome::Aborted as i32);
        assert_eq!(t.audit.len(), 1, "a refused repeat is not audited: {t:?}");
    }
    wait_for("both rollbacks", || {
        a.state().rollbacks >= 1 && b.state().rollbacks >= 1
    })
    .await?;
    let t = wait_state(&c.client, &gtrid, pb::TxnState::Completed).await?;
    assert_eq!(
        t.audit.len(),
        1,
        "the audit trail is kept with the outcome: {t:?}"
    );
    Ok(())
}

/// Once the commit is logged as started (PREPARING, durably), an abort is refused:
/// it may already have been reported committed. An operator commit is allowed once
/// every branch is prepared, and the client's pending commit reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committing_transaction_cannot_be_aborted_but_can_be_committed() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--prepare-timeout-ms", "120000"]).await?;
    let (a, b) = (Scripted::new(Phase2::Obey), Scripted::new(Phase2::Obey));
    a.state().hold_prepare = true;
    let (ea, eb) = (a.serve().await?, b.serve().await?);
    let gtrid = begin(&c.client, &[&ea, &eb]).await?;
    let client = c.client.clone();
    let g = gtrid.clone();
    let commit = tokio::spawn(async move { client.commit(&g).await });
    wait_for("both prepares", || {
        !a.state().prepared.is_empty() && !b.state().prepared.is_empty()
    })
    .await?;
    // The marker is logged alongside the prepares: wait until the table has it.
    wait_state(&c.client, &gtrid, pb::TxnState::Preparing).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (code, message) = rejected(
        c.client
            .resolve(&gtrid, pb::ResolveAction::Abort, "alice", "looks stuck")
            .await,
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(message.contains("logged as started"), "{message}");
    let t = c.client.get(&gtrid).await?;
    assert_eq!(
        t.state,
        pb::TxnState::Preparing as i32,
        "nothing changed: {t:?}"
    );
    assert!(t.audit.is_empty(), "{t:?}");

    // Both branches are prepared (Recover lists them, and asked again each answers
    // YES): an operator may commit.
    let r = c
        .client
        .resolve(
            &gtrid,
            pb::ResolveAction::Commit,
            "alice",
            "both legs prepared",
        )
        .await?;
    assert!(r.changed, "{r:?}");
    let t = r.transaction.expect("transaction");
    assert_eq!(t.outcome, pb::Outcome::Committed as i32, "{t:?}");
    assert_eq!(t.reason, pb::Reason::Operator as i32, "{t:?}");
    a.release.notify_waiters();
    let d = commit.await??;
    assert_eq!(
        d.outcome,
        Outcome::Committed,
        "the client is told the truth: {d:?}"
    );
    wait_for("both commits", || {
        a.state().commits >= 1 && b.state().commits >= 1
    })
    .await?;
    assert_eq!(a.state().rollbacks + b.state().rollbacks, 0);
    Ok(())
}

/// A commit is refused unless the leader finds every branch prepared, naming each
/// branch that is not; nothing changes, and the client can still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_commit_needs_every_branch_prepared() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let (a, b) = (Scripted::new(Phase2::Obey), Scripted::new(Phase2::Obey));
    let (ea, eb) = (a.serve().await?, b.serve().await?);
    let gtrid = begin(&c.client, &[&ea, &eb]).await?;
    let (code, message) = rejected(
        c.client
            .resolve(&gtrid, pb::ResolveAction::Commit, "alice", "ship it")
            .await,
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(
        message.contains(&format!("branch 1 ({ea}/r): not prepared there"))
            && message.contains(&format!("branch 2 ({eb}/r): not prepared there")),
        "{message}"
    );
    // One branch unreachable: said so.
    let gone = begin(&c.client, &[&ea, "127.0.0.1:1"]).await?;
    let (_, message) = rejected(
        c.client
            .resolve(&gone, pb::ResolveAction::Commit, "alice", "ship it")
            .await,
    );
    assert!(
        message.contains("branch 2 (127.0.0.1:1/r): could not ask"),
        "{message}"
    );

    let t = c.client.get(&gtrid).await?;
    assert_eq!(
        t.state,
        pb::TxnState::Active as i32,
        "nothing changed: {t:?}"
    );
    let d = c.client.commit(&gtrid).await?;
    assert_eq!(d.outcome, Outcome::Committed, "{d:?}");
    assert_eq!(d.reason, pb::Reason::ClientCommit, "{d:?}");
    // Bad requests are refused before anything is looked at.
    let (code, _) = rejected(
        c.client
            .resolve(&gtrid, pb::ResolveAction::Abort, "", "x")
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    let (code, _) = rejected(
        c.client
            .resolve(&gtrid, pb::ResolveAction::Abort, "alice", " ")
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    let (code, _) = rejected(
        c.client
            .resolve(&gtrid, pb::ResolveAction::Unspecified, "alice", "x")
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    Ok(())
}

/// A heuristic outcome is listed for a person; once settled it completes, with the
/// settlement in its audit trail; settling again answers the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heuristic_outcome_is_listed_then_settled() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let (a, b) = (
        Scripted::new(Phase2::Obey),
        Scripted::new(Phase2::RolledBack),
    );
    let (ea, eb) = (a.serve().await?, b.serve().await?);
    let gtrid = begin(&c.client, &[&ea, &eb]).await?;
    let d = c.client.commit(&gtrid).await?;
    assert_eq!(d.outcome, Outcome::Committed, "{d:?}");
    wait_state(&c.client, &gtrid, pb::TxnState::Heuristic).await?;
    let listed = c
        .client
        .needing_attention(Duration::from_secs(30), 0)
        .await?;
    let entry = listed
        .transactions
        .iter()
        .find(|n| n.transaction.as_ref().is_some_and(|t| t.gtrid == gtrid))
        .unwrap_or_else(|| panic!("not listed: {listed:?}"));
    assert!(
        entry
            .why
            .iter()
            .any(|w| w.starts_with("heuristic outcome on branch 2")),
        "{entry:?}"
    );
    // Settling needs a heuristic outcome: a clean transaction has none.
    let clean = begin(&c.client, &[&ea]).await?;
    c.client.commit(&clean).await?;
    let (code, message) = rejected(
        c.client
            .resolve_branches(
                &clean,
                pb::ResolveAction::SettleHeuristic,
                &[1],
                "alice",
                "x",
            )
            .await,
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    // A settle names what it covers: none named, or one without an outcome, is refused.
    let (code, _) = rejected(
        c.client
            .resolve(&gtrid, pb::ResolveAction::SettleHeuristic, "carol", "x")
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    let (code, message) = rejected(
        c.client
            .resolve_branches(
                &gtrid,
                pb::ResolveAction::SettleHeuristic,
                &[1, 2],
                "carol",
                "x",
            )
            .await,
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
    assert!(
        message.contains("branch 1 has no heuristic outcome"),
        "{message}"
    );
    let too_many: Vec<u32> = (1..=65).collect();
    let (code, message) = rejected(
        c.client
            .resolve_branches(
                &gtrid,
                pb::ResolveAction::SettleHeuristic,
                &too_many,
                "carol",
                "x",
            )
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");

    let r = c
        .client
        .resolve_branches(
            &gtrid,
            pb::ResolveAction::SettleHeuristic,
            &[2],
            "carol",
            "re-applied the payment by hand (ticket 4711)",
        )
        .await?;
    assert!(r.changed, "{r:?}");
    let t = wait_state(&c.client, &gtrid, pb::TxnState::Completed).await?;
    assert_eq!(t.outcome, pb::Outcome::Committed as i32);
    assert_eq!(t.audit.len(), 1, "{t:?}");
    assert_eq!(t.audit[0].action, pb::ResolveAction::SettleHeuristic as i32);
    assert_eq!(t.audit[0].operator, "carol");
    let again = c
        .client
        .resolve_branches(
            &gtrid,
            pb::ResolveAction::SettleHeuristic,
            &[2],
            "carol",
            "again",
        )
        .await?;
    assert!(!again.changed, "{again:?}");
    let listed = c
        .client
        .needing_attention(Duration::from_secs(30), 0)
        .await?;
    assert!(
        !listed
            .transactions
            .iter()
            .any(|n| n.transaction.as_ref().is_some_and(|t| t.gtrid == gtrid)),
        "still listed: {listed:?}"
    );
    Ok(())
}

/// A branch whose phase 2 keeps failing is listed once it has failed for longer than
/// asked; resolving the (decided) transaction answers its recorded outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_phase_2_is_listed_and_decided_ones_answer_their_record() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let (a, b) = (Scripted::new(Phase2::Obey), Scripted::new(Phase2::Fail));
    let (ea, eb) = (a.serve().await?, b.serve().await?);
    let gtrid = begin(&c.client, &[&ea, &eb]).await?;
    assert_eq!(c.client.commit(&gtrid).await?.outcome, Outcome::Committed);
    let start = Instant::now();
    let entry = loop {
        let listed = c
            .client
            .needing_attention(Duration::from_millis(1_000), 0)
            .await?;
        // Listed once both concerns are old enough (phase 2 pending and the
        // branch failing start a few milliseconds apart).
        if let Some(n) = listed.transactions.into_iter().find(|n| {
            n.transaction.as_ref().is_some_and(|t| t.gtrid == gtrid)
                && n.why
                    .iter()
                    .any(|w| w.starts_with(&format!("branch 2 ({eb}/r) failing for")))
        }) {
            break n;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        entry
            .why
            .iter()
            .any(|w| w.starts_with(&format!("branch 2 ({eb}/r) failing for"))
                && w.contains("disk offline")),
        "{entry:?}"
    );
    let r = c
        .client
        .resolve(&gtrid, pb::ResolveAction::Abort, "alice", "give up")
        .await?;
    assert!(!r.changed, "{r:?}");
    let t = r.transaction.expect("transaction");
    assert_eq!(t.outcome, pb::Outcome::Committed as i32, "{t:?}");
    assert_eq!(t.reason, pb::Reason::ClientCommit as i32, "{t:?}");
    assert!(t.audit.is_empty(), "{t:?}");
    Ok(())
}
