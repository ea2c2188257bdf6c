//! Two-phase commit paths and bad input against a real 3-process cluster.

use std::collections::HashMap;
use std::time::Duration;

use ratify_participant_sdk::client::{BeginOptions, ClientError, Outcome};
use ratify_proto::pb;
use ratify_tests::{must_abort, must_commit, Bank, TestCluster, INITIAL};
use tokio::io::AsyncWriteExt;

/// A transfer across two participants commits on both, and the coordinator then
/// records it COMPLETED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_across_two_participants() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let t = bank.transfer(&c.client, 1, 2, 300).await?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct1")?, INITIAL - 300);
    assert_eq!(bank.b.balance("acct2")?, INITIAL + 300);
    c.wait_all_completed(Duration::from_secs(10)).await?;
    let got = c.client.get(&t.gtrid).await?;
    assert_eq!(got.state, pb::TxnState::Completed as i32);
    assert_eq!(got.outcome, pb::Outcome::Committed as i32);
    Ok(())
}

/// A participant voting NO aborts the transaction and every branch rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_vote_rolls_back_every_branch() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    // More than the balance: bank A votes NO at prepare.
    let t = bank.transfer(&c.client, 3, 4, INITIAL + 1).await?;
    must_abort(&c.client.commit(&t.gtrid).await?, pb::Reason::VotedNo);
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct3")?, INITIAL);
    assert_eq!(
        bank.b.balance("acct4")?,
        INITIAL,
        "the YES branch must be rolled back"
    );
    c.wait_all_completed(Duration::from_secs(10)).await?;
    Ok(())
}

/// A participant that cannot be reached at prepare aborts the transaction; the
/// reachable branch is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_participant_aborts() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--prepare-timeout-ms", "1000"]).await?;
    let bank = Bank::open(&c).await?;
    let dead = format!("127.0.0.1:{}", ratify_devkit::local::free_port()?);
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![bank.branches()[0].clone(), (dead, "accounts".into())],
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.debit("acct5", 10)?;
    must_abort(
        &c.client.commit(&t.gtrid).await?,
        pb::Reason::ParticipantUnreachable,
    );
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct5")?, INITIAL);
    Ok(())
}

/// A single-branch transaction commits in one phase; a read-only branch is skipped in
/// phase 2 while the other branch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_and_read_only_paths() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;

    let one = c
        .client
        .begin(BeginOptions {
            branches: vec![bank.branches()[0].clone()],
            ..Default::default()
        })
        .await?;
    bank.a.branch(&one.branches[0].xid)?.credit("acct6", 5)?;
    let d = c.client.commit(&one.gtrid).await?;
    must_commit(&d);
    assert_eq!(d.reason, pb::Reason::OnePhase);
    assert_eq!(bank.a.balance("acct6")?, INITIAL + 5);

    let ro = c
        .client
        .begin(BeginOptions {
            branches: bank.branches(),
            ..Default::default()
        })
        .await?;
    bank.a.branch(&ro.branches[0].xid)?; // registered, no work: votes READ_ONLY
    bank.b.branch(&ro.branches[1].xid)?.credit("acct7", 7)?;
    let d = c.client.commit(&ro.gtrid).await?;
    must_commit(&d);
    assert_eq!(d.reason, pb::Reason::ClientCommit);
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.b.balance("acct7")?, INITIAL + 7);
    c.wait_all_completed(Duration::from_secs(10)).await?;
    Ok(())
}

/// Commit and rollback are idempotent and return the recorded outcome, whatever was
/// asked later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_commit_and_rollback_return_the_recorded_outcome() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let t = bank.transfer(&c.client, 8, 8, 1).await?;
    let first = c.client.commit(&t.gtrid).await?;
    must_commit(&first);
    assert_eq!(
        c.client.commit(&t.gtrid).await?,
        first,
        "double commit must return the same outcome"
    );
    must_commit(&c.client.rollback(&t.gtrid).await?);

    let r = bank.transfer(&c.client, 9, 9, 1).await?;
    must_abort(
        &c.client.rollback(&r.gtrid).await?,
        pb::Reason::ClientRollback,
    );
    must_abort(
        &c.client.commit(&r.gtrid).await?,
        pb::Reason::ClientRollback,
    );
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.total()?, 2 * ratify_tests::ACCOUNTS as i64 * INITIAL);
    Ok(())
}

fn rejected(e: &ClientError, code: tonic::Code) -> bool {
    match e {
        ClientError::Rejected { code: c, .. } => *c == code,
        ClientError::InvalidInput(_) => code == tonic::Code::InvalidArgument,
        _ => false,
    }
}

/// Bad input gets a clear error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let live_before = c.client.list(None, 1000, "").await?.transactions.len();

    // Unknown and malformed gtrids.
    let status = c.client.cluster_status(None).await?;
    let unknown = format!("{}{:016x}", status.cluster_id, 9_999_999u64);
    let e = c.client.commit(&unknown).await.expect_err("unknown gtrid");
    assert!(rejected(&e, tonic::Code::NotFound), "{e:?}");
    let foreign = format!("{:016x}{:016x}", 12345u64, 1u64);
    let e = c.client.get(&foreign).await.expect_err("foreign gtrid");
    assert!(rejected(&e, tonic::Code::NotFound), "{e:?}");
    for bad in ["", "zz", "'; DROP TABLE x; --", &"a".repeat(33)] {
        let e = c.client.commit(bad).await.expect_err("malformed gtrid");
        assert!(rejected(&e, tonic::Code::InvalidArgument), "{bad:?}: {e:?}");
    }

    // Oversized or malformed Begin input.
    let too_many = BeginOptions {
        branches: (0..65)
            .map(|i| (format!("127.0.0.1:{}", 1000 + i), "r".to_string()))
            .collect(),
        ..Default::default()
    };
    let bad_resource = BeginOptions {
        branches: vec![("127.0.0.1:1".into(), "no spaces allowed".into())],
        ..Default::default()
    };
    let big_label = BeginOptions {
        labels: HashMap::from([("k".to_string(), "v".repeat(65))]),
        ..Default::default()
    };
    let long_timeout = BeginOptions {
        timeout: Duration::from_secs(7200),
        ..Default::default()
    };
    for opts in [too_many, bad_resource, big_label, long_timeout] {
        let e = c.client.begin(opts).await.expect_err("bad begin");
        assert!(rejected(&e, tonic::Code::InvalidArgument), "{e:?}");
    }
    assert_eq!(
        c.client.list(None, 1000, "").await?.transactions.len(),
        live_before,
        "refused input must not create transactions"
    );

    // Enlist after commit started (here: after it finished) is refused.
    let t = bank.transfer(&c.client, 10, 10, 1).await?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    let e = c
        .client
        .enlist(&t.gtrid, "127.0.0.1:1", "accounts")
        .await
        .expect_err("late enlist");
    assert!(rejected(&e, tonic::Code::FailedPrecondition), "{e:?}");
    Ok(())
}

/// A participant speaking something other than gRPC, and one answering a vote that
/// does not exist, both make the transaction abort instead of hanging or committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_answering_garbage_aborts_the_transaction() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--prepare-timeout-ms", "1000"]).await?;
    let bank = Bank::open(&c).await?;

    // Raw TCP garbage.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let garbage_ep = garbage.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nthis is not grpc\xff\xfe")
                .await;
        }
    });
    // Valid gRPC, invalid vote.
    let liar_ep = ratify_tests::serve_fake_participant(LyingVoter).await?;

    for (ep, res) in [(garbage_ep, "accounts"), (liar_ep, "liar")] {
        let t = c
            .client
            .begin(BeginOptions {
                branches: vec![bank.branches()[0].clone(), (ep, res.to_string())],
                ..Default::default()
            })
            .await?;
        bank.a.branch(&t.branches[0].xid)?.debit("acct11", 10)?;
        let d = c.client.commit(&t.gtrid).await?;
        assert_eq!(d.outcome, Outcome::Aborted, "{d:?}");
        assert!(
            matches!(
                d.reason,
                pb::Reason::ProtocolError
                    | pb::Reason::ParticipantUnreachable
                    | pb::Reason::VotedNo
            ),
            "{d:?}"
        );
    }
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct11")?, INITIAL);
    Ok(())
}

/// A participant that speaks gRPC but answers with a vote and results that do not
/// exist in the contract.
struct LyingVoter;

#[tonic::async_trait]
impl pb::participant_server::Participant for LyingVoter {
    async fn prepare(
        &self,
        _r: tonic::Request<pb::PrepareRequest>,
    ) -> Result<tonic::Response<pb::PrepareResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::PrepareResponse {
            vote: 17,
            detail: "?".into(),
        }))
    }
    async fn commit(
        &self,
        _r: tonic::Request<pb::BranchCommitRequest>,
    ) -> Result<tonic::Response<pb::BranchCommitResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchCommitResponse {
            result: 42,
            detail: String::new(),
        }))
    }
    async fn rollback(
        &self,
        _r: tonic::Request<pb::BranchRollbackRequest>,
    ) -> Result<tonic::Response<pb::BranchRollbackResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchRollbackResponse {
            result: pb::BranchRollbackResult::RolledBack as i32,
            detail: String::new(),
        }))
    }
    async fn recover(
        &self,
        _r: tonic::Request<pb::RecoverRequest>,
    ) -> Result<tonic::Response<pb::RecoverResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::RecoverResponse::default()))
    }
}

/// A node refuses to start on another node's data folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_another_nodes_data_dir() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("NODE_ID"), "1\n")?;
    let out = std::process::Command::new(ratify_tests::ratify_binary()?)
        .args([
            "node",
            "--insecure",
            "--id",
            "2",
            "--raft-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to node 1"), "{stderr}");
    Ok(())
}

/// The leader's Prometheus endpoint reports the work it did: transactions begun,
/// decisions by outcome, participant calls, and Raft entries carrying the commands.
/// Followers report the same completed transactions from their copy of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_the_work_done() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let commits = 5;
    for i in 0..commits {
        let t = bank.transfer(&c.client, 1 + i, 2 + i, 1).await?;
        must_commit(&c.client.commit(&t.gtrid).await?);
    }
    let t = bank.transfer(&c.client, 1, 2, INITIAL + 1).await?;
    must_abort(&c.client.commit(&t.gtrid).await?, pb::Reason::VotedNo);
    c.wait_all_completed(Duration::from_secs(10)).await?;

    // Counters are per node; summed over the nodes they count each decision once even
    // if leadership moved during the test (a starved machine can force an election).
    let leader = c.leader().await?;
    let mut sum = std::collections::BTreeMap::<String, f64>::new();
    for id in c.nodes.ids() {
        for (k, v) in c.nodes.metrics(id).await? {
            if k.ends_with("_total") || k.contains("_total{") {
                *sum.entry(k).or_default() += v;
            }
        }
    }
    let m = c.nodes.metrics(leader).await?;
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let total = |k: &str| sum.get(k).copied().unwrap_or(f64::NAN);
    assert_eq!(get("ratify_node_is_leader"), 1.0);
    assert_eq!(
        total("ratify_transactions_begun_total"),
        commits as f64 + 1.0
    );
    assert_eq!(get("ratify_transactions{state=\"live\"}"), 0.0);
    assert_eq!(
        total("ratify_decisions_total{outcome=\"commit\"}"),
        commits as f64
    );
    assert_eq!(total("ratify_decisions_total{outcome=\"abort\"}"), 1.0);
    assert!(total("ratify_participant_calls_total{phase=\"prepare\"}") >= 2.0 * commits as f64);
    // Open + CommitStarted + Decide per transaction, plus completions: every command
    // rode in an entry.
    assert!(total("ratify_proposed_commands_total") >= 2.0 * (commits as f64 + 1.0));
    assert!(total("ratify_proposals_total") >= 1.0);
    assert!(total("ratify_proposals_total") <= total("ratify_proposed_commands_total"));

    for id in c.nodes.ids() {
        if id == leader {
            continue;
        }
        // A follower learns the commit index with the next heartbeat.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let f = c.nodes.metrics(id).await?;
            assert_eq!(f.get("ratify_node_is_leader"), Some(&0.0));
            let kept = "ratify_transactions{state=\"completed_kept\"}";
            if f.get(kept) == Some(&(commits as f64 + 1.0)) {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "follower {id} reports {:?} completed transactions",
                f.get(kept)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// A client that gives up on its Commit while the coordinator is still preparing (it
/// timed out, or its process died, as when the client is itself a participant that
/// was killed) does not leave the transaction PREPARING forever: the coordinator
/// finishes the commit it was asked for, here with an abort because one participant
/// accepts connections but never answers, and the other branch is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_abandoned_by_its_client_still_finishes() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--prepare-timeout-ms", "1500"]).await?;
    let bank = Bank::open(&c).await?;
    // Accepts TCP connections and never answers: prepare hangs until its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?.to_string();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![bank.branches()[0].clone(), (silent_addr, "accounts".into())],
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.debit("acct1", 7)?;
    // The client hangs up while the coordinator waits for the silent participant.
    let impatient = ratify_participant_sdk::client::CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ratify_participant_sdk::client::ClientConfig {
            attempt_timeout: Duration::from_millis(300),
            deadline: Duration::from_millis(400),
            ..Default::default()
        },
    )?;
    assert!(impatient.commit(&t.gtrid).await.is_err());
    // Decided (the silent branch never acknowledges phase 2, so it never completes).
    let start = std::time::Instant::now();
    loop {
        let got = c.client.get(&t.gtrid).await?;
        if got.outcome == pb::Outcome::Aborted as i32 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still undecided after 20 s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct1")?, INITIAL);
    Ok(())
}

/// A single-branch participant whose first one-phase commit takes longer than the
/// coordinator waits for it, then commits; a repeated commit waits for the first and
/// reports what it did (as the adapters do).
#[derive(Default)]
struct SlowOnePhase {
    /// Held while the first commit runs.
    running: tokio::sync::Mutex<u32>,
}

#[tonic::async_trait]
impl pb::participant_server::Participant for SlowOnePhase {
    async fn prepare(
        &self,
        _r: tonic::Request<pb::PrepareRequest>,
    ) -> Result<tonic::Response<pb::PrepareResponse>, tonic::Status> {
        Err(tonic::Status::failed_precondition(
            "single-branch test participant",
        ))
    }
    async fn commit(
        &self,
        _r: tonic::Request<pb::BranchCommitRequest>,
    ) -> Result<tonic::Response<pb::BranchCommitResponse>, tonic::Status> {
        let mut calls = self.running.lock().await;
        *calls += 1;
        if *calls == 1 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        Ok(tonic::Response::new(pb::BranchCommitResponse {
            result: pb::BranchCommitResult::Committed as i32,
            detail: String::new(),
        }))
    }
    async fn rollback(
        &self,
        _r: tonic::Request<pb::BranchRollbackRequest>,
    ) -> Result<tonic::Response<pb::BranchRollbackResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchRollbackResponse {
            result: pb::BranchRollbackResult::AlreadyCommitted as i32,
            detail: String::new(),
        }))
    }
    async fn recover(
        &self,
        _r: tonic::Request<pb::RecoverRequest>,
    ) -> Result<tonic::Response<pb::RecoverResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::RecoverResponse::default()))
    }
}

/// A one-phase commit that gets no answer in time is not a NO: the branch decides, and
/// it may have committed. The coordinator asks again until the participant says, and
/// records what the participant did — never an ABORT the branch contradicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_one_phase_commit_is_asked_again_not_aborted() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--prepare-timeout-ms", "400"]).await?;
    let ep = ratify_tests::serve_fake_participant(SlowOnePhase::default()).await?;
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![(ep, "slow".into())],
            ..Default::default()
        })
        .await?;
    let d = c.client.commit(&t.gtrid).await?;
    must_commit(&d);
    let got = c.client.get(&t.gtrid).await?;
    assert_eq!(got.outcome, pb::Outcome::Committed as i32, "{got:?}");
    assert_eq!(got.reason, pb::Reason::OnePhase as i32, "{got:?}");
    Ok(())
}
