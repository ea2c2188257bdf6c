//! Coordinator process kills (SIGKILL) and restarts under a transfer workload: atomicity,
//! durability and availability as promised in docs/design.md §1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratify_participant_sdk::client::Outcome;
use ratify_proto::pb;
use ratify_tests::load::{check_atomicity, workload};
use ratify_tests::{must_commit, Bank, TestCluster, ACCOUNTS, INITIAL};

/// What one client saw for one transaction.
/// SIGKILL the leader mid-workload: every in-flight transaction ends the same way on
/// all branches, and new transactions commit again within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_mid_workload_keeps_atomicity_and_recovers_fast() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Arc::new(Bank::open(&c).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(workload(c.client.clone(), bank.clone(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = c.leader().await?;
    c.nodes.kill(leader)?;
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.nodes.restart(leader)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = run.await?;

    let first_new_commit = seen
        .iter()
        .filter(|s| s.begun_at >= killed_at && s.outcome == Some(true))
        .map(|s| s.done_at.duration_since(killed_at))
        .min();
    let first_new_commit =
        first_new_commit.ok_or_else(|| anyhow::anyhow!("no commit after the leader kill"))?;
    println!("first transaction begun after the kill committed {first_new_commit:?} after it");
    assert!(
        first_new_commit < Duration::from_secs(2),
        "took {first_new_commit:?}"
    );
    assert!(seen.iter().filter(|s| s.outcome == Some(true)).count() > 10);
    check_atomicity(&c, &bank, &seen).await
}

/// Cut the leader off from both followers (fault proxies on the Raft ports, both
/// directions) while clients keep going: the followers elect a new leader and commits
/// continue during the partition; after healing, every transaction is atomic and every
/// acknowledged outcome is the recorded one. The cut-off leader's late proposals cannot
/// commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_atomicity_holds() -> anyhow::Result<()> {
    let c = TestCluster::start_partitionable(&[]).await?;
    let bank = Arc::new(Bank::open(&c).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(workload(c.client.clone(), bank.clone(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = c.leader().await?;
    c.nodes.isolate(old)?;
    let isolated_at = Instant::now();

    // The majority side elects someone else.
    let mut new_leader = None;
    while new_leader.is_none() && isolated_at.elapsed() < Duration::from_secs(10) {
        for id in c.nodes.ids().into_iter().filter(|&id| id != old) {
            if let Ok(s) = c.nodes.status(id).await {
                if s.leader_id != 0 && s.leader_id != old {
                    new_leader = Some(s.leader_id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leader = new_leader.ok_or_else(|| anyhow::anyhow!("no new leader while isolated"))?;
    let elected_after = isolated_at.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.nodes.heal();
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = run.await?;

    let during = seen
        .iter()
        .filter(|s| s.begun_at > isolated_at && s.done_at < healed_at && s.outcome == Some(true))
        .count();
    println!(
        "node {new_leader} elected {elected_after:?} after isolating leader {old}; \
         {during} commits during the partition"
    );
    assert!(during > 0, "no commit while the old leader was cut off");
    check_atomicity(&c, &bank, &seen).await
}

/// SIGKILL a follower mid-workload: commits go on without interruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_kill_does_not_interrupt_commits() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Arc::new(Bank::open(&c).await?);
    let leader = c.leader().await?;
    let follower = c.follower(leader)?;
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(workload(c.client.clone(), bank.clone(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.nodes.kill(follower)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = run.await?;
    assert!(
        seen.iter().all(|s| s.outcome.is_some()),
        "a commit failed while only a follower was down"
    );
    let slowest = seen
        .iter()
        .map(|s| s.done_at - s.begun_at)
        .max()
        .unwrap_or_default();
    println!("slowest transaction with a follower killed: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a transaction stalled for {slowest:?}"
    );
    assert_eq!(
        c.leader().await?,
        leader,
        "killing a follower must not change the leader"
    );
    c.nodes.restart(follower)?;
    check_atomicity(&c, &bank, &seen).await
}

/// Kill every node at once and restart them: every recorded outcome survives and new
/// transactions commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_loses_nothing() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let mut committed = Vec::new();
    for i in 0..20 {
        let t = bank
            .transfer(&c.client, i % ACCOUNTS, (i + 1) % ACCOUNTS, 5)
            .await?;
        must_commit(&c.client.commit(&t.gtrid).await?);
        committed.push(t.gtrid);
    }
    // One left undecided on purpose: it must be resolved (aborted) after the restart.
    let pending = bank.transfer(&c.client, 0, 1, 5).await?;
    c.nodes.kill_all();
    for id in c.nodes.ids() {
        c.nodes.restart(id)?;
    }
    c.leader().await?;
    for g in &committed {
        let t = c.client.get(g).await?;
        assert_eq!(t.outcome, pb::Outcome::Committed as i32, "{t:?}");
    }
    let d = c.client.rollback(&pending.gtrid).await?;
    assert_eq!(d.outcome, Outcome::Aborted);
    let t = bank.transfer(&c.client, 2, 3, 5).await?;
    must_commit(&c.client.commit(&t.gtrid).await?);
    bank.wait_settled(Duration::from_secs(20)).await?;
    assert_eq!(bank.total()?, 2 * ACCOUNTS as i64 * INITIAL);
    Ok(())
}
