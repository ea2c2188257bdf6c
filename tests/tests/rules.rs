//! The protocol rules of docs/design.md §4 that need the whole system to observe: decision
//! before phase 2 (rule 2) and "unknown means aborted, durably" (rule 3).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratify_participant_sdk::client::{BeginOptions, CoordinatorClient};
use ratify_participant_sdk::xid::Xid;
use ratify_proto::pb;
use ratify_tests::{must_abort, must_commit, Bank, TestCluster, INITIAL};
use tonic::{Request, Response, Status};

/// A participant that votes as told and, whenever phase 2 reaches it, asks the
/// coordinator what the log says at that very moment.
struct Witness {
    client: CoordinatorClient,
    vote: pb::Vote,
    /// (phase-2 call, outcome the coordinator reported while the call was in hand).
    seen: Arc<Mutex<Vec<(&'static str, i32)>>>,
}

impl Witness {
    async fn record(&self, call: &'static str, xid: Option<pb::Xid>) -> Result<(), Status> {
        let gtrid = xid.map(|x| x.gtrid).unwrap_or_default();
        let t = self
            .client
            .get(&gtrid)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Ok(mut s) = self.seen.lock() {
            s.push((call, t.outcome));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::participant_server::Participant for Witness {
    async fn prepare(
        &self,
        _r: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        Ok(Response::new(pb::PrepareResponse {
            vote: self.vote as i32,
            detail: "as told".into(),
        }))
    }
    async fn commit(
        &self,
        r: Request<pb::BranchCommitRequest>,
    ) -> Result<Response<pb::BranchCommitResponse>, Status> {
        self.record("commit", r.into_inner().xid).await?;
        Ok(Response::new(pb::BranchCommitResponse {
            result: pb::BranchCommitResult::Committed as i32,
            detail: String::new(),
        }))
    }
    async fn rollback(
        &self,
        r: Request<pb::BranchRollbackRequest>,
    ) -> Result<Response<pb::BranchRollbackResponse>, Status> {
        self.record("rollback", r.into_inner().xid).await?;
        Ok(Response::new(pb::BranchRollbackResponse {
            result: pb::BranchRollbackResult::RolledBack as i32,
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

async fn serve_witness(w: Witness) -> anyhow::Result<String> {
    ratify_tests::serve_fake_participant(w).await
}

/// Rule 2: a participant receives COMMIT only once COMMIT is in the log, and a
/// prepared branch receives ROLLBACK only once ABORT is in the log. The witness asks
/// the coordinator while it holds the phase-2 call; a driver that sent phase 2 before
/// logging would be caught with the transaction still undecided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_two_is_sent_only_after_the_decision_is_logged() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let yes = serve_witness(Witness {
        client: c.client.clone(),
        vote: pb::Vote::Yes,
        seen: seen.clone(),
    })
    .await?;
    let no = serve_witness(Witness {
        client: c.client.clone(),
        vote: pb::Vote::No,
        seen: seen.clone(),
    })
    .await?;

    // Committed: bank A and the YES witness.
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![bank.branches()[0].clone(), (yes.clone(), "w".into())],
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.credit("acct1", 1)?;
    must_commit(&c.client.commit(&t.gtrid).await?);

    // Aborted: the YES witness (prepared) and the NO witness.
    let t = c
        .client
        .begin(BeginOptions {
            branches: vec![(yes, "w".into()), (no, "w".into())],
            ..Default::default()
        })
        .await?;
    must_abort(&c.client.commit(&t.gtrid).await?, pb::Reason::VotedNo);
    c.wait_all_completed(Duration::from_secs(10)).await?;

    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        seen.iter().any(|(call, _)| *call == "commit"),
        "no commit reached the witness: {seen:?}"
    );
    assert!(
        seen.iter().any(|(call, _)| *call == "rollback"),
        "no rollback reached the witness: {seen:?}"
    );
    for (call, outcome) in &seen {
        let logged = if *call == "commit" {
            pb::Outcome::Committed
        } else {
            pb::Outcome::Aborted
        };
        assert_eq!(
            *outcome, logged as i32,
            "{call} arrived while the log said {outcome}: {seen:?}"
        );
    }
    Ok(())
}

/// Rule 3: a participant asking about a transaction with no decision gets IN_PROGRESS
/// while it can still commit, and ABORTED once it cannot — and that ABORT is a log
/// record that a new leader still has, not an answer from memory. A gtrid that was
/// never begun is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_means_aborted_durably() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;

    let live = bank.transfer(&c.client, 1, 2, 10).await?;
    let xid = &live.branches[0].xid;
    let q = c.client.query_outcome(xid).await?;
    assert_eq!(q.outcome, pb::Outcome::InProgress as i32, "{q:?}");

    // Begun, never committed, past its timeout: the answer is ABORTED, logged first
    // (by the inquiry, or by the timeout scanner if it got there first).
    let stale = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_millis(300),
            branches: bank.branches(),
            ..Default::default()
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let never = &stale.branches[0].xid;
    let q = c.client.query_outcome(never).await?;
    assert_eq!(q.outcome, pb::Outcome::Aborted as i32, "{q:?}");
    assert!(
        [
            pb::Reason::ParticipantInquiry as i32,
            pb::Reason::Timeout as i32
        ]
        .contains(&q.reason),
        "{q:?}"
    );

    // Never issued by this cluster: refused, nothing recorded — the next number (in
    // the leader's reserved block, not handed out yet) as well as one far beyond the
    // log.
    let stale_index = u64::from_str_radix(&stale.gtrid[16..], 16)?;
    for index in [stale_index + 1, u64::MAX / 2] {
        let future = Xid::new(format!("{}{index:016x}", &live.gtrid[..16]), "1")?;
        assert!(c.client.query_outcome(&future).await.is_err());
    }

    // The presumed abort survives a leader change.
    let leader = c.leader().await?;
    c.nodes.kill(leader)?;
    let t = c.client.get(never.gtrid()).await?;
    assert_eq!(t.outcome, pb::Outcome::Aborted as i32, "{t:?}");
    assert_eq!(t.state, pb::TxnState::Completed as i32, "{t:?}");

    // The live transaction can still commit on the new leader; then the answer follows
    // (once the decision entry is logged, which comes just after the client's answer:
    // until then a participant is told IN_PROGRESS, never COMMIT before the log).
    must_commit(&c.client.commit(&live.gtrid).await?);
    let start = std::time::Instant::now();
    let q = loop {
        let q = c.client.query_outcome(xid).await?;
        if q.outcome != pb::Outcome::InProgress as i32 || start.elapsed() > Duration::from_secs(5) {
            break q;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(q.outcome, pb::Outcome::Committed as i32, "{q:?}");
    bank.wait_settled(Duration::from_secs(10)).await?;
    assert_eq!(bank.total()?, 2 * ratify_tests::ACCOUNTS as i64 * INITIAL);
    Ok(())
}

/// Rule 3 through the participant's recovery loop: a branch left prepared by a client
/// that vanished (its commit was never asked for) is rolled back once the
/// transaction times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_branch_of_a_vanished_client_is_rolled_back_after_its_timeout(
) -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let t = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_millis(1500),
            branches: bank.branches(),
            ..Default::default()
        })
        .await?;
    bank.a.branch(&t.branches[0].xid)?.debit("acct3", 50)?;
    // The branch prepares (as if the coordinator's prepare had reached it), then the
    // client disappears without committing.
    use ratify_participant_sdk::resource::{Resource, Vote};
    assert_eq!(bank.a.prepare(&t.branches[0].xid).await?, Vote::Yes);
    assert_eq!(bank.a.prepared_count(), 1);
    bank.wait_settled(Duration::from_secs(15)).await?;
    assert_eq!(bank.a.balance("acct3")?, INITIAL);
    let got = c.client.get(&t.gtrid).await?;
    assert_eq!(got.outcome, pb::Outcome::Aborted as i32, "{got:?}");
    Ok(())
}
