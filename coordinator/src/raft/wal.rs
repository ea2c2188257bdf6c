//! The Raft log's files: an append-only, checksummed record stream in numbered
//! segments, written and fdatasynced by one thread in group-commit rounds.
//!
//! # Why not sled
//! sled 0.34's flush hands buffers to its own IO threads and ends in
//! `sync_file_range`; followed by the fdatasync that durability needs, one round cost
//! about twice a plain append + fdatasync here and most of the node's context
//! switches. A log is the one structure that needs nothing but appends.
//!
//! # Format
//! Folder `wal/`, files `seg-<seq:020>.log`. A file is a sequence of records
//! `[len: u32 LE][crc32 of payload: u32 LE][payload]`, payload = [`codec`] encoding of
//! a [`Record`]. Records are replayed in file order, segment after segment; every
//! record only ever overrides what came before it.
//!
//! # Crash safety
//! A record is acknowledged only after the fdatasync of the round that wrote it. A
//! crash can leave a torn record at the end of the last segment only (writes are
//! sequential), and replay cuts the file there. A bad record anywhere else is
//! corruption and refuses to open.
//!
//! # A failed write or sync is final (docs/design.md, rule 13)
//! After a failed fdatasync the kernel may have dropped the dirty pages and marked
//! them clean (PostgreSQL's 2018 "fsyncgate"): a second fdatasync would succeed
//! without writing them. So the first failed write or sync answers every waiting
//! caller with the error and stops the writer; every later append fails, nothing
//! written since the last good sync is ever acknowledged, and the node stops (the
//! server exits when openraft reports the storage error). ENOSPC is the same, with
//! a message that says so: free space and start the node again. Replay drops the
//! file's cached pages first (`POSIX_FADV_DONTNEED`), so what it reads after such a
//! failure is what is on the disk, and a tail that never got there is cut as torn.
//! Fail points `wal.write` and `wal.sync` (`error:EIO`, `error:ENOSPC`) inject both.
//!
//! A new segment starts with the state records that older segments might still hold
//! (vote, purge point, committed hint), so a segment whose entries are all purged can
//! be deleted without losing anything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use ratify_common::group;
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode, CodecError};
use crate::types::typ::{Entry, LogId, Vote};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Largest record accepted on replay; anything larger is a torn or corrupt length.
const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;

/// One change to the log's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Record {
    /// A log entry (replaces any entry with the same index).
    Entry(Entry),
    /// Entries at or after this index are gone.
    Truncate {
        /// First removed index.
        since: u64,
    },
    /// Entries up to this id are gone (covered by a snapshot).
    Purge {
        /// Last purged log id.
        upto: LogId,
    },
    /// The node's vote.
    Vote(Vote),
    /// Hint: the last committed log id known to this node.
    Committed(Option<LogId>),
}

/// Why the log files could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Filesystem trouble.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A record that is not the torn tail of the last segment is unreadable.
    #[error("{path} is corrupt at byte {offset}: {why}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// A record could not be encoded.
    #[error("encoding: {0}")]
    Codec(#[from] CodecError),
    /// The writer thread is gone (the node is shutting down, or an earlier write failed).
    #[error("the log writer has stopped")]
    Stopped,
    /// A whole record (its checksum verifies) that this version cannot read: written
    /// by another version of Ratify. Never cut as a torn tail.
    #[error(
        "{path} holds a record at byte {offset} that this version cannot read ({why}); it was \
         written by another version of Ratify. Start the version that wrote it, let every \
         transaction complete, and move the node to a fresh data folder"
    )]
    Unsupported {
        /// The segment.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What the decoder said.
        why: String,
    },
}

/// What a completed round reports to a waiting caller.
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Work for the writer thread.
enum Op {
    /// Append these bytes; when `done` is set, fdatasync before calling it.
    Write { bytes: Vec<u8>, done: Option<Done> },
    /// Close the current segment (synced) and continue in segment `seq`, starting
    /// with `header`.
    Rotate { seq: u64, header: Vec<u8> },
    /// Delete these (closed) segments.
    Delete { seqs: Vec<u64> },
}

/// Frames a record.
///
/// # Errors
/// [`WalError::Codec`] when the record cannot be encoded.
pub fn frame(record: &Record) -> Result<Vec<u8>, WalError> {
    let payload = encode(record)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:020}.log"))
}

/// The segments in `dir`, by sequence number.
fn segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let io = |e| WalError::Io(dir.to_path_buf(), e);
    let mut seqs = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io)? {
        let name = item.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// What [`replay`] found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Every record in order, with the segment it came from.
    pub records: Vec<(u64, Record)>,
    /// The segments on disk, in order.
    pub segments: Vec<u64>,
}

/// Reads every record of the log in `dir`, cutting a torn tail off the last segment.
///
/// # Errors
/// [`WalError::Corrupt`] for a bad record that is not a torn tail; I/O errors.
pub fn replay(dir: &Path) -> Result<Replayed, WalError> {
    std::fs::create_dir_all(dir).map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
    let seqs = segments(dir)?;
    let mut out = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| {
                drop_cached_pages(&f);
                f.read_to_end(&mut bytes)
            })
            .map_err(|e| WalError::Io(path.clone(), e))?;
        let mut at = 0usize;
        while at < bytes.len() {
            match parse_record(&bytes[at..]) {
                Ok((record, used)) => {
                    out.push((seq, record));
                    at += used;
                }
                // A record whose checksum verifies is whole: failing to decode it is
                // not a torn write, and cutting it would erase the vote and entries.
                Err(Bad::Undecodable(why)) => {
                    return Err(WalError::Unsupported {
                        path,
                        offset: at as u64,
                        why,
                    })
                }
                Err(Bad::Torn(why)) if i + 1 == seqs.len() => {
                    // Torn tail of the segment being written at the crash: never
                    // acknowledged, so cut it off.
                    tracing::warn!(path = %path.display(), offset = at, %why, "cutting a torn log tail");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| WalError::Io(path.clone(), e))?;
                    f.set_len(at as u64)
                        .and_then(|_| f.sync_data())
                        .map_err(|e| WalError::Io(path.clone(), e))?;
                    break;
                }
                Err(Bad::Torn(why)) => {
                    return Err(WalError::Corrupt {
                        path,
                        offset: at as u64,
                        why,
                    })
                }
            }
        }
    }
    Ok(Replayed {
        records: out,
        segments: seqs,
    })
}

/// Why a record could not be read.
enum Bad {
    /// Incomplete or damaged bytes (a torn write at the tail, or corruption).
    Torn(String),
    /// Whole bytes (checksum verified) that do not decode.
    Undecodable(String),
}

fn parse_record(bytes: &[u8]) -> Result<(Record, usize), Bad> {
    if bytes.len() < 8 {
        return Err(Bad::Torn("short header".into()));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_RECORD_BYTES {
        return Err(Bad::Torn(format!("implausible length {len}")));
    }
    if len == 0 {
        // A real record is never empty (it has a version byte); zeros are what a
        // power cut leaves at the end of a file (and crc32 of nothing is 0).
        return Err(Bad::Torn("zero-length record".into()));
    }
    let end = 8 + len as usize;
    let payload = bytes
        .get(8..end)
        .ok_or_else(|| Bad::Torn("short payload".into()))?;
    if crc32fast::hash(payload) != crc {
        return Err(Bad::Torn("checksum mismatch".into()));
    }
    let record = decode(payload).map_err(|e| Bad::Undecodable(e.to_string()))?;
    Ok((record, end))
}

/// The handle to the writer thread. Cloning shares the thread.
#[derive(Clone, Debug)]
pub struct Writer {
    /// Work queue; the thread ends when every handle is dropped.
    ops: mpsc::Sender<Op>,
    /// Completed fdatasync rounds.
    syncs: Arc<AtomicU64>,
    /// Faults injected by unit tests.
    #[cfg_attr(not(test), allow(dead_code))]
    faults: Arc<Faults>,
}

/// I/O errors a test makes the writer meet: an OS error code, 0 for none.
#[derive(Debug, Default)]
struct Faults {
    /// Fails the next writes.
    write: std::sync::atomic::AtomicI32,
    /// Fails the next syncs.
    sync: std::sync::atomic::AtomicI32,
}

impl Faults {
    /// The error to fail this write (`sync` false) or sync with, if any.
    fn check(&self, sync: bool) -> Option<std::io::Error> {
        let (injected, point) = if sync {
            (&self.sync, "wal.sync")
        } else {
            (&self.write, "wal.write")
        };
        match injected.load(Ordering::Acquire) {
            0 => ratify_common::failpoint::io_error(point),
            code => Some(std::io::Error::from_raw_os_error(code)),
        }
    }
}

/// Evicts `f`'s clean cached pages so that reads come from the disk. After a failed
/// writeback Linux keeps the pages cached but marks them clean: without this, replay
/// would read data that never reached the disk.
fn drop_cached_pages(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; a failure only means
    // the cache was not dropped, which is the status quo.
    let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Describes a failed write or sync of the log.
fn io_failure(what: &str, path: &Path, e: &std::io::Error) -> String {
    let hint = if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        "no space left for the Raft log: free space on this node's disk, then start it again"
    } else {
        "the disk may have lost it: nothing written since the last good sync is acknowledged, \
         and the node stops rather than retry (check the disk, then start it again)"
    };
    format!("{what} of {} failed: {e}; {hint}", path.display())
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write { bytes, done } => {
                write!(f, "Write({} bytes, wait={})", bytes.len(), done.is_some())
            }
            Op::Rotate { seq, .. } => write!(f, "Rotate({seq})"),
            Op::Delete { seqs } => write!(f, "Delete({seqs:?})"),
        }
    }
}

impl Writer {
    /// Starts the writer on segment `seq` of `dir` (appending to it if it exists).
    ///
    /// # Errors
    /// When the segment cannot be opened or the thread cannot start.
    pub fn start(dir: &Path, seq: u64) -> Result<Self, WalError> {
        let path = segment_path(dir, seq);
        let file = open_segment(dir, &path)?;
        let (ops, rx) = mpsc::channel();
        let syncs = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(Faults::default());
        let (thread_syncs, thread_faults) = (Arc::clone(&syncs), Arc::clone(&faults));
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("ratify-wal".into())
            .spawn(move || write_loop(&dir, file, path, &rx, &thread_syncs, &thread_faults))
            .map_err(|e| WalError::Io(PathBuf::from("ratify-wal thread"), e))?;
        Ok(Self { ops, syncs, faults })
    }

    /// Makes later writes (`sync` false) or syncs fail with OS error `code` (tests).
    #[cfg(test)]
    fn inject(&self, sync: bool, code: i32) {
        let f = if sync {
            &self.faults.sync
        } else {
            &self.faults.write
        };
        f.store(code, Ordering::Release);
    }

    /// Queues bytes; `done` (if any) runs after a fdatasync that covers them.
    ///
    /// # Errors
    /// [`WalError::Stopped`] when the writer is gone (`done` is then not called).
    pub fn write(&self, bytes: Vec<u8>, done: Option<Done>) -> Result<(), WalError> {
        self.ops
            .send(Op::Write { bytes, done })
            .map_err(|_| WalError::Stopped)
    }

    /// Continues in a new segment `seq` that starts with `header`.
    ///
    /// # Errors
    /// [`WalError::Stopped`].
    pub fn rotate(&self, seq: u64, header: Vec<u8>) -> Result<(), WalError> {
        self.ops
            .send(Op::Rotate { seq, header })
            .map_err(|_| WalError::Stopped)
    }

    /// Deletes closed segments (after everything queued before is written).
    ///
    /// # Errors
    /// [`WalError::Stopped`].
    pub fn delete(&self, seqs: Vec<u64>) -> Result<(), WalError> {
        self.ops
            .send(Op::Delete { seqs })
            .map_err(|_| WalError::Stopped)
    }

    /// Completed fdatasync rounds.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }
}

fn open_segment(dir: &Path, path: &Path) -> Result<File, WalError> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| WalError::Io(path.to_path_buf(), e))?;
    if !existed {
        // The new file's name must survive a crash too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
    }
    Ok(file)
}

/// The writer thread: each round writes every queued record in one go, fdatasyncs
/// when anyone waits, then answers them. A failed write or sync stops the thread:
/// what follows could not be trusted to be durable.
fn write_loop(
    dir: &Path,
    mut file: File,
    mut path: PathBuf,
    rx: &mpsc::Receiver<Op>,
    syncs: &AtomicU64,
    faults: &Faults,
) {
    let write = |file: &mut File, path: &Path, buf: &[u8]| match faults.check(false) {
        Some(e) => Err(io_failure("write", path, &e)),
        None => file
            .write_all(buf)
            .map_err(|e| io_failure("write", path, &e)),
    };
    let sync = |file: &File, path: &Path| match faults.check(true) {
        Some(e) => Err(io_failure("fdatasync", path, &e)),
        None => file
            .sync_data()
            .map_err(|e| io_failure("fdatasync", path, &e)),
    };
    let mut queue = rx;
    while let Ok(first) = queue.recv() {
        // Everything queued: one write and (when anyone waits) one fdatasync.
        let batch = group::round(first, &mut queue, |_| true);
        let mut buf = Vec::new();
        let mut waiting: Vec<Done> = Vec::new();
        let mut result: Result<(), String> = Ok(());
        for op in batch {
            match op {
                Op::Write { bytes, done } => {
                    buf.extend_from_slice(&bytes);
                    waiting.extend(done);
                }
                Op::Rotate { seq, header } => {
                    result = result
                        .and_then(|()| write(&mut file, &path, &buf))
                        .and_then(|()| sync(&file, &path));
                    buf.clear();
                    buf.extend_from_slice(&header);
                    if result.is_ok() {
                        path = segment_path(dir, seq);
                        match open_segment(dir, &path) {
                            Ok(f) => file = f,
                            Err(e) => result = Err(e.to_string()),
                        }
                    }
                }
                Op::Delete { seqs } => {
                    for seq in seqs {
                        let old = segment_path(dir, seq);
                        if let Err(e) = std::fs::remove_file(&old) {
                            tracing::warn!(path = %old.display(), error = %e, "could not delete a purged log segment");
                        }
                    }
                }
            }
        }
        if result.is_ok() && !buf.is_empty() {
            result = write(&mut file, &path, &buf);
        }
        if result.is_ok() && !waiting.is_empty() {
            result = sync(&file, &path);
            if result.is_ok() {
                syncs.fetch_add(1, Ordering::AcqRel);
            }
        }
        let failed = result.is_err();
        for done in waiting {
            done(result.clone());
        }
        if failed {
            tracing::error!(error = ?result, "the Raft log writer failed; it stops, and so does the node");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64) -> Record {
        Record::Vote(Vote::new(term, 1))
    }

    impl Writer {
        /// Queues bytes and waits until they are durable.
        async fn write_synced(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.write(
                bytes,
                Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })),
            )?;
            rx.await?.map_err(anyhow::Error::msg)
        }
    }

    /// A failed fdatasync (or write) is never acknowledged, and it is final: nothing
    /// after it is written or acknowledged either, even once the disk is fine again.
    #[tokio::test]
    async fn a_failed_sync_is_not_acknowledged_and_stops_the_writer() -> anyhow::Result<()> {
        for (sync, code) in [(true, libc::EIO), (false, libc::ENOSPC)] {
            let dir = tempfile::tempdir()?;
            let w = Writer::start(dir.path(), 1)?;
            w.write_synced(frame(&vote(1))?).await?;
            w.inject(sync, code);
            let failed = w.write_synced(frame(&vote(2))?).await;
            let msg = format!("{:#}", failed.expect_err("a failed sync was acknowledged"));
            if code == libc::ENOSPC {
                assert!(msg.contains("no space left"), "{msg}");
            } else {
                assert!(msg.contains("fdatasync") && msg.contains("stops"), "{msg}");
            }
            w.inject(sync, 0);
            assert!(
                w.write_synced(frame(&vote(3))?).await.is_err(),
                "the writer went on after a failed {}",
                if sync { "sync" } else { "write" }
            );
            drop(w);
            // Only what was acknowledged is certain; the failed round may or may not
            // have reached the file, and nothing after it did.
            let votes: Vec<_> = replay(dir.path())?
                .records
                .into_iter()
                .filter_map(|(_, r)| match r {
                    Record::Vote(v) => Some(v.leader_id().get_term()),
                    _ => None,
                })
                .collect();
            assert!(votes.starts_with(&[1]) && !votes.contains(&3), "{votes:?}");
        }
        Ok(())
    }

    /// Zeros at the end of the last segment (a power cut on many filesystems) are a
    /// torn tail, cut; not a record of another version.
    #[tokio::test]
    async fn a_zero_filled_tail_is_cut_as_torn() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let w = Writer::start(dir.path(), 1)?;
        w.write_synced(frame(&vote(1))?).await?;
        drop(w);
        let path = segment_path(dir.path(), 1);
        let good = std::fs::metadata(&path)?.len();
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(&[0u8; 16])?;
        drop(f);
        let replayed = replay(dir.path())?;
        assert_eq!(replayed.records.len(), 1);
        assert_eq!(std::fs::metadata(&path)?.len(), good);
        Ok(())
    }

    /// A whole record of another encoding version (an older Ratify's log) is refused,
    /// never cut as a torn tail: cutting it erased the vote and every entry.
    #[tokio::test]
    async fn a_record_of_another_encoding_version_is_refused_not_cut() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let w = Writer::start(dir.path(), 1)?;
        w.write_synced(frame(&vote(1))?).await?;
        let mut payload = encode(&vote(2))?;
        payload[0] = 2; // the version byte of the previous encoding
        let mut raw = (payload.len() as u32).to_le_bytes().to_vec();
        raw.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        raw.extend_from_slice(&payload);
        w.write_synced(raw).await?;
        drop(w);
        let path = segment_path(dir.path(), 1);
        let before = std::fs::metadata(&path)?.len();
        let r = replay(dir.path());
        assert!(matches!(r, Err(WalError::Unsupported { .. })), "{r:?}");
        assert_eq!(std::fs::metadata(&path)?.len(), before, "the log was cut");
        Ok(())
    }

    #[tokio::test]
    async fn records_survive_reopen_and_a_torn_tail_is_cut() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let w = Writer::start(dir.path(), 1)?;
        for t in 1..=3 {
            w.write_synced(frame(&vote(t))?).await?;
        }
        drop(w);
        // A torn record at the end: half a header.
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(&[9, 0, 0])?;
        drop(f);
        let r = replay(dir.path())?;
        assert_eq!(r.segments, vec![1]);
        assert_eq!(r.records.len(), 3);
        assert!(matches!(&r.records[2].1, Record::Vote(v) if v.leader_id().term == 3));
        let again = replay(dir.path())?;
        assert_eq!(again.records.len(), 3, "the torn tail is cut off for good");
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_record_in_a_closed_segment_is_corruption() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let w = Writer::start(dir.path(), 1)?;
        w.write_synced(frame(&vote(1))?).await?;
        w.rotate(2, frame(&vote(1))?)?;
        w.write_synced(frame(&vote(2))?).await?;
        drop(w);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes)?;
        assert!(matches!(replay(dir.path()), Err(WalError::Corrupt { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn rotation_and_deletion() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let w = Writer::start(dir.path(), 1)?;
        w.write_synced(frame(&vote(1))?).await?;
        w.rotate(2, frame(&vote(1))?)?;
        w.write_synced(frame(&vote(2))?).await?;
        w.delete(vec![1])?;
        w.write_synced(frame(&vote(3))?).await?;
        drop(w);
        let r = replay(dir.path())?;
        assert_eq!(r.segments, vec![2]);
        assert_eq!(r.records.len(), 3, "header + two votes");
        Ok(())
    }

    mod hostile {
        //! Hostile bytes at the record reader (issue 16): a torn, flipped or foreign
        //! record is refused as torn, and nothing panics. Longer: `PROPTEST_CASES=20000
        //! cargo test -p ratify-coordinator --lib hostile`.
        use super::*;
        use proptest::prelude::*;

        fn record() -> impl Strategy<Value = Record> {
            prop_oneof![
                (0u64..1000, 1u64..10).prop_map(|(t, n)| Record::Vote(Vote::new(t, n))),
                (0u64..1_000_000).prop_map(|since| Record::Truncate { since }),
            ]
        }

        proptest! {
            #[test]
            fn a_framed_record_reads_back_and_any_cut_or_flip_is_torn(
                rec in record(),
                cut in 0usize..64,
                flip in 0usize..64,
                bit in 0u8..8,
            ) {
                let bytes = frame(&rec).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (back, used) = parse_record(&bytes)
                    .map_err(|_| TestCaseError::fail("a framed record did not read back"))?;
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(frame(&back).ok(), Some(bytes.clone()));
                let cut = cut % bytes.len();
                prop_assert!(matches!(parse_record(&bytes[..cut]), Err(Bad::Torn(_))));
                let mut flipped = bytes.clone();
                let at = flip % flipped.len();
                flipped[at] ^= 1 << bit;
                // A flipped length may still frame a shorter prefix, whose checksum
                // then fails; a flipped payload or checksum fails the checksum.
                prop_assert!(matches!(parse_record(&flipped), Err(Bad::Torn(_))));
            }

            #[test]
            fn any_bytes_are_refused_or_read_without_panicking(
                bytes in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                if let Ok((_, used)) = parse_record(&bytes) {
                    prop_assert!(used <= bytes.len());
                }
            }
        }
    }
}
