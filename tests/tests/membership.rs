//! Membership changes (issue 17, docs/design.md "Membership changes") on real node
//! processes: a SIGKILLed follower replaced by a new node under load, the new node
//! then a voter that counts in an election; 3 → 5 → 3 nodes with commits at every
//! step, leader removal, and the quorum refusals.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratify_devkit::local::node_status;
use ratify_participant_sdk::client::{ClientConfig, ClientError, CoordinatorClient};
use ratify_proto::pb;
use ratify_tests::load::{check_atomicity, longest_gap, workload};
use ratify_tests::{must_commit, Bank, TestCluster, ACCOUNTS, INITIAL};
use tonic::Code;

/// What one client saw for one transaction.
/// A client for membership changes: one change may wait for a learner to catch up.
fn admin(c: &TestCluster) -> anyhow::Result<CoordinatorClient> {
    Ok(CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            attempt_timeout: Duration::from_secs(90),
            deadline: Duration::from_secs(120),
            ..ClientConfig::default()
        },
    )?)
}

/// Waits until the node at `api_addr` answers ClusterStatus.
async fn wait_answers(api_addr: &str) -> anyhow::Result<pb::ClusterStatusResponse> {
    let start = Instant::now();
    loop {
        match node_status(api_addr, &Default::default()).await {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > Duration::from_secs(20) => {
                anyhow::bail!("the node at {api_addr} never answered: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// (voters, learners) of a membership answer.
fn split(members: &[pb::Member]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let voters = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let learners = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
    (voters, learners)
}

fn ids(list: &[u64]) -> BTreeSet<u64> {
    list.iter().copied().collect()
}

/// The membership the leader reports.
async fn membership_now(c: &TestCluster) -> anyhow::Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let leader = c.leader().await?;
    Ok(split(&c.nodes.status(leader).await?.members))
}

fn rejected(e: &ClientError) -> Option<(Code, &str)> {
    match e {
        ClientError::Rejected { code, message } => Some((*code, message.as_str())),
        _ => None,
    }
}

/// One transfer, committed.
async fn commit_one(c: &TestCluster, bank: &Bank, i: usize) -> anyhow::Result<()> {
    let t = bank
        .transfer(&c.client, i % ACCOUNTS, (i + 3) % ACCOUNTS, 1)
        .await?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    Ok(())
}

/// Under a steady load of transfers, SIGKILL a follower, start node 4 (new id, new
/// ports, empty folder, no --init) and ReplaceMember it in. Commits never stop for
/// more than about one election (killing a follower causes none), every transfer is
/// atomic, node 4 applies the log, node `dead` leaves the membership. Then the leader
/// is killed: the two voters left (one of them node 4) elect a leader and commits go
/// on, so node 4 is a real voter; clients that only know the original three nodes
/// find it through the leader hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_is_replaced_under_load_and_the_new_node_votes() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Arc::new(Bank::open(&c).await?);
    let admin = admin(&c)?;
    let leader = c.leader().await?;
    let dead = c.follower(leader)?;
    let other = c
        .nodes
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != dead)
        .ok_or_else(|| anyhow::anyhow!("no third node"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(workload(c.client.clone(), bank.clone(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let started = Instant::now();
    c.nodes.kill(dead)?;
    let new = c.nodes.spawn_joining(4)?;
    let before = wait_answers(&new.api_addr).await?;
    assert_eq!(before.cluster_id, "0000000000000000", "{before:?}");
    assert_eq!(
        before.leader_id, 0,
        "a joining node must not elect itself: {before:?}"
    );
    let asked = Instant::now();
    let r = admin
        .replace_member(dead, 4, &new.raft_addr, &new.api_addr)
        .await?;
    let replace_took = asked.elapsed();
    assert!(r.changed);
    assert_eq!(split(&r.members), (ids(&[leader, other, 4]), ids(&[])));
    let again = admin
        .replace_member(dead, 4, &new.raft_addr, &new.api_addr)
        .await?;
    assert!(!again.changed, "a repeated replace changes nothing");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replaced = Instant::now();

    let target = c.nodes.status(leader).await?.last_applied;
    c.wait_applied(4, target, Duration::from_secs(10)).await?;
    let s4 = c.nodes.status(4).await?;
    assert_eq!(s4.leader_id, leader);
    assert_eq!(split(&s4.members), (ids(&[leader, other, 4]), ids(&[])));

    // Node 4 must count: kill the leader, and {other, 4} elect one of them (either
    // way node 4 took part: one vote of two is not a majority of three).
    c.nodes.kill(leader)?;
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = run.await?;
    let ended = Instant::now();
    let new_leader = c.leader().await?;
    assert!(
        new_leader == other || new_leader == 4,
        "leader {new_leader}"
    );
    assert_eq!(
        split(&c.nodes.status(new_leader).await?.members),
        (ids(&[leader, other, 4]), ids(&[]))
    );

    let replace_gap = longest_gap(&seen, started, replaced);
    let failover_gap = longest_gap(&seen, killed_at, ended);
    let committed = seen.iter().filter(|s| s.outcome == Some(true)).count();
    let after_kill = seen
        .iter()
        .filter(|s| s.begun_at >= killed_at && s.outcome == Some(true))
        .count();
    println!(
        "replace of node {dead} by node 4 took {replace_took:?}; longest gap between commits \
         from the follower kill to after the replace: {replace_gap:?}; after killing leader \
         {leader}: node {new_leader} leads, longest gap {failover_gap:?}, {after_kill} \
         commits; {committed} commits in all, {} transactions",
        seen.len()
    );
    assert!(
        replace_gap <= Duration::from_secs(3),
        "commits stopped for {replace_gap:?} around the replacement"
    );
    assert!(
        seen.iter()
            .filter(|s| s.begun_at >= started && s.done_at <= replaced)
            .all(|s| s.outcome.is_some()),
        "a transaction's outcome was unknown while a follower was replaced"
    );
    assert!(after_kill > 0, "no commit after the leader kill");
    assert!(
        failover_gap <= Duration::from_secs(5),
        "commits stopped for {failover_gap:?} after the leader kill"
    );
    check_atomicity(&c, &bank, &seen).await
}

/// 3 → 5 → 3: add nodes 4 and 5 (each a learner first, then a voter), transactions
/// committing at every step; repeated and conflicting adds; remove node 5 and then
/// the leader itself (it steps down, the others elect). On the 3 voters left, with
/// one down, removing a live voter is refused as losing the quorum and nothing
/// changes; removing the dead one is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_and_back_with_commits_at_every_step() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let admin = admin(&c)?;
    commit_one(&c, &bank, 0).await?;

    let n4 = c.nodes.spawn_joining(4)?;
    let n5 = c.nodes.spawn_joining(5)?;
    wait_answers(&n4.api_addr).await?;
    wait_answers(&n5.api_addr).await?;
    let t = Instant::now();
    let r = admin.add_member(4, &n4.raft_addr, &n4.api_addr).await?;
    println!("add node 4: {:?}", t.elapsed());
    assert!(r.changed);
    assert_eq!(split(&r.members), (ids(&[1, 2, 3, 4]), ids(&[])));
    commit_one(&c, &bank, 1).await?;
    let t = Instant::now();
    let r = admin.add_member(5, &n5.raft_addr, &n5.api_addr).await?;
    println!("add node 5: {:?}", t.elapsed());
    assert_eq!(split(&r.members), (ids(&[1, 2, 3, 4, 5]), ids(&[])));
    commit_one(&c, &bank, 2).await?;
    let leader = c.leader().await?;
    let target = c.nodes.status(leader).await?.last_applied;
    c.wait_applied(5, target, Duration::from_secs(10)).await?;

    // Repeated: nothing to do. Conflicting: refused.
    let r = admin.add_member(5, &n5.raft_addr, &n5.api_addr).await?;
    assert!(!r.changed);
    let e = admin
        .add_member(5, &n4.raft_addr, "127.0.0.1:1")
        .await
        .expect_err("other addresses");
    assert_eq!(rejected(&e).map(|r| r.0), Some(Code::AlreadyExists), "{e}");
    let e = admin
        .add_member(6, &n4.raft_addr, &n4.api_addr)
        .await
        .expect_err("addresses taken");
    assert_eq!(rejected(&e).map(|r| r.0), Some(Code::AlreadyExists), "{e}");
    let e = admin
        .add_member(0, "127.0.0.1:2", "127.0.0.1:3")
        .await
        .expect_err("id 0");
    assert_eq!(
        rejected(&e).map(|r| r.0),
        Some(Code::InvalidArgument),
        "{e}"
    );
    let e = admin
        .add_member(6, "127.0.0.1:2", "127.0.0.1:3")
        .await
        .expect_err("nothing runs there");
    assert_eq!(
        rejected(&e).map(|r| r.0),
        Some(Code::FailedPrecondition),
        "{e}"
    );

    // Back to 3: node 5, then the leader itself.
    let r = admin.remove_member(5).await?;
    assert!(r.changed);
    assert_eq!(split(&r.members), (ids(&[1, 2, 3, 4]), ids(&[])));
    c.nodes.forget(5)?;
    commit_one(&c, &bank, 3).await?;
    let leader = c.leader().await?;
    let t = Instant::now();
    let r = admin.remove_member(leader).await?;
    assert!(r.changed);
    let left: BTreeSet<u64> = ids(&[1, 2, 3, 4])
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    assert_eq!(split(&r.members), (left.clone(), ids(&[])));
    c.nodes.forget(leader)?;
    commit_one(&c, &bank, 4).await?;
    println!(
        "removed the leader {leader}: a transfer committed {:?} after asking",
        t.elapsed()
    );
    assert_eq!(membership_now(&c).await?, (left.clone(), ids(&[])));
    let r = admin.remove_member(leader).await?;
    assert!(
        !r.changed,
        "removing a node that is not a member changes nothing"
    );

    // One of the 3 down: removing a live voter would leave 1 of 2 reachable.
    let leader = c.leader().await?;
    let mut followers = left.iter().copied().filter(|&id| id != leader);
    let (down, live) = match (followers.next(), followers.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => anyhow::bail!("expected two followers in {left:?}"),
    };
    c.nodes.kill(down)?;
    for victim in [live, leader] {
        let e = admin
            .remove_member(victim)
            .await
            .expect_err("would lose the quorum");
        let (code, message) = rejected(&e).unwrap_or((Code::Unknown, ""));
        assert_eq!(code, Code::FailedPrecondition, "{e}");
        assert!(message.contains("would lose the quorum"), "{message}");
        println!("removing node {victim} with node {down} down: {message}");
    }
    assert_eq!(membership_now(&c).await?, (left.clone(), ids(&[])));
    commit_one(&c, &bank, 5).await?;

    // Removing the dead one is fine: both voters left are reachable.
    let r = admin.remove_member(down).await?;
    let two: BTreeSet<u64> = left.iter().copied().filter(|&id| id != down).collect();
    assert_eq!(split(&r.members), (two, ids(&[])));
    c.nodes.forget(down)?;
    commit_one(&c, &bank, 6).await?;
    bank.wait_settled(Duration::from_secs(20)).await?;
    assert_eq!(bank.total()?, 2 * ACCOUNTS as i64 * INITIAL);
    Ok(())
}
