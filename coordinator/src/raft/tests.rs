//! Storage tests: openraft's own suite against the stores, and the proof that an
//! entry is fdatasynced before openraft may acknowledge it.

use std::collections::BTreeMap;

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{new_raft, open_stores, raft_config, LogStore, Network, StateMachineStore};
use crate::txn::{Command, CommandResult};
use crate::types::typ::StorageError;
use crate::types::{NodeInfo, TypeConfig};

/// The stores as openraft's suite wants them: its purge tests purge without building
/// a snapshot, so the log store has no snapshot floor here (the floor has tests of
/// its own in `log_store`).
struct StoreBuilderImpl;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for StoreBuilderImpl {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        fn io(e: impl std::error::Error + 'static) -> StorageError {
            openraft::StorageIOError::write(openraft::AnyError::new(&e)).into()
        }
        let dir = tempfile::tempdir().map_err(io)?;
        let log = LogStore::open(&dir.path().join("wal")).map_err(io)?;
        let files = super::snapshot_file::SnapshotFiles::open(&dir.path().join("snapshot"), None)
            .map_err(io)?;
        let sm = StateMachineStore::open(files)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError> {
    Suite::test_all(StoreBuilderImpl)
}

/// A one-node cluster over the given stores, initialised and leading.
async fn single_node(
    log: LogStore,
    sm: StateMachineStore,
) -> anyhow::Result<crate::types::typ::Raft> {
    let raft = new_raft(
        1,
        raft_config("test", super::SNAPSHOT_EVERY)?,
        Network::default(),
        log,
        sm,
    )
    .await?;
    let node = NodeInfo {
        raft_addr: "127.0.0.1:1".into(),
        api_addr: "127.0.0.1:2".into(),
    };
    raft.initialize(BTreeMap::from([(1, node)])).await?;
    raft.wait(Some(std::time::Duration::from_secs(5)))
        .state(openraft::ServerState::Leader, "leader")
        .await?;
    Ok(raft)
}

/// Every write acknowledged by a (single-node) cluster must already be covered by a
/// completed fdatasync: if the log store reported entries flushed before syncing,
/// writes would return while `durable_upto` still lags behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_fdatasynced_before_they_are_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (log, sm) = open_stores(dir.path())?;
    let raft = single_node(log.clone(), sm).await?;
    let syncs_before = log.sync_count();
    let mut writes = Vec::new();
    for i in 0..64u64 {
        let raft = raft.clone();
        let log = log.clone();
        writes.push(tokio::spawn(async move {
            let resp = raft
                .client_write(Command::SetClusterId { cluster_id: i + 1 }.into())
                .await?;
            assert!(matches!(resp.data[..], [CommandResult::ClusterId(_)]));
            let durable = log.durable_upto();
            anyhow::ensure!(
                durable >= resp.log_id.index,
                "entry {} acknowledged while only {durable} was fdatasynced",
                resp.log_id.index
            );
            anyhow::Ok(())
        }));
    }
    for w in writes {
        w.await??;
    }
    let syncs = log.sync_count() - syncs_before;
    assert!(syncs >= 1, "no fdatasync happened at all");
    // Group commit: 64 concurrent writes should need far fewer than 64 syncs.
    println!("64 concurrent writes took {syncs} fdatasync rounds");
    raft.shutdown().await?;
    Ok(())
}

/// A snapshot far over sled's 2 MiB blob threshold (100k kept outcomes) is written,
/// fsynced, renamed and its folder fsynced before openraft may purge the log it
/// replaces (docs/design.md, rule 14); a node reopened from it, with that log purged,
/// has every outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_is_durable_before_the_log_is_purged() -> anyhow::Result<()> {
    use crate::raft::open_stores_with;
    use crate::raft::snapshot_file::{DurabilityEvent, Journal};
    use crate::txn::{Decision, Reason, Seed};
    use std::time::Duration;

    const TXNS: u64 = 100_000;
    const PER_ENTRY: u64 = 500;
    let dir = tempfile::tempdir()?;
    let journal = Journal::default();
    let (log, sm) = open_stores_with(dir.path(), Some(journal.clone()))?;
    let raft = single_node(log, sm).await?;
    raft.client_write(Command::SetClusterId { cluster_id: 7 }.into())
        .await?;
    raft.client_write(Command::Reserve { upto: TXNS + 1 }.into())
        .await?;
    for chunk in 0..TXNS / PER_ENTRY {
        // Each transaction opened and committed in one entry, as a leader does.
        let decides = (1..=PER_ENTRY)
            .map(|i| chunk * PER_ENTRY + i)
            .flat_map(|txn| {
                [
                    Command::Open {
                        txn,
                        seed: Seed {
                            created_ms: 1,
                            deadline_ms: 1_000,
                            ..Default::default()
                        },
                        held: true,
                    },
                    Command::Decide {
                        txn,
                        decision: Decision {
                            commit: true,
                            reason: Reason::ClientCommit,
                            detail: String::new(),
                            decided_ms: 2,
                            audit: Default::default(),
                        },
                        prepared_branches: Some(0),
                        skip_phase2: vec![],
                        complete: true,
                        round: 0,
                    },
                ]
            })
            .collect::<Vec<_>>();
        raft.client_write(crate::txn::Proposal { commands: decides })
            .await?;
    }
    raft.trigger().snapshot().await?;
    let m = raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await?;
    let upto = m.snapshot.map_or(0, |s| s.index);
    raft.trigger().purge_log(upto).await?;
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index == upto), "log purged")
        .await?;
    raft.shutdown().await?;

    let events = journal.events();
    let purged_at = events
        .iter()
        .position(|e| matches!(e, DurabilityEvent::Purged(p) if *p == upto))
        .ok_or_else(|| anyhow::anyhow!("no purge up to {upto} in {events:?}"))?;
    let before = &events[..purged_at];
    let durable_at = before
        .iter()
        .rposition(|e| matches!(e, DurabilityEvent::SnapshotDurable(c) if *c >= upto))
        .ok_or_else(|| anyhow::anyhow!("purged to {upto} with no durable snapshot first"))?;
    let steps: Vec<_> = before[..durable_at]
        .iter()
        .rev()
        .take(4)
        .map(std::mem::discriminant)
        .collect();
    let expected: Vec<_> = [
        DurabilityEvent::SyncedDir(Default::default()),
        DurabilityEvent::Renamed {
            from: Default::default(),
            to: Default::default(),
        },
        DurabilityEvent::SyncedFile(Default::default()),
        DurabilityEvent::Wrote(Default::default()),
    ]
    .iter()
    .map(std::mem::discriminant)
    .collect();
    assert_eq!(
        steps, expected,
        "write, fsync, rename, folder fsync: {before:?}"
    );
    let size = std::fs::metadata(dir.path().join("snapshot/current"))?.len();
    assert!(
        size > 2 * 1024 * 1024,
        "snapshot of {size} bytes is not large"
    );

    // Reopen from the snapshot alone: the entries it replaced are gone from the log.
    let (mut log, sm) = open_stores(dir.path())?;
    let st = openraft::storage::RaftLogStorage::get_log_state(&mut log).await?;
    assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(upto));
    let table = sm.shared().read().table.clone();
    assert_eq!(
        table.finished.len() as u64,
        TXNS,
        "outcomes lost on restart"
    );
    assert!(table.live.is_empty());
    Ok(())
}
