//! Storage tests: openraft's own suite against the sled stores, and the proof that an
//! entry is fdatasynced before openraft may acknowledge it.

use std::collections::BTreeMap;

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{new_raft, open_stores, raft_config, LogStore, Network, StateMachineStore};
use crate::txn::{Command, CommandResult};
use crate::types::typ::StorageError;
use crate::types::{NodeInfo, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir()
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        let (log, sm) = open_stores(dir.path())
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

/// Every write acknowledged by a (single-node) cluster must already be covered by a
/// completed fdatasync: if the log store reported entries flushed before syncing,
/// writes would return while `durable_upto` still lags behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_fdatasynced_before_they_are_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (log, sm) = open_stores(dir.path())?;
    let raft = new_raft(1, raft_config("test")?, Network::default(), log.clone(), sm).await?;
    let node = NodeInfo {
        raft_addr: "127.0.0.1:1".into(),
        api_addr: "127.0.0.1:2".into(),
    };
    raft.initialize(BTreeMap::from([(1, node)])).await?;
    raft.wait(Some(std::time::Duration::from_secs(5)))
        .state(openraft::ServerState::Leader, "leader")
        .await?;
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
