//! The replicated state machine: the [`TxnTable`] in memory, snapshots in a file.
//!
//! The table lives in memory and is rebuilt on start from the latest snapshot plus the
//! log entries after it (openraft re-applies them). A snapshot is written by
//! [`SnapshotFiles::save`] (temp file, fsync, rename, folder fsync) before openraft
//! learns it exists, so before it may purge the log entries it covers
//! (docs/design.md, rule 14).

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::snapshot_file::SnapshotFiles;
use crate::txn::{CommandResult, TxnTable};
use crate::types::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use crate::types::TypeConfig;

/// Everything the state machine holds; also the snapshot payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Membership as of `last_applied`.
    pub last_membership: StoredMembership,
    /// The transactions.
    pub table: TxnTable,
}

/// Read access to the state machine's data, shared with the driver and services.
#[derive(Clone, Debug, Default)]
pub struct SharedSm(Arc<RwLock<SmData>>);

impl SharedSm {
    /// Locks for reading. Never hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        // A panic while writing cannot leave the table half-applied in a way that
        // matters: the node would restart from the log anyway.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmData> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A persisted snapshot: its metadata and the encoded [`SmData`].
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// openraft's state machine store.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    /// The live data.
    data: SharedSm,
    /// Where snapshots are kept (and synced).
    snapshots: SnapshotFiles,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the store, loading the latest snapshot if there is one.
    ///
    /// # Errors
    /// When the snapshot cannot be read or decoded.
    pub fn open(snapshots: SnapshotFiles) -> Result<Self, StorageError> {
        let store = Self {
            data: SharedSm::default(),
            snapshots,
        };
        if let Some(snap) = store.load_snapshot()? {
            *store.data.write() = decode(&snap.data).map_err(snap_err)?;
            store
                .snapshots
                .mark_durable(snap.meta.last_log_id.map_or(0, |l| l.index));
        }
        Ok(store)
    }

    /// A read handle to the live data.
    pub fn shared(&self) -> SharedSm {
        self.data.clone()
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match self.snapshots.load().map_err(snap_err)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(snap_err)?)),
            None => Ok(None),
        }
    }

    /// Writes `snap` durably (on a blocking thread: it writes and fsyncs megabytes).
    async fn save_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = encode(snap).map_err(snap_err)?;
        let covers = snap.meta.last_log_id.map_or(0, |l| l.index);
        let files = self.snapshots.clone();
        tokio::task::spawn_blocking(move || files.save(&bytes, covers))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let d = self.data.read();
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.last_membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    d.last_applied.map_or(0, |l| l.leader_id.term),
                    d.last_applied.map_or(0, |l| l.index)
                ),
            };
            (meta, encode(&*d).map_err(snap_err)?)
        };
        let stored = StoredSnapshot { meta, data };
        self.save_snapshot(&stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.data.read();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut d = self.data.write();
        let mut results = Vec::new();
        for entry in entries {
            d.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(proposal) => {
                    let _span = tracing::trace_span!("apply", index = entry.log_id.index).entered();
                    proposal
                        .commands
                        .into_iter()
                        .map(|cmd| d.table.apply(cmd))
                        .collect()
                }
                EntryPayload::Membership(m) => {
                    d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        ratify_common::failpoint::hit("sm.before_install_save").await;
        let mut data: SmData = decode(&bytes).map_err(sm_err)?;
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        })
        .await?;
        *self.data.write() = data;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.load_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
