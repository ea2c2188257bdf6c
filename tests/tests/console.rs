//! The web console in a real browser: headless Chromium (Debian's package, installed by
//! `tests/infra/chromium.sh`) loads the console of a live 3-node cluster with
//! transactions in flight and one branch stuck in phase 2, and the rendered page must
//! show the leader, the live count and the stuck transaction. The screenshot is saved
//! under `target/test-output/console/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_participant_sdk::client::BeginOptions;
use ratify_proto::pb;
use ratify_tests::{must_commit, Bank, TestCluster};
use serde_json::Value;

/// The headless browser, from `RATIFY_CHROMIUM` (the test fails without it).
fn chromium() -> anyhow::Result<PathBuf> {
    std::env::var_os("RATIFY_CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .context(
            "RATIFY_CHROMIUM is not set (or does not exist): this test needs headless \
             Chromium. Run ./tests/run.sh, or \
             `eval \"$(tests/infra/chromium.sh start .tmp/infra/chromium)\"` first \
             (see tests/infra/README.md)",
        )
}

/// `target/test-output/console/` (next to the `debug` folder holding this test).
fn output_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("unexpected test executable location")?;
    let dir = target.join("test-output").join("console");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Votes YES, commits bqual 1 and never bqual 2: a branch stuck in phase 2.
struct StuckSecondBranch;

#[tonic::async_trait]
impl pb::participant_server::Participant for StuckSecondBranch {
    async fn prepare(
        &self,
        _r: tonic::Request<pb::PrepareRequest>,
    ) -> Result<tonic::Response<pb::PrepareResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            detail: String::new(),
        }))
    }
    async fn commit(
        &self,
        r: tonic::Request<pb::BranchCommitRequest>,
    ) -> Result<tonic::Response<pb::BranchCommitResponse>, tonic::Status> {
        if r.get_ref().xid.as_ref().is_some_and(|x| x.bqual == "2") {
            return Err(tonic::Status::unavailable(
                "ledger volume offline <check the SAN>",
            ));
        }
        Ok(tonic::Response::new(pb::BranchCommitResponse {
            result: pb::BranchCommitResult::Committed as i32,
            detail: String::new(),
        }))
    }
    async fn rollback(
        &self,
        _r: tonic::Request<pb::BranchRollbackRequest>,
    ) -> Result<tonic::Response<pb::BranchRollbackResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchRollbackResponse {
            result: pb::BranchRollbackResult::RolledBack as i32,
            detail: String::new(),
        }))
    }
    async fn recover(
        &self,
        _r: tonic::Request<pb::RecoverRequest>,
    ) -> Result<tonic::Response<pb::RecoverResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::RecoverResponse::default()))
    }
}

/// Takes a minute to vote YES (the node's prepare timeout is longer): its
/// transactions stay PREPARING while the test looks.
struct SlowVoter;

#[tonic::async_trait]
impl pb::participant_server::Participant for SlowVoter {
    async fn prepare(
        &self,
        _r: tonic::Request<pb::PrepareRequest>,
    ) -> Result<tonic::Response<pb::PrepareResponse>, tonic::Status> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(tonic::Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            detail: String::new(),
        }))
    }
    async fn commit(
        &self,
        _r: tonic::Request<pb::BranchCommitRequest>,
    ) -> Result<tonic::Response<pb::BranchCommitResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchCommitResponse {
            result: pb::BranchCommitResult::Committed as i32,
            detail: String::new(),
        }))
    }
    async fn rollback(
        &self,
        _r: tonic::Request<pb::BranchRollbackRequest>,
    ) -> Result<tonic::Response<pb::BranchRollbackResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::BranchRollbackResponse {
            result: pb::BranchRollbackResult::RolledBack as i32,
            detail: String::new(),
        }))
    }
    async fn recover(
        &self,
        _r: tonic::Request<pb::RecoverRequest>,
    ) -> Result<tonic::Response<pb::RecoverResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::RecoverResponse::default()))
    }
}

/// `GET http://addr{path}` (HTTP/1.0, as a script would): status line and body.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut raw)).await??;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header")?;
    Ok((head.to_string(), body.to_string()))
}

/// The console document of the node at `addr`.
async fn console_json(addr: &str) -> anyhow::Result<Value> {
    let (head, body) = http_get(addr, "/api/v1/console").await?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    anyhow::ensure!(
        head.to_ascii_lowercase().contains("application/json"),
        "{head}"
    );
    Ok(serde_json::from_str(&body)?)
}

/// Runs headless Chromium on `url` with `args`, returns its stdout.
async fn run_chromium(
    browser: &Path,
    profile: &Path,
    url: &str,
    args: &[String],
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .context("chromium did not finish within 90 s")??;
    anyhow::ensure!(
        out.status.success(),
        "chromium {args:?} {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The text of the element with `id` in a dumped DOM (up to its first child tag).
fn text_of<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let len = rest[start..].find('<')?;
    Some(rest[start..start + len].trim())
}

/// The part of a dumped DOM from the element with `id` to the end of its table body.
fn tbody<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("<tbody id=\"{id}\""))?;
    let len = dom[at..].find("</tbody>")?;
    Some(&dom[at..at + len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_leader_the_live_transactions_and_the_stuck_one() -> anyhow::Result<()>
{
    let browser = chromium()?;
    let out = output_dir()?;
    let c = TestCluster::start(&["--prepare-timeout-ms", "120000"]).await?;
    let leader = c.leader().await?;
    let follower = c.follower(leader)?;
    let bank = Arc::new(Bank::open(&c).await?);
    let stuck_ep = ratify_tests::serve_fake_participant(StuckSecondBranch).await?;
    let slow_ep = ratify_tests::serve_fake_participant(SlowVoter).await?;

    // Traffic for the decisions chart: transfers between the banks for a few seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (bank, client, stop) = (bank.clone(), c.client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut commits) = (0usize, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = bank.transfer(&client, n % 10, (n + 3) % 10, 1).await?;
                // Mostly commits, some rollbacks: both colours on the chart.
                if n % 6 == 5 {
                    client.rollback(&t.gtrid).await?;
                } else {
                    must_commit(&client.commit(&t.gtrid).await?);
                    commits += 1;
                }
                n += 1;
            }
            anyhow::Ok(commits)
        })
    };

    // The stuck one: both branches vote YES, the second never commits.
    let stuck = c
        .client
        .begin(BeginOptions {
            timeout: Duration::from_secs(120),
            labels: HashMap::from([("order".to_string(), "A-1041".to_string())]),
            branches: vec![
                (stuck_ep.clone(), "ledger".into()),
                (stuck_ep.clone(), "journal".into()),
            ],
        })
        .await?;
    must_commit(&c.client.commit(&stuck.gtrid).await?);
    // In flight: five ACTIVE (begun, not committed yet) and two PREPARING (slow votes).
    for i in 0..5 {
        c.client
            .begin(BeginOptions {
                timeout: Duration::from_secs(120),
                labels: HashMap::from([("client".to_string(), format!("checkout-{i}"))]),
                branches: bank.branches(),
            })
            .await?;
    }
    for _ in 0..2 {
        let t = c
            .client
            .begin(BeginOptions {
                timeout: Duration::from_secs(120),
                branches: vec![
                    (slow_ep.clone(), "inventory".into()),
                    (slow_ep.clone(), "shipping".into()),
                ],
                ..Default::default()
            })
            .await?;
        let client = c.client.clone();
        drop(tokio::spawn(async move { client.commit(&t.gtrid).await }));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let commits = load.await??;
    assert!(commits > 0, "no traffic");

    // The JSON first (what a script sees): 8 live, the stuck one needs a person.
    let leader_metrics = c.nodes.metrics_addr(leader)?;
    let start = Instant::now();
    let doc = loop {
        let doc = console_json(&leader_metrics).await?;
        let live = doc["transactions"]["live"].as_u64();
        let flagged = doc["needs_attention"]["listed"]
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|t| {
                    t["gtrid"] == stuck.gtrid.as_str()
                        && t["branches"][1]["failed_calls"].as_u64() > Some(0)
                })
            });
        if live == Some(8) && flagged && doc["transactions"]["by_state"]["PREPARING"] == 2 {
            break doc;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the console document never showed 8 live and the stuck transaction: {doc:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(doc["node"]["role"], "leader", "{doc:#}");
    assert_eq!(doc["node"]["leader_id"], leader, "{doc:#}");
    assert_eq!(doc["transactions"]["by_state"]["ACTIVE"], 5, "{doc:#}");
    assert_eq!(doc["transactions"]["by_state"]["COMMITTED"], 1, "{doc:#}");
    assert_eq!(doc["needs_attention"]["count"], 1, "{doc:#}");
    assert!(
        doc["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["lag"].is_u64())),
        "the leader shows every member's lag: {doc:#}"
    );
    assert!(
        doc["decisions"]["commit_total"].as_u64() > Some(commits),
        "{doc:#}"
    );
    assert!(
        doc["participants"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["endpoint"] == stuck_ep.as_str() && p["failing_branches"] == 1)),
        "{doc:#}"
    );

    // The page in the browser, on the leader: the DOM after the script ran.
    let profile = c.dir.path().join("chromium-profile");
    let url = format!("http://{leader_metrics}/");
    let dom = run_chromium(&browser, &profile, &url, &["--dump-dom".to_string()]).await?;
    std::fs::write(out.join("leader-dom.html"), &dom)?;
    assert_eq!(text_of(&dom, "node-role"), Some("leader"), "{dom}");
    assert_eq!(
        text_of(&dom, "leader-id"),
        Some(leader.to_string().as_str()),
        "{dom}"
    );
    assert_eq!(text_of(&dom, "live-count"), Some("8"), "{dom}");
    assert_eq!(text_of(&dom, "attention-count"), Some("1"), "{dom}");
    let attention = tbody(&dom, "attention").context("no attention table")?;
    assert!(
        attention.contains(&stuck.gtrid),
        "the stuck transaction is not shown: {attention}"
    );
    assert!(attention.contains("failing ×"), "{attention}");
    // Markup in an error from the network is shown as text.
    assert!(
        attention.contains("ledger volume offline &lt;check the SAN&gt;"),
        "{attention}"
    );
    assert!(!dom.contains("<check the SAN>"), "{dom}");

    let shot = out.join("console.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &profile,
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000".to_string(),
        ],
    )
    .await?;
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    anyhow::ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a screenshot: {} bytes",
        png.len()
    );
    eprintln!("console screenshot: {}", shot.display());

    // A follower's page: its own view, naming the leader.
    let url = format!("http://{}/", c.nodes.metrics_addr(follower)?);
    let dom = run_chromium(&browser, &profile, &url, &["--dump-dom".to_string()]).await?;
    std::fs::write(out.join("follower-dom.html"), &dom)?;
    assert_eq!(text_of(&dom, "node-role"), Some("follower"), "{dom}");
    assert_eq!(
        text_of(&dom, "node-id"),
        Some(follower.to_string().as_str()),
        "{dom}"
    );
    assert_eq!(
        text_of(&dom, "leader-id"),
        Some(leader.to_string().as_str()),
        "{dom}"
    );
    Ok(())
}
