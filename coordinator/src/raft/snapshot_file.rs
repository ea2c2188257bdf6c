//! The state machine's snapshot as a file of its own, made durable before openraft may
//! purge the log entries it replaces (docs/design.md, rule 14).
//!
//! # Why not sled
//! The snapshot was a sled value. sled 0.34 stores any value over a quarter of its
//! segment size (2 MiB here) as a separate blob file written without fsync, and the
//! whole table is one value: past roughly 57k kept outcomes every snapshot was an
//! unsynced blob, and a power cut after the purge left a node with neither its log
//! nor its snapshot.
//!
//! # Format and crash safety
//! Folder `snapshot/`, file `current`: `[magic "RTFYSNAP"][len: u64 LE][crc32: u32
//! LE][payload]`. A new snapshot is written to `current.tmp`, fsynced, renamed over
//! `current`, and the folder is fsynced; only then does [`SnapshotFiles::save`]
//! return, and only then does openraft learn the snapshot exists (and may purge). A
//! crash before the rename leaves the previous `current` in place; after it, the new
//! one. A `current` that fails its checksum is corruption and refuses to load.
//!
//! Each step is reported to an optional [`Journal`], so a test can check the order of
//! writes, syncs and purges without strace.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"RTFYSNAP";
/// Header: magic, payload length, checksum.
const HEADER_BYTES: usize = 8 + 8 + 4;

/// One durability-relevant step, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurabilityEvent {
    /// A snapshot's bytes were written to a file (not yet synced).
    Wrote(PathBuf),
    /// A file was fsynced.
    SyncedFile(PathBuf),
    /// A file was renamed into place.
    Renamed {
        /// The temporary name.
        from: PathBuf,
        /// The final name.
        to: PathBuf,
    },
    /// A folder was fsynced (the rename is durable).
    SyncedDir(PathBuf),
    /// A snapshot covering the log up to this index is durable.
    SnapshotDurable(u64),
    /// The log was told to purge entries up to this index.
    Purged(u64),
}

/// Where durability events go: a test's record of what reached the disk, in order.
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<DurabilityEvent>>>);

impl Journal {
    /// Records an event.
    pub fn note(&self, e: DurabilityEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<DurabilityEvent> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a snapshot file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Filesystem trouble (ENOSPC included: the previous snapshot stays in place).
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The file is not a whole snapshot.
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, &'static str),
}

/// The snapshot folder.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// `<data dir>/snapshot`.
    dir: PathBuf,
    /// Test hook.
    journal: Option<Journal>,
    /// One save at a time: openraft may build a snapshot while it installs one.
    saving: Arc<Mutex<u64>>,
    /// One past the last log index the durable snapshot covers (0: no snapshot). The
    /// log store reads it before it purges (see `LogStore::purge`).
    durable_upto: Arc<AtomicU64>,
}

impl SnapshotFiles {
    /// Opens (creating) the folder `dir`.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn open(dir: &Path, journal: Option<Journal>) -> Result<Self, SnapshotFileError> {
        std::fs::create_dir_all(dir).map_err(|e| SnapshotFileError::Io(dir.to_path_buf(), e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            journal,
            saving: Arc::new(Mutex::new(0)),
            durable_upto: Arc::new(AtomicU64::new(0)),
        })
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn note(&self, e: DurabilityEvent) {
        if let Some(j) = &self.journal {
            j.note(e);
        }
    }

    /// The journal, if any (shared with the log store's purge).
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Writes `payload` as the current snapshot, durably: temp file, fsync, rename,
    /// folder fsync. `covers` is the last log index it replaces, for the journal.
    /// Blocking: call it from a blocking thread.
    ///
    /// # Errors
    /// Any I/O failure; the previous snapshot is then still the current one.
    pub fn save(&self, payload: &[u8], covers: u64) -> Result<(), SnapshotFileError> {
        // Serialised, so two saves never write the temporary file at once.
        let mut saves = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        *saves += 1;
        let tmp = self.dir.join("current.tmp");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| SnapshotFileError::Io(p, e)
        };
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        f.write_all(&header).map_err(io(&tmp))?;
        f.write_all(payload).map_err(io(&tmp))?;
        self.note(DurabilityEvent::Wrote(tmp.clone()));
        f.sync_all().map_err(io(&tmp))?;
        self.note(DurabilityEvent::SyncedFile(tmp.clone()));
        drop(f);
        let current = self.current();
        std::fs::rename(&tmp, &current).map_err(io(&current))?;
        self.note(DurabilityEvent::Renamed {
            from: tmp,
            to: current,
        });
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.note(DurabilityEvent::SyncedDir(self.dir.clone()));
        self.note(DurabilityEvent::SnapshotDurable(covers));
        self.mark_durable(covers);
        Ok(())
    }

    /// Records that the snapshot on disk covers the log up to `index` (after a save,
    /// or after the one found at start was loaded).
    pub fn mark_durable(&self, index: u64) {
        self.durable_upto
            .fetch_max(index.saturating_add(1), Ordering::AcqRel);
    }

    /// A handle on one past the last log index the durable snapshot covers (0: none).
    pub fn durable_upto(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.durable_upto)
    }

    /// The current snapshot's payload, if there is one.
    ///
    /// # Errors
    /// I/O failures, or [`SnapshotFileError::Corrupt`] when the file is not whole.
    pub fn load(&self) -> Result<Option<Vec<u8>>, SnapshotFileError> {
        let path = self.current();
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SnapshotFileError::Io(path, e)),
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| SnapshotFileError::Io(path.clone(), e))?;
        let corrupt = |why| SnapshotFileError::Corrupt(path.clone(), why);
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err(corrupt("no snapshot header"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..16]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[16..20]);
        let payload = bytes.split_off(HEADER_BYTES);
        if payload.len() as u64 != u64::from_le_bytes(len) {
            return Err(corrupt("length does not match"));
        }
        if crc32fast::hash(&payload) != u32::from_le_bytes(crc) {
            return Err(corrupt("checksum does not match"));
        }
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_is_synced_before_it_counts_and_survives_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let journal = Journal::default();
        let files = SnapshotFiles::open(&dir.path().join("snapshot"), Some(journal.clone()))?;
        assert_eq!(files.load()?, None);
        let big = vec![7u8; 5 * 1024 * 1024];
        files.save(&big, 42)?;
        let events = journal.events();
        assert!(matches!(events[0], DurabilityEvent::Wrote(_)));
        assert!(matches!(events[1], DurabilityEvent::SyncedFile(_)));
        assert!(matches!(events[2], DurabilityEvent::Renamed { .. }));
        assert!(matches!(events[3], DurabilityEvent::SyncedDir(_)));
        assert_eq!(events[4], DurabilityEvent::SnapshotDurable(42));
        let again = SnapshotFiles::open(&dir.path().join("snapshot"), None)?;
        assert_eq!(again.load()?.as_deref(), Some(&big[..]));
        Ok(())
    }

    #[test]
    fn a_torn_or_flipped_snapshot_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = SnapshotFiles::open(dir.path(), None)?;
        files.save(b"hello snapshot", 1)?;
        let path = dir.path().join("current");
        let mut bytes = std::fs::read(&path)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes)?;
        assert!(matches!(files.load(), Err(SnapshotFileError::Corrupt(..))));
        bytes.truncate(last);
        std::fs::write(&path, &bytes)?;
        assert!(matches!(files.load(), Err(SnapshotFileError::Corrupt(..))));
        Ok(())
    }
}
