//! Exactly-once publication to Apache Kafka as a branch of a Ratify transaction.
//!
//! Kafka has no prepared state that a new producer could resume (docs/design.md §7), so
//! [`KafkaResource`] builds one:
//! - **Work**: the application adds records (topic, key, value, headers) and
//!   optionally consumer offsets to commit (consume-process-produce) to a
//!   [`KafkaBranch`]; they stay in memory, so a branch whose process dies before
//!   prepare votes NO.
//! - **Prepare** writes them to a local stage (sled, fdatasynced through
//!   [`DurableSled`](crate::durable::DurableSled)) and votes YES. Nothing reaches
//!   Kafka yet, so a branch in doubt holds no Kafka transaction open and stalls no
//!   `read_committed` consumer.
//! - **Commit** publishes the stage in one Kafka transaction together with the
//!   consumer offsets (`send_offsets_to_transaction`) and a marker for the xid in a
//!   compacted ledger topic keyed by the adapter's `transactional.id`; then it records
//!   the branch as published (fsynced) and answers.
//! - **Recovery**: every (re)start of the producer calls `init_transactions`, which
//!   fences older instances with the same `transactional.id` and aborts their open
//!   transaction, then reads the ledger `read_committed` up to the end offsets taken
//!   at that moment and records every xid whose marker committed but whose outcome
//!   was not yet recorded. So an xid is never published twice, whatever the crash
//!   point (see [`publisher`] for the argument). The read waits only for transactions
//!   that were open on the ledger when it started, never for later ones, so other
//!   producers busy on a shared ledger do not hold a restart up.
//! - **Ledger topic**: created compacted if missing; an existing one must have
//!   `cleanup.policy=compact` exactly, or [`KafkaResource::open`] refuses to start
//!   ([`KafkaError::LedgerNotCompacted`]), since `delete` retention could remove the
//!   newest marker.
//!   A branch with no work votes READ_ONLY and records that, so a retried prepare
//!   votes READ_ONLY again and a rollback of it is no heuristic.
//! - **Rollback** discards the stage and leaves a tombstone. A two-phase commit that
//!   finds the tombstone answers ROLLED_BACK (a heuristic outcome for the
//!   coordinator to record); a one-phase commit of a staged branch publishes it.
//!
//! One `transactional.id` per adapter instance (and per stage folder): two live
//! instances with the same id fence each other, and only the newest publishes.
//!
//! Crash points ([`crate::failpoint`]): `kafka.after_stage` (stage fsynced, vote not
//! sent), `kafka.before_publish` (commit received, nothing published),
//! `kafka.after_produce` (records, marker and offsets delivered to the broker inside
//! the open Kafka transaction, not committed), `kafka.after_kafka_commit` (Kafka
//! transaction committed, not recorded locally nor acknowledged).
//!
//! # Layout
//! - [`stage`]: records, offsets, the on-disk stage and the ledger marker.
//! - [`publisher`]: the thread that owns the transactional producer and the ledger.

mod publisher;
mod stage;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

pub use stage::{KafkaOffset, KafkaRecord};

use self::publisher::{PublishRequest, Publisher};
use self::stage::{Staged, Store};
use crate::branch_log::{self, Finished};
use crate::durable::{DurableError, DurableSled, MAX_VALUE_BYTES};
use crate::failpoint;
use crate::resource::{CommitResult, Resource, ResourceError, RollbackResult, Vote};
use crate::xid::Xid;

/// Default ledger topic.
pub const DEFAULT_LEDGER_TOPIC: &str = "ratify.kafka.ledger";

/// Largest branch (records, headers, offsets) in bytes, approximately: a stage must
/// fit one durable sled value.
pub const MAX_BRANCH_BYTES: usize = MAX_VALUE_BYTES - 4096;

/// Settings of a [`KafkaResource`].
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// `transactional.id` of this adapter instance: stable across restarts of the
    /// same instance (it is how a restart fences its predecessor), unique across
    /// instances. Also the ledger key of its markers.
    pub transactional_id: String,
    /// Compacted topic that holds the markers (created if missing; an existing one
    /// must have `cleanup.policy=compact`).
    pub ledger_topic: String,
    /// Replication factor used when the ledger topic is created (-1: the broker's
    /// default).
    pub ledger_replication_factor: i32,
    /// `transaction.timeout.ms`: how long the broker keeps a transaction of a dead
    /// producer open before aborting it.
    pub transaction_timeout: Duration,
    /// Timeout of each blocking Kafka call (init, offsets, commit, metadata).
    pub request_timeout: Duration,
    /// Most branches published in one Kafka transaction.
    pub max_batch: usize,
    /// Extra librdkafka settings for every client the adapter creates.
    pub extra: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Settings with defaults for everything but the broker and the
    /// `transactional.id`.
    pub fn new(bootstrap_servers: impl Into<String>, transactional_id: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            transactional_id: transactional_id.into(),
            ledger_topic: DEFAULT_LEDGER_TOPIC.into(),
            ledger_replication_factor: -1,
            transaction_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_batch: 64,
            extra: Vec::new(),
        }
    }

    /// librdkafka settings shared by every client the adapter creates.
    fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    fn validate(&self) -> Result<(), KafkaError> {
        let bad = |m: String| Err(KafkaError::InvalidConfig(m));
        if self.bootstrap_servers.trim().is_empty() {
            return bad("bootstrap_servers is empty".into());
        }
        if !crate::wire::is_valid_name(&self.transactional_id) {
            return bad(format!(
                "transactional_id {} must be {}",
                crate::wire::preview(&self.transactional_id),
                crate::wire::NAME_RULE
            ));
        }
        if !is_valid_topic(&self.ledger_topic) {
            return bad(format!("invalid ledger topic {:?}", self.ledger_topic));
        }
        if self.max_batch == 0 {
            return bad("max_batch must be at least 1".into());
        }
        Ok(())
    }
}

/// Kafka's topic name rule: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
fn is_valid_topic(t: &str) -> bool {
    (1..=249).contains(&t.len())
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Errors of the application-facing API of the Kafka adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The stage database could not be opened.
    #[error(transparent)]
    Open(#[from] DurableError),
    /// sled failed; possibly transient.
    #[error("kafka adapter storage failed: {0}")]
    Storage(#[from] sled::Error),
    /// A setting is invalid; fix the configuration.
    #[error("invalid kafka adapter configuration: {0}")]
    InvalidConfig(String),
    /// The broker could not be reached or refused (at open: ledger topic, producer
    /// initialisation, ledger read); possibly transient.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The branch is prepared, finished, or not registered: it takes no more work.
    #[error("branch {0} does not accept work (prepared, finished or not registered)")]
    BranchClosed(Xid),
    /// A record or offset is malformed (bad topic name, negative offset, ...).
    #[error("invalid record or offset: {0}")]
    InvalidInput(String),
    /// The branch would exceed [`MAX_BRANCH_BYTES`].
    #[error("a branch may hold at most {MAX_BRANCH_BYTES} bytes of records")]
    BranchTooLarge,
    /// Stored state could not be read; needs an operator.
    #[error("corrupt kafka adapter state: {0}")]
    Corrupt(String),
    /// The ledger topic's `cleanup.policy` is not exactly `compact`: retention could
    /// delete the adapter's newest marker, and a restart would then publish a
    /// committed branch again. Not retryable: fix the topic.
    #[error(
        "ledger topic {topic} has cleanup.policy={policy:?}; the Kafka adapter needs exactly \
         \"compact\" (\"delete\", also in \"compact,delete\", lets retention remove the newest \
         ledger marker, after which a restart could publish a committed branch twice). Fix it \
         with `kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics \
         --entity-name {topic} --add-config cleanup.policy=compact`, or configure a ledger \
         topic that does not exist yet (the adapter creates it compacted)"
    )]
    LedgerNotCompacted {
        /// The ledger topic.
        topic: String,
        /// Its `cleanup.policy` as the broker reported it (empty: not reported).
        policy: String,
    },
}

impl KafkaError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Kafka(_))
    }
}

impl From<ResourceError> for KafkaError {
    fn from(e: ResourceError) -> Self {
        match e {
            ResourceError::Unavailable(m) => Self::Kafka(m),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

/// In-memory state, guarded by [`KafkaResource::state`]; never held across `.await`.
#[derive(Default)]
struct State {
    /// Work of branches not yet prepared, with its approximate size. Deliberately not
    /// durable: a branch whose process dies before prepare must vote NO.
    pending: HashMap<Xid, (Staged, usize)>,
    /// Branches with a publish request in flight (count of requests), so a rollback
    /// cannot discard a stage the publisher is reading.
    publishing: HashMap<Xid, usize>,
}

/// A Kafka producer that takes part in global transactions (see the module docs).
pub struct KafkaResource {
    /// Settings.
    config: Arc<KafkaConfig>,
    /// Stage, outcomes and ledger bookkeeping.
    store: Store,
    /// In-memory state; see [`State`].
    state: Mutex<State>,
    /// Queue of the publisher thread; dropping it stops the thread.
    requests: mpsc::Sender<PublishRequest>,
}

impl std::fmt::Debug for KafkaResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaResource")
            .field("transactional_id", &self.config.transactional_id)
            .finish_non_exhaustive()
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl KafkaResource {
    /// Opens (or creates) the stage in folder `dir`, creates the ledger topic if it is
    /// missing, initialises the transactional producer (fencing any older instance
    /// with the same `transactional.id`) and records what the ledger says was
    /// published before a crash. Branches still staged afterwards are in doubt and
    /// are listed by [`Resource::recover`].
    ///
    /// # Errors
    /// [`KafkaError::InvalidConfig`], [`KafkaError::Open`] when the folder cannot be
    /// opened (for example another process holds it),
    /// [`KafkaError::LedgerNotCompacted`] when the ledger topic exists with a
    /// `cleanup.policy` other than `compact`, [`KafkaError::Kafka`] when the broker
    /// cannot be reached or refuses, or the ledger catch-up does not reach its end
    /// offsets in time (retry), [`KafkaError::Corrupt`] for unreadable stored state.
    pub async fn open(dir: impl AsRef<Path>, config: KafkaConfig) -> Result<Arc<Self>, KafkaError> {
        config.validate()?;
        let config = Arc::new(config);
        let store = Store::new(DurableSled::open(dir)?)?;
        let (requests, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        Publisher::new(Arc::clone(&config), store.clone())
            .spawn(rx, ready_tx)
            .map_err(|e| KafkaError::Kafka(format!("cannot start publisher thread: {e}")))?;
        ready_rx
            .await
            .map_err(|_| KafkaError::Kafka("publisher thread ended during start".into()))??;
        let staged = store.staged.len();
        if staged > 0 {
            tracing::info!(staged, "kafka adapter reopened with prepared branches");
        }
        Ok(Arc::new(Self {
            config,
            store,
            state: Mutex::new(State::default()),
            requests,
        }))
    }

    /// This instance's `transactional.id`.
    pub fn transactional_id(&self) -> &str {
        &self.config.transactional_id
    }

    /// Number of branches currently prepared (staged, in doubt).
    pub fn prepared_count(&self) -> usize {
        self.store.staged.len()
    }

    /// The state lock. Multi-tree writes are sled transactions, so a panic while it
    /// was held cannot have left the trees half-written: a poisoned lock is usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `xid` as a branch of this adapter and returns the handle to add its
    /// records and offsets to. Registering twice returns a handle to the same branch.
    ///
    /// # Errors
    /// [`KafkaError::BranchClosed`] when the branch is already prepared or finished
    /// (or fenced by a rollback), storage errors.
    pub fn branch(self: &Arc<Self>, xid: &Xid) -> Result<KafkaBranch, KafkaError> {
        let mut state = self.state();
        if self.store.staged.contains_key(xid.render())?
            || branch_log::read_outcome(&self.store.outcomes, xid)?.is_some()
        {
            return Err(KafkaError::BranchClosed(xid.clone()));
        }
        state.pending.entry(xid.clone()).or_default();
        Ok(KafkaBranch {
            resource: Arc::clone(self),
            xid: xid.clone(),
        })
    }

    /// Adds work to a pending branch, enforcing the size limit.
    fn add_work(
        &self,
        xid: &Xid,
        bytes: usize,
        add: impl FnOnce(&mut Staged),
    ) -> Result<(), KafkaError> {
        let mut state = self.state();
        let (work, size) = state
            .pending
            .get_mut(xid)
            .ok_or_else(|| KafkaError::BranchClosed(xid.clone()))?;
        if *size + bytes > MAX_BRANCH_BYTES {
            return Err(KafkaError::BranchTooLarge);
        }
        *size += bytes;
        add(work);
        Ok(())
    }

    /// Phase 1 under the state lock; the caller syncs before a YES.
    fn prepare_locked(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        let mut state = self.state();
        if let Some(vote) =
            branch_log::answer_prepare(branch_log::read_outcome(&self.store.outcomes, xid)?)
        {
            return Ok(vote);
        }
        if self
            .store
            .staged
            .contains_key(xid.render())
            .map_err(branch_log::unavailable)?
        {
            return Ok(Vote::Yes);
        }
        let Some((work, _)) = state.pending.remove(xid) else {
            // Fence: work registered for this xid later must not be prepared.
            branch_log::write_outcome(&self.store.outcomes, xid, Finished::RolledBack)?;
            return Ok(Vote::No("unknown branch".into()));
        };
        if work.is_empty() {
            // Phase 2 skips a read-only branch, so close the xid here: work added to
            // it later would otherwise wait forever, neither prepared nor rolled back.
            // Recorded as read-only, not committed: a retried prepare must vote
            // READ_ONLY again, and a rollback (the transaction aborted for another
            // branch) is no heuristic.
            branch_log::write_outcome(&self.store.outcomes, xid, Finished::ReadOnly)?;
            return Ok(Vote::ReadOnly);
        }
        let bytes = stage::encode(&work, now_unix_ms())?;
        self.store
            .staged
            .insert(xid.render(), bytes)
            .map_err(branch_log::unavailable)?;
        Ok(Vote::Yes)
    }

    /// Decides what a commit must do under the state lock: an answer now, or the work
    /// to publish (`Some(None)`: the stage; `Some(Some(w))`: one-phase work `w`).
    fn commit_locked(
        &self,
        xid: &Xid,
        one_phase: bool,
    ) -> Result<Result<CommitResult, Option<Staged>>, ResourceError> {
        let mut state = self.state();
        let finished = branch_log::read_outcome(&self.store.outcomes, xid)?;
        if let Some(answer) = branch_log::answer_commit(finished, xid, one_phase) {
            return Ok(Ok(answer));
        }
        if one_phase && state.publishing.contains_key(xid) {
            // A retry while the first attempt is still publishing: its work is out of
            // `pending`, so only that attempt can tell how it ends.
            return Err(ResourceError::Unavailable(format!(
                "{xid} is being published; ask again"
            )));
        }
        // A staged branch is published whether the commit is one-phase or not: a
        // leader without one phase staged it and died, and the next one, with one
        // phase on, asks for a one-phase commit of it.
        let to_publish = if self
            .store
            .staged
            .contains_key(xid.render())
            .map_err(branch_log::unavailable)?
        {
            None
        } else {
            match (state.pending.remove(xid), one_phase) {
                (Some((work, _)), true) if work.is_empty() => {
                    branch_log::write_outcome(&self.store.outcomes, xid, Finished::Committed)?;
                    return Ok(Ok(CommitResult::Committed));
                }
                (Some((work, _)), true) => Some(work),
                (None, true) => {
                    // Lost with a restart (or never registered): nothing was published,
                    // or the ledger read at start would have recorded it.
                    branch_log::write_outcome(&self.store.outcomes, xid, Finished::RolledBack)?;
                    return Ok(Ok(CommitResult::RolledBack));
                }
                (Some(entry), false) => {
                    state.pending.insert(xid.clone(), entry);
                    return Err(ResourceError::Failed(format!(
                        "two-phase commit of {xid}, which was never prepared"
                    )));
                }
                // Committed earlier and forgotten since.
                (None, false) => return Ok(Ok(CommitResult::Committed)),
            }
        };
        *state.publishing.entry(xid.clone()).or_default() += 1;
        Ok(Err(to_publish))
    }

    /// Hands `xid` to the publisher and waits for the answer.
    async fn publish(&self, xid: &Xid, work: Option<Staged>) -> Result<(), ResourceError> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .requests
            .send(PublishRequest {
                xid: xid.clone(),
                work: work.clone(),
                reply,
            })
            .await;
        let result = match sent {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                Err(ResourceError::Unavailable("kafka publisher stopped".into()))
            }),
            Err(_) => Err(ResourceError::Unavailable("kafka publisher stopped".into())),
        };
        let mut state = self.state();
        if let Some(n) = state.publishing.get_mut(xid) {
            *n -= 1;
            if *n == 0 {
                state.publishing.remove(xid);
            }
        }
        if let (Err(_), Some(work)) = (&result, work) {
            // One-phase work lives only in memory: keep it for the coordinator's retry.
            // (If the publication did happen, the ledger read before the next one
            // records it and the retry answers from the outcome.)
            let size = work.records.iter().map(KafkaRecord::approx_bytes).sum();
            state.pending.entry(xid.clone()).or_insert((work, size));
        }
        result
    }

    /// Rollback under the state lock; the caller syncs.
    fn rollback_locked(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        let mut state = self.state();
        if state.publishing.contains_key(xid) {
            return Err(ResourceError::Unavailable(format!(
                "{xid} is being published; ask again"
            )));
        }
        if let Some(answer) =
            branch_log::answer_rollback(branch_log::read_outcome(&self.store.outcomes, xid)?)
        {
            return Ok(answer);
        }
        branch_log::finish(
            &self.store.staged,
            &self.store.outcomes,
            xid,
            Finished::RolledBack,
        )?;
        state.pending.remove(xid);
        Ok(RollbackResult::RolledBack)
    }
}

#[async_trait]
impl Resource for KafkaResource {
    #[tracing::instrument(level = "debug", skip(self), fields(%xid))]
    async fn prepare(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        let vote = branch_log::durable_vote(&self.store.durable, self.prepare_locked(xid)?).await?;
        if vote == Vote::Yes {
            failpoint::hit("kafka.after_stage").await;
        }
        Ok(vote)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%xid))]
    async fn commit(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError> {
        failpoint::hit("kafka.before_publish").await;
        match self.commit_locked(xid, one_phase)? {
            Ok(answer) => {
                // Acknowledge only durable outcomes.
                branch_log::sync(&self.store.durable).await?;
                Ok(answer)
            }
            Err(work) => {
                self.publish(xid, work).await?;
                Ok(CommitResult::Committed)
            }
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%xid))]
    async fn rollback(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        let result = self.rollback_locked(xid)?;
        branch_log::sync(&self.store.durable).await?;
        Ok(result)
    }

    async fn recover(&self) -> Result<Vec<Xid>, ResourceError> {
        branch_log::list_prepared(&self.store.staged)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%xid))]
    async fn forget(&self, xid: &Xid) -> Result<(), ResourceError> {
        // No sync: a forgotten record that reappears after a crash is harmless.
        self.store
            .outcomes
            .remove(xid.render())
            .map(drop)
            .map_err(branch_log::unavailable)
    }
}

/// A handle to add records and consumer offsets to one branch of a
/// [`KafkaResource`]. Work is buffered in memory until the coordinator prepares the
/// branch.
#[derive(Debug, Clone)]
pub struct KafkaBranch {
    /// The adapter the work goes to.
    resource: Arc<KafkaResource>,
    /// The branch.
    xid: Xid,
}

impl KafkaBranch {
    /// The branch id.
    pub fn xid(&self) -> &Xid {
        &self.xid
    }

    /// Publishes `record` when the branch commits.
    ///
    /// # Errors
    /// [`KafkaError::InvalidInput`] for a bad topic name or negative partition,
    /// [`KafkaError::BranchTooLarge`], [`KafkaError::BranchClosed`] once the branch is
    /// prepared or finished.
    pub fn send(&self, record: KafkaRecord) -> Result<(), KafkaError> {
        if !is_valid_topic(&record.topic) {
            return Err(KafkaError::InvalidInput(format!(
                "invalid topic {}",
                crate::wire::preview(&record.topic)
            )));
        }
        if record.partition.is_some_and(|p| p < 0) {
            return Err(KafkaError::InvalidInput("negative partition".into()));
        }
        let bytes = record.approx_bytes();
        self.resource
            .add_work(&self.xid, bytes, |w| w.records.push(record))
    }

    /// Commits `offset` for its consumer group when the branch commits (the group's
    /// next position in that partition). The group is never joined: the offsets go
    /// in with the group id only, so a rebalance between prepare and commit cannot
    /// make a decided commit fail.
    ///
    /// # Errors
    /// [`KafkaError::InvalidInput`] for a bad topic, empty group, negative partition
    /// or offset, [`KafkaError::BranchTooLarge`], [`KafkaError::BranchClosed`].
    pub fn commit_offset(&self, offset: KafkaOffset) -> Result<(), KafkaError> {
        if !is_valid_topic(&offset.topic)
            || offset.group.is_empty()
            || offset.group.len() > 255
            || offset.partition < 0
            || offset.offset < 0
        {
            return Err(KafkaError::InvalidInput(format!(
                "invalid offset {}/{}@{} for group {}",
                crate::wire::preview(&offset.topic),
                offset.partition,
                offset.offset,
                crate::wire::preview(&offset.group)
            )));
        }
        let bytes = offset.group.len() + offset.topic.len() + 16;
        self.resource
            .add_work(&self.xid, bytes, |w| w.offsets.push(offset))
    }
}

#[cfg(test)]
mod broker_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// TLS to the brokers is librdkafka's, set through `extra` (README, "Kafka
    /// adapter"): this build has SSL in it, so the settings are taken (a missing CA
    /// file is named, rather than SSL being unknown).
    #[test]
    fn ssl_settings_pass_through_to_librdkafka() -> anyhow::Result<()> {
        use rdkafka::producer::BaseProducer;
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca.pem");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        let key = rcgen::KeyPair::generate()?;
        std::fs::write(&ca, params.self_signed(&key)?.pem())?;
        let mut config = KafkaConfig::new("127.0.0.1:1", "tls-test");
        config.extra = vec![
            ("security.protocol".into(), "ssl".into()),
            ("ssl.ca.location".into(), ca.display().to_string()),
        ];
        let made: Result<BaseProducer, _> = config.client_config().create();
        assert!(made.is_ok(), "{:?}", made.err());
        config.extra[1].1 = dir.path().join("missing.pem").display().to_string();
        let made: Result<BaseProducer, _> = config.client_config().create();
        let e = made.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("missing.pem") || e.contains("ssl.ca.location"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_valid_topic("orders.v1-x_y"));
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"a".repeat(250)] {
            assert!(!is_valid_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_a_compacted_ledger_is_accepted() {
        for ok in ["compact", " compact ", "compact,compact"] {
            assert!(publisher::check_ledger_policy("l", ok).is_ok(), "{ok:?}");
        }
        for bad in ["delete", "compact,delete", "delete,compact", ""] {
            match publisher::check_ledger_policy("l", bad) {
                Err(e @ KafkaError::LedgerNotCompacted { .. }) => {
                    assert!(!e.is_retryable());
                    assert!(
                        e.to_string()
                            .contains("--entity-name l --add-config cleanup.policy=compact"),
                        "{e}"
                    );
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn config_is_validated() {
        let ok = KafkaConfig::new("127.0.0.1:9092", "orders-1");
        assert!(ok.validate().is_ok());
        for bad in [
            KafkaConfig::new("", "t"),
            KafkaConfig::new("h:1", ""),
            KafkaConfig::new("h:1", "has space"),
            KafkaConfig {
                ledger_topic: "bad/topic".into(),
                ..KafkaConfig::new("h:1", "t")
            },
            KafkaConfig {
                max_batch: 0,
                ..KafkaConfig::new("h:1", "t")
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(KafkaError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }
}
