//! A Kafka participant in its own process, so tests can SIGKILL it at a fail point and
//! start it again on the same port, stage folder and `transactional.id`.
//!
//! It hosts a [`KafkaResource`] as resource `kafka` on `--listen`, runs the recovery
//! loop against `--coordinator`, prints `ready` on stdout, then takes work on stdin,
//! one JSON object per line:
//! `{"xid": "52544659.<gtrid>.<bqual>", "records": [{"topic", "key", "value",
//! "headers": {..}}], "offsets": [{"group", "topic", "partition", "offset"}]}`
//! and answers each with `ok` or `error <message>` on stdout. Exits when stdin closes.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ratify_participant_sdk::adapters::kafka::{
    KafkaConfig, KafkaOffset, KafkaRecord, KafkaResource,
};
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::xid::Xid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser, Debug)]
#[command(about = "Kafka participant process for Ratify's tests")]
struct Args {
    /// Address to serve the participant service on (fixed, so a restart keeps it).
    #[arg(long)]
    listen: String,
    /// Stage folder.
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap: String,
    /// The adapter's transactional.id.
    #[arg(long)]
    transactional_id: String,
    /// Coordinator API addresses (for the recovery loop).
    #[arg(long, value_delimiter = ',')]
    coordinator: Vec<String>,
    /// Recovery loop interval.
    #[arg(long, default_value_t = 300)]
    recovery_ms: u64,
}

#[derive(serde::Deserialize)]
struct Work {
    xid: String,
    #[serde(default)]
    records: Vec<Rec>,
    #[serde(default)]
    offsets: Vec<Off>,
}

#[derive(serde::Deserialize)]
struct Rec {
    topic: String,
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Off {
    group: String,
    topic: String,
    partition: i32,
    offset: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ratify_tests::init_logging_stderr();
    let args = Args::parse();
    let mut config = KafkaConfig::new(&args.bootstrap, &args.transactional_id);
    config.transaction_timeout = Duration::from_secs(20);
    config.request_timeout = Duration::from_secs(10);
    let resource = KafkaResource::open(&args.data_dir, config)
        .await
        .context("opening the kafka adapter")?;
    let as_resource: std::sync::Arc<dyn Resource> = resource.clone();
    let _participant = ratify_participant_sdk::App::builder()
        .coordinators(args.coordinator.clone())
        .listen(&args.listen)
        .recovery_interval(Duration::from_millis(args.recovery_ms))
        .resource("kafka", as_resource)
        .start()
        .await
        .with_context(|| format!("serving on {}", args.listen))?;
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match stage(&resource, &line) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error {e:#}").replace('\n', " "),
        };
        out.write_all(answer.as_bytes()).await?;
        out.write_all(b"\n").await?;
        out.flush().await?;
    }
    Ok(())
}

fn stage(resource: &std::sync::Arc<KafkaResource>, line: &str) -> anyhow::Result<()> {
    let work: Work = serde_json::from_str(line)?;
    let xid: Xid = work.xid.parse()?;
    let branch = resource.branch(&xid)?;
    for r in work.records {
        let mut rec = KafkaRecord {
            topic: r.topic,
            partition: None,
            key: r.key.map(String::into_bytes),
            value: r.value.map(String::into_bytes),
            headers: Vec::new(),
        };
        for (k, v) in r.headers {
            rec = rec.header(k, v);
        }
        branch.send(rec)?;
    }
    for o in work.offsets {
        branch.commit_offset(KafkaOffset {
            group: o.group,
            topic: o.topic,
            partition: o.partition,
            offset: o.offset,
        })?;
    }
    Ok(())
}
