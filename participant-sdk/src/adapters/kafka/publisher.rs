//! The publisher: one thread that owns the transactional producer and turns commit
//! requests into Kafka transactions.
//!
//! Each Kafka transaction carries the records of one or more branches (requests that
//! queued up while the previous transaction was running are batched), their consumer
//! offsets (`send_offsets_to_transaction`) and one ledger marker naming the branches'
//! xids. Only after the commit is the outcome recorded locally (fsynced) and the
//! requests answered.
//!
//! # Why the ledger makes it exactly once
//! Markers are numbered; before the next Kafka transaction starts, the xids of the
//! previous one are durably recorded as published (`kafka.outcomes`, plus the marker's
//! sequence in `kafka.meta`). So at any time at most the markers after the recorded
//! sequence can be unknown locally. Whenever the producer is (re)started, which is
//! also the only time the adapter can be unsure whether a commit happened,
//! `init_transactions` first fences older producers with this `transactional.id` and
//! finishes or aborts their open transaction; then the ledger is read
//! `read_committed` up to the end offsets taken at that moment (see [`read_ledger`]
//! for why that is its end for our markers, and why the wait is bounded) and every
//! marker after the recorded sequence is recorded. A branch is therefore published
//! only while its outcome says it was not, and that is never true after a marker
//! naming it committed.
//!
//! A producer that is fenced (a newer instance called `init_transactions` with the same
//! `transactional.id`) stops for good: it answers every request with a failure and
//! never re-initialises, which would fence the newer instance back.
//!
//! The ledger topic must be compacted and only compacted (checked at start): with
//! `delete` in its `cleanup.policy`, retention could remove the newest marker, and a
//! restart that lost its local record too would publish that branch again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::stage::{Marker, Staged, Store, MARKER_VERSION};
use super::{KafkaConfig, KafkaError as AdapterError};
use crate::branch_log::{self, Finished};
use crate::failpoint;
use crate::resource::ResourceError;
use crate::xid::Xid;

/// A branch to publish, and where to send the answer.
pub(crate) struct PublishRequest {
    /// The branch.
    pub(crate) xid: Xid,
    /// Its work when it was never staged (one-phase commit); `None`: read the stage.
    pub(crate) work: Option<Staged>,
    /// `Ok` once the branch is published and that is recorded durably.
    pub(crate) reply: oneshot::Sender<Result<(), ResourceError>>,
}

/// Why a Kafka transaction did not (certainly) commit.
#[derive(Debug)]
enum TxnFailure {
    /// Certainly not committed (aborted, or failed before the commit was sent).
    NotCommitted(String),
    /// Maybe committed: the producer must be re-initialised and the ledger read.
    Unsure(String),
    /// A newer instance took over this `transactional.id`.
    Fenced(String),
}

/// The publisher thread's state.
pub(crate) struct Publisher {
    /// Settings.
    config: Arc<KafkaConfig>,
    /// The adapter's trees.
    store: Store,
    /// The transactional producer, `None` until (re)initialised.
    producer: Option<FutureProducer>,
    /// One idle consumer per group, only for its group metadata (see `group_metadata`).
    groups: HashMap<String, BaseConsumer>,
    /// Set once fenced: the reason every later request fails with.
    fenced: Option<String>,
    /// Sequence of the next marker.
    next_seq: u64,
}

impl Publisher {
    pub(crate) fn new(config: Arc<KafkaConfig>, store: Store) -> Self {
        Self {
            config,
            store,
            producer: None,
            groups: HashMap::new(),
            fenced: None,
            next_seq: 1,
        }
    }

    /// Starts the thread. It first creates the ledger topic if needed, initialises the
    /// producer and reads the ledger, reporting the result on `ready`; then serves
    /// requests until every sender is dropped.
    pub(crate) fn spawn(
        mut self,
        mut requests: mpsc::Receiver<PublishRequest>,
        ready: oneshot::Sender<Result<(), AdapterError>>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ratify-kafka-publisher".into())
            .spawn(move || {
                let started = ensure_ledger_topic(&self.config).and_then(|()| {
                    self.ensure_producer()
                        .map_err(|e| AdapterError::Kafka(e.to_string()))
                });
                let failed = started.is_err();
                let _ = ready.send(started);
                if failed {
                    return;
                }
                while let Some(first) = requests.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < self.config.max_batch {
                        match requests.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    self.handle(batch);
                }
                tracing::debug!("kafka publisher stopped");
            })
    }

    /// Creates the producer, fences older instances and catches up with the ledger.
    fn ensure_producer(&mut self) -> Result<(), ResourceError> {
        if let Some(why) = &self.fenced {
            return Err(ResourceError::Failed(why.clone()));
        }
        if self.producer.is_some() {
            return Ok(());
        }
        let producer: FutureProducer = self
            .config
            .client_config()
            .set("transactional.id", &self.config.transactional_id)
            .set(
                "transaction.timeout.ms",
                self.config.transaction_timeout.as_millis().to_string(),
            )
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .create()
            .map_err(kafka_unavailable)?;
        // First init_transactions, then the ledger read: the read is complete only
        // once no older instance can commit a marker any more (see `read_ledger`).
        producer
            .init_transactions(self.config.request_timeout)
            .map_err(|e| {
                if is_fenced(&producer) {
                    ResourceError::Failed(format!("fenced: {e}"))
                } else {
                    kafka_unavailable(e)
                }
            })?;
        self.catch_up()?;
        tracing::info!(
            transactional_id = %self.config.transactional_id,
            next_seq = self.next_seq,
            "kafka producer initialised, ledger read"
        );
        self.producer = Some(producer);
        Ok(())
    }

    /// Records the xids of every ledger marker after the recorded sequence.
    fn catch_up(&mut self) -> Result<(), ResourceError> {
        let markers = read_ledger(&self.config)?;
        let recorded = self.store.recorded_seq()?;
        let mut last = recorded;
        let (mut caught_markers, mut caught_branches) = (0usize, 0usize);
        for m in markers.into_values().filter(|m| m.seq > recorded) {
            tracing::debug!(seq = m.seq, xids = ?m.xids, "ledger marker published before the restart");
            caught_markers += 1;
            caught_branches += m.xids.len();
            for xid in &m.xids {
                if branch_log::read_outcome(&self.store.outcomes, xid)?
                    == Some(Finished::RolledBack)
                {
                    // Kafka's answer wins: the records are out. This means the
                    // protocol was broken elsewhere, so say it loudly.
                    tracing::error!(%xid, "ledger says published but the branch was rolled back");
                }
            }
            self.store.record_published(&m.xids, m.seq)?;
            last = m.seq;
        }
        sync_blocking(&self.store)?;
        if caught_markers > 0 {
            // A recovery summary: one line, not one per branch.
            tracing::info!(
                markers = caught_markers,
                branches = caught_branches,
                "ledger: published before the restart, recorded"
            );
        }
        self.next_seq = last + 1;
        Ok(())
    }

    /// Publishes a batch of requests in one Kafka transaction and answers them.
    fn handle(&mut self, batch: Vec<PublishRequest>) {
        // The producer (and with it the ledger catch-up) comes first: after an
        // uncertain Kafka commit, only the ledger knows whether a retried branch was
        // already published, and `resolve` must see that before it picks up the stage.
        if let Err(e) = self.ensure_producer() {
            for req in batch {
                let _ = req.reply.send(Err(e.clone()));
            }
            return;
        }
        let mut replies: HashMap<Xid, Vec<oneshot::Sender<Result<(), ResourceError>>>> =
            HashMap::new();
        let mut work: BTreeMap<Xid, Staged> = BTreeMap::new();
        for req in batch {
            match self.resolve(&req) {
                Ok(Some(w)) => {
                    work.entry(req.xid.clone()).or_insert(w);
                    replies.entry(req.xid).or_default().push(req.reply);
                }
                Ok(None) => {
                    let _ = req.reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if work.is_empty() {
            return;
        }
        let result = self.publish_and_record(&work);
        for (xid, senders) in replies {
            if let Err(e) = &result {
                tracing::warn!(%xid, error = %e, "publication failed");
            }
            for s in senders {
                let _ = s.send(result.clone());
            }
        }
    }

    /// What `req` still needs published: `None` when it already is.
    fn resolve(&self, req: &PublishRequest) -> Result<Option<Staged>, ResourceError> {
        match branch_log::read_outcome(&self.store.outcomes, &req.xid)? {
            // Read-only: there is nothing to publish (and commit answers it before
            // asking the publisher anyway).
            Some(Finished::Committed | Finished::ReadOnly) => return Ok(None),
            Some(Finished::RolledBack) => {
                return Err(ResourceError::Failed(format!(
                    "{} was rolled back and cannot be published",
                    req.xid
                )))
            }
            None => {}
        }
        match &req.work {
            Some(w) => Ok(Some(w.clone())),
            None => self.store.read_staged(&req.xid)?.map(Some).ok_or_else(|| {
                ResourceError::Failed(format!("{} has no stage to publish", req.xid))
            }),
        }
    }

    fn publish_and_record(&mut self, work: &BTreeMap<Xid, Staged>) -> Result<(), ResourceError> {
        self.ensure_producer()?;
        let seq = self.next_seq;
        let xids: Vec<Xid> = work.keys().cloned().collect();
        let span = tracing::info_span!("kafka_txn", seq, xids = ?xids);
        let _entered = span.enter();
        match self.publish(work, seq) {
            Ok(()) => {}
            Err(TxnFailure::NotCommitted(m)) => {
                return Err(ResourceError::Unavailable(format!(
                    "kafka transaction aborted: {m}"
                )))
            }
            Err(TxnFailure::Unsure(m)) => {
                // Only the ledger can say whether it committed: read it on restart.
                self.producer = None;
                return Err(ResourceError::Unavailable(format!(
                    "kafka transaction outcome unknown, producer will be re-initialised: {m}"
                )));
            }
            Err(TxnFailure::Fenced(m)) => {
                let why = format!(
                    "fenced: another instance uses transactional.id {:?} ({m})",
                    self.config.transactional_id
                );
                tracing::error!("{why}");
                self.fenced = Some(why.clone());
                self.producer = None;
                return Err(ResourceError::Failed(why));
            }
        }
        failpoint::hit_blocking("kafka.after_kafka_commit");
        self.next_seq = seq + 1;
        let recorded = self
            .store
            .record_published(&xids, seq)
            .and_then(|()| sync_blocking(&self.store));
        if let Err(e) = recorded {
            // Published but not recorded: the next marker must not be written before
            // this one is recorded, so re-initialise (which reads the ledger) first.
            self.producer = None;
            return Err(e);
        }
        tracing::debug!("kafka transaction committed and recorded");
        Ok(())
    }

    /// One Kafka transaction: records, marker, offsets; deliveries drained; commit.
    fn publish(&mut self, work: &BTreeMap<Xid, Staged>, seq: u64) -> Result<(), TxnFailure> {
        let marker = Marker {
            v: MARKER_VERSION,
            seq,
            xids: work.keys().cloned().collect(),
        };
        let marker = serde_json::to_vec(&marker)
            .map_err(|e| TxnFailure::NotCommitted(format!("cannot encode marker: {e}")))?;
        let mut offsets: BTreeMap<&str, BTreeMap<(&str, i32), i64>> = BTreeMap::new();
        for o in work.values().flat_map(|w| &w.offsets) {
            // Two branches of one batch may move the same partition: keep the furthest.
            let at = offsets
                .entry(o.group.as_str())
                .or_default()
                .entry((o.topic.as_str(), o.partition))
                .or_insert(o.offset);
            *at = (*at).max(o.offset);
        }
        let mut metadata = Vec::new();
        for group in offsets.keys() {
            metadata.push(
                self.group_metadata(group)
                    .map_err(TxnFailure::NotCommitted)?,
            );
        }
        let Some(producer) = self.producer.as_ref() else {
            return Err(TxnFailure::Unsure("producer not initialised".into()));
        };
        let timeout = self.config.request_timeout;
        producer
            .begin_transaction()
            .map_err(|e| classify(producer, &e, false, timeout))?;
        let mut deliveries = Vec::new();
        for r in work.values().flat_map(|w| &w.records) {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic).headers(headers);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v.as_slice());
            }
            if let Some(p) = r.partition {
                rec = rec.partition(p);
            }
            deliveries
                .push(send(producer, rec).map_err(|e| classify(producer, &e, false, timeout))?);
        }
        let marker_rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.config.ledger_topic)
            .key(self.config.transactional_id.as_bytes())
            .payload(&marker);
        deliveries
            .push(send(producer, marker_rec).map_err(|e| classify(producer, &e, false, timeout))?);
        for ((group, parts), cgm) in offsets.iter().zip(&metadata) {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in parts {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(|e| TxnFailure::NotCommitted(e.to_string()))
                    .map_err(|f| abort(producer, f, timeout))?;
            }
            producer
                .send_offsets_to_transaction(&tpl, cgm, timeout)
                .map_err(|e| classify(producer, &e, false, timeout))
                .inspect_err(|_| {
                    tracing::warn!(group, "send_offsets_to_transaction failed");
                })?;
        }
        // docs/design.md §9: commit_transaction flushes, and a flush with anything in flight
        // sleeps 100 ms per poll. Waiting for every delivery first makes it free.
        for d in deliveries {
            match futures::executor::block_on(d) {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(classify(producer, &e, false, timeout)),
                Err(_) => {
                    return Err(abort(
                        producer,
                        TxnFailure::NotCommitted("delivery report lost".into()),
                        timeout,
                    ))
                }
            }
        }
        failpoint::hit_blocking("kafka.after_produce");
        let mut attempts = 0;
        loop {
            match producer.commit_transaction(timeout) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(rd)) if rd.is_retriable() && attempts < 3 => {
                    attempts += 1;
                    tracing::warn!(error = %rd, attempts, "retrying commit_transaction");
                }
                Err(e) => return Err(classify(producer, &e, true, timeout)),
            }
        }
    }

    /// Group metadata for `send_offsets_to_transaction`, from a consumer that never
    /// joins the group: generation -1 and no member id, so the broker checks the
    /// group id only. That is what a decided branch needs: its offsets were chosen at
    /// prepare, and a rebalance since then must not make its commit impossible.
    fn group_metadata(
        &mut self,
        group: &str,
    ) -> Result<rdkafka::consumer::ConsumerGroupMetadata, String> {
        if !self.groups.contains_key(group) {
            let c: BaseConsumer = self
                .config
                .client_config()
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| format!("cannot create consumer for group {group}: {e}"))?;
            self.groups.insert(group.to_owned(), c);
        }
        self.groups
            .get(group)
            .and_then(Consumer::group_metadata)
            .ok_or_else(|| format!("no group metadata for {group}"))
    }
}

/// Enqueues one record, waiting while the producer's queue is full.
fn send(
    producer: &FutureProducer,
    mut rec: FutureRecord<'_, [u8], [u8]>,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(rec) {
            Ok(d) => return Ok(d),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// True when the producer's fatal error says a newer instance took over.
fn is_fenced(producer: &FutureProducer) -> bool {
    matches!(
        producer.client().fatal_error(),
        Some((
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch,
            _
        ))
    )
}

/// Sorts a failed transaction step into what the caller must do, aborting the
/// transaction when that is still possible.
fn classify(
    producer: &FutureProducer,
    e: &KafkaError,
    committing: bool,
    timeout: Duration,
) -> TxnFailure {
    if is_fenced(producer) {
        return TxnFailure::Fenced(e.to_string());
    }
    if producer.client().fatal_error().is_some() {
        return TxnFailure::Unsure(e.to_string());
    }
    let requires_abort = matches!(e, KafkaError::Transaction(rd) if rd.txn_requires_abort());
    if committing && !requires_abort {
        // The commit may have reached the transaction coordinator.
        return TxnFailure::Unsure(e.to_string());
    }
    abort(producer, TxnFailure::NotCommitted(e.to_string()), timeout)
}

/// Aborts the open transaction; if even that fails, the state is unknown.
fn abort(producer: &FutureProducer, failure: TxnFailure, timeout: Duration) -> TxnFailure {
    match producer.abort_transaction(timeout) {
        Ok(()) => failure,
        Err(e) if is_fenced(producer) => TxnFailure::Fenced(e.to_string()),
        Err(e) => TxnFailure::Unsure(format!("{failure:?}; abort failed: {e}")),
    }
}

fn kafka_unavailable(e: impl std::fmt::Display) -> ResourceError {
    ResourceError::Unavailable(format!("kafka: {e}"))
}

/// Creates the compacted ledger topic unless it exists, then checks that it is
/// compacted (an existing or auto-created topic may not be).
fn ensure_ledger_topic(config: &KafkaConfig) -> Result<(), AdapterError> {
    use rdkafka::admin::{
        AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| AdapterError::Kafka(e.to_string()))?;
    let topic = NewTopic::new(
        &config.ledger_topic,
        1,
        TopicReplication::Fixed(config.ledger_replication_factor),
    )
    .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(config.request_timeout));
    let results = futures::executor::block_on(admin.create_topics([&topic], &opts))
        .map_err(|e| AdapterError::Kafka(format!("create ledger topic: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(AdapterError::Kafka(format!(
                    "cannot create ledger topic {t}: {code}"
                )))
            }
        }
    }
    let topic = ResourceSpecifier::Topic(&config.ledger_topic);
    let deadline = Instant::now() + config.request_timeout;
    let policy = loop {
        let described = futures::executor::block_on(admin.describe_configs([&topic], &opts))
            .map_err(|e| {
                AdapterError::Kafka(format!(
                    "describe ledger topic {}: {e}",
                    config.ledger_topic
                ))
            })?;
        match described.into_iter().next() {
            Some(Ok(resource)) => {
                let policy = resource
                    .get("cleanup.policy")
                    .and_then(|e| e.value.clone())
                    .unwrap_or_default();
                // A topic created a moment ago can be described before its
                // configuration is: an empty policy then is not an answer yet.
                if policy.is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                break policy;
            }
            // Just created: another broker may not know it yet.
            Some(Err(RDKafkaErrorCode::UnknownTopicOrPartition)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            // Retrying will not grant the permission.
            Some(Err(
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed),
            )) => {
                return Err(AdapterError::InvalidConfig(format!(
                    "cannot check the cleanup.policy of ledger topic {} ({code}): the \
                     adapter's principal needs DescribeConfigs on it",
                    config.ledger_topic
                )))
            }
            Some(Err(code)) => {
                return Err(AdapterError::Kafka(format!(
                    "describe ledger topic {}: {code}",
                    config.ledger_topic
                )))
            }
            None => {
                return Err(AdapterError::Kafka(format!(
                    "describe ledger topic {}: no answer for the topic",
                    config.ledger_topic
                )))
            }
        }
    };
    check_ledger_policy(&config.ledger_topic, &policy)
}

/// Accepts exactly `cleanup.policy=compact`. `delete`, alone or in `compact,delete`,
/// lets retention remove records by age or size, the newest marker included.
pub(super) fn check_ledger_policy(topic: &str, policy: &str) -> Result<(), AdapterError> {
    let mut policies: Vec<&str> = policy
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    policies.dedup();
    if policies == ["compact"] {
        return Ok(());
    }
    Err(AdapterError::LedgerNotCompacted {
        topic: topic.to_owned(),
        policy: policy.to_owned(),
    })
}

/// Reads the ledger `read_committed` up to the end offsets taken once, at the start,
/// and returns this adapter's markers by sequence.
///
/// # Why the end offsets taken at the start are enough
/// The caller has just run `init_transactions`. It returns only once the transaction
/// of any older instance with our `transactional.id` is finished: committed if its
/// commit had been requested, aborted otherwise, its transaction markers written to
/// every partition it touched. So when the end offsets (high watermarks) are taken
/// here, every marker of ours that will ever be committed is committed, and sits
/// below its transaction's commit record, itself below the high watermark; no older
/// instance can commit one later (its epoch is fenced), and this instance writes none
/// before the read is done. Reading every committed record below the high watermarks
/// taken now therefore sees all our committed markers.
///
/// # Why the wait is bounded
/// A `read_committed` consumer is only given records below the last stable offset
/// (LSO): the first offset of the oldest transaction still open on the partition.
/// Another producer's transaction that was open at the start, at an offset below our
/// newest marker, holds the LSO below that marker, and there is no way around it with
/// `read_committed`: we wait until the consumer's *position* reaches the fixed end
/// offset. That happens once the transactions open at the start have ended, which
/// their producers (or, for a dead producer, the broker after its
/// `transaction.timeout.ms`) bound; transactions begun afterwards start above the
/// end offset and cannot hold the LSO below it. What must not be done is chase a
/// moving end: waiting for an end-of-partition event, or for the LSO to reach the
/// current high watermark, never finishes while other producers keep committing on a
/// shared ledger (restarts took 7–21 s, or timed out).
///
/// The position, not the last record delivered, is what counts: transaction control
/// records and aborted records deliver nothing but move it.
///
/// # Errors
/// [`ResourceError::Unavailable`] (retryable) when the position is still below the
/// end offsets after `transaction_timeout + request_timeout`, or the broker fails;
/// [`ResourceError::Failed`] for a corrupt marker.
fn read_ledger(config: &KafkaConfig) -> Result<BTreeMap<u64, Marker>, ResourceError> {
    let started = Instant::now();
    let limit = config.transaction_timeout + config.request_timeout;
    let deadline = started + limit;
    let topic = config.ledger_topic.as_str();
    let uncommitted: BaseConsumer = config
        .client_config()
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(kafka_unavailable)?;
    let metadata = uncommitted
        .fetch_metadata(Some(topic), config.request_timeout)
        .map_err(kafka_unavailable)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(kafka_unavailable(format!(
            "ledger topic {topic} has no partitions"
        )));
    }
    // The end offsets, taken once (see above): partition → high watermark. An empty
    // partition has nothing to read.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = uncommitted
            .fetch_watermarks(topic, p, config.request_timeout)
            .map_err(kafka_unavailable)?;
        if high > low {
            ends.insert(p, high);
        }
    }
    let mut markers = BTreeMap::new();
    if ends.is_empty() {
        return Ok(markers);
    }
    let committed: BaseConsumer = config
        .client_config()
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set(
            "group.id",
            format!("ratify-ledger-reader.{}", config.transactional_id),
        )
        .create()
        .map_err(kafka_unavailable)?;
    // Learn the partitions' leaders first: an assignment made before this consumer
    // knows them starts fetching only after a retry, about 500 ms later.
    committed
        .fetch_metadata(Some(topic), config.request_timeout)
        .map_err(kafka_unavailable)?;
    let mut tpl = TopicPartitionList::new();
    for &p in ends.keys() {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka_unavailable)?;
    }
    committed.assign(&tpl).map_err(kafka_unavailable)?;
    let mut waiting_logged = false;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(catch_up_timeout(&committed, topic, &ends, limit));
        }
        if !waiting_logged && started.elapsed() > Duration::from_secs(2) {
            waiting_logged = true;
            tracing::info!(
                topic,
                ?ends,
                "ledger catch-up waits for transactions that were open on the ledger at start"
            );
        }
        match committed.poll(Duration::from_millis(50)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(kafka_unavailable(e)),
            Some(Ok(m)) => {
                if m.key() == Some(config.transactional_id.as_bytes()) {
                    if let Some(payload) = m.payload() {
                        let marker: Marker = serde_json::from_slice(payload).map_err(|e| {
                            ResourceError::Failed(format!(
                                "corrupt ledger marker at {topic}/{}@{}: {e}",
                                m.partition(),
                                m.offset()
                            ))
                        })?;
                        markers.insert(marker.seq, marker);
                    }
                }
                let (p, next) = (m.partition(), m.offset() + 1);
                if ends.get(&p).is_some_and(|&end| next >= end) {
                    ends.remove(&p);
                }
            }
        }
        if !ends.is_empty() {
            // Control records and aborted transactions move the position without a
            // message; a local call.
            for e in committed.position().map_err(kafka_unavailable)?.elements() {
                if let Offset::Offset(at) = e.offset() {
                    if ends.get(&e.partition()).is_some_and(|&end| at >= end) {
                        ends.remove(&e.partition());
                    }
                }
            }
        }
    }
    tracing::debug!(topic, took = ?started.elapsed(), markers = markers.len(), "ledger read");
    Ok(markers)
}

/// The retryable error of a catch-up that did not reach its end offsets in time.
fn catch_up_timeout(
    committed: &BaseConsumer,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    limit: Duration,
) -> ResourceError {
    let positions = committed.position().ok();
    let behind: Vec<String> = ends
        .iter()
        .map(|(&p, &end)| {
            let at = positions
                .as_ref()
                .and_then(|t| t.find_partition(topic, p))
                .map_or_else(|| "?".to_owned(), |e| format!("{:?}", e.offset()));
            let stable = committed
                .fetch_watermarks(topic, p, Duration::from_secs(1))
                .map_or_else(|_| "?".to_owned(), |(_, lso)| lso.to_string());
            format!("partition {p} at {at}, end {end}, last stable offset {stable}")
        })
        .collect();
    kafka_unavailable(format!(
        "ledger catch-up on {topic} did not reach the end offsets taken at start within {limit:?} \
         ({}): a transaction that was open on the ledger then is still open (another \
         producer's, bounded by its transaction.timeout.ms); retry later",
        behind.join("; ")
    ))
}

/// Waits until everything written to the store so far is durable.
fn sync_blocking(store: &Store) -> Result<(), ResourceError> {
    store
        .durable
        .sync_blocking()
        .map_err(branch_log::unavailable)
}
