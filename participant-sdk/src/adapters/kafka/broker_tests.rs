//! Tests of the adapter against a real broker: `RATIFY_TEST_KAFKA` (set by
//! `tests/infra/kafka.sh`, which `./tests/run.sh` runs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::*;

/// Where the test broker is; fails (never skips) without it.
fn bootstrap() -> String {
    std::env::var("RATIFY_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "RATIFY_TEST_KAFKA is not set: start Kafka with `tests/infra/kafka.sh start .tmp/infra/kafka` \
             and eval its output (./tests/run.sh does this; see tests/infra/README.md)"
        )
    })
}

/// A name unique to this test run.
fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "sdk-{what}-{}-{}-{}",
        std::process::id(),
        now_unix_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn xid(n: u64) -> anyhow::Result<Xid> {
    Ok(Xid::new(
        format!(
            "{:016x}{:016x}",
            u64::from(std::process::id()),
            now_unix_ms() + n
        ),
        "1",
    )?)
}

/// Creates `topic` (one partition) with `settings`.
async fn create_topic(topic: &str, settings: &[(&str, &str)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in settings {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => anyhow::bail!("cannot create {t}: {code}"),
        }
    }
    Ok(())
}

/// A ledger topic whose cleanup policy can delete records (`delete`, or `compact,delete`)
/// may lose the adapter's newest marker, after which a restart would publish a branch
/// again: open refuses it and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_a_ledger_topic_that_is_not_compacted() -> anyhow::Result<()> {
    for policy in ["delete", "compact,delete"] {
        let topic = unique(&format!("ledger-{}", policy.replace(',', "-")));
        create_topic(&topic, &[("cleanup.policy", policy)]).await?;
        let dir = tempfile::tempdir()?;
        let mut config = KafkaConfig::new(bootstrap(), unique("tx"));
        config.ledger_topic = topic.clone();
        config.request_timeout = Duration::from_secs(10);
        match KafkaResource::open(dir.path(), config).await {
            Ok(_) => panic!("opened with a ledger topic of cleanup.policy={policy}"),
            Err(e) => {
                let m = e.to_string();
                for part in [
                    topic.as_str(),
                    policy,
                    "kafka-configs.sh",
                    "--add-config cleanup.policy=compact",
                ] {
                    assert!(m.contains(part), "error {m:?} does not mention {part:?}");
                }
                assert!(!e.is_retryable(), "{m}");
            }
        }
    }
    Ok(())
}

/// A restart's ledger catch-up reads to the end offsets taken at its start, so other
/// producers' transactions committing back to back on the same (shared) ledger cannot
/// keep it waiting: it finishes well within 2 s, and records what the ledger says this
/// adapter published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_catch_up_is_bounded_on_a_busy_ledger() -> anyhow::Result<()> {
    let ledger = unique("ledger-busy");
    let data = unique("data-busy");
    create_topic(&data, &[]).await?;
    let mut config = KafkaConfig::new(bootstrap(), unique("tx"));
    config.ledger_topic = ledger.clone();
    config.transaction_timeout = Duration::from_secs(10);
    config.request_timeout = Duration::from_secs(5);

    // Publish three branches, so the ledger holds this adapter's markers.
    let first = tempfile::tempdir()?;
    let adapter = KafkaResource::open(first.path(), config.clone()).await?;
    let mut xids = Vec::new();
    for n in 0..3 {
        let x = xid(n)?;
        adapter
            .branch(&x)?
            .send(KafkaRecord::new(&data, "k", format!("v{n}")))?;
        assert_eq!(adapter.prepare(&x).await?, Vote::Yes);
        assert_eq!(adapter.commit(&x, false).await?, CommitResult::Committed);
        xids.push(x);
    }
    drop(adapter);

    // Another transactional producer commits transactions on the ledger back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let busy = {
        let (stop, committed, ledger) = (Arc::clone(&stop), Arc::clone(&committed), ledger.clone());
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("transactional.id", unique("busy"))
            .set("transaction.timeout.ms", "10000")
            .set("linger.ms", "0")
            .create()?;
        producer.init_transactions(Duration::from_secs(10))?;
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                producer.begin_transaction()?;
                producer
                    .send(BaseRecord::to(&ledger).key("someone-else").payload("x"))
                    .map_err(|(e, _)| e)?;
                producer.commit_transaction(Duration::from_secs(10))?;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let warm = Instant::now();
    while committed.load(Ordering::Relaxed) < 20 {
        anyhow::ensure!(
            warm.elapsed() < Duration::from_secs(20),
            "the busy producer is stuck"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restart with a fresh stage folder: nothing is recorded locally, so only the
    // ledger read can tell that the three branches were published.
    let second = tempfile::tempdir()?;
    let before = committed.load(Ordering::Relaxed);
    let started = Instant::now();
    let reopened = KafkaResource::open(second.path(), config.clone()).await;
    let took = started.elapsed();
    let during = committed.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    busy.join()
        .map_err(|_| anyhow::anyhow!("busy producer panicked"))??;
    let reopened = reopened?;
    println!("restart took {took:?}; the other producer committed {during} transactions meanwhile");
    assert!(
        during > 0,
        "the other producer committed nothing during the restart"
    );
    assert!(
        took < Duration::from_secs(2),
        "restart took {took:?} while another producer committed {during} transactions"
    );
    for x in &xids {
        assert!(
            matches!(reopened.branch(x), Err(KafkaError::BranchClosed(_))),
            "{x} was not recorded as published"
        );
        assert_eq!(reopened.commit(x, false).await?, CommitResult::Committed);
    }
    drop(reopened);

    // A quiet ledger: its last record is a transaction's commit record, which delivers
    // no message, so the read must go by the consumer's position.
    let third = tempfile::tempdir()?;
    let started = Instant::now();
    let quiet = KafkaResource::open(third.path(), config).await?;
    let took = started.elapsed();
    println!("quiet restart took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "a quiet restart took {took:?}"
    );
    for x in &xids {
        assert!(matches!(quiet.branch(x), Err(KafkaError::BranchClosed(_))));
    }
    Ok(())
}

/// An adapter on a ledger and a data topic of its own.
async fn open_adapter(dir: &Path, what: &str) -> anyhow::Result<(Arc<KafkaResource>, String)> {
    let data = unique(&format!("data-{what}"));
    create_topic(&data, &[]).await?;
    let mut config = KafkaConfig::new(bootstrap(), unique("tx"));
    config.ledger_topic = unique(&format!("ledger-{what}"));
    config.transaction_timeout = Duration::from_secs(10);
    config.request_timeout = Duration::from_secs(10);
    Ok((KafkaResource::open(dir, config).await?, data))
}

/// A leader without one phase staged the single branch and died; the next one sends
/// a one-phase commit: the stage is published and the answer is COMMITTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_commit_of_a_prepared_branch_commits_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (adapter, data) = open_adapter(dir.path(), "op-prepared").await?;
    let x = xid(0)?;
    adapter
        .branch(&x)?
        .send(KafkaRecord::new(&data, "k", "v"))?;
    assert_eq!(adapter.prepare(&x).await?, Vote::Yes);
    assert_eq!(adapter.commit(&x, true).await?, CommitResult::Committed);
    assert_eq!(adapter.prepared_count(), 0);
    assert_eq!(
        adapter.commit(&x, true).await?,
        CommitResult::Committed,
        "retry"
    );
    assert_eq!(
        adapter.rollback(&x).await?,
        RollbackResult::AlreadyCommitted
    );
    Ok(())
}

/// A two-phase commit of a rolled-back staged branch is a heuristic answer
/// (ROLLED_BACK), not an error the coordinator would retry for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_phase_commit_of_a_rolled_back_branch_answers_rolled_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (adapter, data) = open_adapter(dir.path(), "commit-rb").await?;
    let x = xid(0)?;
    adapter
        .branch(&x)?
        .send(KafkaRecord::new(&data, "k", "v"))?;
    assert_eq!(adapter.prepare(&x).await?, Vote::Yes);
    assert_eq!(adapter.rollback(&x).await?, RollbackResult::RolledBack);
    assert_eq!(adapter.commit(&x, false).await?, CommitResult::RolledBack);
    assert_eq!(adapter.prepared_count(), 0);
    Ok(())
}

/// A retried prepare of a branch with no work answers READ_ONLY again (not YES, which
/// would make a later rollback look like a heuristic commit), and a rollback of it
/// answers ROLLED_BACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_prepare_of_a_read_only_branch_answers_read_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (adapter, _data) = open_adapter(dir.path(), "ro-retry").await?;
    let x = xid(0)?;
    adapter.branch(&x)?;
    assert_eq!(adapter.prepare(&x).await?, Vote::ReadOnly);
    assert_eq!(
        adapter.prepare(&x).await?,
        Vote::ReadOnly,
        "the retried prepare"
    );
    assert!(matches!(
        adapter.branch(&x),
        Err(KafkaError::BranchClosed(_))
    ));
    assert_eq!(adapter.commit(&x, false).await?, CommitResult::Committed);
    assert_eq!(adapter.rollback(&x).await?, RollbackResult::RolledBack);
    assert_eq!(adapter.prepared_count(), 0);
    Ok(())
}
