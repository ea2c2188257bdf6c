//! `ratify-dev demo`: the main job on embedded defaults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rand::Rng;
use ratify_devkit::accounts::AccountStore;
use ratify_participant_sdk::client::{
    BeginOptions, ClientConfig, ClientError, CoordinatorClient, Outcome,
};
use ratify_participant_sdk::resource::Resource;

/// Flags of `ratify-dev demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// How long the transfer workload runs, in seconds.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// SIGKILL the leader this many seconds in (0: never).
    #[arg(long, default_value_t = 5)]
    kill_after: u64,
    /// Accounts per participant.
    #[arg(long, default_value_t = 50)]
    accounts: usize,
    /// Keep the cluster's data here instead of a temp dir.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const INITIAL: i64 = 1_000;

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    aborted: AtomicU64,
    unknown: AtomicU64,
    begin_failed: AtomicU64,
}

/// Runs the demo; exits non-zero (an error) if an invariant is broken.
pub(crate) async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    println!(
        "== Ratify demo: 3 coordinator processes, 2 account participants, {} clients, {} s",
        a.clients, a.duration
    );
    println!("   data and node logs in {}", dir.display());
    // Mutual TLS everywhere, with a CA made for the run (README, "Security").
    let mut cluster = crate::start_cluster(&dir.join("cluster"), 3, vec![], true).await?;
    let endpoints = cluster.api_endpoints();
    let client = CoordinatorClient::new(
        endpoints.clone(),
        ClientConfig {
            transport: cluster.transport(),
            ..ClientConfig::default()
        },
    )?;

    let bank_a = AccountStore::open(dir.join("bank-a"))?;
    let bank_b = AccountStore::open(dir.join("bank-b"))?;
    bank_a
        .open_numbered_accounts("acct", a.accounts, INITIAL)
        .await?;
    bank_b
        .open_numbered_accounts("acct", a.accounts, INITIAL)
        .await?;
    let expected_total = bank_a.total()? + bank_b.total()?;
    let res_a: Arc<dyn Resource> = bank_a.clone();
    let res_b: Arc<dyn Resource> = bank_b.clone();
    let part_a = crate::workload::host(&cluster, "bank-a", "accounts", res_a).await?;
    let part_b = crate::workload::host(&cluster, "bank-b", "accounts", res_b).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    println!("   cluster up, leader is node {leader}; total balance {expected_total}");
    println!(
        "   mutual TLS on every connection (a CA made for this run, in {})",
        dir.join("cluster").join("tls").display()
    );

    let counters = Arc::new(Counters::default());
    // Completion times of commits, to find the longest stall around the leader kill.
    let commit_times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let client = client.clone();
        let (bank_a, bank_b) = (bank_a.clone(), bank_b.clone());
        let (ep_a, ep_b) = (part_a.endpoint.clone(), part_b.endpoint.clone());
        let counters = counters.clone();
        let commit_times = commit_times.clone();
        let accounts = a.accounts;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let (from_a, acct_a, acct_b, amount) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_bool(0.5),
                        rng.gen_range(0..accounts),
                        rng.gen_range(0..accounts),
                        rng.gen_range(1..=400),
                    )
                };
                let opts = BeginOptions {
                    timeout: Duration::from_secs(10),
                    branches: vec![
                        (ep_a.clone(), "accounts".into()),
                        (ep_b.clone(), "accounts".into()),
                    ],
                    ..Default::default()
                };
                let begun = match client.begin(opts).await {
                    Ok(b) => b,
                    Err(_) => {
                        counters.begin_failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let (Some(xa), Some(xb)) = (begun.branches.first(), begun.branches.get(1)) else {
                    continue;
                };
                let work = (|| {
                    let ba = bank_a.branch(&xa.xid)?;
                    let bb = bank_b.branch(&xb.xid)?;
                    let (name_a, name_b) = (format!("acct{acct_a}"), format!("acct{acct_b}"));
                    if from_a {
                        ba.debit(&name_a, amount)?;
                        bb.credit(&name_b, amount)
                    } else {
                        bb.debit(&name_b, amount)?;
                        ba.credit(&name_a, amount)
                    }
                })();
                if work.is_err() {
                    let _ = client.rollback(&begun.gtrid).await;
                    counters.aborted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match client.commit(&begun.gtrid).await {
                    Ok(d) if d.outcome == Outcome::Committed => {
                        counters.committed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut t) = commit_times.lock() {
                            t.push(Instant::now());
                        }
                    }
                    Ok(_) => {
                        counters.aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ClientError::DeadlineExceeded { .. }) | Err(_) => {
                        counters.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut killed_at = None;
    let mut restarted = false;
    let mut last = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let secs = start.elapsed().as_secs();
        if a.kill_after > 0 && killed_at.is_none() && secs >= a.kill_after {
            let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
            cluster.kill(leader)?;
            killed_at = Some((Instant::now(), leader));
            println!("   [{secs:>3}s] SIGKILLed the leader, node {leader}");
        }
        if let Some((at, id)) = killed_at {
            if !restarted && at.elapsed() >= Duration::from_secs(4) {
                cluster.restart(id)?;
                restarted = true;
                println!("   [{secs:>3}s] restarted node {id}; it rejoins as a follower");
            }
        }
        if secs > last {
            last = secs;
            let c = counters.committed.load(Ordering::Relaxed);
            let ab = counters.aborted.load(Ordering::Relaxed);
            println!(
                "   [{secs:>3}s] committed {c:>7}  aborted {ab:>5}  ({:.0} txn/s)",
                c as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();

    println!("   workload done; waiting for every branch to settle");
    let settle = Instant::now();
    let mut settled = false;
    while settle.elapsed() < Duration::from_secs(30) {
        let live = match cluster.wait_for_leader(Duration::from_secs(5)).await {
            Ok(l) => cluster
                .status(l)
                .await
                .map(|s| s.live_transactions)
                .unwrap_or(u64::MAX),
            Err(_) => u64::MAX,
        };
        if live == 0 && bank_a.prepared_count() == 0 && bank_b.prepared_count() == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = bank_a.total()? + bank_b.total()?;

    let failover = killed_at.map(|(at, _)| {
        let times = commit_times.lock().map(|t| t.clone()).unwrap_or_default();
        let before = times
            .iter()
            .filter(|t| **t <= at)
            .max()
            .copied()
            .unwrap_or(at);
        let after = times.iter().filter(|t| **t > at).min().copied();
        after.map(|a| a.duration_since(before))
    });
    let c = counters.committed.load(Ordering::Relaxed);
    println!();
    println!("== Summary");
    println!("   committed            {c}");
    println!(
        "   aborted              {}  (insufficient funds, lock conflicts, timeouts)",
        counters.aborted.load(Ordering::Relaxed)
    );
    println!(
        "   outcome unknown      {}  (client deadline expired; resolved by the cluster)",
        counters.unknown.load(Ordering::Relaxed)
    );
    println!(
        "   begin failed         {}",
        counters.begin_failed.load(Ordering::Relaxed)
    );
    println!(
        "   throughput           {:.0} committed txn/s over {:.1} s",
        c as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    match failover {
        Some(Some(d)) => println!(
            "   failover             {:.0} ms without a commit after the leader kill",
            d.as_secs_f64() * 1000.0
        ),
        Some(None) => println!("   failover             no commit after the leader kill!"),
        None => println!("   failover             (no leader kill)"),
    }
    println!(
        "   in-doubt left        {}",
        if settled {
            "none"
        } else {
            "SOME (not settled in 30 s)"
        }
    );
    println!(
        "   total balance        {total} (expected {expected_total}) {}",
        if total == expected_total {
            "conserved"
        } else {
            "BROKEN"
        }
    );
    drop((part_a, part_b));
    cluster.kill_all();
    anyhow::ensure!(
        total == expected_total,
        "atomicity violated: total balance changed"
    );
    anyhow::ensure!(settled, "branches still in doubt after 30 s");
    anyhow::ensure!(c > 0, "nothing committed");
    if let Some(None) = failover {
        anyhow::bail!("no commit succeeded after the leader kill");
    }
    println!("   OK");
    drop(tmp);
    Ok(())
}
