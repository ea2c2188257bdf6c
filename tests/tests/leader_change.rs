//! In-flight transactions across a leader change, now that Begin and Enlist are held in
//! the leader's memory and nothing is logged before the commit (docs/design.md, rule
//! 16): a Commit retried on the new leader returns the recorded outcome, an ACTIVE
//! transaction is driven from the client's branch list, and one whose client sends no
//! list is aborted, never committed in part.

use std::time::Duration;

use ratify_participant_sdk::client::{BeginOptions, CoordinatorClient};
use ratify_proto::pb;
use ratify_tests::{must_abort, must_commit, Bank, TestCluster, ACCOUNTS, INITIAL};

/// A raw gRPC client of one node (no SDK: no branch list is sent).
async fn raw(
    addr: &str,
) -> anyhow::Result<pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(pb::coordinator_client::CoordinatorClient::new(channel))
}

/// Committed, then the leader is killed: the Commit retried on the new leader
/// returns the recorded outcome, and both branches commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_retried_after_a_leader_kill_returns_the_recorded_outcome() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let t = bank.transfer(&c.client, 1, 2, 7).await?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    let leader = c.leader().await?;
    c.nodes.kill(leader)?;
    // A fresh client (it knows no branch list): the answer is the log's.
    let again = CoordinatorClient::new(c.nodes.api_endpoints(), Default::default())?;
    let d = again.commit(&t.gtrid).await?;
    must_commit(&d);
    assert_eq!(d.reason, pb::Reason::ClientCommit, "{d:?}");
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct1")?, INITIAL - 7);
    assert_eq!(bank.b.balance("acct2")?, INITIAL + 7);
    Ok(())
}

/// Begun (and its work done) on a leader that is then killed before Commit: the new
/// leader never heard of it, and drives the commit from the branch list the SDK
/// sends with the retried Commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_transaction_survives_a_leader_kill() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let t = bank.transfer(&c.client, 3, 4, 11).await?;
    let leader = c.leader().await?;
    c.nodes.kill(leader)?;
    let d = c.client.commit(&t.gtrid).await?;
    must_commit(&d);
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct3")?, INITIAL - 11);
    assert_eq!(bank.b.balance("acct4")?, INITIAL + 11);
    // Every later question gets the same answer.
    let q = c.client.query_outcome(&t.branches[0].xid).await?;
    assert_eq!(q.outcome, pb::Outcome::Committed as i32, "{q:?}");
    Ok(())
}

/// The same, but the Commit reaches the new leader without a branch list (a client
/// that does not send one): it cannot know every branch, so it aborts (LEADER_LOST)
/// and tells every branch that asks; nothing commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_transaction_committed_without_its_branches_is_aborted() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let t = bank.transfer(&c.client, 5, 6, 13).await?;
    let leader = c.leader().await?;
    c.nodes.kill(leader)?;
    let new_leader = c.leader().await?;
    let mut rpc = raw(&c.nodes.api_addr(new_leader)?).await?;
    let r = loop {
        match rpc
            .commit(pb::CommitRequest {
                gtrid: t.gtrid.clone(),
                branches: None,
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            // Still catching up.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => anyhow::bail!("{s}"),
        }
    };
    assert_eq!(r.outcome, pb::Outcome::Aborted as i32, "{r:?}");
    assert_eq!(r.reason, pb::Reason::LeaderLost as i32, "{r:?}");
    // The SDK's own retry, with the list, now learns the recorded abort.
    must_abort(&c.client.commit(&t.gtrid).await?, pb::Reason::LeaderLost);
    let q = c.client.query_outcome(&t.branches[1].xid).await?;
    assert_eq!(q.outcome, pb::Outcome::Aborted as i32, "{q:?}");
    assert_eq!(bank.total()?, 2 * ACCOUNTS as i64 * INITIAL);
    assert_eq!(bank.a.balance("acct5")?, INITIAL);
    Ok(())
}

/// Killed mid-prepare, after the commit marker was logged and every branch voted
/// YES (parallel commit): the new leader prepares again and commits; the client's
/// retried Commit gets COMMITTED, and so does every branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_after_the_votes_leaves_a_committed_transaction() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    // Pause every run after the votes: the marker is queued with the prepares, and
    // the pause gives it time to become durable before the leader is killed.
    for id in c.nodes.ids() {
        c.nodes
            .restart_with_failpoints(id, "coord.after_votes=sleep:30000")?;
    }
    let leader = c.leader().await?;
    let t = bank.transfer(&c.client, 7, 8, 17).await?;
    let client = c.client.clone();
    let gtrid = t.gtrid.clone();
    let first = tokio::spawn(async move { client.commit(&gtrid).await });
    // Both branches prepared.
    let start = std::time::Instant::now();
    while bank.a.prepared_count() + bank.b.prepared_count() < 2 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "never prepared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes.kill(leader)?;
    must_commit(&first.await??);
    must_commit(&c.client.commit(&t.gtrid).await?);
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct7")?, INITIAL - 17);
    assert_eq!(bank.b.balance("acct8")?, INITIAL + 17);
    Ok(())
}

/// An ACTIVE transaction held in memory is listed and shown by the leader, with its
/// branches, before anything of it is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_transaction_is_listed_before_it_is_logged() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![("127.0.0.1:9".into(), "r".into())],
            labels: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        })
        .await?;
    let got = c.client.get(&t.gtrid).await?;
    assert_eq!(got.state, pb::TxnState::Active as i32, "{got:?}");
    assert_eq!(got.branches.len(), 1);
    assert_eq!(got.labels.get("k").map(String::as_str), Some("v"));
    let listed = c.client.list(Some(pb::TxnState::Active), 0, "").await?;
    assert!(
        listed.transactions.iter().any(|l| l.gtrid == t.gtrid),
        "{listed:?}"
    );
    must_abort(
        &c.client.rollback(&t.gtrid).await?,
        pb::Reason::ClientRollback,
    );
    Ok(())
}

/// A branch enlisted by another process (its own client) is logged at once, so the
/// beginner's list, which misses it, cannot make the next leader commit part of the
/// transaction: the logged record wins over the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_enlisted_elsewhere_is_not_lost_with_the_leader() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let [a, b] = <[(String, String); 2]>::try_from(bank.branches())
        .map_err(|_| anyhow::anyhow!("two banks"))?;
    let t = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_secs(30),
            branches: vec![a],
            ..Default::default()
        })
        .await?;
    // Another service, with a client of its own, enlists its branch.
    let other = CoordinatorClient::new(c.nodes.api_endpoints(), Default::default())?;
    let eb = other.enlist(&t.gtrid, &b.0, &b.1).await?;
    bank.a.branch(&t.branches[0].xid)?.debit("acct9", 5)?;
    bank.b.branch(&eb.xid)?.credit("acct10", 5)?;
    let leader = c.leader().await?;
    c.nodes.kill(leader)?;
    // The beginner's list names only its own branch.
    must_commit(&c.client.commit(&t.gtrid).await?);
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct9")?, INITIAL - 5);
    assert_eq!(
        bank.b.balance("acct10")?,
        INITIAL + 5,
        "the enlisted branch must commit too"
    );
    Ok(())
}

/// A number of the leader's block that it has not handed out yet is NOT_FOUND, and
/// no record can be made for it: a Commit or a QueryOutcome naming it must not
/// decide the transaction that Begin will later give that number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_not_yet_handed_out_takes_no_record() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let t = c.client.begin(BeginOptions::default()).await?;
    let index = u64::from_str_radix(&t.gtrid[16..], 16)?;
    let next = format!("{}{:016x}", &t.gtrid[..16], index + 1);
    let leader = c.leader().await?;
    let mut rpc = raw(&c.nodes.api_addr(leader)?).await?;
    let r = rpc
        .commit(pb::CommitRequest {
            gtrid: next.clone(),
            branches: Some(pb::BranchList {
                branches: vec![],
                owner_token: String::new(),
            }),
        })
        .await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    let again = c.client.begin(BeginOptions::default()).await?;
    assert_eq!(again.gtrid, next, "numbers are handed out in order");
    let got = c.client.get(&again.gtrid).await?;
    assert_eq!(got.state, pb::TxnState::Active as i32, "{got:?}");
    Ok(())
}

/// Votes YES to the first prepare, then answers every call UNAVAILABLE (a branch that
/// went down after voting).
#[derive(Default)]
struct YesThenGone {
    /// Prepares received (shared with the test).
    prepares: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl pb::participant_server::Participant for YesThenGone {
    async fn prepare(
        &self,
        _r: tonic::Request<pb::PrepareRequest>,
    ) -> Result<tonic::Response<pb::PrepareResponse>, tonic::Status> {
        if self
            .prepares
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            return Err(tonic::Status::unavailable("down"));
        }
        Ok(tonic::Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            detail: String::new(),
        }))
    }
    async fn commit(
        &self,
        _r: tonic::Request<pb::BranchCommitRequest>,
    ) -> Result<tonic::Response<pb::BranchCommitResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("down"))
    }
    async fn rollback(
        &self,
        _r: tonic::Request<pb::BranchRollbackRequest>,
    ) -> Result<tonic::Response<pb::BranchRollbackResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("down"))
    }
    async fn recover(
        &self,
        _r: tonic::Request<pb::RecoverRequest>,
    ) -> Result<tonic::Response<pb::RecoverResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::RecoverResponse::default()))
    }
}

/// A re-driven commit whose branch voted YES and then went down is neither aborted
/// (it may be committed) nor hidden: it stays PREPARING, and the branch is shown
/// failing (`failed_calls`, `last_error`) while the new leader asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_commit_with_a_branch_gone_stays_preparing_and_shows_it() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let gone = YesThenGone::default();
    let prepares = gone.prepares.clone();
    let endpoint = ratify_tests::serve_fake_participant(gone).await?;
    for id in c.nodes.ids() {
        c.nodes
            .restart_with_failpoints(id, "coord.after_votes=sleep:30000")?;
    }
    let leader = c.leader().await?;
    let a = bank.branches()[0].clone();
    let t = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_secs(60),
            branches: vec![a, (endpoint, "r".into())],
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.debit("acct11", 3)?;
    let client = c.client.clone();
    let gtrid = t.gtrid.clone();
    drop(tokio::spawn(async move { client.commit(&gtrid).await }));
    let start = std::time::Instant::now();
    while bank.a.prepared_count() < 1 || prepares.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "never prepared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes.kill(leader)?;
    let start = std::time::Instant::now();
    loop {
        let got = c.client.get(&t.gtrid).await?;
        assert_eq!(got.state, pb::TxnState::Preparing as i32, "{got:?}");
        if got.branches.get(1).is_some_and(|b| b.failed_calls > 0) {
            assert!(!got.branches[1].last_error.is_empty(), "{got:?}");
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(15),
            "the failing branch is not shown: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
