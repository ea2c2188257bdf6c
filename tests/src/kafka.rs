//! Kafka fixtures: the broker started by `tests/infra/kafka.sh`, the independent
//! checker (`KafkaCheck`, plain Apache Kafka Java clients, `read_committed`) that the
//! exactly-once assertions count with, and the Kafka participant process
//! (`kafka_participant`) that tests SIGKILL at fail points.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Variable holding the broker's bootstrap address.
pub const KAFKA_VAR: &str = "RATIFY_TEST_KAFKA";
/// Variable holding the checker's Java class path.
pub const CHECK_CP_VAR: &str = "RATIFY_TEST_KAFKA_CHECK_CP";

fn required_var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow::anyhow!(
            "{name} is not set: this test needs Apache Kafka. Run ./tests/run.sh, or \
             `eval \"$(tests/infra/kafka.sh start .tmp/infra/kafka)\"` first (see tests/infra/README.md)"
        )
    })
}

/// The test broker's bootstrap address.
///
/// # Errors
/// When [`KAFKA_VAR`] is missing: the test fails, it never skips.
pub fn bootstrap() -> anyhow::Result<String> {
    required_var(KAFKA_VAR)
}

/// One record as the checker saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SeenRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key as UTF-8.
    pub key: Option<String>,
    /// Value as UTF-8.
    pub value: Option<String>,
    /// Headers.
    pub headers: BTreeMap<String, Option<String>>,
}

#[derive(serde::Deserialize)]
struct ReadOutput {
    records: Vec<SeenRecord>,
}

async fn check(args: &[&str]) -> anyhow::Result<String> {
    let cp = required_var(CHECK_CP_VAR)?;
    let out = Command::new("java")
        .arg("-cp")
        .arg(&cp)
        .arg("KafkaCheck")
        .args(args)
        .output()
        .await
        .context("running java KafkaCheck")?;
    if !out.status.success() {
        bail!(
            "KafkaCheck {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Creates `topic` with `partitions` partitions (idempotent).
///
/// # Errors
/// When the checker fails.
pub async fn create_topic(topic: &str, partitions: u32) -> anyhow::Result<()> {
    check(&["create", &bootstrap()?, topic, &partitions.to_string()]).await?;
    Ok(())
}

/// Every record of `topic` that a `read_committed` Java consumer sees, from the
/// beginning to the last stable offsets.
///
/// # Errors
/// When the checker fails or prints garbage.
pub async fn read_committed(topic: &str) -> anyhow::Result<Vec<SeenRecord>> {
    let out = check(&["read", &bootstrap()?, topic]).await?;
    Ok(serde_json::from_str::<ReadOutput>(&out)
        .with_context(|| format!("checker output: {out}"))?
        .records)
}

/// How many times each value appears in `topic` (read_committed).
///
/// # Errors
/// As [`read_committed`].
pub async fn value_counts(topic: &str) -> anyhow::Result<HashMap<String, usize>> {
    let mut counts = HashMap::new();
    for r in read_committed(topic).await? {
        *counts.entry(r.value.unwrap_or_default()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Per partition of `topic` (`"topic/partition"`), how far the high watermark is
/// above the last stable offset: all zero means no transaction is open on it.
///
/// # Errors
/// When the checker fails or prints garbage.
pub async fn open_transactions(topic: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let out = check(&["open", &bootstrap()?, topic]).await?;
    serde_json::from_str(&out).with_context(|| format!("checker output: {out}"))
}

/// The committed offsets of `group`, as `"topic/partition" → offset`.
///
/// # Errors
/// When the checker fails or prints garbage.
pub async fn group_offsets(group: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let out = check(&["offsets", &bootstrap()?, group]).await?;
    serde_json::from_str(&out).with_context(|| format!("checker output: {out}"))
}

/// Path of the `kafka_participant` binary, which cargo builds next to the test
/// executables (`target/<profile>/`) for this crate's integration tests.
///
/// # Errors
/// When it is missing.
pub fn participant_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("unexpected test executable location")?
        .join("kafka_participant");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p ratify-tests --bin kafka_participant`",
        bin.display()
    );
    Ok(bin)
}

/// A `kafka_participant` process: fixed port, stage folder and `transactional.id`, so
/// it can be killed and started again as the same participant.
pub struct KafkaParticipant {
    /// `host:port` to enlist.
    pub endpoint: String,
    /// Stage folder.
    pub data_dir: PathBuf,
    /// Its `transactional.id`.
    pub transactional_id: String,
    /// Coordinator addresses for its recovery loop.
    coordinators: Vec<String>,
    /// The process, while running.
    child: Option<Child>,
    /// Its stdin (work) and stdout (answers).
    io: Option<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
    /// Its stderr goes here (appended across restarts).
    pub log: PathBuf,
}

impl KafkaParticipant {
    /// Starts a participant with `failpoints` (a `RATIFY_FAILPOINTS` value, may be
    /// empty) and waits until it is serving.
    ///
    /// # Errors
    /// When the process cannot start or does not get ready in 60 s.
    pub async fn start(
        dir: &Path,
        name: &str,
        transactional_id: &str,
        coordinators: Vec<String>,
        failpoints: &str,
    ) -> anyhow::Result<Self> {
        let port = ratify_devkit::local::free_port()?;
        let mut p = Self {
            endpoint: format!("127.0.0.1:{port}"),
            data_dir: dir.join(format!("{name}-stage")),
            transactional_id: transactional_id.to_string(),
            coordinators,
            child: None,
            io: None,
            log: dir.join(format!("{name}.log")),
        };
        p.restart(failpoints).await?;
        Ok(p)
    }

    /// (Re)starts the process on the same port, folder and id, with `failpoints`.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn restart(&mut self, failpoints: &str) -> anyhow::Result<()> {
        self.kill().await;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(participant_binary()?);
        cmd.arg("--listen")
            .arg(&self.endpoint)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--bootstrap")
            .arg(bootstrap()?)
            .arg("--transactional-id")
            .arg(&self.transactional_id)
            .arg("--coordinator")
            .arg(self.coordinators.join(","))
            .env(ratify_common::failpoint::ENV_VAR, failpoints)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().context("spawning kafka_participant")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(l))) if l == "ready" => {}
            other => bail!(
                "kafka_participant did not get ready ({other:?}); log: {}",
                self.log_text()
            ),
        }
        self.child = Some(child);
        self.io = Some((stdin, lines));
        Ok(())
    }

    /// Registers work for branch `xid`: records as (topic, key, value), and consumer
    /// offsets as (group, topic, partition, offset).
    ///
    /// # Errors
    /// When the process refuses or is gone.
    pub async fn stage(
        &mut self,
        xid: &ratify_participant_sdk::xid::Xid,
        records: &[(&str, &str, &str)],
        offsets: &[(&str, &str, i32, i64)],
    ) -> anyhow::Result<()> {
        let work = serde_json::json!({
            "xid": xid.render(),
            "records": records.iter().map(|(t, k, v)| serde_json::json!({
                "topic": t, "key": k, "value": v, "headers": {"gtrid": xid.gtrid()}
            })).collect::<Vec<_>>(),
            "offsets": offsets.iter().map(|(g, t, p, o)| serde_json::json!({
                "group": g, "topic": t, "partition": p, "offset": o
            })).collect::<Vec<_>>(),
        });
        let (stdin, lines) = self.io.as_mut().context("participant is not running")?;
        stdin.write_all(format!("{work}\n").as_bytes()).await?;
        stdin.flush().await?;
        match lines.next_line().await? {
            Some(l) if l == "ok" => Ok(()),
            other => bail!("staging refused: {other:?}"),
        }
    }

    /// Waits until the process exits by itself (a `kill` fail point fired).
    ///
    /// # Errors
    /// When it is still running after `timeout`, or was not running.
    pub async fn wait_killed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let child = self.child.as_mut().context("participant is not running")?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| format!("participant still running after {timeout:?}"))??;
        self.child = None;
        self.io = None;
        anyhow::ensure!(!status.success(), "participant exited cleanly: {status}");
        Ok(())
    }

    /// SIGKILLs the process (no-op when it is not running).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self.io = None;
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    ///
    /// # Errors
    /// When it does not within `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{needle:?} not in the participant log after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
