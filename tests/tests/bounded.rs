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
    let follower = c.follower(leader)?;
    c.nodes.pause(follower, true)?;
    let burst = Instant::now();
    let mut tasks = Vec::new();
    // Many at once, so the leader packs many of them into each entry; a patient
    // client, since the machine is busy while they queue.
    let patient = CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            attempt_timeout: Duration::from_secs(20),
            deadline: Duration::from_secs(60),
            ..Default::default()
        },
    )?;
    for _ in 0..1000 {
        let client = patient.clone();
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
    c.wait_applied(follower, target, Duration::from_secs(60))
        .await?;
    println!("follower caught up in {:?}", resumed.elapsed());
    Ok(())
}

/// Resident memory of node `id`, in KiB.
fn rss_kib(c: &TestCluster, id: u64) -> anyhow::Result<u64> {
    let pid = c
        .nodes
        .pid(id)
        .ok_or_else(|| anyhow::anyhow!("node {id} is not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// 10,000 Begins naming a participant that does not exist (a closed port), with
/// short timeouts: each is aborted at its deadline, its rollback is retried with
/// backoff for the retry window (3 s here) and then it completes — the prepared
/// branch it might have would pull the logged abort. The live table drains, memory
/// stays flat across a second flood, and a normal transaction commits meanwhile.
/// Before, such transactions stayed live forever (rolled back every 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_naming_a_dead_participant_drains_and_memory_stays_flat() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--abandon-rollback-after-secs", "3"]).await?;
    let bank = ratify_tests::Bank::open(&c).await?;
    let mut rss = Vec::new();
    for round in 0..2 {
        let flood = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let client = c.client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..313 {
                    client
                        .begin(BeginOptions {
                            timeout: Duration::from_millis(300),
                            branches: vec![("127.0.0.1:1".into(), "gone".into())],
                            ..Default::default()
                        })
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        // A normal transaction in the middle of the flood.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = bank.transfer(&c.client, 1, 2, 3).await?;
        must_commit(&c.client.commit(&t.gtrid).await?);
        for t in tasks {
            t.await??;
        }
        let flooded = flood.elapsed();
        let drained_from = Instant::now();
        c.wait_all_completed(Duration::from_secs(60)).await?;
        let leader = c.leader().await?;
        let m = c.nodes.metrics(leader).await?;
        rss.push(rss_kib(&c, leader)?);
        println!(
            "round {round}: 10016 Begins in {flooded:?}, live table empty {:?} later; \
             leader RSS {} KiB; {} rollbacks abandoned, {} channels open",
            drained_from.elapsed(),
            rss[round],
            m.get("ratify_phase2_abandoned_total")
                .copied()
                .unwrap_or(0.0),
            m.get("ratify_participant_channels").copied().unwrap_or(0.0),
        );
        anyhow::ensure!(
            drained_from.elapsed() < Duration::from_secs(30),
            "the live table took more than 30 s to drain"
        );
    }
    anyhow::ensure!(
        rss[1] < rss[0] + 64 * 1024,
        "memory grew from {} KiB to {} KiB over the second flood",
        rss[0],
        rss[1]
    );
    bank.wait_settled(Duration::from_secs(10)).await?;
    Ok(())
}

/// The live table is capped: past --max-live-txns, Begin answers RESOURCE_EXHAUSTED
/// (counted), nothing is logged, and Begin works again once transactions finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_past_the_live_cap_is_refused_until_transactions_finish() -> anyhow::Result<()> {
    let c = TestCluster::start(&["--max-live-txns", "50"]).await?;
    let mut gtrids = Vec::new();
    for _ in 0..50 {
        gtrids.push(
            c.client
                .begin(BeginOptions {
                    timeout: Duration::from_secs(600),
                    ..Default::default()
                })
                .await?
                .gtrid,
        );
    }
    let leader = c.leader().await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes.api_addr(leader)?))?
            .connect()
            .await?;
    let mut rpc = ratify_proto::pb::coordinator_client::CoordinatorClient::new(channel);
    let refused = rpc
        .begin(ratify_proto::pb::BeginRequest::default())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::ResourceExhausted));
    let m = c.nodes.metrics(leader).await?;
    assert_eq!(m.get("ratify_begins_refused_total"), Some(&1.0), "{m:?}");
    assert_eq!(c.nodes.status(leader).await?.live_transactions, 50);
    for g in &gtrids[..10] {
        c.client.rollback(g).await?;
    }
    rpc.begin(ratify_proto::pb::BeginRequest::default()).await?;
    Ok(())
}

/// A follower cut off while the majority snapshots and purges past its log gets the
/// snapshot when it returns — and is killed while it writes it (a fail point holds it
/// there). openraft 0.9 purges the log as soon as it accepts the snapshot, before the
/// state machine has written it; the log store keeps every entry past the snapshot
/// on disk, so the node starts again and catches up. Before, it could never start
/// again ("Failed to get log entries", found by the long chaos run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_while_installing_a_snapshot_starts_again() -> anyhow::Result<()> {
    let mut c = TestCluster::start_partitionable(&["--snapshot-every", "50"]).await?;
    let leader = c.leader().await?;
    let follower = c.follower(leader)?;
    c.nodes
        .restart_with_failpoints(follower, "sm.before_install_save=sleep:4000")?;
    c.leader().await?;
    c.nodes.isolate(follower)?;
    for _ in 0..150 {
        let t = c.client.begin(BeginOptions::default()).await?;
        must_commit(&c.client.commit(&t.gtrid).await?);
    }
    let log = c.dir.path().join(format!("cluster/node{follower}.log"));
    c.nodes.heal();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ratify failpoint sm.before_install_save")
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the follower never began installing a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-install: the purge has run, the snapshot is not written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.nodes.kill(follower)?;
    c.nodes.restart_with_failpoints(follower, "")?;
    let leader = c.leader().await?;
    let target = c.nodes.status(leader).await?.last_log_index;
    c.wait_applied(follower, target, Duration::from_secs(30))
        .await
        .map_err(|e| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(3_000)..];
            anyhow::anyhow!("{e}; its log ends:\n{tail}")
        })?;
    // And again after it appended past the installed snapshot: its log must have no
    // gap where the entries the snapshot replaced were never received.
    for _ in 0..20 {
        let t = c.client.begin(BeginOptions::default()).await?;
        must_commit(&c.client.commit(&t.gtrid).await?);
    }
    c.nodes.kill(follower)?;
    c.nodes.restart(follower)?;
    let leader = c.leader().await?;
    let target = c.nodes.status(leader).await?.last_log_index;
    c.wait_applied(follower, target, Duration::from_secs(30))
        .await?;
    Ok(())
}
