//! Disk faults (docs/design.md, rule 13): a failed fdatasync stops the node instead of
//! being retried as if nothing happened, and a full disk gives a clear error and a
//! node that comes back once space returns. Atomicity holds throughout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ratify_participant_sdk::client::{BeginOptions, ClientError, Outcome};
use ratify_tests::{Bank, TestCluster, INITIAL};

/// Node `id`'s log file (its stderr).
fn log_tail(c: &TestCluster, id: u64) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("cluster/node{id}.log"))).unwrap_or_default()
}

/// Waits until node `id` has exited by itself.
async fn exited(c: &mut TestCluster, id: u64, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while c.nodes.exited(id).is_none() {
        anyhow::ensure!(
            start.elapsed() < within,
            "node {id} did not stop within {within:?}:\n{}",
            log_tail(c, id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Transfers from A to B for `dur`; returns how many commits were acknowledged.
async fn transfers(c: &TestCluster, bank: &Bank, dur: Duration) -> anyhow::Result<u32> {
    let start = Instant::now();
    let mut committed = 0;
    let mut i = 0usize;
    while start.elapsed() < dur {
        i += 1;
        let Ok(t) = bank.transfer(&c.client, i % 20, (i + 7) % 20, 1).await else {
            continue;
        };
        match c.client.commit(&t.gtrid).await {
            Ok(d) if d.outcome == Outcome::Committed => committed += 1,
            Ok(_) => {}
            // Unknown outcome: the checks below settle it through the balances.
            Err(ClientError::DeadlineExceeded { .. }) => {}
            Err(e) => anyhow::bail!("commit: {e}"),
        }
    }
    Ok(committed)
}

/// The leader's log fdatasync starts failing (EIO, injected at the `wal.sync` fail
/// point): it must stop — exit with a message saying why — rather than retry the sync
/// and go on acknowledging; the cluster elects another leader and every transfer is
/// atomic. The node restarts cleanly once its disk is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_sync_fails_stops_and_the_cluster_goes_on() -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&c).await?;
    let leader = c.leader().await?;
    c.nodes
        .restart_with_failpoints(leader, "wal.sync=error:EIO@0.05")?;
    let first = transfers(&c, &bank, Duration::from_secs(4)).await?;
    exited(&mut c, leader, Duration::from_secs(20)).await?;
    let tail = log_tail(&c, leader);
    assert!(
        tail.contains("fdatasync") && tail.contains("the node stops"),
        "no clear reason in the log:\n{tail}"
    );
    let after = transfers(&c, &bank, Duration::from_secs(2)).await?;
    assert!(after > 0, "no commit after the failing leader stopped");
    c.nodes.restart_with_failpoints(leader, "")?;
    bank.wait_settled(Duration::from_secs(20)).await?;
    c.wait_all_completed(Duration::from_secs(20)).await?;
    assert_eq!(bank.total()?, 2 * ratify_tests::ACCOUNTS as i64 * INITIAL);
    println!("{first} commits before and {after} after the failing leader stopped");
    Ok(())
}

/// Mounts a tmpfs of `size` at `dir` (as root, like CI) and unmounts it when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()?
            .success();
        anyhow::ensure!(ok, "mount -t tmpfs failed (this test runs as root)");
        Ok(Self(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) -> anyhow::Result<()> {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()?
            .success();
        anyhow::ensure!(ok, "remount failed");
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes one large entry: a transaction with 64 long branch names, rolled back (Begin
/// alone logs nothing; the abort carries the whole record).
async fn fill(c: &TestCluster, options: BeginOptions) -> anyhow::Result<()> {
    let t = c.client.begin(options).await?;
    c.client.rollback(&t.gtrid).await?;
    Ok(())
}

/// A follower whose disk fills up (a 1 MiB tmpfs) stops with an error that says the
/// disk is full; the others go on committing; once space returns (the tmpfs grows) it
/// starts again and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_clearly_and_it_recovers_when_space_returns(
) -> anyhow::Result<()> {
    let mut c = TestCluster::start(&[]).await?;
    let leader = c.leader().await?;
    let victim = c.follower(leader)?;
    // Move its data onto a small disk of its own. (Not a wiped one: a voter that
    // lost its log and vote must be replaced through a membership change, and
    // openraft stops a leader that sees a follower's log go backwards.)
    c.nodes.kill(victim)?;
    let dir = c.nodes.data_dir(victim);
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside)?;
    let disk = Tmpfs::mount(&dir, "1m")?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", aside.display()))
        .arg(&dir)
        .status()?
        .success();
    anyhow::ensure!(copied, "copying the data folder failed");
    c.nodes.restart(victim)?;
    let big = || BeginOptions {
        timeout: Duration::from_secs(600),
        branches: (0..64)
            .map(|i| {
                (
                    "127.0.0.1:9".to_string(),
                    format!("r{i:03}{}", "x".repeat(60)),
                )
            })
            .collect(),
        ..Default::default()
    };
    let start = Instant::now();
    while c.nodes.is_running(victim) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the node with a full disk kept running:\n{}",
            log_tail(&c, victim)
        );
        fill(&c, big()).await?;
    }
    let tail = log_tail(&c, victim);
    assert!(
        tail.contains("no space left"),
        "the log does not say the disk is full:\n{tail}"
    );
    // The majority goes on.
    for _ in 0..20 {
        fill(&c, big()).await?;
    }
    disk.resize("256m")?;
    c.nodes.restart(victim)?;
    let target = c.nodes.status(leader).await?.last_log_index;
    if let Err(e) = c
        .wait_applied(victim, target, Duration::from_secs(30))
        .await
    {
        anyhow::bail!("{e} after space returned:\n{}", log_tail(&c, victim));
    }
    c.nodes.kill(victim)?;
    drop(disk);
    Ok(())
}
