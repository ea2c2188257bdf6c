//! Where bytes hit disk and cross between nodes: the log store, the state
//! machine and its snapshots, the Raft network, and their encoding.
//!
//! # Layout
//! - [`codec`]: the versioned binary encoding of log entries, snapshots and RPCs.
//! - [`wal`]: the log's append-only, checksummed segment files and their writer.
//! - [`log_store`]: the Raft log (in memory + [`wal`]), fdatasynced before acknowledging.
//! - [`state_machine`]: the transaction table in memory, snapshots in [`snapshot_file`].
//! - [`snapshot_file`]: the snapshot file, written and synced before any purge.
//! - [`network`]: openraft RPCs over the internal gRPC `Raft` service.

pub mod codec;
pub mod log_store;
pub mod network;
pub mod snapshot_file;
pub mod state_machine;
pub mod wal;

use std::path::Path;
use std::sync::Arc;

use snapshot_file::{Journal, SnapshotFiles};

use crate::types::typ::{Raft, StorageError};
use crate::types::NodeId;

pub use log_store::LogStore;
pub use network::Network;
pub use state_machine::{SharedSm, SmData, StateMachineStore};

/// Why the stores could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The snapshot folder.
    #[error("snapshot: {0}")]
    Snapshot(#[from] snapshot_file::SnapshotFileError),
    /// Reading what was stored.
    #[error("storage: {0}")]
    Storage(StorageError),
    /// The Raft log files.
    #[error("raft log: {0}")]
    Log(#[from] wal::WalError),
}

/// Opens the node's stores in `dir`: the Raft log (with the vote) in `dir/wal`, the
/// state machine's snapshot in `dir/snapshot`.
///
/// # Errors
/// When the folders cannot be opened or what they hold cannot be read.
pub fn open_stores(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    open_stores_with(dir, None)
}

/// [`open_stores`], reporting every write, sync and purge to `journal` (tests).
///
/// # Errors
/// As [`open_stores`].
pub fn open_stores_with(
    dir: &Path,
    journal: Option<Journal>,
) -> Result<(LogStore, StateMachineStore), OpenError> {
    let snapshots = SnapshotFiles::open(&dir.join("snapshot"), journal.clone())?;
    let log = LogStore::open(&dir.join("wal"))?
        .with_journal(journal)
        .with_snapshot_floor(snapshots.durable_upto());
    let sm = StateMachineStore::open(snapshots).map_err(OpenError::Storage)?;
    Ok((log, sm))
}

/// How many entries pass between snapshots by default.
pub const SNAPSHOT_EVERY: u64 = 20_000;

/// The Raft configuration Ratify runs with: short elections so a leader kill stalls
/// clients well under two seconds, and a snapshot every `snapshot_every` entries to
/// bound replay (the log keeps a tenth of that behind the snapshot, for followers
/// that lag a little).
///
/// # Errors
/// When `snapshot_every` is 0; openraft validates the rest.
pub fn raft_config(
    cluster_name: &str,
    snapshot_every: u64,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        install_snapshot_timeout: 2_000,
        max_payload_entries: 1_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 10,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Creates the Raft node over the given stores and network.
///
/// # Errors
/// When openraft refuses the configuration or the stores.
pub async fn new_raft(
    id: NodeId,
    config: Arc<openraft::Config>,
    network: Network,
    log: LogStore,
    sm: StateMachineStore,
) -> Result<Raft, openraft::error::Fatal<NodeId>> {
    Raft::new(id, config, network, log, sm).await
}

#[cfg(test)]
mod tests;
