//! Faults beyond SIGKILL and state bounded by construction (docs/design.md, rules 12
//! and 13): proposals that openraft never answers, a follower far behind after a
//! burst of large entries, floods of transactions naming dead participants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ratify_participant_sdk::client::{BeginOptions, ClientConfig, CoordinatorClient};
use ratify_tests::{must_commit, TestCluster};

/// Restarts every node with `failpoints` and waits for a leader.
async fn arm_all(c: &mut TestCluster, failpoints: &str) -> anyhow::Result<()> {
    for id in c.nodes.ids() {
        c.nodes.restart_with_failpoints(id, failpoints)?;
    }
    c.leader().await?;
    Ok(())
}

/// A log write that is never answered (here a fail point stalls a third of them for
/// an hour, as openraft does with writes whose entries a snapshot replaced) must not
/// hold its pipeline slot: the caller is told to retry after the propose timeout and
/// the next writes go through. Before the fix two stalls took both slots for good
/// and the leader committed nothing more while it kept heartbeating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_write_that_is_never_answered_does_not_wedge_the_leader() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&["--propose-timeout-ms", "800"]).await?;
    arm_all(&mut c, "coord.client_write=sleep:3600000@0.3").await?;
    let client = CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            deadline: Duration::from_secs(30),
            ..Default::default()
        },
    )?;
    let start = Instant::now();
    for i in 0..12 {
        let t = client
            .begin(BeginOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("begin {i}: {e}"))?;
        must_commit(
            &client
                .commit(&t.gtrid)
                .await
                .map_err(|e| anyhow::anyhow!("commit {i}: {e}"))?,
        );
    }
    let leader = c.leader().await?;
    let m = c.nodes.metrics(leader).await?;
    println!(
        "12 transactions in {:?}; {} proposals timed out on the leader",
        start.elapsed(),
        m.get("ratify_proposal_timeouts_total")
            .copied()
            .unwrap_or(0.0)
    );
    Ok(())
}

/// Long names, many branches, many labels: about 8 KiB per Begin.
fn large_begin() -> BeginOptions {
    let pad = |prefix: &str, i: usize, n: usize| format!("{prefix}{i:03}{}", "x".repeat(n));
    BeginOptions {
        timeout: Duration::from_secs(3_600),
        labels: (0..16)
            .map(|i| (pad("k", i, 60), pad("v", i, 60)))
            .collect::<HashMap<_, _>>(),
        branches: (0..64)
            .map(|i| ("127.0.0.1:9".to_string(), pad("r", i, 60)))
            .collect(),
    }
}

/// A follower paused (SIGSTOP) through a burst of large entries catches up once it
/// resumes: AppendEntries are bounded by bytes, so each fits openraft's per-RPC
/// time (one heartbeat interval). Before, the leader sent the whole backlog in one
/// RPC, which timed out and was sent again, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_catches_up_after_a_burst_of_large_entries() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let leader = c.leader().await?;
    let follower = c
        .nodes
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    c.nodes.pause(follower, true)?;
    let burst = Instant::now();
    let mut tasks = Vec::new();
    // Many at once, so the leader packs many of them into each entry.
    for _ in 0..1000 {
        let client = c.client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..8 {
                client.begin(large_begin()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let target = c.nodes.status(leader).await?.last_log_index;
    println!(
        "burst of 8000 large Begins in {:?}, leader log at {target}",
        burst.elapsed()
    );
    c.nodes.pause(follower, false)?;
    let resumed = Instant::now();
    loop {
        if let Ok(s) = c.nodes.status(follower).await {
            if s.last_applied >= target {
                break;
            }
        }
        anyhow::ensure!(
            resumed.elapsed() < Duration::from_secs(60),
            "the follower did not catch up to {target} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("follower caught up in {:?}", resumed.elapsed());
    Ok(())
}
