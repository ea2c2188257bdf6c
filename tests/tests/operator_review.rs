//! Regression tests for the review of commit 4da3ce2 (operator resolution,
//! docs/design.md rule 17): both failed on that commit. The fixes: an operator commit
//! asks every listed branch to prepare again and needs a YES (durable), and a settle
//! names the branches it covers.
//!
//! 1. `an_operator_commit_waits_for_durable_prepares`: the operator COMMIT check takes
//!    "the xid is in the participant's Recover answer" as "the branch voted YES, durably".
//!    The SDK's sled resources (accounts, noop, Kafka) list a branch as prepared as soon
//!    as its record is written, *before* the fsync that makes it durable and before the
//!    YES is sent (and they keep listing it when that fsync fails: rule 13). A power loss
//!    then loses the record, and a two-phase COMMIT of an unknown xid answers COMMITTED
//!    ("committed and forgotten", the resource contract), so the branch's work vanishes
//!    while the others commit: no heuristic is even recorded.
//! 2. `a_settle_covers_only_the_outcomes_a_person_saw`: SettleHeuristic settles every
//!    heuristic outcome of the transaction, including one logged after the operator
//!    looked (or by the SDK's automatic retry of a settle that timed out): a
//!    contradiction nobody saw disappears from `ListNeedingAttention` (rule 11).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratify_coordinator::txn::{
    AuditEntry, BranchSpec, Command, Decision, Heuristic, OperatorAction, Reason, Seed, TxnTable,
};
use ratify_devkit::accounts::AccountStore;
use ratify_participant_sdk::client::BeginOptions;
use ratify_participant_sdk::resource::Resource;
use ratify_proto::pb;
use ratify_tests::{serve, serve_fake_participant, TestCluster};
use tonic::{Request, Response, Status};

/// A participant that votes YES at once, lists what it prepared and obeys phase 2.
#[derive(Debug, Clone, Default)]
struct Yes {
    prepared: Arc<Mutex<HashSet<(String, String)>>>,
}

fn key(xid: Option<&pb::Xid>) -> Result<(String, String), Status> {
    let x = xid.ok_or_else(|| Status::invalid_argument("xid"))?;
    Ok((x.gtrid.clone(), x.bqual.clone()))
}

#[tonic::async_trait]
impl pb::participant_server::Participant for Yes {
    async fn prepare(
        &self,
        req: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let k = key(req.get_ref().xid.as_ref())?;
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k);
        Ok(Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            detail: String::new(),
        }))
    }

    async fn commit(
        &self,
        _req: Request<pb::BranchCommitRequest>,
    ) -> Result<Response<pb::BranchCommitResponse>, Status> {
        Ok(Response::new(pb::BranchCommitResponse {
            result: pb::BranchCommitResult::Committed as i32,
            detail: String::new(),
        }))
    }

    async fn rollback(
        &self,
        _req: Request<pb::BranchRollbackRequest>,
    ) -> Result<Response<pb::BranchRollbackResponse>, Status> {
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
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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

/// How long each fsync of a participant's store takes in this test (a slow or failing
/// disk): the window in which a branch is listed by Recover but not durable.
const SLOW_SYNC_MS: u64 = 6_000;

/// Branch A votes YES at once; branch B is a real `AccountStore` whose disk is slow.
/// While B's prepared record is written but not yet fsynced (its YES not sent), B's
/// Recover already lists it, and the operator COMMIT is accepted. Had B's machine lost
/// power then (or had the fsync failed, rule 13), B's record would be gone and B's
/// phase-2 COMMIT of an unknown xid answers COMMITTED: A's debit applied, B's credit
/// lost, the transaction COMPLETED as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_commit_waits_for_durable_prepares() -> anyhow::Result<()> {
    // Every fsync of the participant stores in this process stalls (the coordinator
    // nodes inherit the variable but have no such fail point).
    std::env::set_var(
        ratify_common::failpoint::ENV_VAR,
        format!("durable.sync=sleep:{SLOW_SYNC_MS}"),
    );
    // The run waits for B's vote instead of aborting it as unreachable.
    let c = TestCluster::start(&["--prepare-timeout-ms", "120000"]).await?;
    let b = AccountStore::open(c.dir.path().join("bank-b"))?;
    b.open_accounts(["acct0"], 100).await?;
    let rb: Arc<dyn Resource> = b.clone();
    let b_srv = serve("accounts", rb, c.client.clone()).await?;
    let a = Yes::default();
    let ea = serve_fake_participant(a.clone()).await?;

    let begun = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_secs(120),
            branches: vec![
                (ea.clone(), "r".into()),
                (b_srv.endpoint.clone(), "accounts".into()),
            ],
            ..Default::default()
        })
        .await?;
    b.branch(&begun.branches[1].xid)?.credit("acct0", 5)?;
    let syncs_before = b.sync_count();

    let client = c.client.clone();
    let gtrid = begun.gtrid.clone();
    let commit = tokio::spawn(async move { client.commit(&gtrid).await });
    // B's prepare has written its record and waits for the (slow) fsync.
    let start = Instant::now();
    while b.prepared_count() == 0 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "B was never asked to prepare"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.sync_count(), syncs_before, "no fsync finished yet");

    let r = c
        .client
        .resolve(
            &begun.gtrid,
            pb::ResolveAction::Commit,
            "alice",
            "Recover lists both legs",
        )
        .await;
    let durable = b.sync_count() > syncs_before;
    let committed_by_operator = matches!(
        &r,
        Ok(resp) if resp.changed
            && resp.transaction.as_ref().is_some_and(|t| t.outcome == pb::Outcome::Committed as i32)
    );
    assert!(
        !committed_by_operator || durable,
        "the operator COMMIT was accepted while branch B's prepared record was not yet \
         durable (no fsync finished since it was written, B had not voted YES): a power \
         loss at B now loses B's work while A commits. Answer: {r:?}"
    );
    drop(commit);
    Ok(())
}

fn spec(i: u32) -> BranchSpec {
    BranchSpec {
        endpoint: format!("127.0.0.1:{}", 9000 + i),
        resource: "r".into(),
    }
}

fn rolled_back(detail: &str) -> Heuristic {
    Heuristic {
        committed: false,
        detail: detail.into(),
        at_ms: 3_000,
        settled: false,
    }
}

/// Branch 1 contradicted a COMMIT; the operator looked (ListNeedingAttention showed
/// branch 1 only) and repaired branch 1's data. Meanwhile branch 2, whose phase 2 was
/// still being retried, answered ROLLED BACK too. The operator's settle (or the SDK
/// client's automatic retry of a settle whose answer was lost) then also settles
/// branch 2's contradiction, which no person has seen: the transaction completes and
/// the damage is no longer listed anywhere (rule 11: contradictions are visible).
/// SettleHeuristic does not say which outcomes were repaired.
#[test]
fn a_settle_covers_only_the_outcomes_a_person_saw() {
    let mut t = TxnTable::default();
    t.apply(Command::SetClusterId { cluster_id: 7 });
    t.apply(Command::Reserve { upto: 10 });
    t.apply(Command::Open {
        txn: 1,
        seed: Seed {
            created_ms: 1_000,
            deadline_ms: 100_000,
            labels: Default::default(),
            branches: vec![spec(1), spec(2)],
        },
        held: true,
    });
    t.apply(Command::Decide {
        txn: 1,
        decision: Decision {
            commit: true,
            reason: Reason::ClientCommit,
            detail: String::new(),
            decided_ms: 2_000,
            audit: Default::default(),
        },
        prepared_branches: Some(2),
        skip_phase2: vec![],
        complete: false,
        round: 0,
    });
    t.apply(Command::Heuristic {
        txn: 1,
        bqual: 1,
        heuristic: rolled_back("decision was COMMIT, branch 1 answered ROLLED BACK"),
    });
    // What the person saw: branch 1 only.
    let seen: Vec<u32> = t.live[&1]
        .branches
        .iter()
        .filter(|b| b.heuristic.is_some())
        .map(|b| b.bqual)
        .collect();
    assert_eq!(seen, vec![1]);
    // Branch 2 answers against the decision while the person repairs branch 1.
    t.apply(Command::Heuristic {
        txn: 1,
        bqual: 2,
        heuristic: rolled_back("decision was COMMIT, branch 2 answered ROLLED BACK"),
    });
    t.apply(Command::SettleHeuristic {
        txn: 1,
        bquals: seen.clone(),
        audit: AuditEntry {
            operator: "alice".into(),
            action: OperatorAction::SettleHeuristic,
            reason: "re-applied branch 1's transfer by hand".into(),
            at_ms: 5_000,
        },
    });
    let unseen_still_visible = t.live.get(&1).is_some_and(|r| {
        r.branches
            .iter()
            .any(|b| b.bqual == 2 && b.heuristic.as_ref().is_some_and(|h| !h.settled))
    });
    assert!(
        unseen_still_visible,
        "branch 2's contradiction, logged after the person looked, was settled by a \
         settle meant for branch 1 (the transaction is {})",
        if t.live.contains_key(&1) {
            "still live"
        } else {
            "COMPLETED"
        }
    );
}
