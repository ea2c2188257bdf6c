//! Storage pieces for a resource kept in [`crate::durable::DurableSled`] (the Kafka
//! adapter's stage, and the demo resources of `ratify-devkit`): the encoding of
//! finished-branch outcomes (commit records and rollback tombstones), the listing of
//! prepared branches, and error conversion.
//!
//! Every such resource keys its `prepared` and `outcomes` trees by the rendered xid.

use std::fmt::Display;

use crate::durable::DurableSled;
use crate::resource::ResourceError;
use crate::xid::Xid;

/// How a branch finished, as remembered in an `outcomes` tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Committed (two-phase or one-phase).
    Committed,
    /// Rolled back; also the tombstone that refuses a late prepare.
    RolledBack,
    /// Voted READ_ONLY: nothing to commit or undo. Kept so a retried prepare votes
    /// READ_ONLY again and later work for the xid is refused; a commit of it answers
    /// committed and a rollback rolled back, neither a heuristic.
    ReadOnly,
}

impl Finished {
    /// One byte per record: the encoding is tiny and stable.
    pub fn encode(self) -> &'static [u8] {
        match self {
            Self::Committed => b"C",
            Self::RolledBack => b"R",
            Self::ReadOnly => b"O",
        }
    }

    /// Reads a record [`Finished::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            b"C" => Some(Self::Committed),
            b"R" => Some(Self::RolledBack),
            b"O" => Some(Self::ReadOnly),
            _ => None,
        }
    }
}

/// A storage failure: likely transient (disk full, I/O error), so retry later.
pub fn unavailable(e: impl Display) -> ResourceError {
    ResourceError::Unavailable(format!("storage: {e}"))
}

/// Reads how `xid` finished, if it did.
pub fn read_outcome(tree: &sled::Tree, xid: &Xid) -> Result<Option<Finished>, ResourceError> {
    match tree.get(xid.render()).map_err(unavailable)? {
        None => Ok(None),
        Some(v) => Finished::decode(&v)
            .map(Some)
            .ok_or_else(|| ResourceError::Failed(format!("corrupt outcome record for {xid}"))),
    }
}

/// Records how `xid` finished (outside a multi-tree transaction).
pub fn write_outcome(tree: &sled::Tree, xid: &Xid, how: Finished) -> Result<(), ResourceError> {
    tree.insert(xid.render(), how.encode())
        .map(drop)
        .map_err(unavailable)
}

/// Lists the xids keyed in a `prepared` tree.
pub fn list_prepared(tree: &sled::Tree) -> Result<Vec<Xid>, ResourceError> {
    tree.iter()
        .keys()
        .map(|k| {
            let k = k.map_err(unavailable)?;
            std::str::from_utf8(&k)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    ResourceError::Failed(format!(
                        "corrupt prepared key {:?}",
                        String::from_utf8_lossy(&k)
                    ))
                })
        })
        .collect()
}

/// Waits until everything written so far is durable.
pub async fn sync(durable: &DurableSled) -> Result<(), ResourceError> {
    durable.sync().await.map_err(unavailable)
}

/// Maps the result of a multi-tree sled transaction whose aborts carry a
/// [`ResourceError`].
pub fn tx_result<T>(
    r: sled::transaction::TransactionResult<T, ResourceError>,
) -> Result<T, ResourceError> {
    r.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => unavailable(e),
    })
}
