//! `ratify node`'s settings. Every one is a flag, an environment variable
//! (`RATIFY_<FLAG>`, named in each flag's help) and a key of the optional TOML file
//! (`--config`), taken in that order: a flag wins over the environment, the
//! environment over the file, the file over the default. The logging settings are
//! global flags of `ratify` (`--log-format`, `--log-filter`, `--otlp-endpoint`) and
//! file keys as well. Everything is checked before the node starts: an unknown file
//! key, a value of the wrong type or out of range stops it with a message naming the
//! setting (README, "Configuration").

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::driver::DriverConfig;
use crate::server::NodeConfig;
use crate::telemetry::{LogFormat, Telemetry, TelemetryConfig, TelemetryError};
use crate::types::{NodeId, NodeInfo};

/// A setting that is missing, malformed or out of range; the message names it (the
/// flag, the environment variable and the file key) and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Result of reading settings.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(ConfigError(format!($($arg)*))) };
}

macro_rules! config_error {
    ($($arg:tt)*) => { ConfigError(format!($($arg)*)) };
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { bail!($($arg)*); } };
}

/// Adds what was being read to an error or turns a missing value into one (the few
/// uses `anyhow::Context` had here).
trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| ConfigError(format!("{what}: {e}")))
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| ConfigError(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| ConfigError(what.to_string()))
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| ConfigError(what().to_string()))
    }
}

/// Parses the command line, with two rules for the environment: a `RATIFY_*`
/// variable set to the empty string counts as unset, and when a value is refused the
/// variables that flags read and that are set are listed after clap's message (which
/// names the flag, not the variable the value came from).
pub fn parse_cli<P: clap::Parser>() -> P {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(k, v)| k.to_string_lossy().starts_with("RATIFY_") && v.is_empty())
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // Still single-threaded: nothing else reads the environment yet.
        std::env::remove_var(k);
    }
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            use clap::error::ErrorKind;
            let shown = matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            let _ = e.print();
            if !shown {
                let mut names = BTreeSet::new();
                env_names(&P::command(), &mut names);
                let set: Vec<String> = std::env::vars()
                    .filter(|(k, _)| names.contains(k))
                    .map(|(k, v)| format!("  {k}={v}"))
                    .collect();
                if !set.is_empty() {
                    eprintln!(
                        "\nSettings may come from these environment variables:\n{}",
                        set.join("\n")
                    );
                }
            }
            std::process::exit(e.exit_code());
        }
    }
}

/// The environment variables `cmd` and its subcommands read.
fn env_names(cmd: &clap::Command, out: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments() {
        if let Some(name) = arg.get_env() {
            out.insert(name.to_string_lossy().into_owned());
        }
    }
    for sub in cmd.get_subcommands() {
        env_names(sub, out);
    }
}

/// Flags of `ratify node`.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML file with any of these settings under their file keys (the flag's name
    /// with `_` for `-`; `peers` is a list); an unknown key is refused.
    #[arg(long, env = "RATIFY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the settings the node would run with (flags, environment, file and
    /// defaults resolved, checked) as a TOML file, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This node's id (non-zero, unique in the cluster). [file: id]
    #[arg(long, env = "RATIFY_ID")]
    id: Option<NodeId>,
    /// Listen address for Raft traffic from the other nodes (ip:port, or host:port
    /// with a name that resolves, e.g. 0.0.0.0:7001). [file: raft_addr]
    #[arg(long, env = "RATIFY_RAFT_ADDR", value_name = "HOST:PORT")]
    raft_addr: Option<String>,
    /// Listen address for clients and participants, also serving gRPC health and
    /// reflection (ip:port or host:port). [file: api_addr]
    #[arg(long, env = "RATIFY_API_ADDR", value_name = "HOST:PORT")]
    api_addr: Option<String>,
    /// Serve Prometheus metrics and the web console at http://ADDR/ (off when
    /// unset). [file: metrics_addr]
    #[arg(long, env = "RATIFY_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Source IP for Raft connections to peers (fault-injection tests tell nodes apart
    /// by it on loopback; default: the OS picks). [file: raft_source_ip]
    #[arg(long, env = "RATIFY_RAFT_SOURCE_IP", value_name = "IP")]
    raft_source_ip: Option<IpAddr>,
    /// Folder for this node's log and snapshots (one node per folder). [file: data_dir]
    #[arg(long, env = "RATIFY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A cluster member as ID=RAFT_ADDR,API_ADDR, the addresses the other nodes and
    /// clients reach it at (host names allowed); repeat for each, this node included.
    /// In RATIFY_PEERS, separate members with `;` or spaces. [file: peers, a list]
    #[arg(
        long = "peer",
        env = "RATIFY_PEERS",
        value_name = "ID=RAFT_ADDR,API_ADDR"
    )]
    peers: Vec<String>,
    /// Initialise the cluster with the peers if it never was (one node only; default
    /// false). [file: init]
    #[arg(long, env = "RATIFY_INIT", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    init: Option<bool>,
    /// How long a participant may take to vote before it counts as unreachable
    /// (default 5000). [file: prepare_timeout_ms]
    #[arg(long, env = "RATIFY_PREPARE_TIMEOUT_MS", value_name = "MS")]
    prepare_timeout_ms: Option<u64>,
    /// Timeout of transactions whose client sets none (default 30000, at most
    /// 3600000). [file: default_txn_timeout_ms]
    #[arg(long, env = "RATIFY_DEFAULT_TXN_TIMEOUT_MS", value_name = "MS")]
    default_txn_timeout_ms: Option<u64>,
    /// Commit single-branch transactions in one phase (default true). [file: one_phase]
    #[arg(long, env = "RATIFY_ONE_PHASE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    one_phase: Option<bool>,
    /// Same as --one-phase=false.
    #[arg(long, conflicts_with = "one_phase")]
    no_one_phase: bool,
    /// Raft entries the leader keeps in flight; requests arriving meanwhile share the
    /// next entry (default 2). [file: propose_pipeline]
    #[arg(long, env = "RATIFY_PROPOSE_PIPELINE", value_name = "N")]
    propose_pipeline: Option<usize>,
    /// How long a log write may take before its callers are told to retry (default
    /// 5000). [file: propose_timeout_ms]
    #[arg(long, env = "RATIFY_PROPOSE_TIMEOUT_MS", value_name = "MS")]
    propose_timeout_ms: Option<u64>,
    /// Build a snapshot every this many log entries and purge the log behind it
    /// (default 20000, at least 10). [file: snapshot_every]
    #[arg(long, env = "RATIFY_SNAPSHOT_EVERY", value_name = "N")]
    snapshot_every: Option<u64>,
    /// Keep completed outcomes for late questions at least this long (default 86400,
    /// 24 h), within --retain-outcomes-max. [file: retain_outcomes_secs]
    #[arg(long, env = "RATIFY_RETAIN_OUTCOMES_SECS", value_name = "SECS")]
    retain_outcomes_secs: Option<u64>,
    /// Keep at least this many of the newest completed outcomes, whatever their age
    /// (default 200000). [file: retain_outcomes_min]
    #[arg(long, env = "RATIFY_RETAIN_OUTCOMES_MIN", value_name = "N")]
    retain_outcomes_min: Option<u64>,
    /// Never keep more than this many completed outcomes (the memory bound; default
    /// 2000000, at least --retain-outcomes-min). Outcomes it evicts before the time
    /// floor are counted in the metrics. [file: retain_outcomes_max]
    #[arg(long, env = "RATIFY_RETAIN_OUTCOMES_MAX", value_name = "N")]
    retain_outcomes_max: Option<u64>,
    /// Most live (not completed) transactions; Begin answers RESOURCE_EXHAUSTED past
    /// it (default 100000). [file: max_live_txns]
    #[arg(long, env = "RATIFY_MAX_LIVE_TXNS", value_name = "N")]
    max_live_txns: Option<usize>,
    /// Retry the rollback of an aborted transaction's unreachable branches this long,
    /// then complete it anyway: prepared branches pull the logged abort (default 300).
    /// [file: abandon_rollback_after_secs]
    #[arg(long, env = "RATIFY_ABANDON_ROLLBACK_AFTER_SECS", value_name = "SECS")]
    abandon_rollback_after_secs: Option<u64>,
    /// Mutual TLS, or `--insecure`.
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// How a binary speaks gRPC (docs/design.md, "Security"): mutual TLS from three
/// PEM files, or plaintext when `--insecure` is given, which is allowed only when
/// every address involved is on loopback.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsFlags {
    /// CA certificate(s), PEM: every peer's certificate must be issued by one.
    /// Reloaded when the file changes (or on SIGHUP). [file: tls_ca]
    #[arg(long, env = "RATIFY_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate chain, PEM, leaf first; its SAN URIs
    /// `ratify://<role>/<name>` say who it is. Reloaded when the file changes.
    /// [file: tls_cert]
    #[arg(long, env = "RATIFY_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM. [file: tls_key]
    #[arg(long, env = "RATIFY_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Plaintext and no identities: anyone who reaches a port may do anything.
    /// Refused unless every address is on loopback; a warning is logged. Default
    /// false. [file: insecure]
    #[arg(long, env = "RATIFY_INSECURE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub insecure: Option<bool>,
}

/// Whether `addr` (`host:port`; a name is resolved) is on loopback only.
fn on_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

impl TlsFlags {
    /// The transport these flags (over the file's keys) ask for. `addrs` are the
    /// addresses this process listens on or dials, each with what it is, for the
    /// loopback rule of `--insecure`.
    ///
    /// # Errors
    /// Neither TLS nor `--insecure`, both, part of the three files, a file that
    /// cannot be read or holds no usable certificate or key, or `--insecure` with an
    /// address off loopback.
    pub fn transport(
        &self,
        file: &NodeFile,
        addrs: &[(&str, &str)],
    ) -> Result<ratify_common::tls::Transport> {
        use ratify_common::tls::{Tls, TlsFiles, Transport};
        let ca = self.tls_ca.clone().or_else(|| file.tls_ca.clone());
        let cert = self.tls_cert.clone().or_else(|| file.tls_cert.clone());
        let key = self.tls_key.clone().or_else(|| file.tls_key.clone());
        let insecure = self.insecure.or(file.insecure).unwrap_or(false);
        let any_tls = ca.is_some() || cert.is_some() || key.is_some();
        if insecure {
            ensure!(
                !any_tls,
                "--insecure (RATIFY_INSECURE, insecure) cannot go with --tls-ca, --tls-cert or --tls-key: choose one"
            );
            for (what, addr) in addrs {
                ensure!(
                    on_loopback(addr),
                    "--insecure (RATIFY_INSECURE, insecure) is allowed on loopback only, and {what} {addr:?} is not: give --tls-ca, --tls-cert and --tls-key"
                );
            }
            tracing::warn!(
                "--insecure: plaintext gRPC, no identities; anyone who can reach these ports can do anything"
            );
            return Ok(Transport::Plain);
        }
        let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
            bail!(
                "TLS is required: give --tls-ca, --tls-cert and --tls-key (RATIFY_TLS_CA, RATIFY_TLS_CERT, RATIFY_TLS_KEY; file keys tls_ca, tls_cert, tls_key), or --insecure on loopback"
            );
        };
        let tls = Tls::load(TlsFiles { ca, cert, key }).map_err(|e| config_error!("TLS: {e}"))?;
        Ok(Transport::Tls(tls))
    }
}

/// The node's TOML file: the same settings as [`NodeArgs`] (and the global logging
/// flags), every key optional. Unknown keys are refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_source_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prepare_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_txn_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    one_phase: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    propose_pipeline: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    propose_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_every: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retain_outcomes_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retain_outcomes_min: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retain_outcomes_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_live_txns: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abandon_rollback_after_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure: Option<bool>,
    /// `text` or `json` (`--log-format`).
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    /// The log filter when neither `--log-filter` nor `RUST_LOG` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_filter: Option<String>,
    /// `--otlp-endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
    /// `--trace-spans`.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_spans: Option<bool>,
}

/// Reads the node's TOML file (none: every key unset).
///
/// # Errors
/// When it cannot be read, is not TOML, holds an unknown key or a value of the
/// wrong type: the message names the file and the key.
pub fn load_file(path: Option<&Path>) -> Result<NodeFile> {
    let Some(path) = path else {
        return Ok(NodeFile::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("config file {}", path.display()))
}

fn parse_file(text: &str) -> Result<NodeFile> {
    // toml's message names the key, its line and column, and the keys allowed.
    toml::from_str(text).map_err(|e| config_error!("{}", e.to_string().trim_end()))
}

/// The logging settings, resolved from the global flags (and their environment
/// variables) and the file.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// The filter to use when `RUST_LOG` is unset.
    pub default_filter: String,
    /// `--log-filter` or `RUST_LOG`, if set: it wins over the default filter.
    pub filter: Option<String>,
    /// Where to export spans.
    pub otlp_endpoint: Option<String>,
    /// Build OpenTelemetry spans even without exporting them.
    pub trace_spans: bool,
}

impl LogSettings {
    /// Flag (or its environment variable) over the file over the default.
    ///
    /// # Errors
    /// When the file's `log_format` is neither `text` nor `json`.
    pub fn resolve(
        format: Option<LogFormat>,
        filter: Option<String>,
        otlp_endpoint: Option<String>,
        trace_spans: Option<bool>,
        file: &NodeFile,
        default_filter: &str,
    ) -> Result<Self> {
        let file_format =
            match file.log_format.as_deref() {
                None => None,
                Some(s) => Some(LogFormat::from_str(s, true).map_err(|_| {
                    config_error!("log_format {s:?} (file key) must be text or json")
                })?),
            };
        Ok(Self {
            format: format.or(file_format).unwrap_or_default(),
            default_filter: file
                .log_filter
                .clone()
                .unwrap_or_else(|| default_filter.to_string()),
            filter: filter.filter(|f| !f.is_empty()),
            otlp_endpoint: otlp_endpoint
                .or_else(|| file.otlp_endpoint.clone())
                .filter(|e| !e.is_empty()),
            trace_spans: trace_spans.or(file.trace_spans).unwrap_or(false),
        })
    }
}

/// Splits peer specs given as several values, each of which may hold several
/// separated by `;` or white space (as `RATIFY_PEERS` does).
fn split_peers(values: &[String]) -> Vec<&str> {
    values
        .iter()
        .flat_map(|v| v.split(|c: char| c == ';' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks that `addr` is `host:port` (an IP or a name; IPv6 in brackets), with a
/// port that is a number, and non-zero when `nonzero_port`.
fn check_addr(what: &str, addr: &str, nonzero_port: bool) -> Result<()> {
    let bad = || {
        config_error!(
            "{what} {addr:?} is not HOST:PORT (e.g. 10.0.0.1:7001, ratify-0.ratify:7001, [::1]:7001)"
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && !host.contains(['/', ' ', ','])
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok {
        return Err(bad());
    }
    ensure!(
        !nonzero_port || port != 0,
        "{what} {addr:?} needs a port other than 0"
    );
    Ok(())
}

fn parse_peer(s: &str) -> Result<(NodeId, NodeInfo)> {
    let bad = || format!("peer {s:?} is not ID=RAFT_ADDR,API_ADDR");
    let (id, addrs) = s.split_once('=').with_context(bad)?;
    let (raft_addr, api_addr) = addrs.split_once(',').with_context(bad)?;
    let id: NodeId = id
        .parse()
        .with_context(|| format!("peer {s:?}: id {id:?} is not a number"))?;
    ensure!(id != 0, "peer {s:?}: node ids must be non-zero");
    check_addr(&format!("peer {id}'s Raft address"), raft_addr, true)?;
    check_addr(&format!("peer {id}'s API address"), api_addr, true)?;
    Ok((
        id,
        NodeInfo {
            raft_addr: raft_addr.to_string(),
            api_addr: api_addr.to_string(),
        },
    ))
}

/// Resolves and checks the node's settings: flag (or environment) over file over
/// default.
///
/// # Errors
/// A missing required setting or a bad value, with a message naming it.
pub fn resolve(a: &NodeArgs, file: &NodeFile) -> Result<NodeConfig> {
    let id =
        a.id.or(file.id)
            .context("the node id is required: --id, RATIFY_ID or file key id")?;
    ensure!(
        id != 0,
        "the node id (--id, RATIFY_ID, id) must be non-zero"
    );
    let raft_addr = a
        .raft_addr
        .clone()
        .or_else(|| file.raft_addr.clone())
        .context(
        "the Raft listen address is required: --raft-addr, RATIFY_RAFT_ADDR or file key raft_addr",
    )?;
    check_addr(
        "--raft-addr (RATIFY_RAFT_ADDR, raft_addr)",
        &raft_addr,
        false,
    )?;
    let api_addr = a
        .api_addr
        .clone()
        .or_else(|| file.api_addr.clone())
        .context(
            "the API listen address is required: --api-addr, RATIFY_API_ADDR or file key api_addr",
        )?;
    check_addr("--api-addr (RATIFY_API_ADDR, api_addr)", &api_addr, false)?;
    let metrics_addr = a
        .metrics_addr
        .clone()
        .or_else(|| file.metrics_addr.clone())
        .filter(|m| !m.is_empty());
    if let Some(m) = &metrics_addr {
        check_addr(
            "--metrics-addr (RATIFY_METRICS_ADDR, metrics_addr)",
            m,
            false,
        )?;
    }
    let data_dir = a
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .context("the data folder is required: --data-dir, RATIFY_DATA_DIR or file key data_dir")?;
    ensure!(
        !data_dir.as_os_str().is_empty(),
        "--data-dir (RATIFY_DATA_DIR, data_dir) is empty"
    );
    let peer_values = if a.peers.is_empty() {
        file.peers.clone().unwrap_or_default()
    } else {
        a.peers.clone()
    };
    let mut peers = BTreeMap::new();
    for p in split_peers(&peer_values) {
        let (pid, info) = parse_peer(p)?;
        if peers.insert(pid, info).is_some() {
            bail!("peer {pid} is given twice (--peer, RATIFY_PEERS, peers)");
        }
    }
    let init = a.init.or(file.init).unwrap_or(false);
    ensure!(
        !init || peers.contains_key(&id),
        "--init (RATIFY_INIT, init) needs this node ({id}) among the peers"
    );

    let mut driver = DriverConfig::default();
    if let Some(ms) = a.prepare_timeout_ms.or(file.prepare_timeout_ms) {
        ensure!(
            ms >= 1,
            "--prepare-timeout-ms (RATIFY_PREPARE_TIMEOUT_MS, prepare_timeout_ms) must be at least 1"
        );
        driver.prepare_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = a.default_txn_timeout_ms.or(file.default_txn_timeout_ms) {
        let max = crate::txn::MAX_TIMEOUT_MS;
        ensure!(
            (1..=max).contains(&ms),
            "--default-txn-timeout-ms (RATIFY_DEFAULT_TXN_TIMEOUT_MS, default_txn_timeout_ms) must be 1 to {max}, not {ms}"
        );
        driver.default_txn_timeout = Duration::from_millis(ms);
    }
    driver.one_phase = if a.no_one_phase {
        false
    } else {
        a.one_phase.or(file.one_phase).unwrap_or(true)
    };
    if let Some(n) = a.propose_pipeline.or(file.propose_pipeline) {
        ensure!(
            n >= 1,
            "--propose-pipeline (RATIFY_PROPOSE_PIPELINE, propose_pipeline) must be at least 1"
        );
        driver.propose_pipeline = n;
    }
    if let Some(ms) = a.propose_timeout_ms.or(file.propose_timeout_ms) {
        ensure!(
            ms >= 1,
            "--propose-timeout-ms (RATIFY_PROPOSE_TIMEOUT_MS, propose_timeout_ms) must be at least 1"
        );
        driver.propose_timeout = Duration::from_millis(ms);
    }
    let snapshot_every = a
        .snapshot_every
        .or(file.snapshot_every)
        .unwrap_or(crate::raft::SNAPSHOT_EVERY);
    ensure!(
        snapshot_every >= 10,
        "--snapshot-every (RATIFY_SNAPSHOT_EVERY, snapshot_every) must be at least 10"
    );
    if let Some(n) = a.max_live_txns.or(file.max_live_txns) {
        ensure!(
            n >= 1,
            "--max-live-txns (RATIFY_MAX_LIVE_TXNS, max_live_txns) must be at least 1"
        );
        driver.max_live = n;
    }
    if let Some(secs) = a
        .abandon_rollback_after_secs
        .or(file.abandon_rollback_after_secs)
    {
        driver.abandon_rollback_after = Duration::from_secs(secs);
    }
    let r = &mut driver.retention;
    if let Some(secs) = a.retain_outcomes_secs.or(file.retain_outcomes_secs) {
        r.min_age_ms = secs.saturating_mul(1000);
    }
    if let Some(n) = a.retain_outcomes_min.or(file.retain_outcomes_min) {
        r.min_count = n;
    }
    if let Some(n) = a.retain_outcomes_max.or(file.retain_outcomes_max) {
        r.max_count = n;
    }
    ensure!(
        r.max_count >= 1 && r.min_count <= r.max_count,
        "--retain-outcomes-max ({}) must be at least 1 and at least --retain-outcomes-min ({}) (RATIFY_RETAIN_OUTCOMES_MAX/_MIN, retain_outcomes_max/_min)",
        r.max_count,
        r.min_count
    );
    let mut addrs = vec![
        ("--raft-addr", raft_addr.as_str()),
        ("--api-addr", api_addr.as_str()),
    ];
    if let Some(m) = &metrics_addr {
        addrs.push(("--metrics-addr", m.as_str()));
    }
    // Plaintext goes to the peers too.
    for info in peers.values() {
        addrs.push(("--peer", info.raft_addr.as_str()));
        addrs.push(("--peer", info.api_addr.as_str()));
    }
    driver.transport = a.tls.transport(file, &addrs)?;
    Ok(NodeConfig {
        id,
        raft_addr,
        api_addr,
        metrics_addr,
        raft_source_ip: a.raft_source_ip.or(file.raft_source_ip),
        data_dir,
        peers,
        init,
        driver,
        snapshot_every,
    })
}

/// The resolved settings as a TOML file that `--config` accepts.
///
/// # Errors
/// When a value cannot be rendered (a data folder that is not UTF-8).
pub fn render(c: &NodeConfig, log: &LogSettings) -> Result<String> {
    let d = &c.driver;
    let tls_files = match &d.transport {
        ratify_common::tls::Transport::Tls(t) => Some(t.files()),
        ratify_common::tls::Transport::Plain => None,
    };
    let format = log
        .format
        .to_possible_value()
        .map(|v| v.get_name().to_string());
    let file = NodeFile {
        id: Some(c.id),
        raft_addr: Some(c.raft_addr.clone()),
        api_addr: Some(c.api_addr.clone()),
        metrics_addr: c.metrics_addr.clone(),
        raft_source_ip: c.raft_source_ip,
        data_dir: Some(c.data_dir.clone()),
        peers: Some(
            c.peers
                .iter()
                .map(|(id, n)| format!("{id}={},{}", n.raft_addr, n.api_addr))
                .collect(),
        ),
        init: Some(c.init),
        prepare_timeout_ms: Some(millis(d.prepare_timeout)),
        default_txn_timeout_ms: Some(millis(d.default_txn_timeout)),
        one_phase: Some(d.one_phase),
        propose_pipeline: Some(d.propose_pipeline),
        propose_timeout_ms: Some(millis(d.propose_timeout)),
        snapshot_every: Some(c.snapshot_every),
        retain_outcomes_secs: Some(d.retention.min_age_ms / 1000),
        retain_outcomes_min: Some(d.retention.min_count),
        retain_outcomes_max: Some(d.retention.max_count),
        max_live_txns: Some(d.max_live),
        abandon_rollback_after_secs: Some(d.abandon_rollback_after.as_secs()),
        tls_ca: tls_files.map(|f| f.ca.clone()),
        tls_cert: tls_files.map(|f| f.cert.clone()),
        tls_key: tls_files.map(|f| f.key.clone()),
        insecure: tls_files.is_none().then_some(true),
        log_format: format,
        log_filter: Some(
            log.filter
                .clone()
                .unwrap_or_else(|| log.default_filter.clone()),
        ),
        otlp_endpoint: log.otlp_endpoint.clone(),
        trace_spans: Some(log.trace_spans),
    };
    toml::to_string(&file).context("cannot render the settings")
}

/// The logging flags every Ratify binary takes (global: before or after the
/// subcommand). Each also has a node-file key.
#[derive(Args, Debug, Clone, Default)]
pub struct LogFlags {
    /// Log lines as text, or as one JSON object per line for log shippers. The
    /// level is set by RUST_LOG (default: info for `node` — start, leadership,
    /// recovery — and warn for the other commands; per-transaction events are
    /// debug; openraft's own lines are kept at warn unless RUST_LOG names openraft).
    /// Default: text. [file: log_format]
    #[arg(long, global = true, value_enum, env = "RATIFY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Which log lines to print, as RUST_LOG says it (e.g. `info`, `warn,ratify=debug`).
    /// Default: info for `node`, warn for the other commands. [file: log_filter]
    #[arg(long, global = true, env = "RUST_LOG", value_name = "FILTER")]
    pub log_filter: Option<String>,
    /// Export trace spans over OTLP/gRPC to this collector (e.g.
    /// http://127.0.0.1:4317). Default: off (a client's traceparent is still passed
    /// on to the participants). [file: otlp_endpoint]
    #[arg(long, global = true, env = "RATIFY_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Build OpenTelemetry spans (with their attributes) without exporting them, for
    /// an in-process exporter; implied by --otlp-endpoint. Off, a client's trace id
    /// still reaches the participants, and the spans' ~0.2 ms of CPU per transaction
    /// is saved. Default: false. [file: trace_spans]
    #[arg(long, global = true, env = "RATIFY_TRACE_SPANS", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    pub trace_spans: Option<bool>,
}

impl LogFlags {
    /// For a command: the node's file (read and checked when the command is `node`,
    /// whose file may set its logging too) and the logging settings. A node logs at
    /// info what a person reads (start, leadership, recovery); other commands print
    /// their own output and only warnings besides.
    ///
    /// # Errors
    /// An unreadable or invalid file, a bad `log_format`.
    pub fn settings(&self, node: Option<&NodeArgs>) -> Result<(NodeFile, LogSettings)> {
        let file = load_file(node.and_then(|a| a.config.as_deref()))?;
        let default_filter = if node.is_some() { "info" } else { "warn" };
        let log = self.resolve(&file, default_filter)?;
        Ok((file, log))
    }

    /// The settings these flags (over `file`, over `default_filter`) give.
    ///
    /// # Errors
    /// When the file's `log_format` is neither `text` nor `json`.
    pub fn resolve(&self, file: &NodeFile, default_filter: &str) -> Result<LogSettings> {
        LogSettings::resolve(
            self.log_format,
            self.log_filter.clone(),
            self.otlp_endpoint.clone(),
            self.trace_spans,
            file,
            default_filter,
        )
    }
}

impl LogSettings {
    /// Starts this process's logging (and span export) with these settings.
    ///
    /// # Errors
    /// When the subscriber or the OTLP exporter cannot be set up.
    pub fn init(&self, service_name: &str) -> std::result::Result<Telemetry, TelemetryError> {
        crate::telemetry::init(&TelemetryConfig {
            default_filter: self.default_filter.clone(),
            format: self.format,
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_spans: self.trace_spans,
            service_name: service_name.into(),
        })
    }

    /// Sets the environment so that node processes this process starts (local
    /// clusters of `ratify-dev`) log the same way. Call while single-threaded.
    pub fn pass_to_children(&self) {
        if let Some(endpoint) = &self.otlp_endpoint {
            std::env::set_var("RATIFY_OTLP_ENDPOINT", endpoint);
        }
        if self.format == LogFormat::Json {
            std::env::set_var("RATIFY_LOG_FORMAT", "json");
        }
        if let Some(filter) = &self.filter {
            std::env::set_var("RUST_LOG", filter);
        }
        if self.trace_spans {
            std::env::set_var("RATIFY_TRACE_SPANS", "true");
        }
    }
}

/// A binary's `main`: starts logging with `log` (the settings of [`LogFlags::settings`];
/// also passed on to child node processes when `children`), runs `command` on a
/// multi-threaded runtime, then flushes and stops logging (span export included).
///
/// # Errors
/// When logging or the runtime cannot start, or what `command` returns.
pub fn run_command<E, F, Fut>(
    log: LogSettings,
    children: bool,
    command: F,
) -> std::result::Result<(), E>
where
    F: FnOnce(LogSettings) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), E>>,
    E: From<TelemetryError> + From<std::io::Error>,
{
    if children {
        // Still single-threaded: nothing else reads the environment yet.
        log.pass_to_children();
    }
    let telemetry = log.init("ratify")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(command(log));
    drop(rt);
    telemetry.shutdown();
    result
}

/// Why `node` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not start or failed while running.
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
}

/// The `node` command: resolves `a` over `file`, prints the settings with
/// `--print-config`, else runs the node until `shutdown` resolves.
///
/// # Errors
/// A refused setting, or the node's own failure.
pub async fn run_node(
    a: &NodeArgs,
    file: &NodeFile,
    log: &LogSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), NodeError> {
    let config = resolve(a, file)?;
    if a.print_config {
        print!("{}", render(&config, log)?);
        return Ok(());
    }
    crate::server::run(config, shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM: how a node (or a dev cluster) is asked to stop.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        node: NodeArgs,
    }

    /// Parses flags only (the variables of this process are not consulted for
    /// flags given, and the tests set none).
    fn args(flags: &[&str]) -> NodeArgs {
        let mut argv = vec!["node"];
        argv.extend_from_slice(flags);
        match Cmd::try_parse_from(argv) {
            Ok(c) => c.node,
            Err(e) => panic!("flags {flags:?}: {e}"),
        }
    }

    const BASE: &[&str] = &[
        "--id=1",
        "--raft-addr=localhost:7001",
        "--api-addr=127.0.0.1:7101",
        "--data-dir=/tmp/x",
        "--insecure",
    ];

    /// [`BASE`] with `extra`, which replaces a base flag of the same name.
    fn with(extra: &[&str]) -> NodeArgs {
        let name = |f: &str| f.split('=').next().unwrap_or(f).to_string();
        let mut v: Vec<&str> = BASE
            .iter()
            .copied()
            .filter(|b| !extra.iter().any(|e| name(e) == name(b)))
            .collect();
        v.extend_from_slice(extra);
        args(&v)
    }

    fn err(a: &NodeArgs, file: &NodeFile) -> String {
        match resolve(a, file) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn an_unknown_file_key_is_refused_by_name() {
        let e = format!(
            "{:#}",
            parse_file("id = 1\nraft_adr = \"x:1\"\n").expect_err("unknown key")
        );
        assert!(e.contains("raft_adr"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = format!("{:#}", parse_file("id = \"one\"\n").expect_err("bad type"));
        assert!(e.contains("id"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = parse_file(
            "id = 7\nprepare_timeout_ms = 111\nmax_live_txns = 5\none_phase = false\ninit = true\n\
             peers = [\"1=localhost:7001,localhost:7101\", \"2=127.0.0.2:7002,127.0.0.2:7102; 3=127.0.0.3:7003,127.0.0.3:7103\"]\n",
        )
        .expect("file");
        let c = resolve(&with(&["--prepare-timeout-ms=222"]), &file).expect("valid");
        assert_eq!(c.id, 1, "flag over file");
        assert_eq!(c.driver.prepare_timeout, Duration::from_millis(222));
        assert_eq!(c.driver.max_live, 5, "file over default");
        assert!(!c.driver.one_phase && c.init);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(
            c.driver.default_txn_timeout,
            DriverConfig::default().default_txn_timeout
        );
        let c = resolve(&with(&["--one-phase", "--init=false"]), &file).expect("valid");
        assert!(c.driver.one_phase && !c.init, "a bool flag wins both ways");
        let c = resolve(
            &with(&["--peer", "1=127.0.0.1:1,127.0.0.1:2;2=[::1]:1,[::1]:2"]),
            &file,
        )
        .expect("valid");
        assert_eq!(c.peers.len(), 2, "--peer replaces the file's peers");
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let none = NodeFile::default();
        assert!(err(&args(&[]), &none).contains("RATIFY_ID"));
        let cases: &[(&[&str], &str)] = &[
            (&["--id=0"], "non-zero"),
            (&["--api-addr=nonsense"], "--api-addr"),
            (&["--metrics-addr=1.2.3.4:http"], "--metrics-addr"),
            (&["--peer=1=a:7001"], "ID=RAFT_ADDR,API_ADDR"),
            (&["--peer=0=a:1,a:2"], "non-zero"),
            (&["--peer=2=a:0,a:2"], "port other than 0"),
            (&["--peer=1=a:1,a:2", "--peer=1=b:1,b:2"], "twice"),
            (&["--init", "--peer=2=a:1,a:2"], "among the peers"),
            (
                &["--retain-outcomes-min=10", "--retain-outcomes-max=5"],
                "--retain-outcomes-min (10)",
            ),
            (&["--snapshot-every=3"], "at least 10"),
            (&["--default-txn-timeout-ms=0"], "1 to"),
            (&["--propose-pipeline=0"], "at least 1"),
        ];
        for (flags, want) in cases {
            let e = err(&with(flags), &none);
            assert!(e.contains(want), "{flags:?}: {e:?} does not say {want:?}");
        }
        let file = parse_file("log_format = \"xml\"\n").expect("a string");
        let e = LogSettings::resolve(None, None, None, None, &file, "info").expect_err("xml");
        assert!(e.to_string().contains("log_format"), "{e}");
    }

    /// Plaintext only when asked for, and then only on loopback; TLS needs its three
    /// files, each read and checked at start.
    #[test]
    fn plaintext_is_asked_for_and_kept_on_loopback() {
        let none = NodeFile::default();
        let bare = [
            "--id=1",
            "--raft-addr=127.0.0.1:7001",
            "--api-addr=127.0.0.1:7101",
            "--data-dir=/tmp/x",
        ];
        assert!(err(&args(&bare), &none).contains("TLS is required"));
        let cases: &[(&[&str], &str)] = &[
            (&["--api-addr=0.0.0.0:7101"], "loopback only"),
            (&["--metrics-addr=10.1.2.3:9100"], "loopback only"),
            (&["--tls-ca=/x/ca.pem"], "cannot go with"),
            (&["--peer=2=10.0.0.2:7001,10.0.0.2:7101"], "loopback only"),
        ];
        for (flags, want) in cases {
            let e = err(&with(flags), &none);
            assert!(e.contains(want), "{flags:?}: {e:?} does not say {want:?}");
        }
        let mut tls: Vec<&str> = bare.to_vec();
        tls.push("--tls-ca=/nonexistent/ca.pem");
        assert!(
            err(&args(&tls), &none).contains("--tls-cert"),
            "part of the files"
        );
        tls.extend([
            "--tls-cert=/nonexistent/n.pem",
            "--tls-key=/nonexistent/n.key",
        ]);
        let e = err(&args(&tls), &none);
        assert!(
            e.contains("/nonexistent/n.pem"),
            "the unreadable file is named: {e}"
        );
        let c =
            resolve(&with(&[]), &parse_file("insecure = true\n").expect("file")).expect("valid");
        assert!(!c.driver.transport.is_tls());
    }

    #[test]
    fn addresses_may_be_names_and_ipv6() {
        for ok in [
            "localhost:7001",
            "ratify-0.ratify.ns.svc.cluster.local:7001",
            "[::1]:7001",
            "0.0.0.0:0",
        ] {
            check_addr("x", ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["7001", ":7001", "host:", "::1:7001", "a b:1", "http://h:1"] {
            assert!(check_addr("x", bad, false).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_rendered_settings_read_back_the_same() {
        let c = resolve(
            &with(&["--peer=1=localhost:7001,localhost:7101", "--init"]),
            &NodeFile::default(),
        )
        .expect("valid");
        let log = LogSettings::resolve(None, None, None, None, &NodeFile::default(), "info")
            .expect("log");
        let text = render(&c, &log).expect("render");
        let back =
            resolve(&NodeArgs::default(), &parse_file(&text).expect("parse")).expect("valid");
        assert_eq!(format!("{c:?}"), format!("{back:?}"));
    }
}
