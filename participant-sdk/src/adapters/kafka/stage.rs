//! What a branch publishes, and how it is kept on disk between prepare and commit.
//!
//! # Storage (sled trees, in the adapter's [`DurableSled`](crate::durable::DurableSled))
//! - `kafka.staged`: rendered xid → [`Staged`], bincode with a leading version
//!   ([`STAGE_VERSION`]): the records and consumer offsets of a prepared branch.
//! - `kafka.outcomes`: rendered xid → `C` (published), `R` (rolled back, also the
//!   tombstone that refuses a late prepare) or `O` (voted READ_ONLY: nothing to
//!   publish; a retried prepare votes READ_ONLY again).
//! - `kafka.meta`: [`RECORDED_SEQ_KEY`] → the sequence number (u64, big-endian) of the
//!   last ledger marker whose xids are recorded in `kafka.outcomes`.

use serde::{Deserialize, Serialize};

use crate::resource::ResourceError;
use crate::xid::Xid;

/// Version of the stage encoding.
pub(crate) const STAGE_VERSION: u32 = 1;

/// Key of the recorded marker sequence in the `kafka.meta` tree.
pub(crate) const RECORDED_SEQ_KEY: &[u8] = b"recorded_seq";

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` lets the producer's partitioner choose by key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value (`None` is a tombstone on compacted topics).
    pub value: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl KafkaRecord {
    /// A record for `topic` with a key and a value, no headers, partition by key.
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Approximate size on the wire and in the stage, for the branch size limit.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.topic.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>()
            + 32
    }
}

/// A consumer offset to commit with the branch (consume-process-produce): the group's
/// next position in `topic`/`partition` becomes `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOffset {
    /// Consumer group id.
    pub group: String,
    /// Consumed topic.
    pub topic: String,
    /// Consumed partition.
    pub partition: i32,
    /// The next offset to consume (last processed offset + 1).
    pub offset: i64,
}

/// The work of one branch: what prepare makes durable and commit publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Staged {
    /// Records, in the order the application added them.
    pub(crate) records: Vec<KafkaRecord>,
    /// Consumer offsets to commit.
    pub(crate) offsets: Vec<KafkaOffset>,
}

impl Staged {
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.offsets.is_empty()
    }
}

/// The stored form: a version in front so a later release can read old stages.
#[derive(Serialize, Deserialize)]
struct StoredStage {
    /// [`STAGE_VERSION`].
    v: u32,
    /// When the branch was prepared (Unix ms), for reporting how long it is in doubt.
    prepared_unix_ms: u64,
    /// The work.
    work: Staged,
}

/// Encodes a stage for the `kafka.staged` tree.
pub(crate) fn encode(work: &Staged, prepared_unix_ms: u64) -> Result<Vec<u8>, ResourceError> {
    bincode::serialize(&StoredStage {
        v: STAGE_VERSION,
        prepared_unix_ms,
        work: work.clone(),
    })
    .map_err(|e| ResourceError::Failed(format!("cannot encode stage: {e}")))
}

/// Decodes a stage read from the `kafka.staged` tree.
pub(crate) fn decode(xid: &Xid, bytes: &[u8]) -> Result<Staged, ResourceError> {
    match bincode::deserialize::<StoredStage>(bytes) {
        Ok(s) if s.v == STAGE_VERSION => Ok(s.work),
        Ok(s) => Err(ResourceError::Failed(format!(
            "stage of {xid} has unknown version {}",
            s.v
        ))),
        Err(e) => Err(ResourceError::Failed(format!(
            "corrupt stage of {xid}: {e}"
        ))),
    }
}

/// The ledger marker written in every Kafka transaction the adapter commits: which
/// xids that transaction published. Keyed by the adapter's `transactional.id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    /// Encoding version ([`STAGE_VERSION`]'s sibling; bumped independently).
    pub(crate) v: u32,
    /// Sequence of this marker among the adapter's markers (1, 2, ...).
    pub(crate) seq: u64,
    /// The branches published by this Kafka transaction.
    pub(crate) xids: Vec<Xid>,
}

/// Version of [`Marker`]'s JSON encoding.
pub(crate) const MARKER_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_round_trips_and_refuses_garbage() -> anyhow::Result<()> {
        let xid = Xid::new(format!("{:032x}", 7), "1")?;
        let work = Staged {
            records: vec![KafkaRecord::new("t", "k", "v").header("h", "x")],
            offsets: vec![KafkaOffset {
                group: "g".into(),
                topic: "in".into(),
                partition: 0,
                offset: 42,
            }],
        };
        let bytes = encode(&work, 1)?;
        assert_eq!(decode(&xid, &bytes)?, work);
        assert!(decode(&xid, b"garbage").is_err());
        let marker = Marker {
            v: MARKER_VERSION,
            seq: 3,
            xids: vec![xid.clone()],
        };
        let json = serde_json::to_string(&marker)?;
        assert_eq!(serde_json::from_str::<Marker>(&json)?, marker);
        Ok(())
    }
}

/// The adapter's trees. Writes that answer the coordinator are followed by a sync.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    /// The database and its group-committed fsync.
    pub(crate) durable: crate::durable::DurableSled,
    /// xid → stage of a prepared branch.
    pub(crate) staged: sled::Tree,
    /// xid → `C` / `R` / `O`.
    pub(crate) outcomes: sled::Tree,
    /// Adapter-wide values ([`RECORDED_SEQ_KEY`]).
    pub(crate) meta: sled::Tree,
}

impl Store {
    /// Opens the trees in an opened database.
    pub(crate) fn new(durable: crate::durable::DurableSled) -> Result<Self, sled::Error> {
        let db = durable.db();
        Ok(Self {
            staged: db.open_tree("kafka.staged")?,
            outcomes: db.open_tree("kafka.outcomes")?,
            meta: db.open_tree("kafka.meta")?,
            durable,
        })
    }

    /// The stage of `xid`, if it is prepared.
    pub(crate) fn read_staged(&self, xid: &Xid) -> Result<Option<Staged>, ResourceError> {
        self.staged
            .get(xid.render())
            .map_err(crate::branch_log::unavailable)?
            .map(|b| decode(xid, &b))
            .transpose()
    }

    /// Sequence of the last marker whose xids are recorded as published (0: none).
    pub(crate) fn recorded_seq(&self) -> Result<u64, ResourceError> {
        match self
            .meta
            .get(RECORDED_SEQ_KEY)
            .map_err(crate::branch_log::unavailable)?
        {
            None => Ok(0),
            Some(b) => <[u8; 8]>::try_from(b.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| ResourceError::Failed("corrupt recorded marker sequence".into())),
        }
    }

    /// Records, in one sled transaction, that marker `seq` published `xids`: their
    /// outcomes become `C`, their stages go. The caller syncs.
    pub(crate) fn record_published(&self, xids: &[Xid], seq: u64) -> Result<(), ResourceError> {
        use sled::transaction::Transactional;
        crate::branch_log::tx_result((&self.staged, &self.outcomes, &self.meta).transaction(
            |(staged, outcomes, meta)| {
                for xid in xids {
                    let key = xid.render();
                    staged.remove(key.as_bytes())?;
                    outcomes.insert(
                        key.as_bytes(),
                        crate::branch_log::Finished::Committed.encode(),
                    )?;
                }
                meta.insert(RECORDED_SEQ_KEY, &seq.to_be_bytes()[..])?;
                Ok(())
            },
        ))
    }
}
