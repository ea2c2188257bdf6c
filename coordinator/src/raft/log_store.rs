//! The Raft log on sled, made durable with a real fdatasync before openraft is told an
//! entry is flushed (DESIGN §4.6).
//!
//! Layout in the node's sled database:
//! - tree `raft_log`: big-endian log index → encoded entry.
//! - tree `raft_meta`: `vote`, `committed`, `last_purged` → encoded values.
//!
//! `append` inserts the entries and hands the flush callback to the group-commit
//! syncer ([`DurableSled`]): openraft learns the entries are durable only after a
//! flush + fdatasync round that started after they were written. Concurrent appends
//! (leader proposals, follower replication batches) share rounds.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use ratify_participant_sdk::durable::DurableSled;

use super::codec::{decode, encode};
use crate::types::typ::{Entry, LogId, StorageError, Vote};
use crate::types::TypeConfig;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The sled-backed Raft log store. Cloning shares the same trees.
#[derive(Clone, Debug)]
pub struct LogStore {
    /// The database and its syncer, shared with the state machine store.
    durable: DurableSled,
    /// Entries by index.
    log: sled::Tree,
    /// Vote, committed id and purge point.
    meta: sled::Tree,
    /// Highest log index covered by a completed flush + fdatasync round. Raised
    /// before openraft is told, so anything acknowledged is at or below it.
    durable_upto: Arc<AtomicU64>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    /// Opens the log trees in `durable`.
    ///
    /// # Errors
    /// When sled cannot open the trees.
    pub fn open(durable: DurableSled) -> Result<Self, StorageError> {
        let log = durable.db().open_tree("raft_log").map_err(write_err)?;
        let meta = durable.db().open_tree("raft_meta").map_err(write_err)?;
        Ok(Self {
            durable,
            log,
            meta,
            durable_upto: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Highest log index known to be fdatasynced (0 before the first append).
    pub fn durable_upto(&self) -> u64 {
        self.durable_upto.load(Ordering::Acquire)
    }

    /// Flush + fdatasync rounds completed by this node's database.
    pub fn sync_count(&self) -> u64 {
        self.durable.sync_count()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_err)?;
        self.meta.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.durable.sync().await.map_err(write_err)
    }

    /// Removes every entry with an index in `range`.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(range) {
            let (k, _) = item.map_err(write_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)
    }
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for item in self.log.range(range) {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(decode::<Entry>(&v).map_err(read_err)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote)?;
        // A vote must survive a crash, or this node could vote twice in one term.
        self.sync().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: it is only a hint that lets a restart re-apply faster.
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = 0;
        for entry in entries {
            let bytes = encode(&entry).map_err(write_err)?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
            last = entry.log_id.index;
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        // Reported flushed only once a flush + fdatasync round covers these entries.
        let durable_upto = Arc::clone(&self.durable_upto);
        self.durable.request_sync(Box::new(move |res| {
            if res.is_ok() {
                durable_upto.fetch_max(last, Ordering::AcqRel);
            }
            callback.log_io_completed(res)
        }));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index.to_be_bytes()..)?;
        // Conflicting entries must not come back after a crash.
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        self.remove_range(..=log_id.index.to_be_bytes())
    }
}
