//! The Raft log: entries in memory, every change appended to the checksummed segment
//! files of [`super::wal`] and fdatasynced before openraft is told it is durable
//! (docs/design.md, rule 6).
//!
//! `append` updates memory at once (so replication can read the entries) and hands
//! the records to the WAL writer with openraft's flush callback; the callback runs only
//! after a fdatasync round that covers them. Concurrent appends (leader proposals,
//! follower replication batches) share rounds. Votes and truncations wait for their
//! own durable round; the committed hint does not.
//!
//! Memory holds the entries not yet purged; the snapshot policy (`raft_config`)
//! bounds them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::snapshot_file::{DurabilityEvent, Journal};
use super::wal::{frame, replay, segment_path, Record, WalError, Writer, SEGMENT_BYTES};
use crate::types::typ::{Entry, LogId, StorageError, Vote};
use crate::types::TypeConfig;

/// The log's state, as replayed from the files and changed since.
#[derive(Debug, Default)]
struct State {
    /// Entries not yet purged, by index.
    entries: BTreeMap<u64, Entry>,
    /// The node's vote.
    vote: Option<Vote>,
    /// The committed hint.
    committed: Option<LogId>,
    /// The last purged log id.
    last_purged: Option<LogId>,
    /// The segment being written.
    segment: u64,
    /// Bytes in the segment being written.
    segment_bytes: u64,
    /// Highest entry index in each segment still on disk (0: none).
    segment_max: BTreeMap<u64, u64>,
}

impl State {
    fn apply(&mut self, seq: u64, record: Record) {
        match record {
            Record::Entry(e) => {
                let max = self.segment_max.entry(seq).or_default();
                *max = (*max).max(e.log_id.index);
                self.entries.insert(e.log_id.index, e);
            }
            Record::Truncate { since } => {
                self.entries.split_off(&since);
            }
            Record::Purge { upto } => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.last_purged = Some(upto);
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
        }
    }

    /// Records that restate everything a segment may carry besides entries.
    fn header(&self) -> Result<Vec<u8>, WalError> {
        let mut out = Vec::new();
        if let Some(v) = self.vote {
            out.extend(frame(&Record::Vote(v))?);
        }
        if let Some(upto) = self.last_purged {
            out.extend(frame(&Record::Purge { upto })?);
        }
        out.extend(frame(&Record::Committed(self.committed))?);
        Ok(out)
    }
}

/// Shared by the store and its readers.
#[derive(Debug)]
struct Inner {
    /// The state; changed only by openraft's core, read by replication too.
    state: RwLock<State>,
    /// The writer thread.
    writer: Writer,
    /// Highest log index covered by a completed fdatasync round. Raised before
    /// openraft is told, so anything acknowledged is at or below it.
    durable_upto: AtomicU64,
    /// Test hook: where purges are reported, to check they follow a durable snapshot.
    journal: Option<Journal>,
    /// One past the last log index the durable snapshot covers (0: none): nothing
    /// past it is purged.
    snapshot_floor: Option<Arc<AtomicU64>>,
}

/// The Raft log store. Cloning shares it.
#[derive(Clone, Debug)]
pub struct LogStore {
    /// Shared state and writer.
    inner: Arc<Inner>,
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    /// Opens (replaying) or creates the log in folder `dir`.
    ///
    /// # Errors
    /// [`WalError`] when the files cannot be read, or a closed segment is corrupt.
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        let replayed = replay(dir)?;
        let mut state = State {
            segment: replayed.segments.last().copied().unwrap_or(1),
            ..State::default()
        };
        for &seq in &replayed.segments {
            state.segment_max.insert(seq, 0);
        }
        state.segment_max.entry(state.segment).or_default();
        for (seq, record) in replayed.records {
            state.apply(seq, record);
        }
        state.segment_bytes = std::fs::metadata(segment_path(dir, state.segment))
            .map(|m| m.len())
            .unwrap_or(0);
        let writer = Writer::start(dir, state.segment)?;
        Ok(Self {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                writer,
                durable_upto: AtomicU64::new(0),
                journal: None,
                snapshot_floor: None,
            }),
        })
    }

    /// Never purges past what the durable snapshot covers (`floor`, kept by the
    /// snapshot files). Call before sharing the store.
    #[must_use]
    pub fn with_snapshot_floor(mut self, floor: Arc<AtomicU64>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.snapshot_floor = Some(floor);
        }
        self
    }

    /// Waits until the durable snapshot covers `upto`. openraft 0.9 purges the log as
    /// soon as it accepts an installed snapshot, concurrently with the state machine
    /// writing it (its PurgeLog command waits for nothing): a crash in between left a
    /// log purged past the snapshot on disk, and a node that could never start again
    /// ("Failed to get log entries", found by the chaos suite). The install runs on
    /// openraft's state-machine task, so waiting here (on the core's task) cannot
    /// block it. Purging less instead would leave a gap in the log where the entries
    /// the snapshot replaced were never received.
    ///
    /// # Errors
    /// When no snapshot covering `upto` becomes durable within [`PURGE_WAIT`]: the
    /// purge is refused (and openraft stops the node) rather than done unsafely.
    async fn wait_for_snapshot(&self, upto: u64) -> Result<(), StorageError> {
        let Some(floor) = &self.inner.snapshot_floor else {
            return Ok(());
        };
        let start = std::time::Instant::now();
        // One past the durable snapshot's last index; 0 is "no snapshot".
        while floor.load(Ordering::Acquire) <= upto {
            if start.elapsed() > PURGE_WAIT {
                return Err(write_err(std::io::Error::other(format!(
                    "refusing to purge the log up to {upto}: no snapshot covering it became \
                     durable within {PURGE_WAIT:?}"
                ))));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Reports purges to `journal` (tests). Call before sharing the store.
    #[must_use]
    pub fn with_journal(mut self, journal: Option<Journal>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.journal = journal;
        }
        self
    }

    /// Highest log index known to be fdatasynced (0 before the first append).
    pub fn durable_upto(&self) -> u64 {
        self.inner.durable_upto.load(Ordering::Acquire)
    }

    /// fdatasync rounds completed by the log writer.
    pub fn sync_count(&self) -> u64 {
        self.inner.writer.sync_count()
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the state as the last change made it;
        // the node restarts from the files anyway if that matters.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes` (already applied to `state`) and starts a new segment when the
    /// current one is full. Called with the state lock held, so the file order is the
    /// order of the changes in memory.
    fn queue(
        &self,
        state: &mut State,
        bytes: Vec<u8>,
        done: Option<super::wal::Done>,
    ) -> Result<(), WalError> {
        state.segment_bytes += bytes.len() as u64;
        self.inner.writer.write(bytes, done)?;
        if state.segment_bytes >= SEGMENT_BYTES {
            let header = state.header()?;
            state.segment += 1;
            state.segment_bytes = header.len() as u64;
            state.segment_max.insert(state.segment, 0);
            self.inner.writer.rotate(state.segment, header)?;
        }
        Ok(())
    }

    /// Applies `records` in memory and queues them for the files, in that order
    /// under the state lock; `done` runs once they are durable.
    fn change(
        &self,
        records: impl IntoIterator<Item = Record>,
        done: Option<super::wal::Done>,
    ) -> Result<(), StorageError> {
        let mut state = self.state_mut();
        let mut bytes = Vec::new();
        for record in records {
            bytes.extend(frame(&record).map_err(write_err)?);
            let segment = state.segment;
            state.apply(segment, record);
        }
        self.queue(&mut state, bytes, done).map_err(write_err)
    }

    /// Applies `record` and waits until it is durable.
    async fn change_synced(&self, record: Record) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.change(
            [record],
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        )?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(std::io::Error::other(e))),
            Err(_) => Err(write_err(WalError::Stopped)),
        }
    }
}

/// Longest a purge waits for the snapshot that covers it to become durable.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Roughly the most bytes of entries one replication read returns (see
/// [`RaftLogReader::limited_get_log_entries`]): with `MAX_APPEND_BYTES` in the network
/// as the backstop, the leader never clones or encodes much more than it sends.
const MAX_READ_BYTES: usize = 1024 * 1024;

/// A cheap upper-bound estimate of an entry's encoded size.
fn approx_entry_bytes(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(p) => {
            64 + p.commands.iter().map(|c| c.approx_bytes()).sum::<usize>()
        }
        _ => 1024,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .state()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    /// At most about [`MAX_READ_BYTES`] of entries from `start` (at least one).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let state = self.state();
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, e) in state.entries.range(start..end) {
            bytes += approx_entry_bytes(e);
            if !out.is_empty() && bytes > MAX_READ_BYTES {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.state();
        let last = state
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(state.last_purged);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must survive a crash, or this node could vote twice in one term.
        self.change_synced(Record::Vote(*vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.state().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not waited for: it is only a hint that lets a restart re-apply faster.
        self.change([Record::Committed(committed)], None)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.state().committed)
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map_or(0, |e| e.log_id.index);
        let inner = Arc::clone(&self.inner);
        let done: super::wal::Done = Box::new(move |res| match res {
            Ok(()) => {
                inner.durable_upto.fetch_max(last, Ordering::AcqRel);
                callback.log_io_completed(Ok(()));
            }
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e))),
        });
        self.change(entries.into_iter().map(Record::Entry), Some(done))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Conflicting entries must not come back after a crash.
        self.change_synced(Record::Truncate {
            since: log_id.index,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wait_for_snapshot(log_id.index).await?;
        if let Some(j) = &self.inner.journal {
            j.note(DurabilityEvent::Purged(log_id.index));
        }
        self.change_synced(Record::Purge { upto: log_id }).await?;
        // Only once the purge point is durable may the files it covers go.
        let doomed: Vec<u64> = {
            let mut state = self.state_mut();
            let current = state.segment;
            let doomed: Vec<u64> = state
                .segment_max
                .iter()
                .filter(|(&seq, &max)| seq != current && max <= log_id.index)
                .map(|(&seq, _)| seq)
                .collect();
            for seq in &doomed {
                state.segment_max.remove(seq);
            }
            doomed
        };
        if !doomed.is_empty() {
            self.inner.writer.delete(doomed).map_err(write_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    fn entries(from: u64, to: u64) -> Vec<Record> {
        (from..=to)
            .map(|i| Record::Entry(blank_ent::<TypeConfig>(1, 1, i)))
            .collect()
    }

    async fn synced(store: &LogStore, records: Vec<Record>) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.change(
            records,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        )?;
        rx.await?.map_err(anyhow::Error::msg)
    }

    async fn last_purged(store: &mut LogStore) -> anyhow::Result<Option<u64>> {
        Ok(store
            .get_log_state()
            .await?
            .last_purged_log_id
            .map(|l| l.index))
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.state().entries.keys().copied().collect()
    }

    /// The log is never purged past what the durable snapshot covers: openraft 0.9
    /// purges as soon as it accepts an installed snapshot, before the state machine
    /// has written it; the purge waits until the snapshot is durable.
    #[tokio::test]
    async fn a_purge_waits_for_the_snapshot_that_covers_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let floor = Arc::new(AtomicU64::new(11)); // a snapshot up to 10
        let mut store = LogStore::open(dir.path())?.with_snapshot_floor(Arc::clone(&floor));
        synced(&store, entries(1, 30)).await?;
        store.purge(log_id(1, 1, 10)).await?;
        let mut waiting = store.clone();
        let purge = tokio::spawn(async move { waiting.purge(log_id(1, 1, 20)).await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!purge.is_finished(), "purged past the durable snapshot");
        assert_eq!(last_purged(&mut store).await?, Some(10));
        floor.store(21, Ordering::Release); // the snapshot up to 20 is durable
        purge.await??;
        assert_eq!(last_purged(&mut store).await?, Some(20));
        assert_eq!(indexes(&store).first(), Some(&21), "the log has no gap");
        Ok(())
    }

    /// A replication read stops at about a megabyte, however many entries were asked
    /// for: the leader never clones (and encodes) hundreds of megabytes for a follower
    /// far behind.
    #[tokio::test]
    async fn a_replication_read_is_bounded_by_bytes() -> anyhow::Result<()> {
        use crate::txn::{Command, Proposal};
        let dir = tempfile::tempdir()?;
        let mut store = LogStore::open(dir.path())?;
        let big = |i: u64| Entry {
            log_id: log_id(1, 1, i),
            payload: openraft::EntryPayload::Normal(Proposal {
                commands: vec![
                    Command::Complete {
                        txns: vec![1; 500_000 / 8],
                        now_ms: 0,
                        abandoned: vec![],
                    };
                    1
                ],
            }),
        };
        synced(&store, (1..=20).map(|i| Record::Entry(big(i))).collect()).await?;
        let got = store.limited_get_log_entries(1, 21).await?;
        assert!(
            (1..=3).contains(&got.len()),
            "{} entries of 500 KB in one read",
            got.len()
        );
        assert_eq!(store.limited_get_log_entries(20, 21).await?.len(), 1);
        Ok(())
    }

    /// Everything the store was told survives a reopen: entries, truncation, purge,
    /// vote and committed hint; purged segments are deleted from disk.
    #[tokio::test]
    async fn state_survives_reopen_and_purged_segments_go() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut store = LogStore::open(dir.path())?;
        synced(&store, entries(1, 10)).await?;
        store.truncate(log_id(1, 1, 8)).await?;
        synced(&store, entries(8, 12)).await?;
        store.save_vote(&Vote::new(3, 2)).await?;
        store.save_committed(Some(log_id(1, 1, 9))).await?;
        // Force a second segment, then purge past everything in the first.
        {
            let mut state = store.state_mut();
            state.segment_bytes = SEGMENT_BYTES;
            store.queue(&mut state, Vec::new(), None)?;
        }
        synced(&store, entries(13, 14)).await?;
        store.purge(log_id(1, 1, 12)).await?;
        drop(store);
        // Give the writer thread a moment to run the queued deletion.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        let mut again = LogStore::open(dir.path())?;
        assert_eq!(indexes(&again), vec![13, 14]);
        assert_eq!(again.read_vote().await?, Some(Vote::new(3, 2)));
        assert_eq!(again.read_committed().await?, Some(log_id(1, 1, 9)));
        let st = again.get_log_state().await?;
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 12)));
        assert_eq!(st.last_log_id, Some(log_id(1, 1, 14)));
        let segs: Vec<_> = std::fs::read_dir(dir.path())?.collect();
        assert_eq!(segs.len(), 1, "the purged first segment is deleted");
        Ok(())
    }

    /// A truncation is durable: the removed entries do not come back.
    #[tokio::test]
    async fn truncated_entries_stay_gone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut store = LogStore::open(dir.path())?;
        synced(&store, entries(1, 5)).await?;
        store.truncate(log_id(1, 1, 3)).await?;
        drop(store);
        let again = LogStore::open(dir.path())?;
        assert_eq!(indexes(&again), vec![1, 2]);
        Ok(())
    }
}
