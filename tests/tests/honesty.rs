//! An honest outcome on every path (docs/design.md, rules 8, 10, 11 and 15): a client
//! is never told ABORTED for committed work nor COMMITTED for rolled-back work, a
//! contradiction is kept visible, a deposed leader stops calling participants, a node
//! that is not ready redirects instead of answering NOT_FOUND, a transaction whose
//! driver died mid-prepare is finished promptly, and completed outcomes are kept by
//! completion order and answered FORGOTTEN once dropped.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratify_participant_sdk::client::{BeginOptions, ClientConfig, ClientError, CoordinatorClient};
use ratify_proto::pb;
use ratify_tests::{must_commit, Bank, TestCluster, INITIAL};
use tonic::{Request, Response, Status};

/// A participant whose every answer the test controls, and that records when each
/// call arrived.
#[derive(Default)]
struct Scripted {
    /// How long the first one-phase commit takes to answer (it commits at once).
    one_phase_delay: Duration,
    /// Phase-2 commits answer UNAVAILABLE until this is set.
    accept_commit: AtomicBool,
    /// Answer a two-phase COMMIT with ROLLED_BACK (a heuristic outcome).
    heuristic_rollback: bool,
    /// Rollbacks answer UNAVAILABLE (the participant is down for the coordinator).
    refuse_rollback: bool,
    /// The branch's work is committed.
    committed: AtomicBool,
    /// One-phase commits received.
    one_phase_calls: AtomicU32,
    /// (call, when) for every call.
    calls: Mutex<Vec<(&'static str, Instant)>>,
}

impl Scripted {
    fn note(&self, call: &'static str) {
        if let Ok(mut c) = self.calls.lock() {
            c.push((call, Instant::now()));
        }
    }

    fn calls_since(&self, t: Instant) -> Vec<&'static str> {
        self.calls
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, at)| *at > t)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn commit_answer(committed: bool) -> Response<pb::BranchCommitResponse> {
    let result = if committed {
        pb::BranchCommitResult::Committed
    } else {
        pb::BranchCommitResult::RolledBack
    };
    Response::new(pb::BranchCommitResponse {
        result: result as i32,
        detail: String::new(),
    })
}

/// The served handle on a [`Scripted`] participant the test keeps too.
struct Served(Arc<Scripted>);

impl std::ops::Deref for Served {
    type Target = Scripted;
    fn deref(&self) -> &Scripted {
        &self.0
    }
}

#[tonic::async_trait]
impl pb::participant_server::Participant for Served {
    async fn prepare(
        &self,
        _r: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.note("prepare");
        Ok(Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            detail: String::new(),
        }))
    }
    async fn commit(
        &self,
        r: Request<pb::BranchCommitRequest>,
    ) -> Result<Response<pb::BranchCommitResponse>, Status> {
        let one_phase = r.into_inner().one_phase;
        self.note(if one_phase { "one_phase" } else { "commit" });
        if one_phase {
            self.committed.store(true, Ordering::SeqCst);
            if self.one_phase_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(self.one_phase_delay).await;
            }
            return Ok(commit_answer(true));
        }
        if !self.accept_commit.load(Ordering::SeqCst) {
            return Err(Status::unavailable("not now"));
        }
        if self.heuristic_rollback {
            return Ok(commit_answer(false));
        }
        self.committed.store(true, Ordering::SeqCst);
        Ok(commit_answer(true))
    }
    async fn rollback(
        &self,
        _r: Request<pb::BranchRollbackRequest>,
    ) -> Result<Response<pb::BranchRollbackResponse>, Status> {
        self.note("rollback");
        if self.refuse_rollback {
            return Err(Status::unavailable("down"));
        }
        let result = if self.committed.load(Ordering::SeqCst) {
            pb::BranchRollbackResult::AlreadyCommitted
        } else {
            pb::BranchRollbackResult::RolledBack
        };
        Ok(Response::new(pb::BranchRollbackResponse {
            result: result as i32,
            detail: String::new(),
        }))
    }
    async fn recover(
        &self,
        _r: Request<pb::RecoverRequest>,
    ) -> Result<Response<pb::RecoverResponse>, Status> {
        Ok(Response::new(pb::RecoverResponse::default()))
    }
}

async fn serve(s: &Arc<Scripted>) -> anyhow::Result<String> {
    ratify_tests::serve_fake_participant(Served(s.clone())).await
}

/// A client that gives up after `deadline`, as an application's error path does.
fn impatient(c: &TestCluster, deadline: Duration) -> anyhow::Result<CoordinatorClient> {
    Ok(CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            attempt_timeout: deadline,
            deadline,
            ..Default::default()
        },
    )?)
}

async fn begin(
    client: &CoordinatorClient,
    branches: Vec<(String, String)>,
    timeout: Duration,
) -> anyhow::Result<String> {
    Ok(client
        .begin(BeginOptions {
            timeout,
            branches,
            ..Default::default()
        })
        .await?
        .gtrid)
}

/// Restarts every node with `failpoints` (empty: none) and waits for a leader.
async fn arm_all(c: &mut TestCluster, failpoints: &str) -> anyhow::Result<()> {
    for id in c.nodes.ids() {
        c.nodes.restart_with_failpoints(id, failpoints)?;
    }
    c.leader().await?;
    Ok(())
}

/// Waits until `gtrid` is decided and returns the transaction; fails on timeout.
async fn decided(
    client: &CoordinatorClient,
    gtrid: &str,
    within: Duration,
) -> anyhow::Result<pb::Transaction> {
    let start = Instant::now();
    loop {
        if let Ok(t) = client.get(gtrid).await {
            if t.outcome == pb::Outcome::Committed as i32
                || t.outcome == pb::Outcome::Aborted as i32
            {
                return Ok(t);
            }
            anyhow::ensure!(
                start.elapsed() < within,
                "still undecided after {within:?}: {t:?}"
            );
        }
        anyhow::ensure!(start.elapsed() < within, "no answer after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn committed(t: &pb::Transaction) -> bool {
    t.outcome == pb::Outcome::Committed as i32
}

/// Item 1, main shape: the participant commits at once but answers slowly; the client
/// gives up on Commit and calls Rollback, as the usual error path does. Rollback must
/// report the commit (it waits for the participant's answer), never ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_after_a_slow_one_phase_commit_reports_the_commit() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let p = Arc::new(Scripted {
        one_phase_delay: Duration::from_millis(1200),
        ..Default::default()
    });
    let gtrid = begin(
        &c.client,
        vec![(serve(&p).await?, "r".into())],
        Duration::from_secs(30),
    )
    .await?;
    let gave_up = impatient(&c, Duration::from_millis(300))?
        .commit(&gtrid)
        .await;
    assert!(
        matches!(gave_up, Err(ClientError::DeadlineExceeded { .. })),
        "{gave_up:?}"
    );
    let d = c.client.rollback(&gtrid).await?;
    assert!(p.committed.load(Ordering::SeqCst));
    must_commit(&d);
    assert_eq!(d.reason, pb::Reason::OnePhase, "{d:?}");
    assert!(committed(
        &decided(&c.client, &gtrid, Duration::from_secs(5)).await?
    ));
    Ok(())
}

/// Item 1 (a): the timeout scan picks an expired transaction, and before its abort
/// is logged the client's one-phase commit goes out (a sleep at the scan's fail
/// point widens the window). The abort must not win over the participant's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_scan_cannot_abort_a_one_phase_commit_on_the_wire() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    arm_all(&mut c, "coord.before_timeout_abort=sleep:1500").await?;
    let p = Arc::new(Scripted {
        one_phase_delay: Duration::from_millis(2000),
        ..Default::default()
    });
    let gtrid = begin(
        &c.client,
        vec![(serve(&p).await?, "r".into())],
        Duration::from_millis(1000),
    )
    .await?;
    // Past the deadline and one scan interval: the scan holds it at its fail point.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let d = c.client.commit(&gtrid).await?;
    assert!(p.committed.load(Ordering::SeqCst));
    must_commit(&d);
    assert!(committed(
        &decided(&c.client, &gtrid, Duration::from_secs(5)).await?
    ));
    Ok(())
}

/// Item 1 (b): the leader sends the one-phase commit, the participant commits, and
/// the leader dies before logging the answer; its client has given up. The next
/// leader must learn the outcome from the participant, not time the transaction out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_asks_the_one_phase_participant_instead_of_timing_out() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    arm_all(&mut c, "coord.after_one_phase=kill").await?;
    let p = Arc::new(Scripted::default());
    let gtrid = begin(
        &c.client,
        vec![(serve(&p).await?, "r".into())],
        Duration::from_secs(3),
    )
    .await?;
    let _ = impatient(&c, Duration::from_millis(300))?
        .commit(&gtrid)
        .await;
    let start = Instant::now();
    while !c.nodes.ids().into_iter().any(|id| !c.nodes.is_running(id)) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(5),
            "no leader died at coord.after_one_phase"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.committed.load(Ordering::SeqCst));
    arm_all(&mut c, "").await?;
    // Well past the 3 s deadline: a timeout abort would have happened by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t = decided(&c.client, &gtrid, Duration::from_secs(10)).await?;
    assert!(committed(&t), "the branch committed but the log says {t:?}");
    Ok(())
}

/// Item 1 (c): an Enlist slips in (it passed its checks before the commit started;
/// a sleep at its fail point holds it) while the one-phase commit is on the wire.
/// The branch set must not change under the hand-over: the Enlist is refused and
/// the participant's commit stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enlist_cannot_slip_under_a_one_phase_commit() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    arm_all(&mut c, "coord.before_enlist=sleep:500").await?;
    let p = Arc::new(Scripted {
        one_phase_delay: Duration::from_millis(1500),
        ..Default::default()
    });
    let late = Arc::new(Scripted::default());
    let (p_ep, late_ep) = (serve(&p).await?, serve(&late).await?);
    let gtrid = begin(&c.client, vec![(p_ep, "r".into())], Duration::from_secs(30)).await?;
    let enlister = c.client.clone();
    let g = gtrid.clone();
    let enlist = tokio::spawn(async move { enlister.enlist(&g, &late_ep, "r").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = c.client.commit(&gtrid).await;
    let enlisted = enlist.await?;
    assert!(p.committed.load(Ordering::SeqCst));
    let d = match d {
        Ok(d) => d,
        // The usual error path: roll back. It must report what happened.
        Err(e) => {
            eprintln!("commit failed ({e}); rolling back");
            c.client.rollback(&gtrid).await?
        }
    };
    must_commit(&d);
    assert!(
        enlisted.is_err(),
        "an Enlist after the hand-over must be refused: {enlisted:?}"
    );
    assert!(committed(
        &decided(&c.client, &gtrid, Duration::from_secs(5)).await?
    ));
    assert!(late
        .calls_since(Instant::now() - Duration::from_secs(60))
        .is_empty());
    Ok(())
}

/// Item 2: a phase-2 answer that contradicts the decision stays visible: the
/// transaction is HEURISTIC (not COMPLETED), its branch says what it did, it is
/// listed, and the metric counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heuristic_outcome_stays_visible() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let healthy = Arc::new(Scripted {
        accept_commit: AtomicBool::new(true),
        ..Default::default()
    });
    let p = Arc::new(Scripted {
        heuristic_rollback: true,
        accept_commit: AtomicBool::new(true),
        ..Default::default()
    });
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![
                (serve(&healthy).await?, "r".into()),
                (serve(&p).await?, "r".into()),
            ],
            ..Default::default()
        })
        .await?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    let start = Instant::now();
    let got = loop {
        let got = c.client.get(&t.gtrid).await?;
        if got.state == pb::TxnState::Heuristic as i32 {
            break got;
        }
        assert_ne!(
            got.state,
            pb::TxnState::Completed as i32,
            "a contradiction was completed silently: {got:?}"
        );
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "{got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(committed(&got), "{got:?}");
    let branch = got.branches.get(1).expect("two branches");
    assert!(branch.heuristic.contains("ROLLED BACK"), "{got:?}");
    let listed = c.client.list(Some(pb::TxnState::Heuristic), 10, "").await?;
    assert!(listed.transactions.iter().any(|x| x.gtrid == t.gtrid));
    let leader = c.leader().await?;
    let m = c.nodes.metrics(leader).await?;
    assert!(
        m.get("ratify_transactions{state=\"heuristic_needs_person\"}") >= Some(&1.0),
        "{m:?}"
    );
    // Still there a while later: it waits for a person, and the branch that
    // acknowledged is not asked again and again.
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.client.get(&t.gtrid).await?.state,
        pb::TxnState::Heuristic as i32
    );
    let again = healthy.calls_since(settled);
    assert!(
        again.len() <= 1,
        "the acknowledged branch was asked again: {again:?}"
    );
    Ok(())
}

/// A QueryOutcome for a transaction whose commit was never asked for (a confused
/// participant's, or anyone's: the API is open) must not make the coordinator
/// prepare and commit work the application is still doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_does_not_commit_an_active_transaction() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let (a, b) = (Arc::new(Scripted::default()), Arc::new(Scripted::default()));
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![
                (serve(&a).await?, "r".into()),
                (serve(&b).await?, "r".into()),
            ],
            timeout: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    for _ in 0..5 {
        let q = c.client.query_outcome(&t.branches[0].xid).await?;
        assert_eq!(q.outcome, pb::Outcome::InProgress as i32, "{q:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = c.client.get(&t.gtrid).await?;
    assert_eq!(got.state, pb::TxnState::Active as i32, "{got:?}");
    assert!(a
        .calls_since(Instant::now() - Duration::from_secs(60))
        .is_empty());
    Ok(())
}

/// Item 3: the leader dies after the votes, before the decision, and its client has
/// gone. The branches are prepared (rows locked); the new leader must finish the
/// transaction promptly (the prepared branches ask, and it takes the commit over),
/// not leave it ACTIVE until its one-minute deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_leader_died_mid_prepare_is_finished_promptly() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    arm_all(&mut c, "coord.after_votes=kill").await?;
    let t = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_secs(60),
            branches: bank.branches(),
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.debit("acct1", 9)?;
    bank.b.branch(&t.branches[1].xid)?.credit("acct2", 9)?;
    let _ = impatient(&c, Duration::from_millis(500))?
        .commit(&t.gtrid)
        .await;
    let start = Instant::now();
    while bank.a.prepared_count() + bank.b.prepared_count() < 2 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(5), "never prepared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    arm_all(&mut c, "").await?;
    let got = decided(&c.client, &t.gtrid, Duration::from_secs(15)).await?;
    assert!(committed(&got), "every branch voted YES: {got:?}");
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.a.balance("acct1")?, INITIAL - 9);
    assert_eq!(bank.b.balance("acct2")?, INITIAL + 9);
    Ok(())
}

/// Item 4: a leader paused (SIGSTOP) while it retries phase 2 is replaced; the new
/// leader finishes the transaction. When the old one resumes it must not call the
/// participant again: it is no longer the leader, whatever its timers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_and_deposed_leader_makes_no_participant_call() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let p = Arc::new(Scripted::default());
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![bank.branches()[0].clone(), (serve(&p).await?, "r".into())],
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.credit("acct3", 1)?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    // Phase 2 to `p` is being retried by the leader. Pause it.
    let old = c.leader().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.nodes.pause(old, true)?;
    let start = Instant::now();
    let new = loop {
        let l = c.leader().await?;
        if l != old {
            break l;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "no new leader");
    };
    eprintln!("leader {old} paused, {new} leads");
    p.accept_commit.store(true, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let got = c.client.get(&t.gtrid).await?;
        if got.state == pb::TxnState::Completed as i32 {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(15), "{got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = Instant::now();
    c.nodes.pause(old, false)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = p.calls_since(resumed);
    assert!(
        late.is_empty(),
        "the deposed leader called the participant after it resumed: {late:?}"
    );
    Ok(())
}

/// Item 5: a node that has not caught up with the cluster (here a rebuilt node
/// alone, with an empty data folder) redirects every call with UNAVAILABLE; it must
/// never answer NOT_FOUND for a valid gtrid, which clients take as final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_ready_redirects_instead_of_not_found() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let gtrid = begin(&c.client, vec![], Duration::from_secs(30)).await?;
    c.nodes.kill_all();
    let dir = c.nodes.data_dir(3);
    std::fs::remove_dir_all(&dir)?;
    c.nodes.restart(3)?;
    let addr = c.nodes.api_addr(3)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(5));
    let start = Instant::now();
    let channel = loop {
        match channel.connect().await {
            Ok(ch) => break ch,
            Err(e) => {
                anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut rpc = pb::coordinator_client::CoordinatorClient::new(channel);
    let xid = pb::Xid {
        format_id: ratify_proto::XID_FORMAT_ID,
        gtrid: gtrid.clone(),
        bqual: "1".into(),
    };
    let codes = [
        rpc.commit(pb::CommitRequest {
            gtrid: gtrid.clone(),
            branches: None,
        })
        .await
        .err()
        .map(|s| s.code()),
        rpc.rollback(pb::RollbackRequest {
            gtrid: gtrid.clone(),
            branches: None,
        })
        .await
        .err()
        .map(|s| s.code()),
        rpc.get_transaction(pb::GetTransactionRequest {
            gtrid: gtrid.clone(),
        })
        .await
        .err()
        .map(|s| s.code()),
        rpc.enlist(pb::EnlistRequest {
            gtrid: gtrid.clone(),
            branch: Some(pb::BranchSpec {
                endpoint: "127.0.0.1:9".into(),
                resource: "r".into(),
            }),
        })
        .await
        .err()
        .map(|s| s.code()),
        rpc.query_outcome(pb::QueryOutcomeRequest { xid: Some(xid) })
            .await
            .err()
            .map(|s| s.code()),
    ];
    for code in codes {
        assert_eq!(code, Some(tonic::Code::Unavailable), "{codes:?}");
    }
    Ok(())
}

/// Item 6: outcomes are kept in completion order (a long-running transaction's
/// outcome is not dropped the moment it completes), and a forgotten gtrid answers
/// FORGOTTEN — distinct from one the cluster never issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_kept_by_completion_and_forgotten_ones_say_so() -> anyhow::Result<()> {
    let c = TestCluster::start(&[
        "--retain-outcomes-secs",
        "0",
        "--retain-outcomes-min",
        "5",
        "--retain-outcomes-max",
        "5",
    ])
    .await?;
    let long_running = begin(&c.client, vec![], Duration::from_secs(60)).await?;
    let mut short = Vec::new();
    for _ in 0..8 {
        let g = begin(&c.client, vec![], Duration::from_secs(60)).await?;
        must_commit(&c.client.commit(&g).await?);
        short.push(g);
    }
    must_commit(&c.client.commit(&long_running).await?);
    let t = c.client.get(&long_running).await?;
    assert!(committed(&t), "the last to complete must be kept: {t:?}");
    let first = &short[0];
    let got = c.client.get(first).await?;
    assert_eq!(got.outcome, pb::Outcome::Forgotten as i32, "{got:?}");
    assert_eq!(got.state, pb::TxnState::Completed as i32, "{got:?}");
    for r in [c.client.commit(first).await, c.client.rollback(first).await] {
        assert!(matches!(r, Err(ClientError::Forgotten(_))), "{r:?}");
    }
    // A gtrid of this cluster that was never issued: NOT_FOUND, as before.
    let never = format!("{}{:016x}", &first[..16], u64::MAX / 2);
    let r = c.client.commit(&never).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Rejected {
                code: tonic::Code::NotFound,
                ..
            })
        ),
        "{r:?}"
    );
    Ok(())
}

/// An abort whose prepared branch could not be told (its participant was down past
/// the retry window) completes, but its outcome is pinned: however many outcomes the
/// count cap evicts meanwhile, the branch that comes back and asks learns ABORTED,
/// not FORGOTTEN (which would leave it locked for a person).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_abort_is_still_answered_when_its_branch_comes_back() -> anyhow::Result<()> {
    let c = TestCluster::start(&[
        "--abandon-rollback-after-secs",
        "1",
        "--retain-outcomes-max",
        "10",
        "--retain-outcomes-min",
        "10",
    ])
    .await?;
    let p = Arc::new(Scripted {
        refuse_rollback: true,
        ..Default::default()
    });
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![
                (serve(&p).await?, "r".into()),
                ("127.0.0.1:1".into(), "gone".into()),
            ],
            ..Default::default()
        })
        .await?;
    let d = c.client.commit(&t.gtrid).await?;
    assert_eq!(d.outcome, ratify_participant_sdk::client::Outcome::Aborted);
    c.wait_all_completed(Duration::from_secs(20)).await?;
    for _ in 0..20 {
        let g = begin(&c.client, vec![], Duration::from_secs(60)).await?;
        must_commit(&c.client.commit(&g).await?);
    }
    let q = c.client.query_outcome(&t.branches[0].xid).await?;
    assert_eq!(q.outcome, pb::Outcome::Aborted as i32, "{q:?}");
    Ok(())
}
