//! `ratify-dev bench`: global transactions per second and commit latency on a 3-node
//! cluster with two no-op durable participants, at several client counts, next to a
//! baseline measured in the same run (one lone fdatasync on the same disk), and the
//! CPU time every process of the run (the three nodes, and this one: the clients and
//! both participants) spent per committed transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ratify_devkit::noop::NoopResource;
use ratify_participant_sdk::client::{BeginOptions, ClientConfig, CoordinatorClient, Outcome};
use ratify_participant_sdk::durable::DurableSled;
use ratify_participant_sdk::resource::Resource;

use ratify_devkit::latency::Latencies;

/// Flags of `ratify-dev bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Concurrent clients for each round (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds per round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Extra flag for every node, e.g. `--node-arg=--propose-pipeline=1` (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Mutual TLS on every connection (a throwaway CA), as a deployment runs;
    /// default plaintext on loopback, to compare with earlier figures.
    #[arg(long)]
    tls: bool,
}

/// Median latency of a lone small write + fdatasync on the data disk.
async fn fsync_baseline(dir: &std::path::Path) -> anyhow::Result<f64> {
    let d = DurableSled::open(dir.join("fsync-baseline"))?;
    let mut l = Latencies::default();
    for i in 0..200u32 {
        d.db().insert(i.to_be_bytes(), vec![0u8; 64])?;
        let t = Instant::now();
        d.sync().await?;
        l.record(t.elapsed());
    }
    Ok(l.percentile_ms(50.0))
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds used so far by this process and every node process.
fn cpu_now(cluster: &ratify_devkit::local::LocalCluster) -> f64 {
    let nodes: f64 = cluster
        .ids()
        .into_iter()
        .filter_map(|id| cluster.pid(id))
        .map(|pid| cpu_seconds(&pid.to_string()))
        .sum();
    nodes + cpu_seconds("self")
}

/// Runs the benchmark and prints a table.
pub(crate) async fn run(a: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run `cargo run --release -p ratify-devkit -- bench` for real figures");
    }
    let tmp = tempfile::tempdir()?;
    let fsync_ms = fsync_baseline(tmp.path()).await?;
    println!("baseline: lone fdatasync p50 = {fsync_ms:.3} ms");
    let cluster =
        crate::start_cluster(&tmp.path().join("cluster"), 3, a.node_args.clone(), a.tls).await?;
    println!(
        "transport: {}",
        if a.tls {
            "mutual TLS"
        } else {
            "plaintext (loopback)"
        }
    );
    let client = CoordinatorClient::new(
        cluster.api_endpoints(),
        ClientConfig {
            transport: cluster.transport(),
            ..ClientConfig::default()
        },
    )?;
    let p1: Arc<dyn Resource> = Arc::new(NoopResource::open(tmp.path().join("p1"))?);
    let p2: Arc<dyn Resource> = Arc::new(NoopResource::open(tmp.path().join("p2"))?);
    let part1 = crate::workload::host(&cluster, "noop-1", "noop", p1).await?;
    let part2 = crate::workload::host(&cluster, "noop-2", "noop", p2).await?;
    let branches = vec![
        (part1.endpoint.clone(), "noop".to_string()),
        (part2.endpoint.clone(), "noop".to_string()),
    ];

    // Warm-up: connections, first elections, caches.
    run_round(&client, &branches, 4, Duration::from_secs(1)).await?;

    println!();
    println!("| clients | txn/s | commit p50 ms | commit p99 ms | begin+commit p50 ms | begin+commit p99 ms | commit p50 / fsync | CPU ms / txn | commands / Raft entry | Raft entry ms | aborted |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &c in &a.clients {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let before = cluster.metrics(leader).await?;
        let cpu_before = cpu_now(&cluster);
        let r = run_round(&client, &branches, c, Duration::from_secs(a.duration)).await?;
        let cpu = cpu_now(&cluster) - cpu_before;
        let after = cluster.metrics(leader).await?;
        let delta = |k: &str| after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0);
        let entries = delta("ratify_proposals_total").max(1.0);
        let per_entry = delta("ratify_proposed_commands_total") / entries;
        let entry_ms = delta("ratify_proposal_seconds_total") * 1e3 / entries;
        let row = serde_json::json!({
            "clients": c,
            "txn_per_s": r.committed as f64 / r.elapsed.as_secs_f64(),
            "commit_p50_ms": r.commit.percentile_ms(50.0),
            "commit_p99_ms": r.commit.percentile_ms(99.0),
            "total_p50_ms": r.total.percentile_ms(50.0),
            "total_p99_ms": r.total.percentile_ms(99.0),
            "aborted": r.aborted,
            "fsync_p50_ms": fsync_ms,
            "commands_per_raft_entry": per_entry,
            "raft_entry_ms": entry_ms,
            "cpu_ms_per_txn": cpu * 1e3 / (r.committed.max(1) as f64),
        });
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {per_entry:.1} | {entry_ms:.2} | {} |",
            row["txn_per_s"].as_f64().unwrap_or(0.0),
            row["commit_p50_ms"].as_f64().unwrap_or(0.0),
            row["commit_p99_ms"].as_f64().unwrap_or(0.0),
            row["total_p50_ms"].as_f64().unwrap_or(0.0),
            row["total_p99_ms"].as_f64().unwrap_or(0.0),
            row["commit_p50_ms"].as_f64().unwrap_or(0.0) / fsync_ms.max(1e-6),
            row["cpu_ms_per_txn"].as_f64().unwrap_or(0.0),
            r.aborted
        );
        rows.push(row);
    }
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    }
    drop((part1, part2, cluster));
    Ok(())
}

struct Round {
    committed: u64,
    aborted: u64,
    elapsed: Duration,
    commit: Latencies,
    total: Latencies,
}

async fn run_round(
    client: &CoordinatorClient,
    branches: &[(String, String)],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Round> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let branches = branches.to_vec();
        tasks.push(tokio::spawn(async move {
            let (mut committed, mut aborted) = (0u64, 0u64);
            let (mut commit, mut total) = (Latencies::default(), Latencies::default());
            while Instant::now() < end {
                let t0 = Instant::now();
                let begun = client
                    .begin(BeginOptions {
                        branches: branches.clone(),
                        ..Default::default()
                    })
                    .await?;
                let t1 = Instant::now();
                let d = client.commit(&begun.gtrid).await?;
                commit.record(t1.elapsed());
                total.record(t0.elapsed());
                if d.outcome == Outcome::Committed {
                    committed += 1;
                } else {
                    aborted += 1;
                }
            }
            anyhow::Ok((committed, aborted, commit, total))
        }));
    }
    let mut round = Round {
        committed: 0,
        aborted: 0,
        elapsed: Duration::ZERO,
        commit: Latencies::default(),
        total: Latencies::default(),
    };
    for t in tasks {
        let (c, ab, cl, tl) = t.await??;
        round.committed += c;
        round.aborted += ab;
        round.commit.extend(&cl);
        round.total.extend(&tl);
    }
    round.elapsed = start.elapsed();
    Ok(round)
}
