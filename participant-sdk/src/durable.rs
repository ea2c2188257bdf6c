//! A sled database whose writes are made durable with a real `fdatasync`, group-committed.
//!
//! sled 0.34.7's `flush` ends in `sync_file_range`, which does not survive power loss
//! (upstream sled issue #1452). [`DurableSled`] therefore follows every flush with
//! `fdatasync` on sled's data file. Syncs are group-committed: one background thread
//! runs flush + fdatasync rounds, and every request queued before a round starts is
//! acknowledged by that round, so N concurrent writers pay for about one sync.
//!
//! A failed flush or fdatasync is final: the kernel may have dropped the dirty pages
//! and marked them clean (PostgreSQL's "fsyncgate"), so a later sync could succeed
//! without writing them. After the first failure every sync of this handle fails
//! (nothing written since the last good sync is reported durable, so no YES vote is
//! sent for it); reopen the store (restart the participant) once the disk is fine.
//! ENOSPC is reported as such. Fail point `durable.sync` (`error:EIO`,
//! `error:ENOSPC`) injects a failure.
//!
//! Values larger than [`MAX_VALUE_BYTES`] must not be written: sled stores values above
//! a quarter of its segment size as separate "blob" files that it never syncs. The
//! segment size is raised to 8 MiB so that the blob threshold (2 MiB) is far above
//! anything Ratify stores.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Largest value a caller may store in a [`DurableSled`] tree and still have it covered
/// by [`DurableSled::sync`].
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// sled's segment size; values over a quarter of it become unsynced blob files.
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// A callback run once the data written before the sync request is durable.
pub type SyncCallback = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// Errors opening a [`DurableSled`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// sled refused to open the folder (corrupt, locked by another process, ...).
    #[error("cannot open sled database at {path}: {source}")]
    Open {
        /// The folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// sled's data file could not be opened for syncing.
    #[error("cannot open sled data file {path} for fdatasync: {source}")]
    DataFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A flush or fdatasync failed; the data may not be durable.
    #[error("sync failed: {0}")]
    Sync(#[source] io::Error),
}

/// A sled database plus a group-commit syncer that really reaches the disk.
///
/// Cloning is cheap and shares the database and the syncer.
#[derive(Clone)]
pub struct DurableSled {
    /// The database itself; callers write through it, then call [`DurableSled::sync`].
    db: sled::Db,
    /// The syncer thread and its request queue, shared by every clone.
    syncer: Arc<Syncer>,
    /// Completed flush + fdatasync rounds, for observability and tests.
    syncs: Arc<AtomicU64>,
    /// An OS error code the next syncs fail with (tests), 0 for none.
    #[cfg_attr(not(test), allow(dead_code))]
    fault: Arc<std::sync::atomic::AtomicI32>,
}

/// Owns the syncer thread. Dropping the last [`DurableSled`] clone closes the queue
/// and joins the thread, so the thread's database handle is gone (and sled's file
/// lock released) when the drop returns: the folder can be reopened at once, as a
/// restarted participant in the same process does.
struct Syncer {
    /// Queue of sync requests served by the syncer thread; `None` only while dropping.
    requests: Option<mpsc::Sender<SyncCallback>>,
    /// The syncer thread, joined on drop.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once queued rounds are done.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            // A callback owning the last clone drops it on the syncer thread itself;
            // joining there would deadlock, and the thread is about to end anyway.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl std::fmt::Debug for DurableSled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSled")
            .field("syncs", &self.sync_count())
            .finish_non_exhaustive()
    }
}

impl DurableSled {
    /// Opens (or creates) the database in `path` and starts its syncer thread.
    ///
    /// # Errors
    /// [`DurableError::Open`] when sled cannot open the folder (for example another
    /// process holds it), [`DurableError::DataFile`] when its data file cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DurableError> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .segment_size(SEGMENT_SIZE)
            .open()
            .map_err(|source| DurableError::Open {
                path: path.clone(),
                source,
            })?;
        // sled 0.34 keeps everything but blobs in `<path>/db`. fdatasync through a
        // read-only descriptor flushes the file's dirty pages like any other.
        let data_path = path.join("db");
        let data_file = File::open(&data_path).map_err(|source| DurableError::DataFile {
            path: data_path,
            source,
        })?;
        let (requests, rx) = mpsc::channel::<SyncCallback>();
        let syncs = Arc::new(AtomicU64::new(0));
        let thread_db = db.clone();
        let thread_syncs = Arc::clone(&syncs);
        let fault = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let thread_fault = Arc::clone(&fault);
        let thread = std::thread::Builder::new()
            .name("ratify-fsync".into())
            .spawn(move || sync_loop(&thread_db, &data_file, &rx, &thread_syncs, &thread_fault))
            .map_err(DurableError::Sync)?;
        Ok(Self {
            db,
            syncer: Arc::new(Syncer {
                requests: Some(requests),
                thread: Some(thread),
            }),
            syncs,
            fault,
        })
    }

    /// Makes later syncs fail with OS error `code` (0: none), as a failing disk would.
    #[cfg(test)]
    fn inject_sync_error(&self, code: i32) {
        self.fault.store(code, Ordering::Release);
    }

    /// The underlying database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Number of completed flush + fdatasync rounds since open.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    /// Asks for everything written so far to be made durable and runs `callback` (on
    /// the syncer thread) once it is, or with the error if the sync failed.
    pub fn request_sync(&self, callback: SyncCallback) {
        let sent = match &self.syncer.requests {
            Some(requests) => requests.send(callback).map_err(|mpsc::SendError(cb)| cb),
            None => Err(callback),
        };
        if let Err(cb) = sent {
            cb(Err(io::Error::other("syncer thread has stopped")));
        }
    }

    /// Waits until everything written before the call is durable (flushed and
    /// fdatasynced). Concurrent callers share sync rounds.
    ///
    /// # Errors
    /// [`DurableError::Sync`] when the flush or fdatasync failed.
    pub async fn sync(&self) -> Result<(), DurableError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request_sync(Box::new(move |res| {
            let _ = tx.send(res);
        }));
        match rx.await {
            Ok(res) => res.map_err(DurableError::Sync),
            Err(_) => Err(DurableError::Sync(io::Error::other(
                "syncer dropped the request",
            ))),
        }
    }

    /// Blocking form of [`DurableSled::sync`], for synchronous contexts.
    ///
    /// # Errors
    /// [`DurableError::Sync`] when the flush or fdatasync failed.
    pub fn sync_blocking(&self) -> Result<(), DurableError> {
        let (tx, rx) = mpsc::channel();
        self.request_sync(Box::new(move |res| {
            let _ = tx.send(res);
        }));
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("syncer dropped the request")))
            .map_err(DurableError::Sync)
    }
}

/// The syncer thread: each round takes every queued request, flushes sled, fdatasyncs
/// the data file and acknowledges them all. Ends when every sender is gone.
fn sync_loop(
    db: &sled::Db,
    data_file: &File,
    rx: &mpsc::Receiver<SyncCallback>,
    syncs: &AtomicU64,
    fault: &std::sync::atomic::AtomicI32,
) {
    // Set by the first failed round; every later round fails with it (module docs).
    let mut failed: Option<String> = None;
    let mut queue = rx;
    while let Ok(first) = queue.recv() {
        // Every request queued before the round starts is served by its one sync.
        let batch = crate::group::round(first, &mut queue, |_| true);
        let result = match &failed {
            Some(why) => Err(io::Error::other(format!(
                "an earlier sync of this store failed ({why}); nothing written since is \
                 durable: reopen the store once the disk is fine"
            ))),
            None => {
                let injected = match fault.load(Ordering::Acquire) {
                    0 => crate::failpoint::io_error("durable.sync"),
                    code => Some(io::Error::from_raw_os_error(code)),
                };
                let r = match injected {
                    Some(e) => Err(e),
                    None => db
                        .flush()
                        .map_err(io::Error::other)
                        .and_then(|_| data_file.sync_data()),
                };
                r.map_err(|e| {
                    let why = if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                        format!("no space left on the participant's disk: {e}")
                    } else {
                        format!("flush + fdatasync failed: {e}")
                    };
                    tracing::error!(error = %why, "durable store sync failed; every later sync fails too");
                    failed = Some(why.clone());
                    io::Error::new(e.kind(), why)
                })
            }
        };
        if result.is_ok() {
            syncs.fetch_add(1, Ordering::AcqRel);
        }
        for cb in batch {
            cb(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed sync is final: the write it covered is not reported durable, and no
    /// later sync succeeds on this handle, even once the disk is fine again.
    #[tokio::test]
    async fn a_failed_sync_is_final_until_reopen() -> anyhow::Result<()> {
        for code in [libc::EIO, libc::ENOSPC] {
            let dir = tempfile::tempdir()?;
            let d = DurableSled::open(dir.path())?;
            d.db().insert("a", "1")?;
            d.sync().await?;
            d.inject_sync_error(code);
            d.db().insert("b", "2")?;
            let err = d
                .sync()
                .await
                .expect_err("a failed sync was reported durable");
            if code == libc::ENOSPC {
                assert!(err.to_string().contains("no space left"), "{err}");
            }
            d.inject_sync_error(0);
            d.db().insert("c", "3")?;
            let again = d
                .sync()
                .await
                .expect_err("a sync after a failure succeeded");
            assert!(again.to_string().contains("earlier sync"), "{again}");
            drop(d);
            let reopened = DurableSled::open(dir.path())?;
            reopened.db().insert("d", "4")?;
            reopened.sync().await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn sync_completes_after_a_round_and_data_survives_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let d = DurableSled::open(dir.path())?;
            d.db().insert(b"k", b"v".as_slice())?;
            let before = d.sync_count();
            d.sync().await?;
            assert!(
                d.sync_count() > before,
                "sync returned before a flush+fdatasync round"
            );
        }
        let d = DurableSled::open(dir.path())?;
        assert_eq!(d.db().get(b"k")?.as_deref(), Some(b"v".as_slice()));
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_syncs_share_rounds() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = DurableSled::open(dir.path())?;
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                d.db().insert(i.to_be_bytes(), b"x".as_slice())?;
                d.sync().await?;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        assert!(d.sync_count() >= 1);
        assert!(d.sync_count() <= 64);
        Ok(())
    }

    #[test]
    fn a_second_open_of_the_same_folder_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let _first = DurableSled::open(dir.path())?;
        let second = DurableSled::open(dir.path());
        assert!(matches!(second, Err(DurableError::Open { .. })));
        Ok(())
    }
}
