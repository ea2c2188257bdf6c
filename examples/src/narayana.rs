//! The Narayana JTA row of `pg_bank bench`: the same two-database transfer driven by an
//! in-process XA transaction manager (Narayana, pgjdbc's `PGXADataSource`, the file
//! object store with synced writes), measured by the Java harness in
//! `examples/narayana/` (see its README.md).
//!
//! [`prepare`] finds `java` and the harness jar (building it with Maven when needed) or
//! says why the row is skipped; [`run`] runs the jar and [`parse_output`] reads its
//! lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

/// The harness's Maven project (its `pom.xml` is in this folder).
pub const PROJECT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/narayana");

/// Environment variable naming a prebuilt harness jar (as `--narayana-jar`).
pub const JAR_ENV: &str = "RATIFY_NARAYANA_JAR";

/// A harness ready to run.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The `java` executable.
    pub java: PathBuf,
    /// The runnable jar (its dependencies in `lib/` beside it).
    pub jar: PathBuf,
}

/// One round of the harness: the `NARAYANA ...` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// Concurrent client threads.
    pub clients: usize,
    /// Committed transfers.
    pub done: u64,
    /// Failed (rolled back) transfers.
    pub failed: u64,
    /// Wall time of the round, s.
    pub secs: f64,
    /// Median latency of a committed transfer, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of a committed transfer, ms.
    pub p99_ms: f64,
    /// XA prepare calls that reached a database (two per two-phase transfer).
    pub prepares: u64,
    /// One-phase commits (0 when Narayana really ran 2PC).
    pub one_phase: u64,
}

impl Round {
    /// Committed transfers per second.
    pub fn tps(&self) -> f64 {
        if self.secs > 0.0 {
            self.done as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Everything the harness printed that matters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The `NARAYANA_CONFIG` line without its tag: version, store type, sync settings.
    pub config: String,
    /// One entry per round, in the order of the client counts asked for.
    pub rounds: Vec<Round>,
}

/// Reads the harness's stdout: one `NARAYANA_CONFIG k=v ...` line and one
/// `NARAYANA k=v ...` line per round; other lines are ignored.
///
/// # Errors
/// When a `NARAYANA` line lacks a field or has one that is not a number.
pub fn parse_output(stdout: &str) -> anyhow::Result<Report> {
    let mut report = Report::default();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("NARAYANA_CONFIG") => {
                report.config = words.collect::<Vec<_>>().join(" ");
            }
            Some("NARAYANA") => {
                let fields: std::collections::HashMap<&str, &str> =
                    words.filter_map(|w| w.split_once('=')).collect();
                fn field<T: std::str::FromStr>(
                    f: &std::collections::HashMap<&str, &str>,
                    k: &str,
                    line: &str,
                ) -> anyhow::Result<T> {
                    f.get(k)
                        .and_then(|v| v.parse().ok())
                        .with_context(|| format!("no number {k}= in harness line {line:?}"))
                }
                report.rounds.push(Round {
                    clients: field(&fields, "clients", line)?,
                    done: field(&fields, "done", line)?,
                    failed: field(&fields, "failed", line)?,
                    secs: field(&fields, "secs", line)?,
                    p50_ms: field(&fields, "p50_ms", line)?,
                    p99_ms: field(&fields, "p99_ms", line)?,
                    prepares: field(&fields, "prepares", line)?,
                    one_phase: field(&fields, "one_phase", line)?,
                });
            }
            _ => {}
        }
    }
    Ok(report)
}

/// `name` in a folder of `$PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Newest modification time of `path` and (for a folder) everything under it.
fn newest_mtime(path: &Path) -> std::io::Result<SystemTime> {
    let meta = std::fs::metadata(path)?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_mtime(&entry?.path())?);
        }
    }
    Ok(newest)
}

/// True when `jar` exists with its `lib/` and is newer than the project's sources.
fn up_to_date(project: &Path, jar: &Path) -> bool {
    let built = match std::fs::metadata(jar).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => return false,
    };
    let sources = newest_mtime(&project.join("pom.xml"))
        .and_then(|a| Ok(a.max(newest_mtime(&project.join("src"))?)));
    jar.with_file_name("lib").is_dir() && matches!(sources, Ok(s) if s <= built)
}

/// Runs `mvn -B -q [-o] -f <pom> package -DskipTests`; its first errors on failure.
async fn mvn_package(mvn: &Path, pom: &Path, offline: bool) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(mvn);
    cmd.args(["-B", "-q", "-Dstyle.color=never"]);
    if offline {
        cmd.arg("-o");
    }
    cmd.arg("-f")
        .arg(pom)
        .args(["package", "-DskipTests"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(600), cmd.output()).await {
        Err(_) => Err("mvn did not finish in 10 min".into()),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", mvn.display())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Maven's first errors say what broke; its last lines are boilerplate.
            let errors: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("[ERROR]") && l.len() > "[ERROR]".len())
                .take(3)
                .collect();
            let shown = if errors.is_empty() {
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                tail.into_iter().rev().collect()
            } else {
                errors
            };
            Err(format!(
                "mvn failed ({}): {}",
                out.status,
                shown.join(" | ")
            ))
        }
    }
}

/// Finds `java` and the harness jar: `explicit` (or `$RATIFY_NARAYANA_JAR`) if given,
/// else `examples/narayana/target/narayana-bench.jar`, built with Maven (offline first,
/// then online) when missing or older than its sources.
///
/// # Errors
/// The reason the Narayana row is skipped (no `java`, no `mvn`, a failed build, ...),
/// as one line for the report; this never fails the benchmark.
pub async fn prepare(explicit: Option<&Path>) -> Result<Harness, String> {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("java"))
        .ok_or("`java` is not on PATH (nor in $JAVA_HOME/bin)")?;
    let explicit = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(JAR_ENV).map(PathBuf::from));
    if let Some(jar) = explicit {
        if !jar.is_file() {
            return Err(format!("harness jar {} does not exist", jar.display()));
        }
        return Ok(Harness { java, jar });
    }
    let project = Path::new(PROJECT_DIR);
    let pom = project.join("pom.xml");
    if !pom.is_file() {
        return Err(format!(
            "{} is missing (pass --narayana-jar or set {JAR_ENV})",
            pom.display()
        ));
    }
    let jar = project.join("target/narayana-bench.jar");
    if up_to_date(project, &jar) {
        tracing::debug!(jar = %jar.display(), "Narayana harness is up to date");
        return Ok(Harness { java, jar });
    }
    let mvn = on_path("mvn").ok_or("`mvn` is not on PATH, so the harness cannot be built")?;
    eprintln!(
        "building the Narayana harness: mvn -q -f {} package -DskipTests",
        pom.display()
    );
    let started = std::time::Instant::now();
    if let Err(offline) = mvn_package(&mvn, &pom, true).await {
        tracing::info!(error = %offline, "offline Maven build failed; trying online");
        mvn_package(&mvn, &pom, false).await?;
    }
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        "Narayana harness built"
    );
    if !jar.is_file() {
        return Err(format!("mvn succeeded but {} is missing", jar.display()));
    }
    Ok(Harness { java, jar })
}

/// What [`run`] is asked to measure.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    /// Bank A (`postgres://` URL).
    pub a_url: &'a str,
    /// Bank B (`postgres://` URL).
    pub b_url: &'a str,
    /// Client counts, one round each.
    pub clients: &'a [usize],
    /// Seconds per round.
    pub secs: u64,
    /// Accounts per client partition (client `i` uses `i*per_client ..`).
    pub per_client: i32,
    /// Narayana's object store folder (created if missing).
    pub store: &'a Path,
}

/// Runs the harness once for every client count of `w` (after its own 1 s warm-up).
///
/// # Errors
/// When the JVM cannot start, the harness exits non-zero or hangs, or its rounds are
/// not one per client count of `w`, in order.
pub async fn run(h: &Harness, w: &Workload<'_>) -> anyhow::Result<Report> {
    let clients = w
        .clients
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = tokio::process::Command::new(&h.java);
    cmd.arg("-jar")
        .arg(&h.jar)
        .args(["--a", w.a_url, "--b", w.b_url, "--clients", &clients])
        .args(["--secs", &w.secs.to_string()])
        .args(["--per-client", &w.per_client.to_string()])
        .arg("--store")
        .arg(w.store)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let limit = Duration::from_secs(60 + (w.secs + 5) * w.clients.len() as u64);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("the Narayana harness did not finish in {limit:?}"))?
        .with_context(|| format!("cannot run {}", h.java.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        tracing::debug!(target: "narayana", "{line}");
    }
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "the Narayana harness exited with {}: {}",
            out.status,
            tail.join("\n")
        );
    }
    let report = parse_output(&String::from_utf8_lossy(&out.stdout))?;
    let got: Vec<usize> = report.rounds.iter().map(|r| r.clients).collect();
    anyhow::ensure!(
        got == w.clients,
        "the Narayana harness printed rounds for {got:?} clients, not {:?}",
        w.clients
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_lines_are_parsed() {
        let out = "NARAYANA_CONFIG version=7.3.4.Final store=x.ShadowNoFileLockStore object_store_sync=true\n\
                   noise\n\
                   NARAYANA clients=16 done=2000 failed=1 secs=5.044 p50_ms=38.289 p99_ms=90.668 prepares=4000 one_phase=0\n";
        let r = parse_output(out).expect("parses");
        assert!(r.config.starts_with("version=7.3.4.Final"));
        assert_eq!(r.rounds.len(), 1);
        let round = &r.rounds[0];
        assert_eq!((round.clients, round.done, round.failed), (16, 2000, 1));
        assert_eq!((round.prepares, round.one_phase), (4000, 0));
        assert!((round.tps() - 2000.0 / 5.044).abs() < 1e-9);
        assert!(parse_output("NARAYANA clients=1 done=x").is_err());
    }
}
