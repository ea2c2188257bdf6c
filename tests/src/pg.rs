//! Postgres fixtures: the server started by `tests/infra/postgres.sh` (killable and
//! restartable), the two-database bank of the `pg_bank` example, and `pg_bank
//! participant` processes that tests SIGKILL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_examples::pg_bank::{self, BankDbs};

/// Opening balance of every bank account in these tests.
pub const PG_BALANCE: i64 = 1_000;
/// Accounts per bank in these tests.
pub const PG_ACCOUNTS: i32 = 10;

/// The server as `tests/infra/postgres.sh start` exported it.
#[derive(Debug, Clone)]
pub struct PgEnv {
    /// URL of the `postgres` database.
    pub url: String,
    /// Data directory.
    pub data: PathBuf,
    /// `pg_ctl`.
    pub pg_ctl: PathBuf,
    /// Postmaster options (`pg_ctl -o`).
    pub opts: String,
    /// Server log.
    pub log: PathBuf,
    /// User to run `pg_ctl` as; empty means the current user.
    pub run_as: String,
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!(
            "{name} is not set: these tests need the Postgres server of tests/infra/postgres.sh. \
             Run ./tests/run.sh, or `eval \"$(tests/infra/postgres.sh start .tmp/infra/postgres)\"` \
             first (see tests/infra/README.md)"
        )
    })
}

impl PgEnv {
    /// Reads the exported variables.
    ///
    /// # Errors
    /// A clear message naming `tests/infra` when one is missing (tests fail, never skip).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            url: var("RATIFY_TEST_PG_URL")?,
            data: var("RATIFY_TEST_PG_DATA")?.into(),
            pg_ctl: var("RATIFY_TEST_PG_CTL")?.into(),
            opts: var("RATIFY_TEST_PG_OPTS")?,
            log: var("RATIFY_TEST_PG_LOG")?.into(),
            run_as: std::env::var("RATIFY_TEST_PG_RUN_AS").unwrap_or_default(),
        })
    }

    /// SIGKILLs the postmaster (its children notice and exit on their own).
    ///
    /// # Errors
    /// When its pid cannot be read or signalled.
    pub fn kill_postmaster(&self) -> anyhow::Result<()> {
        let pidfile = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("read {}", pidfile.display()))?;
        let pid: i32 = text
            .lines()
            .next()
            .context("empty postmaster.pid")?
            .trim()
            .parse()?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        anyhow::ensure!(rc == 0, "kill -9 {pid} failed");
        Ok(())
    }

    /// Starts the server again (after [`Self::kill_postmaster`]), retrying while the
    /// old backends are still exiting.
    ///
    /// # Errors
    /// When it does not start within 120 s.
    pub fn start_postmaster(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.remove_stale_pidfile()?;
            let status = self
                .pg_ctl()
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-l"])
                .arg(&self.log)
                .arg("-o")
                .arg(&self.opts)
                .arg("start")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                return Ok(());
            }
            // pg_ctl gives up waiting while crash recovery is still running, and a
            // second start then finds the first one's lock file: if a live postmaster
            // holds it, wait for that one. (Not `pg_ctl status`: it takes the killed
            // postmaster, a zombie not reaped yet, for a running server.)
            if self.postmaster_alive() {
                return self.wait_ready(start);
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(120),
                "postgres did not restart; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl PgEnv {
    /// `pg_ctl`, run as the server's user.
    fn pg_ctl(&self) -> Command {
        if self.run_as.is_empty() {
            Command::new(&self.pg_ctl)
        } else {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(&self.run_as).arg("--").arg(&self.pg_ctl);
            c
        }
    }

    /// Deletes `postmaster.pid` when the process it names is gone or a zombie.
    ///
    /// After a SIGKILL the postmaster is re-parented (pg_ctl has exited) and, in
    /// containers whose init does not reap, stays a zombie; Postgres then sees its pid
    /// alive and refuses to start ("lock file already exists"). A zombie holds no
    /// shared memory and no files, so the lock is stale.
    fn remove_stale_pidfile(&self) -> anyhow::Result<()> {
        let pidfile = self.data.join("postmaster.pid");
        if pidfile.exists() && !self.postmaster_alive() {
            std::fs::remove_file(&pidfile)?;
        }
        Ok(())
    }

    /// Is the process `postmaster.pid` names alive (neither gone nor a zombie)?
    fn postmaster_alive(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        let Some(pid) = text.lines().next().map(str::trim) else {
            return false;
        };
        let Ok(state) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Field 3 of /proc/<pid>/stat, after the parenthesised command name.
        state
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    }

    /// Waits until the server accepts connections (crash recovery done).
    fn wait_ready(&self, start: Instant) -> anyhow::Result<()> {
        let isready = self.pg_ctl.with_file_name("pg_isready");
        loop {
            let ok = Command::new(&isready)
                .args(["-d", &self.url, "-t", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(120),
                "postgres did not get ready; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Tests share one server; the one that kills it takes this lock for writing, every
/// other Postgres test for reading.
pub fn server_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: OnceLock<tokio::sync::RwLock<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::RwLock::new(()))
}

/// Fresh bank databases `<name>_<pid>_{a,b}` with [`PG_ACCOUNTS`] accounts of
/// [`PG_BALANCE`].
///
/// # Errors
/// Connection or SQL failures.
pub async fn fresh_bank(env: &PgEnv, name: &str) -> anyhow::Result<BankDbs> {
    let dbs = BankDbs::new(&env.url, &format!("{name}_{}", std::process::id()))?;
    pg_bank::setup(&env.url, &dbs, PG_ACCOUNTS, PG_BALANCE).await?;
    Ok(dbs)
}

/// Sum over both banks.
///
/// # Errors
/// Connection or SQL failures.
pub async fn bank_total(dbs: &BankDbs) -> anyhow::Result<i64> {
    Ok(pg_bank::total(&dbs.a_url).await? + pg_bank::total(&dbs.b_url).await?)
}

/// The total the banks open with.
pub fn opening_total() -> i64 {
    2 * i64::from(PG_ACCOUNTS) * PG_BALANCE
}

/// Prepared gids of both banks.
///
/// # Errors
/// Connection or SQL failures.
pub async fn prepared(dbs: &BankDbs) -> anyhow::Result<Vec<String>> {
    let mut g = pg_bank::prepared_gids(&dbs.a_url).await?;
    g.extend(pg_bank::prepared_gids(&dbs.b_url).await?);
    Ok(g)
}

/// Waits until neither bank holds a prepared transaction.
///
/// # Errors
/// When some are still prepared after `timeout`.
pub async fn wait_no_prepared(dbs: &BankDbs, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        // The server may be restarting: count connection errors as "not yet".
        if let Ok(g) = prepared(dbs).await {
            if g.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "still prepared after {timeout:?}: {g:?}"
            );
        } else {
            anyhow::ensure!(
                start.elapsed() < timeout,
                "postgres unreachable for {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` transactions are prepared across both banks, and returns their gids.
///
/// # Errors
/// When fewer are prepared after `timeout`.
pub async fn wait_prepared(
    dbs: &BankDbs,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let start = Instant::now();
    loop {
        let g = prepared(dbs).await?;
        if g.len() >= n {
            return Ok(g);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "only {g:?} prepared after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fence rows of global transaction `gtrid` in both banks: (gid, state).
///
/// # Errors
/// Connection or SQL failures.
pub async fn fence_rows(dbs: &BankDbs, gtrid: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for url in [&dbs.a_url, &dbs.b_url] {
        let c = pg_bank::connect(url).await?;
        for r in c
            .query(
                "SELECT gid, state::text FROM ratify_fence WHERE strpos(gid, $1) > 0 ORDER BY gid",
                &[&gtrid],
            )
            .await?
        {
            out.push((r.get(0), r.get(1)));
        }
    }
    Ok(out)
}

/// The `pg_bank` example binary next to the `ratify` binary.
///
/// # Errors
/// When it has not been built (`cargo build -p ratify-examples --bin pg_bank`; the
/// README's test command does).
pub fn pg_bank_binary() -> anyhow::Result<PathBuf> {
    crate::example_binary("pg_bank", "PG_BANK_BIN")
}

/// How to run a `pg_bank participant` process.
#[derive(Debug, Clone)]
pub struct ParticipantSpec {
    /// Base Postgres URL.
    pub pg_url: String,
    /// Bank database prefix.
    pub db_prefix: String,
    /// Coordinator API endpoints.
    pub coordinators: Vec<String>,
    /// `127.0.0.1:<port>`, kept across restarts.
    pub listen: String,
    /// Log folder.
    pub dir: PathBuf,
}

/// A running `pg_bank participant` process; SIGKILLed on drop.
pub struct ParticipantProc {
    /// The process.
    child: Child,
    /// Its stdout lines.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ParticipantProc {
    /// Starts it with `transfers` transfers of 10 from A's account 1 to B's account 2,
    /// the fail points `failpoints` (`RATIFY_FAILPOINTS`) and a recovery loop every
    /// `recovery_ms` (0: none), and waits until it serves.
    ///
    /// # Errors
    /// When it cannot be spawned or does not get ready in 20 s.
    pub async fn start(
        spec: &ParticipantSpec,
        transfers: u64,
        failpoints: &str,
        recovery_ms: u64,
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.join("participant.log"))?;
        let mut cmd = Command::new(pg_bank_binary()?);
        cmd.arg("participant")
            .args(["--pg-url", &spec.pg_url, "--db-prefix", &spec.db_prefix])
            .args(["--listen", &spec.listen])
            .args(["--transfers", &transfers.to_string()])
            .args(["--recovery-interval-ms", &recovery_ms.to_string()]);
        for c in &spec.coordinators {
            cmd.args(["--coordinator", c]);
        }
        cmd.env("RATIFY_FAILPOINTS", failpoints)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Self { child, lines };
        p.wait_line("ready", Duration::from_secs(20)).await?;
        Ok(p)
    }

    /// Waits for the next stdout line starting with `prefix` and returns the rest.
    ///
    /// # Errors
    /// When none comes within `timeout` or the process closes stdout.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .with_context(|| format!("no {prefix:?} line within {timeout:?}"))?
                .with_context(|| format!("participant exited before printing {prefix:?}"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Waits for the process to exit (for example at a `kill` fail point).
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.child.try_wait()?.is_none() {
            anyhow::ensure!(
                start.elapsed() < timeout,
                "participant still running after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ParticipantProc {
    fn drop(&mut self) {
        self.kill();
    }
}
