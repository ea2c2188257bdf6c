//! The Kafka adapter against Apache Kafka and a real 3-node coordinator cluster.
//!
//! Every count comes from `KafkaCheck`, a `read_committed` consumer written with the
//! Java clients (not librdkafka, not the adapter). Needs `RATIFY_TEST_KAFKA` (started
//! by `tests/run.sh` through `tests/infra/kafka.sh`); without it these tests fail.
//!
//! Each transaction has two branches (the Kafka participant and an account store),
//! so it runs the full two-phase protocol rather than the one-phase shortcut.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ratify_devkit::accounts::AccountStore;
use ratify_participant_sdk::client::{BeginOptions, Begun, Decision};
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::HostedParticipant;
use ratify_proto::pb;
use ratify_tests::kafka::{self, KafkaParticipant};
use ratify_tests::{must_abort, must_commit, serve, TestCluster};

/// A cluster, a Kafka participant process and an account store, with unique topic
/// and `transactional.id` names so tests can share the broker.
struct Fixture {
    c: TestCluster,
    kafka: KafkaParticipant,
    bank: Arc<AccountStore>,
    bank_srv: HostedParticipant,
    topic: String,
}

/// A name unique to this run of this test.
fn unique(test: &str) -> String {
    format!("{test}-{}-{:x}", std::process::id(), rand::random::<u32>())
}

impl Fixture {
    async fn start(test: &str, failpoints: &str) -> anyhow::Result<Self> {
        // Fail fast and clearly without a broker.
        kafka::bootstrap()?;
        let c = TestCluster::start(&["--prepare-timeout-ms", "2000"]).await?;
        let topic = unique(test);
        kafka::create_topic(&topic, 2).await?;
        let kafka = KafkaParticipant::start(
            c.dir.path(),
            "kafka",
            &unique(test),
            c.nodes.api_endpoints(),
            failpoints,
        )
        .await?;
        let bank = AccountStore::open(c.dir.path().join("bank"))?;
        bank.open_numbered_accounts("acct", 4, 1_000_000).await?;
        let r: Arc<dyn Resource> = bank.clone();
        let bank_srv = serve("accounts", r, c.client.clone()).await?;
        Ok(Self {
            c,
            kafka,
            bank,
            bank_srv,
            topic,
        })
    }

    /// Begins a transaction with a Kafka branch (records `<gtrid>-0..n` on the
    /// topic, and `offsets`) and an account branch that moves `amount` (more than the
    /// balance makes the account branch vote NO).
    async fn begin(
        &mut self,
        n: usize,
        offsets: &[(&str, &str, i32, i64)],
        amount: i64,
    ) -> anyhow::Result<Begun> {
        let t = self
            .c
            .client
            .begin(BeginOptions {
                timeout: Duration::from_secs(30),
                branches: vec![
                    (self.kafka.endpoint.clone(), "kafka".into()),
                    (self.bank_srv.endpoint.clone(), "accounts".into()),
                ],
                ..Default::default()
            })
            .await?;
        let values: Vec<String> = (0..n).map(|i| format!("{}-{i}", t.gtrid)).collect();
        let records: Vec<(&str, &str, &str)> = values
            .iter()
            .map(|v| (self.topic.as_str(), v.as_str(), v.as_str()))
            .collect();
        self.kafka
            .stage(&t.branches[0].xid, &records, offsets)
            .await?;
        let b = self.bank.branch(&t.branches[1].xid)?;
        b.debit("acct0", amount)?;
        b.credit("acct1", amount)?;
        Ok(t)
    }

    /// Commits in the background (the call may wait for a participant that is down).
    fn commit_in_background(
        &self,
        gtrid: &str,
    ) -> tokio::task::JoinHandle<anyhow::Result<Decision>> {
        let client = self.c.client.clone();
        let gtrid = gtrid.to_string();
        tokio::spawn(async move { Ok(client.commit(&gtrid).await?) })
    }

    /// Waits until the coordinator completed every transaction and the participant
    /// holds nothing prepared (its recovery loop and phase 2 are done).
    async fn settle(&self) -> anyhow::Result<()> {
        self.c.wait_all_completed(Duration::from_secs(60)).await
    }
}

/// Asserts that each of `gtrid`'s `n` records appears exactly once (`committed`) or
/// never.
fn must_appear(counts: &HashMap<String, usize>, gtrid: &str, n: usize, committed: bool) {
    for i in 0..n {
        let v = format!("{gtrid}-{i}");
        let seen = counts.get(&v).copied().unwrap_or(0);
        let want = usize::from(committed);
        assert_eq!(
            seen, want,
            "record {v} seen {seen} times by a read_committed consumer, expected {want}"
        );
    }
}

/// Committed transactions' records are seen exactly once by a read_committed
/// consumer; records of a transaction rolled back by the client, or aborted by a NO
/// vote of the other branch, are never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_appear_once_and_aborted_never() -> anyhow::Result<()> {
    let mut f = Fixture::start("eo-basic", "").await?;
    let committed = f.begin(3, &[], 1).await?;
    must_commit(&f.c.client.commit(&committed.gtrid).await?);
    let rolled_back = f.begin(2, &[], 1).await?;
    must_abort(
        &f.c.client.rollback(&rolled_back.gtrid).await?,
        pb::Reason::ClientRollback,
    );
    let voted_no = f.begin(2, &[], 10_000_000).await?;
    must_abort(
        &f.c.client.commit(&voted_no.gtrid).await?,
        pb::Reason::VotedNo,
    );
    let second = f.begin(1, &[], 1).await?;
    must_commit(&f.c.client.commit(&second.gtrid).await?);
    f.settle().await?;

    let counts = kafka::value_counts(&f.topic).await?;
    must_appear(&counts, &committed.gtrid, 3, true);
    must_appear(&counts, &second.gtrid, 1, true);
    must_appear(&counts, &rolled_back.gtrid, 2, false);
    must_appear(&counts, &voted_no.gtrid, 2, false);
    assert_eq!(
        counts.values().sum::<usize>(),
        4,
        "unexpected records: {counts:?}"
    );
    // Headers travel with the records.
    let seen = kafka::read_committed(&f.topic).await?;
    assert!(seen.iter().all(|r| r
        .headers
        .get("gtrid")
        .and_then(Clone::clone)
        .is_some_and(|g| r.value.as_deref().is_some_and(|v| v.starts_with(&g)))));
    Ok(())
}

/// The participant is SIGKILLed at each step of the protocol and started again:
/// after staging before its vote (the transaction aborts), after the vote before
/// commit, after the Kafka produce before the Kafka commit, and after the Kafka
/// commit before acknowledging the coordinator (all three commit). Every committed
/// transaction's records appear exactly once, the aborted one's never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_step_publishes_exactly_once() -> anyhow::Result<()> {
    let mut f = Fixture::start("eo-crash", "").await?;
    let mut expected = Vec::new();
    for (point, commits) in [
        ("kafka.after_stage", false),
        ("kafka.before_publish", true),
        ("kafka.after_produce", true),
        ("kafka.after_kafka_commit", true),
    ] {
        f.kafka.restart(&format!("{point}=kill")).await?;
        let t = f.begin(3, &[], 1).await?;
        let commit = f.commit_in_background(&t.gtrid);
        f.kafka.wait_killed(Duration::from_secs(30)).await?;
        assert!(
            f.kafka
                .log_text()
                .contains(&format!("ratify failpoint {point}")),
            "the participant died, but not at {point}"
        );
        f.kafka.restart("").await?;
        if point == "kafka.after_kafka_commit" {
            f.kafka
                .wait_log(
                    "ledger: published before the restart",
                    Duration::from_secs(10),
                )
                .await?;
        }
        let decision = commit.await??;
        if commits {
            must_commit(&decision);
        } else {
            must_abort(&decision, pb::Reason::ParticipantUnreachable);
        }
        f.settle().await?;
        expected.push((point, t.gtrid, commits));
    }
    let counts = kafka::value_counts(&f.topic).await?;
    for (point, gtrid, commits) in &expected {
        for i in 0..3 {
            let v = format!("{gtrid}-{i}");
            let seen = counts.get(&v).copied().unwrap_or(0);
            assert_eq!(
                seen,
                usize::from(*commits),
                "killed at {point}: record {v} seen {seen} times"
            );
        }
    }
    Ok(())
}

/// A second instance with the same transactional.id fences the first while the first
/// has produced but not committed: the first's Kafka transaction is aborted, its
/// commit fails as fenced and it never publishes again; once it is restarted (and
/// the other instance is gone) the branch is published exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_with_the_same_transactional_id_is_fenced() -> anyhow::Result<()> {
    let mut f = Fixture::start("eo-zombie", "kafka.after_produce=sleep:8000").await?;
    let t = f.begin(2, &[], 1).await?;
    let commit = f.commit_in_background(&t.gtrid);
    f.kafka
        .wait_log(
            "ratify failpoint kafka.after_produce",
            Duration::from_secs(30),
        )
        .await?;
    // The newer instance: same transactional.id, its own stage and port.
    let mut newer = KafkaParticipant::start(
        f.c.dir.path(),
        "kafka-newer",
        &f.kafka.transactional_id,
        f.c.nodes.api_endpoints(),
        "",
    )
    .await?;
    must_commit(&commit.await??);
    f.kafka.wait_log("fenced", Duration::from_secs(30)).await?;
    let counts = kafka::value_counts(&f.topic).await?;
    must_appear(&counts, &t.gtrid, 2, false);

    // The fenced instance is restarted (which fences the newer one back) and
    // finishes the branch it holds.
    newer.kill().await;
    f.kafka.restart("").await?;
    f.settle().await?;
    let counts = kafka::value_counts(&f.topic).await?;
    must_appear(&counts, &t.gtrid, 2, true);
    Ok(())
}

/// Consumer offsets staged with a branch are committed with it, and only with it:
/// an aborted transaction leaves the group's offset where the last committed one put
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_advance_only_with_committed_transactions() -> anyhow::Result<()> {
    let mut f = Fixture::start("eo-offsets", "").await?;
    let input = unique("eo-offsets-in");
    kafka::create_topic(&input, 1).await?;
    let group = unique("eo-group");
    let g = group.as_str();
    let key = format!("{input}/0");

    let t1 = f.begin(1, &[(g, &input, 0, 5)], 1).await?;
    must_commit(&f.c.client.commit(&t1.gtrid).await?);
    f.settle().await?;
    assert_eq!(kafka::group_offsets(g).await?.get(&key), Some(&5));

    let t2 = f.begin(1, &[(g, &input, 0, 9)], 1).await?;
    must_abort(
        &f.c.client.rollback(&t2.gtrid).await?,
        pb::Reason::ClientRollback,
    );
    let t3 = f.begin(1, &[(g, &input, 0, 12)], 10_000_000).await?;
    must_abort(&f.c.client.commit(&t3.gtrid).await?, pb::Reason::VotedNo);
    f.settle().await?;
    assert_eq!(
        kafka::group_offsets(g).await?.get(&key),
        Some(&5),
        "an aborted transaction moved the group's offset"
    );

    let t4 = f.begin(1, &[(g, &input, 0, 7)], 1).await?;
    must_commit(&f.c.client.commit(&t4.gtrid).await?);
    f.settle().await?;
    assert_eq!(kafka::group_offsets(g).await?.get(&key), Some(&7));
    let counts = kafka::value_counts(&f.topic).await?;
    must_appear(&counts, &t1.gtrid, 1, true);
    must_appear(&counts, &t2.gtrid, 1, false);
    must_appear(&counts, &t3.gtrid, 1, false);
    must_appear(&counts, &t4.gtrid, 1, true);
    Ok(())
}
