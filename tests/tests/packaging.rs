//! The container and Kubernetes files cannot run here (no container runtime), so
//! this checks what can be checked against the real binary: every `RATIFY_*`
//! variable they set is one `ratify node` reads, the Kubernetes start script and the
//! compose settings give the node the settings meant, and README's configuration
//! table lists every setting `ratify node --help` shows (README, "Containers and
//! Kubernetes").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use ratify_tests::ratify_binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(rel: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(repo().join(rel)).with_context(|| format!("reading {rel}"))
}

/// Every maximal `[A-Z0-9_]` word starting with `prefix` (and longer) in `text`.
fn words_with(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `RATIFY_*` in prose is no name.
        if end > prefix.len() && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The text between `[<tag>: ` and the next `=` or `]`, for every occurrence.
fn bracketed(help: &str, tag: &str) -> BTreeSet<String> {
    let open = format!("[{tag}: ");
    help.match_indices(&open)
        .filter_map(|(i, _)| {
            let rest = &help[i + open.len()..];
            let end = rest.find(['=', ']', ','])?;
            Some(rest[..end].trim().to_string())
        })
        .collect()
}

fn node_help() -> anyhow::Result<String> {
    let out = Command::new(ratify_binary()?)
        .args(["node", "--help"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ratify node --help failed");
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `ratify node --print-config` with exactly `env` (and no other `RATIFY_*`).
fn print_config(env: &[(String, String)]) -> anyhow::Result<toml::Table> {
    let mut cmd = Command::new(ratify_binary()?);
    cmd.args(["node", "--print-config"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("RATIFY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.envs(env.iter().map(|(k, v)| (k, v))).output()?;
    anyhow::ensure!(
        out.status.success(),
        "settings {env:?} refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(toml::from_str(&String::from_utf8(out.stdout)?)?)
}

#[test]
fn every_variable_the_deploy_files_set_is_one_the_node_reads() -> anyhow::Result<()> {
    let help = node_help()?;
    let known = bracketed(&help, "env");
    assert!(known.contains("RATIFY_PEERS") && known.contains("RATIFY_ID"));
    for file in [
        "Dockerfile",
        "deploy/docker-compose.yml",
        "deploy/kubernetes/ratify.yaml",
    ] {
        let text = read(file)?;
        let used = words_with(&text, "RATIFY_");
        assert!(!used.is_empty(), "{file} sets no RATIFY_ variable");
        for v in &used {
            assert!(
                known.contains(v),
                "{file} sets {v}, which `ratify node` does not read"
            );
        }
    }
    Ok(())
}

#[test]
fn the_readme_table_lists_every_setting() -> anyhow::Result<()> {
    let help = node_help()?;
    let readme = read("README.md")?;
    let start = readme
        .find("### Configuration")
        .context("README has no Configuration section")?;
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n### ").map_or(section.len(), |i| i + 3)];
    let table: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    for env in bracketed(&help, "env") {
        assert!(
            table.iter().any(|l| l.contains(&format!("`{env}`"))),
            "README's table lacks {env}"
        );
    }
    for key in bracketed(&help, "file") {
        assert!(
            table.iter().any(|l| l.contains(&format!("`{key}`"))),
            "README's table lacks file key {key}"
        );
    }
    // Every flag of the help (but --help and --print-config, which are no settings).
    let flags: BTreeSet<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '[', '=']).next())
        .filter(|f| !["help", "print-config"].contains(f))
        .collect();
    assert!(flags.len() > 20, "flags parsed from the help: {flags:?}");
    for f in flags {
        assert!(
            table.iter().any(|l| l.contains(&format!("`--{f}"))),
            "README's table lacks --{f}"
        );
    }
    // And names nothing the node does not read.
    for v in words_with(section, "RATIFY_") {
        assert!(
            bracketed(&help, "env").contains(&v),
            "README's Configuration names {v}, which the node does not read"
        );
    }
    Ok(())
}

/// The lines of the block that follows the line ending in `marker`: those indented
/// deeper than that line.
fn block_after<'a>(text: &'a str, marker: &str) -> anyhow::Result<Vec<&'a str>> {
    let mut lines = text.lines();
    let head = lines
        .by_ref()
        .find(|l| l.trim_end().ends_with(marker))
        .with_context(|| format!("no line ending in {marker:?}"))?;
    let indent = head.len() - head.trim_start().len();
    Ok(lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect())
}

#[test]
fn the_kubernetes_start_script_gives_each_pod_its_id_and_the_dns_peers() -> anyhow::Result<()> {
    let yaml = read("deploy/kubernetes/ratify.yaml")?;
    let script = block_after(&yaml, "- |")?.join("\n");
    assert!(script.contains("exec ratify node"), "{script}");
    // RATIFY_PEERS, folded (`>-`): lines joined by spaces; the namespace substituted
    // as Kubernetes does with $(POD_NAMESPACE).
    let peers = block_after(&yaml, "value: >-")?
        .join(" ")
        .replace("$(POD_NAMESPACE)", "prod");
    // The plain `{name: X, value: Y}` settings of the container.
    let mut env: Vec<(String, String)> = yaml
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("- {name: ")?.strip_suffix('}')?;
            let (k, v) = l.split_once(", value: ")?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .filter(|(k, _)| k.starts_with("RATIFY_"))
        .collect();
    env.push(("RATIFY_PEERS".into(), peers));
    let certs = make_certs("kubernetes")?;
    let at = certs.path().display().to_string();
    for (_, v) in &mut env {
        *v = v.replace(MOUNT, &at);
    }
    // A stand-in `ratify` first on PATH runs the real one with --print-config.
    let dir = tempfile::tempdir()?;
    let stub = dir.path().join("ratify");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --print-config\n",
            ratify_binary()?.display()
        ),
    )?;
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for (pod, id, init) in [("ratify-0", 1, true), ("ratify-2", 3, false)] {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&script);
        for (k, _) in std::env::vars() {
            if k.starts_with("RATIFY_") {
                cmd.env_remove(k);
            }
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = cmd
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("HOSTNAME", pod)
            .env("TLS_DIR", &at)
            .env("PATH", path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t: toml::Table = toml::from_str(&String::from_utf8(out.stdout)?)?;
        assert_eq!(
            t.get("id").and_then(toml::Value::as_integer),
            Some(id),
            "{pod}"
        );
        assert_eq!(
            t.get("init").and_then(toml::Value::as_bool),
            Some(init),
            "{pod}"
        );
        let peers = t
            .get("peers")
            .and_then(toml::Value::as_array)
            .context("peers")?;
        assert_eq!(peers.len(), 3, "{pod}: {peers:?}");
        for (i, p) in peers.iter().enumerate() {
            let want = format!(
                "{}=ratify-{i}.ratify.prod.svc.cluster.local:7001,ratify-{i}.ratify.prod.svc.cluster.local:7101",
                i + 1
            );
            assert_eq!(p.as_str(), Some(want.as_str()), "{pod}");
        }
        assert_eq!(
            t.get("api_addr").and_then(toml::Value::as_str),
            Some("0.0.0.0:7101")
        );
        assert_eq!(
            t.get("tls_cert").and_then(toml::Value::as_str),
            Some(format!("{at}/node-{id}.pem").as_str()),
            "{pod} presents its own certificate"
        );
    }
    Ok(())
}

/// Where the deploy files mount the certificates.
const MOUNT: &str = "/etc/ratify/tls";

/// `deploy/make-certs.sh` into a temporary folder.
fn make_certs(kind: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/make-certs.sh");
    let out = Command::new("/bin/sh")
        .arg(script)
        .arg(dir.path())
        .arg(kind)
        .arg("prod")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "make-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir)
}

#[test]
fn the_compose_settings_and_the_image_defaults_are_accepted() -> anyhow::Result<()> {
    let compose = read("deploy/docker-compose.yml")?;
    let dockerfile = read("Dockerfile")?;
    // The image's ENV block: `NAME=value` words from `ENV` to the next instruction.
    let env_block = dockerfile
        .split("\nENV ")
        .nth(1)
        .and_then(|b| b.split("\nVOLUME").next())
        .context("no ENV block in the Dockerfile")?;
    let image: Vec<(String, String)> = env_block
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| k.starts_with("RATIFY_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(image.len(), 7, "{image:?}");
    // The certificates the deploy files mount, made by the script they name.
    let certs = make_certs("compose")?;
    let at = certs.path().display().to_string();
    let peers = compose
        .lines()
        .find_map(|l| l.strip_prefix("x-peers: &peers "))
        .context("x-peers")?
        .trim_matches('"')
        .to_string();
    // Each service's `RATIFY_X: "v"` lines, in order; a service starts at `  ratifyN:`.
    let mut services: Vec<Vec<(String, String)>> = Vec::new();
    for line in compose.lines() {
        if line.starts_with("  ratify") && line.ends_with(':') {
            services.push(image.clone());
        } else if let (Some(s), Some((k, v))) = (services.last_mut(), line.trim().split_once(": "))
        {
            if k.starts_with("RATIFY_") {
                let v = if v == "*peers" {
                    peers.clone()
                } else {
                    v.trim_matches('"').to_string()
                };
                s.retain(|(old, _)| old != k);
                s.push((k.to_string(), v));
            }
        }
    }
    assert_eq!(services.len(), 3);
    for (i, env) in services.iter().enumerate() {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace(MOUNT, &at)))
            .collect();
        let t = print_config(&env)?;
        let n = i as i64 + 1;
        assert_eq!(t.get("id").and_then(toml::Value::as_integer), Some(n));
        assert_eq!(t.get("init").and_then(toml::Value::as_bool), Some(n == 1));
        let api = format!("0.0.0.0:710{n}");
        assert_eq!(
            t.get("api_addr").and_then(toml::Value::as_str),
            Some(api.as_str())
        );
        let peers = t
            .get("peers")
            .and_then(toml::Value::as_array)
            .context("peers")?;
        let own = format!("{n}=ratify{n}:7001,ratify{n}:710{n}");
        assert!(
            peers.iter().any(|p| p.as_str() == Some(own.as_str())),
            "node {n} is not among its peers as {own}: {peers:?}"
        );
        // It presents its own certificate, and its health check probes its own API
        // port.
        assert_eq!(
            t.get("tls_cert").and_then(toml::Value::as_str),
            Some(format!("{at}/node-{n}.pem").as_str())
        );
        assert!(
            compose.contains(&format!("\"127.0.0.1:710{n}\", \"--tls-cert\"")),
            "no health check on port 710{n}"
        );
    }
    Ok(())
}
