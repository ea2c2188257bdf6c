//! `ratify node`'s settings (README, "Configuration"): a 3-node cluster configured
//! by environment variables alone, with every address a DNS name (`localhost`),
//! elects a leader; flag > environment > file > default; unknown file keys and bad
//! values stop the node at start with a message naming them.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_devkit::local::{free_port, node_status};
use ratify_tests::ratify_binary;

/// A `ratify node` command with no flags and none of this process's `RATIFY_*`
/// variables (the test gives each its own).
fn node_cmd() -> anyhow::Result<Command> {
    let mut cmd = Command::new(ratify_binary()?);
    cmd.arg("node").arg("--insecure").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("RATIFY_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    Ok(cmd)
}

/// Runs `ratify node --print-config` with `env` and `flags`; its stdout (the
/// resolved settings as TOML).
fn print_config(env: &[(&str, &str)], flags: &[&str]) -> anyhow::Result<toml::Table> {
    let out = node_cmd()?
        .arg("--print-config")
        .args(flags)
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "--print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(toml::from_str(&String::from_utf8(out.stdout)?)?)
}

/// Runs `ratify node` with `env` and `flags`, expecting it to refuse to start;
/// its stderr.
fn refused(env: &[(&str, &str)], flags: &[&str]) -> anyhow::Result<String> {
    let mut child = node_cmd()?
        .args(flags)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            anyhow::bail!("node with {env:?} {flags:?} did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = child.wait_with_output()?;
    anyhow::ensure!(
        !out.status.success(),
        "node with {env:?} {flags:?} exited 0"
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn int(t: &toml::Table, key: &str) -> i64 {
    t.get(key).and_then(toml::Value::as_integer).unwrap_or(-1)
}

#[test]
fn a_flag_wins_over_the_environment_which_wins_over_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "id = 3\nraft_addr = \"localhost:7001\"\napi_addr = \"localhost:7101\"\n\
         data_dir = \"/var/lib/ratify\"\nprepare_timeout_ms = 111\nmax_live_txns = 7\n\
         one_phase = false\npeers = [\"3=localhost:7001,localhost:7101\"]\n\
         log_format = \"json\"\n",
    )?;
    let path = file.to_string_lossy().into_owned();
    let env_all = [
        ("RATIFY_CONFIG", path.as_str()),
        ("RATIFY_PREPARE_TIMEOUT_MS", "222"),
        ("RATIFY_ID", "2"),
        ("RATIFY_ONE_PHASE", "true"),
        (
            "RATIFY_PEERS",
            "1=127.0.0.1:7001,127.0.0.1:7101; 2=127.0.0.2:7001,127.0.0.2:7101",
        ),
        ("RATIFY_LOG_FORMAT", "text"),
    ];
    // Flag over environment.
    let t = print_config(&env_all, &["--prepare-timeout-ms=333", "--id=1"])?;
    assert_eq!(int(&t, "prepare_timeout_ms"), 333);
    assert_eq!(int(&t, "id"), 1);
    // Environment over file.
    let t = print_config(&env_all, &[])?;
    assert_eq!(int(&t, "prepare_timeout_ms"), 222);
    assert_eq!(int(&t, "id"), 2);
    assert_eq!(t.get("one_phase"), Some(&toml::Value::Boolean(true)));
    assert_eq!(t.get("log_format").and_then(|v| v.as_str()), Some("text"));
    let peers = t
        .get("peers")
        .and_then(toml::Value::as_array)
        .context("peers")?;
    assert_eq!(peers.len(), 2, "RATIFY_PEERS split on ';': {peers:?}");
    // File over default; default where nothing says.
    let t = print_config(&[("RATIFY_CONFIG", &path)], &[])?;
    assert_eq!(int(&t, "prepare_timeout_ms"), 111);
    assert_eq!(int(&t, "max_live_txns"), 7);
    assert_eq!(int(&t, "id"), 3);
    assert_eq!(t.get("one_phase"), Some(&toml::Value::Boolean(false)));
    assert_eq!(t.get("log_format").and_then(|v| v.as_str()), Some("json"));
    assert_eq!(int(&t, "default_txn_timeout_ms"), 30_000);
    // The printed settings are a file the node accepts, and say the same.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, toml::to_string(&t)?)?;
    let t2 = print_config(&[], &["--config", &again.to_string_lossy()])?;
    assert_eq!(t, t2);
    Ok(())
}

#[test]
fn unknown_keys_and_bad_values_are_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "id = 1\nprepare_timeout = 5\n")?;
    let e = refused(&[], &["--config", &file.to_string_lossy()])?;
    assert!(
        e.contains("prepare_timeout") && e.contains("typo.toml") && e.contains("unknown field"),
        "{e}"
    );

    let data = dir.path().join("data").to_string_lossy().into_owned();
    let base = [
        ("RATIFY_ID", "1"),
        ("RATIFY_RAFT_ADDR", "127.0.0.1:0"),
        ("RATIFY_API_ADDR", "127.0.0.1:0"),
        ("RATIFY_DATA_DIR", data.as_str()),
    ];
    let cases: &[(&str, &str, &str)] = &[
        ("RATIFY_ID", "0", "non-zero"),
        ("RATIFY_ID", "one", "RATIFY_ID=one"),
        ("RATIFY_RAFT_ADDR", "nonsense", "--raft-addr"),
        ("RATIFY_PEERS", "1=localhost:7001", "ID=RAFT_ADDR,API_ADDR"),
        ("RATIFY_INIT", "perhaps", "RATIFY_INIT=perhaps"),
        (
            "RATIFY_RETAIN_OUTCOMES_MIN",
            "3000000",
            "--retain-outcomes-max",
        ),
        ("RATIFY_SNAPSHOT_EVERY", "1", "--snapshot-every"),
        ("RATIFY_LOG_FORMAT", "xml", "xml"),
        // Well formed, but no such host: refused when the node binds.
        (
            "RATIFY_API_ADDR",
            "no-such-host.invalid:7101",
            "no-such-host.invalid:7101",
        ),
    ];
    for (key, value, want) in cases {
        let mut env: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| k != key).collect();
        env.push((key, value));
        let e = refused(&env, &[])?;
        assert!(
            e.contains(want),
            "{key}={value}: {e:?} does not say {want:?}"
        );
    }
    Ok(())
}

/// Kills the nodes when the test ends, however it ends.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_env_node(dir: &Path, id: u64, raft: u16, api: u16, peers: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("node{id}.log")))?;
    let mut cmd = node_cmd()?;
    cmd.env("RATIFY_ID", id.to_string())
        .env("RATIFY_RAFT_ADDR", format!("localhost:{raft}"))
        .env("RATIFY_API_ADDR", format!("localhost:{api}"))
        .env("RATIFY_DATA_DIR", dir.join(format!("node{id}")))
        .env("RATIFY_PEERS", peers)
        .env("RATIFY_METRICS_ADDR", "")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    if id == 1 {
        cmd.env("RATIFY_INIT", "true");
    }
    Ok(cmd.spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_configured_by_environment_with_host_names_elect_a_leader() -> anyhow::Result<()>
{
    let dir = tempfile::Builder::new().prefix("ratify-env-").tempdir()?;
    let ports: Vec<(u64, u16, u16)> = (1..=3)
        .map(|id| Ok((id, free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    // Separated by `;` and new lines, as a YAML block would write them.
    let peers = ports
        .iter()
        .map(|(id, r, a)| format!("{id}=localhost:{r},localhost:{a}"))
        .collect::<Vec<_>>()
        .join(";\n  ");
    let mut nodes = Nodes(Vec::new());
    for &(id, r, a) in &ports {
        nodes.0.push(spawn_env_node(dir.path(), id, r, a, &peers)?);
    }
    let start = Instant::now();
    let leader = 'found: loop {
        for &(id, _, a) in &ports {
            if let Ok(s) = node_status(&format!("localhost:{a}"), &Default::default()).await {
                if s.role == "Leader" && s.leader_id == id && s.cluster_id != "0000000000000000" {
                    break 'found id;
                }
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            let logs: String = (1..=3)
                .map(|id| {
                    std::fs::read_to_string(dir.path().join(format!("node{id}.log")))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n---\n");
            anyhow::bail!("no leader within 20 s; logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every node knows the leader, and the followers name it by its host name.
    for &(id, _, a) in &ports {
        let s = node_status(&format!("localhost:{a}"), &Default::default()).await?;
        assert_eq!(s.leader_id, leader, "node {id}");
    }
    let (_, _, leader_api) = ports
        .iter()
        .find(|(id, _, _)| *id == leader)
        .context("leader ports")?;
    let follower = ports
        .iter()
        .find(|(id, _, _)| *id != leader)
        .context("a follower")?;
    let client = ratify_participant_sdk::client::CoordinatorClient::new(
        vec![format!("localhost:{}", follower.2)],
        ratify_participant_sdk::client::ClientConfig::default(),
    )?;
    // The Raft port serves neither health nor reflection (only the internal service).
    let (_, leader_raft, _) = ports
        .iter()
        .find(|(id, _, _)| *id == leader)
        .context("leader ports")?;
    let raft = tonic::transport::Endpoint::from_shared(format!("http://localhost:{leader_raft}"))?
        .connect()
        .await?;
    let answer = tonic_health::pb::health_client::HealthClient::new(raft)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert_eq!(
        answer.as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::Unimplemented),
        "health on the Raft port: {answer:?}"
    );
    // A call to the follower is redirected to `localhost:<leader api>` and served.
    let page = client.list(None, 10, "").await?;
    assert!(page.transactions.is_empty());
    eprintln!(
        "leader {leader} at localhost:{leader_api} after {:?}",
        start.elapsed()
    );
    Ok(())
}
