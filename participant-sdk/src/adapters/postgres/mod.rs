//! PostgreSQL as an XA participant: a branch is an ordinary Postgres transaction on a
//! connection the adapter owns; prepare is `PREPARE TRANSACTION`, phase 2 is
//! `COMMIT PREPARED` / `ROLLBACK PREPARED` from any pooled connection, recovery reads
//! `pg_prepared_xacts`.
//!
//! # Layout
//! - this file: [`PgResource`] (the [`Resource`]), [`PgBranch`] (the application's
//!   handle on a branch), startup checks, fencing, metrics;
//! - [`gid`]: the gid format, rendered from validated parts only;
//! - [`error`]: [`PgError`] and the retryable/fatal split of Postgres errors;
//! - `pool`: the connection pool with per-connection statement caches.
//!
//! # Use
//! ```no_run
//! # async fn demo(xid: ratify_participant_sdk::xid::Xid) -> Result<(), Box<dyn std::error::Error>> {
//! use ratify_participant_sdk::adapters::postgres::{PgConfig, PgResource};
//! let bank = PgResource::connect(PgConfig::new("postgres://app@db/bank", "bank")).await?;
//! // `xid` comes from the coordinator (`CoordinatorClient::begin`).
//! let branch = bank.begin_branch(&xid).await?;
//! branch.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", &[&10i64, &7i32]).await?;
//! // ... then the application asks the coordinator to commit; the coordinator
//! // prepares and commits the branch through the participant server hosting `bank`.
//! # Ok(()) }
//! ```
//!
//! # Gids
//! `rtfy.<tag>.<xid>` (see [`gid`]): only `[a-z0-9_.-]`, at most 96 bytes, never built
//! from application or request text. Malformed xids are refused by
//! [`crate::server::ParticipantServer`] before a resource is called, and [`Xid`]
//! cannot hold anything else.
//!
//! # Fencing (docs/design.md, rule 5)
//! Every database holds a table `ratify_fence (gid PRIMARY KEY, state, at)`:
//! - **prepare** sends, in one round trip,
//!   `INSERT INTO ratify_fence VALUES (<gid>, 'b'); PREPARE TRANSACTION <gid>`: the
//!   branch's own fence row becomes part of the branch, so it commits or rolls back
//!   with it. A committed `'b'` row proves the branch committed.
//! - **rollback** first rolls back the branch if it is still open in this process,
//!   then runs `ROLLBACK PREPARED <gid>` (a missing gid is fine), then commits a
//!   tombstone: `INSERT ... VALUES (<gid>, 'r') ON CONFLICT DO NOTHING`.
//! - **a read-only vote** (prepare of a branch that ran no SQL) commits a row
//!   `(<gid>, 'o')` in a transaction of its own before it answers, so a retried
//!   prepare (a new leader re-running the prepare round, which finds no open branch)
//!   reads it and votes READ_ONLY again instead of NO, and `begin_branch` refuses the
//!   xid. A commit of such an xid answers COMMITTED (there was nothing to commit); a
//!   rollback answers ROLLED_BACK (nothing to undo), not the heuristic
//!   ALREADY_COMMITTED a `'b'` row would give, which is why it is a state of its own.
//! - **one-phase commit** sends `INSERT INTO ratify_fence VALUES (<gid>, 'b'); COMMIT`
//!   on the branch's connection. A branch that ran no SQL is an empty transaction
//!   that commits: its `'b'` row is committed in a transaction of its own, so a
//!   retried one-phase commit (which finds no open branch and reads the fence) answers
//!   COMMITTED for it too, never ROLLED_BACK. A one-phase commit that finds no open
//!   branch but the gid prepared (a leader without one phase prepared it and died,
//!   and the next one has one phase on) commits it with `COMMIT PREPARED`.
//! - **two-phase commit** of a gid that is not prepared answers from the fence: a
//!   tombstone means the branch was rolled back (by a rollback that got there first,
//!   or a person), answered ROLLED_BACK: a heuristic outcome for the coordinator to
//!   record, not an error it would retry for ever.
//! - **begin_branch** refuses an xid whose fence row is committed (rolled back or
//!   committed: nobody would end such a branch, and it would hold its connection and
//!   row locks for good). Xids rolled back by this process are found in memory (a
//!   bounded set); any other xid costs one primary-key `SELECT` on the branch's own
//!   connection, so a late branch is refused after a restart too.
//!
//! A prepare that arrives after the rollback (delayed in this process, or sent by a
//! previous incarnation of it) then hits the tombstone's primary key, its insert
//! fails, the branch is rolled back and the vote is NO: nothing stays prepared. A
//! prepare that got in first is undone by the `ROLLBACK PREPARED`. The insert also
//! fails when the branch's transaction was already aborted by an application error,
//! which matters because Postgres turns `PREPARE TRANSACTION` of an aborted
//! transaction into a silent `ROLLBACK`: the vote must not be YES then.
//!
//! ## Why the locks cannot deadlock
//! The fence key is the only lock the two sides share. The branch takes it last, in
//! the same message as `PREPARE TRANSACTION`, so while the application runs its SQL
//! the branch holds no fence lock and a rollback arriving then never waits for it:
//! the open branch is rolled back locally first (cancelling a statement in flight),
//! then the tombstone insert finds the key free. The two remaining interleavings:
//! - *tombstone first*: the tombstone's transaction is a single autocommit statement
//!   that holds nothing else, so the branch's insert waits at most for it to commit,
//!   then fails on the key (vote NO);
//! - *branch insert first*: the tombstone insert waits for the branch. If the branch
//!   prepares, its lock passes to the prepared transaction, which only our own
//!   `ROLLBACK PREPARED` would release: so the tombstone runs with `lock_timeout`
//!   ([`PgConfig::fence_lock_wait`]); on timeout it rolls its attempt back (holding
//!   nothing) and goes round again: `ROLLBACK PREPARED` now finds the branch and
//!   releases the key, and the tombstone commits.
//!
//! Waits are one-directional (branch → tombstone, or tombstone → branch), never both,
//! and the only wait that could last forever is cut by the timeout. The loop is bounded
//! by [`PgConfig::rollback_deadline`], after which the rollback reports
//! [`ResourceError::Unavailable`] and the coordinator retries it.
//!
//! ## Upgrading the fence table
//! Tables created before the `'o'` state have `CHECK (state IN ('b', 'r'))`.
//! [`PgResource::connect`] probes whether an `'o'` row would be accepted (an insert it
//! rolls back) and, if not, replaces the check
//! (`ALTER TABLE ratify_fence DROP CONSTRAINT IF EXISTS ratify_fence_state_check, ADD
//! CONSTRAINT ratify_fence_state_check CHECK (state IN ('b', 'r', 'o'))`) with a
//! short `lock_timeout`. That needs the table's owner, and an `ACCESS EXCLUSIVE` lock
//! that prepared branches (which hold locks on the table until phase 2) block. When
//! the upgrade cannot be done now the resource still starts, logs a warning with the
//! statement to run, and votes READ_ONLY without a fence row as before (a retried
//! prepare of such a branch then votes NO); the next connect tries again.
//!
//! Fence rows are kept until [`Resource::forget`] or [`PgResource::purge_fences`];
//! purge only rows older than any transaction can live (default timeout 30 s, so an
//! hour is plenty), since a purged tombstone no longer fences.
//!
//! # Durability
//! `PREPARE TRANSACTION` and `COMMIT PREPARED` flush WAL unconditionally (whatever
//! `synchronous_commit` says), so a YES vote is sent only once the prepared state is on
//! disk, and prepared transactions survive a crash of the server.
//!
//! # Requirements (checked by [`PgResource::connect`])
//! PostgreSQL 13 or newer (tested with 15), `max_prepared_transactions > 0` (at least
//! the number of concurrent global transactions), and a role that can use (or create)
//! `ratify_fence` in its schema. Phase 2 must run as the role that prepared the branch
//! (or a superuser), so use the same role across restarts.

pub mod error;
pub mod gid;
mod pool;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Row, SimpleQueryMessage, Statement};

pub use error::PgError;
pub use gid::{Gid, Tag};
/// The driver, re-exported so applications use the same version for parameters and rows.
pub use tokio_postgres;

use crate::failpoint;
use crate::resource::{CommitResult, Resource, ResourceError, RollbackResult, Vote};
use crate::xid::Xid;
use error::sqlstate;
use pool::{Connector, Pool, Pooled};

/// Connections reserved for phase 2, recovery, fencing and stats.
const CONTROL_CONNECTIONS: usize = 4;

/// Finished xids remembered to refuse a late `begin_branch` without asking the fence
/// table again.
const CLOSED_REMEMBERED: usize = 100_000;

/// Oldest supported server, as `server_version_num`.
pub const MIN_SERVER_VERSION_NUM: i32 = 130_000;

/// The fence table, created in the connection's current schema.
pub const FENCE_TABLE: &str = "ratify_fence";

/// Its definition. `state` is `b` (the branch committed, inserted by the branch), `r`
/// (rolled back: a tombstone) or `o` (voted READ_ONLY). The check is named, so an
/// upgrade can replace it ([`FENCE_UPGRADE`]).
const FENCE_DDL: &str = "CREATE TABLE IF NOT EXISTS ratify_fence (\
     gid text PRIMARY KEY, \
     state \"char\" NOT NULL CONSTRAINT ratify_fence_state_check CHECK (state IN ('b', 'r', 'o')), \
     at timestamptz NOT NULL DEFAULT now())";

/// Replaces the check of a fence table created before the `o` state (Postgres named
/// that unnamed check `ratify_fence_state_check` too).
const FENCE_UPGRADE: &str =
    "ALTER TABLE ratify_fence DROP CONSTRAINT IF EXISTS ratify_fence_state_check, \
     ADD CONSTRAINT ratify_fence_state_check CHECK (state IN ('b', 'r', 'o'))";

/// Does the fence table take an `o` row? An insert that is rolled back: it tests the
/// table as it is, whatever its checks are called. The gid cannot be a branch's (those
/// start with `rtfy.`).
const FENCE_PROBE: &str = "BEGIN; \
     INSERT INTO ratify_fence (gid, state) VALUES ('ratify.probe', 'o') ON CONFLICT (gid) DO NOTHING; \
     ROLLBACK";

/// How long the fence upgrade waits for its `ACCESS EXCLUSIVE` lock: other sessions'
/// fence inserts queue behind it meanwhile, so keep it short.
const FENCE_UPGRADE_LOCK_WAIT: Duration = Duration::from_millis(500);

/// What a fence row written outside a branch says.
#[derive(Debug, Clone, Copy)]
enum FenceRow {
    /// `'b'`: committed (here an empty branch committed in one phase).
    Committed,
    /// `'r'`: a rollback's tombstone.
    Tombstone,
    /// `'o'`: the branch voted READ_ONLY (it ran no SQL).
    ReadOnly,
}

impl FenceRow {
    /// The `state` column's value.
    fn code(self) -> char {
        match self {
            Self::Committed => 'b',
            Self::Tombstone => 'r',
            Self::ReadOnly => 'o',
        }
    }
}

/// A committed fence row by primary key. Prepared once per connection (statement
/// cache), so a lookup is one round trip and one index probe.
const FENCE_STATE_SQL: &str = "SELECT state FROM ratify_fence WHERE gid = $1";

/// How often, and how long apart, a phase-2 statement on a busy gid is retried.
const BUSY_RETRIES: u32 = 50;
/// See [`BUSY_RETRIES`].
const BUSY_WAIT: Duration = Duration::from_millis(10);

/// Prepared branches older than this are logged as warnings by the stats logger.
const OLD_PREPARED_WARNING: Duration = Duration::from_secs(60);

/// How a [`PgResource`] connects and behaves.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// libpq-style URL or key-value string (`postgres://user@host:port/db`).
    pub url: String,
    /// Names this resource in gids: `[a-z0-9_-]{1,40}`, stable across restarts and
    /// unique among the resources sharing a server (gids are unique server-wide, not
    /// per database).
    pub tag: String,
    /// Most connections open at once (open branches hold one each until prepare).
    /// Default 32.
    pub pool_size: usize,
    /// `lock_timeout` of one tombstone attempt in a rollback (see the module docs).
    /// Default 200 ms.
    pub fence_lock_wait: Duration,
    /// Longest a rollback keeps trying before reporting itself unavailable. Default 10 s.
    pub rollback_deadline: Duration,
    /// TLS to the server (default none: plaintext). With it the URL's `sslmode`
    /// decides: `require` refuses a server without TLS, `prefer` (the default) falls
    /// back to plaintext; `verify-full` behaviour either way when TLS is used (the
    /// certificate must be of `ca` and name the host).
    pub tls: Option<PgTls>,
}

/// TLS settings of a [`PgConfig`] (tokio-postgres over rustls).
#[derive(Debug, Clone)]
pub struct PgTls {
    /// CA certificate(s), PEM, that the server's certificate must be issued by.
    pub ca: std::path::PathBuf,
    /// A client certificate chain and key, PEM, for `cert` authentication
    /// (`hostssl ... cert` in pg_hba.conf); none: password or trust as configured.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl PgConfig {
    /// Defaults for `url` and `tag`.
    pub fn new(url: impl Into<String>, tag: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tag: tag.into(),
            pool_size: 32,
            fence_lock_wait: Duration::from_millis(200),
            rollback_deadline: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// What the server said about itself at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.8 (Debian 15.8-1)`.
    pub version: String,
    /// `max_prepared_transactions`.
    pub max_prepared_transactions: i32,
    /// The database branches run in.
    pub database: String,
    /// The role branches run as.
    pub user: String,
}

/// Prepared transactions in this resource's database: they hold their locks and hold
/// back VACUUM until phase 2, so their number and age are worth watching.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedStats {
    /// Prepared transactions whose gid has this resource's prefix (its in-doubt
    /// branches).
    pub ratify_prepared: u64,
    /// Age of the oldest of them.
    pub oldest_ratify_age: Option<Duration>,
    /// Prepared transactions in this database that are not this resource's (other
    /// applications, other tags): Ratify will never resolve those.
    pub other_prepared: u64,
    /// Age of the oldest prepared transaction of any kind in this database.
    pub oldest_any_age: Option<Duration>,
}

/// Mutable state of an open branch.
struct SlotState {
    /// The branch's connection; `None` once prepared, rolled back or committed.
    conn: Option<Pooled>,
    /// `BEGIN` was sent (with the first statement).
    begun: bool,
    /// The first statement error: the transaction is aborted and will vote NO.
    failed: Option<String>,
    /// A statement was sent and its caller went away before the answer (its future
    /// was dropped, e.g. by `try_join!` after the other branch failed): the
    /// connection's state is unknown, so it is never returned to the pool and the
    /// branch votes NO.
    abandoned: bool,
}

/// An open branch, shared by the application's [`PgBranch`] and the resource.
struct Slot {
    /// Serializes the application's statements with prepare and rollback.
    state: tokio::sync::Mutex<SlotState>,
    /// Cancels the statement in flight when a rollback arrives mid-statement.
    cancel: CancelToken,
}

/// A Postgres database as an XA resource. Host it in a
/// [`crate::server::ParticipantServer`]; open branches with [`PgResource::begin_branch`].
pub struct PgResource {
    /// Gid prefix source.
    tag: Tag,
    /// `rtfy.<tag>.`, for recovery's filter.
    prefix: String,
    /// Connections for the application's open branches.
    pool: Pool,
    /// A few connections of their own for phase 2, recovery, fencing and stats: when
    /// every branch connection waits on a row lock held by a prepared branch, the
    /// `COMMIT PREPARED` that releases it must not wait for one of them.
    control: Pool,
    /// Xids known to be finished here (rolled back in this process, or refused
    /// from the fence table), newest last (bounded): an application that opens a
    /// branch only after its rollback arrived must be refused, or the branch would
    /// hold its connection and locks with nobody left to end it. This is the fast
    /// path; the fence table is the truth (it survives restarts and the bound).
    closed: Mutex<(HashSet<Xid>, VecDeque<Xid>)>,
    /// Branches opened in this process and not yet prepared or rolled back. Whoever
    /// removes a branch from here (prepare, rollback, one-phase commit) owns it.
    branches: Mutex<HashMap<Xid, Arc<Slot>>>,
    /// Timings.
    config: PgConfig,
    /// What the startup checks saw.
    server: ServerInfo,
    /// The fence table takes `'o'` rows (it is new, or was upgraded at connect): a
    /// READ_ONLY vote is then remembered. See the module docs.
    read_only_fence: bool,
}

impl std::fmt::Debug for PgResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgResource")
            .field("tag", &self.tag)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Is `e` the server saying `code`?
fn is(e: &tokio_postgres::Error, code: &SqlState) -> bool {
    sqlstate(e) == Some(code)
}

impl PgResource {
    /// Connects, checks the server (version, `max_prepared_transactions`, privileges)
    /// and creates the fence table if it is missing.
    ///
    /// # Errors
    /// [`PgError::Config`] or [`PgError::Tag`] for bad configuration,
    /// [`PgError::Unavailable`] when the server cannot be reached,
    /// [`PgError::UnsupportedVersion`], [`PgError::PreparedTransactionsDisabled`] and
    /// [`PgError::PermissionDenied`] when the server cannot host branches.
    pub async fn connect(config: PgConfig) -> Result<Arc<Self>, PgError> {
        let tag = Tag::new(config.tag.clone())?;
        if config.pool_size == 0 {
            return Err(PgError::Config("pool_size must be at least 1".into()));
        }
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| PgError::Config(format!("bad Postgres URL: {e}")))?;
        let connector = match &config.tls {
            None => Connector::Plain,
            Some(tls) => {
                let client = tls.client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let rustls = ratify_common::tls::client_config(&tls.ca, client)
                    .map_err(|e| PgError::Config(format!("TLS: {e}")))?;
                Connector::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(rustls))
            }
        };
        let pool = Pool::new(pg.clone(), connector.clone(), config.pool_size);
        let control = Pool::new(pg, connector, CONTROL_CONNECTIONS);
        let (server, read_only_fence) = check_server(&pool).await?;
        if usize::try_from(server.max_prepared_transactions).unwrap_or(0) < config.pool_size {
            tracing::warn!(
                max_prepared_transactions = server.max_prepared_transactions,
                pool_size = config.pool_size,
                "max_prepared_transactions is below the pool size: prepares may fail under load"
            );
        }
        tracing::info!(tag = %tag, ?server, "postgres resource ready");
        Ok(Arc::new(Self {
            prefix: tag.gid_prefix(),
            tag,
            pool,
            control,
            closed: Mutex::new((HashSet::new(), VecDeque::new())),
            branches: Mutex::new(HashMap::new()),
            config,
            server,
            read_only_fence,
        }))
    }

    /// What the server reported at startup.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// This resource's tag.
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// The gid branch `xid` is prepared under.
    pub fn gid(&self, xid: &Xid) -> Gid {
        Gid::new(&self.tag, xid)
    }

    /// Opens branch `xid` (from the coordinator) on a pooled connection. The
    /// transaction starts with the first statement run on it.
    ///
    /// A branch of an xid that is already finished here (rolled back, or committed)
    /// is refused: after the rollback nobody would ever end it, so it would hold its
    /// connection and row locks for good. Xids rolled back by this process are known
    /// in memory; any other (a restart, or a rollback that reached another instance
    /// with the same tag) costs one primary-key `SELECT` on `ratify_fence`, on the
    /// connection the branch is about to use.
    ///
    /// # Errors
    /// [`PgError::BranchExists`] when it is already open here,
    /// [`PgError::BranchClosed`] when its fence row says it is finished,
    /// [`PgError::Unavailable`] when no connection can be made.
    pub async fn begin_branch(self: &Arc<Self>, xid: &Xid) -> Result<PgBranch, PgError> {
        if self.lock_branches().contains_key(xid) {
            return Err(PgError::BranchExists(xid.clone()));
        }
        if self.lock_closed().0.contains(xid) {
            return Err(PgError::BranchClosed(xid.clone()));
        }
        let mut conn = self.pool.get().await?;
        // The branch's own connection, outside any transaction: the control
        // connections stay free for phase 2, and the lookup needs no extra checkout.
        // Only committed rows are visible, which is what "finished" means; a `'b'` row
        // inside a still-prepared transaction is not, but that branch's key then
        // makes this one's prepare vote NO.
        if Self::fence_state(&mut conn, &self.gid(xid))
            .await?
            .is_some()
        {
            self.remember_closed(xid);
            return Err(PgError::BranchClosed(xid.clone()));
        }
        let cancel = conn.client()?.cancel_token();
        let slot = Arc::new(Slot {
            state: tokio::sync::Mutex::new(SlotState {
                conn: Some(conn),
                begun: false,
                failed: None,
                abandoned: false,
            }),
            cancel,
        });
        let mut branches = self.lock_branches();
        if branches.contains_key(xid) {
            return Err(PgError::BranchExists(xid.clone()));
        }
        if self.lock_closed().0.contains(xid) {
            return Err(PgError::BranchClosed(xid.clone()));
        }
        branches.insert(xid.clone(), Arc::clone(&slot));
        Ok(PgBranch {
            xid: xid.clone(),
            slot,
        })
    }

    /// Number of branches open in this process (not yet prepared or rolled back).
    pub fn open_branches(&self) -> usize {
        self.lock_branches().len()
    }

    /// Counts this database's prepared transactions and their ages.
    ///
    /// # Errors
    /// [`PgError::Unavailable`] or [`PgError::Db`].
    pub async fn prepared_stats(&self) -> Result<PreparedStats, PgError> {
        let mut c = self.control.get().await?;
        let row = c
            .client()?
            .query_one(
                "SELECT count(*) FILTER (WHERE starts_with(gid, $1)), \
                   extract(epoch FROM now() - min(prepared) FILTER (WHERE starts_with(gid, $1)))::float8, \
                   count(*) FILTER (WHERE NOT starts_with(gid, $1)), \
                   extract(epoch FROM now() - min(prepared))::float8 \
                 FROM pg_prepared_xacts WHERE database = current_database()",
                &[&self.prefix],
            )
            .await?;
        let age = |secs: Option<f64>| secs.map(|s| Duration::from_secs_f64(s.max(0.0)));
        Ok(PreparedStats {
            ratify_prepared: u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0),
            oldest_ratify_age: age(row.try_get(1)?),
            other_prepared: u64::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0),
            oldest_any_age: age(row.try_get(3)?),
        })
    }

    /// Logs [`Self::prepared_stats`] every `interval` until `shutdown` completes: at
    /// info level while branches are prepared, as a warning once one is older than a
    /// minute (it holds locks and VACUUM back).
    pub fn spawn_stats_logger(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = tick.tick() => match this.prepared_stats().await {
                        Ok(s) if s.oldest_any_age.is_some_and(|a| a > OLD_PREPARED_WARNING) => {
                            tracing::warn!(tag = %this.tag, stats = ?s, "old prepared transactions hold locks and block VACUUM");
                        }
                        Ok(s) if s.ratify_prepared + s.other_prepared > 0 => {
                            tracing::debug!(tag = %this.tag, stats = ?s, "prepared transactions");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(tag = %this.tag, error = %e, "cannot read prepared transactions"),
                    },
                }
            }
        })
    }

    /// Deletes fence rows older than `older_than` and returns how many went. Only
    /// purge rows older than any transaction can live: a purged tombstone no longer
    /// refuses a late prepare.
    ///
    /// # Errors
    /// [`PgError::Unavailable`] or [`PgError::Db`].
    pub async fn purge_fences(&self, older_than: Duration) -> Result<u64, PgError> {
        let mut c = self.control.get().await?;
        Ok(c.client()?
            .execute(
                "DELETE FROM ratify_fence WHERE starts_with(gid, $1) AND at < now() - make_interval(secs => $2)",
                &[&self.prefix, &older_than.as_secs_f64()],
            )
            .await?)
    }

    fn lock_branches(&self) -> std::sync::MutexGuard<'_, HashMap<Xid, Arc<Slot>>> {
        self.branches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_closed(&self) -> std::sync::MutexGuard<'_, (HashSet<Xid>, VecDeque<Xid>)> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `xid` to the bounded in-memory set of finished xids.
    fn remember_closed(&self, xid: &Xid) {
        let mut closed = self.lock_closed();
        if closed.0.insert(xid.clone()) {
            closed.1.push_back(xid.clone());
            if closed.1.len() > CLOSED_REMEMBERED {
                if let Some(old) = closed.1.pop_front() {
                    closed.0.remove(&old);
                }
            }
        }
    }

    /// Takes ownership of open branch `xid`, if it is open here.
    fn take_slot(&self, xid: &Xid) -> Option<Arc<Slot>> {
        self.lock_branches().remove(xid)
    }

    /// Is `gid` prepared in this database?
    async fn is_prepared(&self, gid: &Gid) -> Result<bool, PgError> {
        let mut c = self.control.get().await?;
        let row = c
            .client()?
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database() AND gid = $1",
                &[&gid.as_str()],
            )
            .await?;
        Ok(row.try_get::<_, i64>(0)? > 0)
    }

    /// The vote for a gid with no open branch here that is not prepared, from its
    /// committed fence row: a retried prepare of a READ_ONLY branch (a new leader
    /// re-running the prepare round) votes READ_ONLY again, one of a committed branch
    /// YES (only committing is consistent with it); anything else is NO, and a NO for
    /// an xid with no fence row leaves a tombstone first (rule 5: a late
    /// `begin_branch` and prepare of it are then refused, not left prepared).
    async fn prepare_closed(&self, gid: &Gid) -> Result<Vote, PgError> {
        let mut c = self.control.get().await?;
        let mut tombstoned = false;
        loop {
            return Ok(match Self::fence_state(&mut c, gid).await? {
                Some('o') => Vote::ReadOnly,
                Some('b') => Vote::Yes,
                Some('r') => Vote::No(if tombstoned {
                    "no open branch for this xid here (never opened, lost in a restart, or \
                     rolled back); fenced"
                        .into()
                } else {
                    "branch was rolled back".into()
                }),
                _ if !tombstoned => {
                    // Whatever row wins the insert (ours, or one that appeared), the
                    // next pass answers from it.
                    insert_fence(
                        &mut c,
                        gid,
                        FenceRow::Tombstone,
                        self.config.fence_lock_wait,
                    )
                    .await??;
                    tombstoned = true;
                    continue;
                }
                _ => Vote::No("no open branch for this xid here".into()),
            });
        }
    }

    /// The committed fence row of `gid`: `Some('b')` (committed), `Some('r')`
    /// (rolled back), `Some('o')` (voted READ_ONLY) or `None`. `c` must be outside any
    /// transaction.
    async fn fence_state(c: &mut Pooled, gid: &Gid) -> Result<Option<char>, PgError> {
        let conn = c.conn()?;
        let read = match conn.statement(FENCE_STATE_SQL).await {
            Ok(stmt) => conn.client.query_opt(&stmt, &[&gid.as_str()]).await,
            Err(e) => Err(e),
        };
        let row = match read {
            Ok(row) => row,
            Err(e) => {
                if e.as_db_error().is_none() {
                    // Broken, or its state is unknown: never back to the pool.
                    c.discard();
                }
                return Err(e.into());
            }
        };
        Ok(match row {
            Some(r) => Some(char::from(
                u8::try_from(r.try_get::<_, i8>(0)?).unwrap_or(b'?'),
            )),
            None => None,
        })
    }

    /// Rolls back a branch that is still open (never prepared). A statement in
    /// flight is cancelled first, so a long query cannot hold the rollback up.
    async fn abort_open(&self, slot: &Slot) {
        let mut cancelled = false;
        let mut st = match slot.state.try_lock() {
            Ok(st) => st,
            Err(_) => {
                if let Err(e) = self.pool.connector().cancel(&slot.cancel).await {
                    tracing::debug!(error = %e, "cancel of the branch's statement failed");
                }
                cancelled = true;
                slot.state.lock().await
            }
        };
        let begun = st.begun;
        let abandoned = st.abandoned;
        if let Some(mut conn) = st.conn.take() {
            // A cancel may land late, on whatever the connection runs next, and an
            // abandoned statement may still be running: never lend such a connection
            // to another branch.
            if cancelled || abandoned || (begun && rollback_conn(&mut conn).await.is_err()) {
                conn.discard();
            }
        }
    }

    /// Vote for an open branch that this call now owns.
    async fn prepare_open(&self, slot: &Slot, gid: &Gid) -> Result<Vote, PgError> {
        let mut st = slot.state.lock().await;
        let Some(mut conn) = st.conn.take() else {
            return Ok(Vote::No("branch was closed before prepare".into()));
        };
        if st.abandoned {
            conn.discard();
            return Ok(Vote::No(
                "a statement of the branch was abandoned before it answered".into(),
            ));
        }
        if let Some(why) = st.failed.take() {
            if rollback_conn(&mut conn).await.is_err() {
                conn.discard();
            }
            return Ok(Vote::No(format!("a statement of the branch failed: {why}")));
        }
        if !st.begun {
            // No statement ran: nothing to prepare or commit.
            return self.vote_read_only(&mut conn, gid).await;
        }
        // Here a prepare is "delayed": the branch is owned by this call but nothing
        // is fenced yet, so a rollback can overtake it (what the fence is for).
        failpoint::hit("pg.before_prepare").await;
        let q = gid.quoted();
        let sql = format!(
            "INSERT INTO ratify_fence (gid, state) VALUES ({q}, 'b'); PREPARE TRANSACTION {q}"
        );
        let result = conn.client()?.batch_execute(&sql).await;
        match result {
            Ok(()) => Ok(Vote::Yes),
            Err(e) if e.as_db_error().is_some() => {
                if rollback_conn(&mut conn).await.is_err() {
                    conn.discard();
                }
                if is(&e, &SqlState::UNIQUE_VIOLATION) {
                    Ok(Vote::No(
                        "fenced: the branch was rolled back before its prepare arrived".into(),
                    ))
                } else {
                    Ok(Vote::No(format!("prepare failed: {}", PgError::from(e))))
                }
            }
            Err(e) => {
                // The connection broke: PREPARE may or may not have run. Not a NO (a
                // NO voter is not rolled back); unavailable makes the coordinator
                // abort and roll back, and recovery finds it if it did prepare.
                conn.discard();
                Err(PgError::from(e))
            }
        }
    }

    /// READ_ONLY for an open branch that ran no SQL, once a `'o'` fence row records
    /// it: a retried prepare finds no open branch and must read the same vote there,
    /// not vote NO. `conn` (the branch's) is outside any transaction.
    async fn vote_read_only(&self, conn: &mut Pooled, gid: &Gid) -> Result<Vote, PgError> {
        if !self.read_only_fence {
            // A fence table not upgraded yet (see the module docs): as before.
            return Ok(Vote::ReadOnly);
        }
        match insert_fence(conn, gid, FenceRow::ReadOnly, self.config.fence_lock_wait).await? {
            Ok(true) => Ok(Vote::ReadOnly),
            // The key was there first: a rollback's tombstone (from another instance,
            // or before a restart) or an earlier vote.
            Ok(false) => Ok(match Self::fence_state(conn, gid).await? {
                Some('o') => Vote::ReadOnly,
                // Committed (an empty one-phase commit elsewhere): only committing is
                // consistent with that, and YES leads there.
                Some('b') => Vote::Yes,
                _ => {
                    Vote::No("fenced: the branch was rolled back before its prepare arrived".into())
                }
            }),
            // Another transaction holds the key (a rollback's tombstone on its way in):
            // no vote now; the coordinator counts it as unreachable and aborts.
            Err(e) if is(&e, &SqlState::LOCK_NOT_AVAILABLE) => Err(PgError::Unavailable(format!(
                "fence row of {gid} is held by another transaction"
            ))),
            Err(e) => Err(PgError::from(e)),
        }
    }

    async fn commit_one_phase(&self, xid: &Xid, gid: &Gid) -> Result<CommitResult, PgError> {
        let Some(slot) = self.take_slot(xid) else {
            // Prepared already: a leader without one phase prepared the branch and
            // died, and this one-phase commit comes from the next leader. The decision
            // was handed to this resource, so commit it. Checked first because the
            // fence insert below would wait on the prepared transaction's `'b'` key
            // until its lock timeout, every time, and never answer.
            if self.is_prepared(gid).await? {
                tracing::debug!(%gid, "one-phase commit of a prepared branch: committing it");
                return self.commit_prepared(gid).await;
            }
            // A retry. The first attempt may still be running, its `'b'` fence row not
            // yet committed, so a plain read could say "rolled back" for a branch about
            // to commit. Inserting the tombstone instead waits for that row's
            // transaction and gives a definite answer: inserted means the first attempt
            // did not commit and now never can (its insert hits the key).
            let mut c = self.control.get().await?;
            match insert_fence(
                &mut c,
                gid,
                FenceRow::Tombstone,
                self.config.fence_lock_wait,
            )
            .await?
            {
                Ok(true) => return Ok(CommitResult::RolledBack),
                Ok(false) => {}
                Err(e) if is(&e, &SqlState::LOCK_NOT_AVAILABLE) => {
                    return Err(PgError::Unavailable(format!(
                        "the first commit of {gid} is still running; ask again"
                    )))
                }
                Err(e) => return Err(PgError::from(e)),
            }
            return Ok(match Self::fence_state(&mut c, gid).await? {
                // `'o'`: voted READ_ONLY earlier, nothing to commit.
                Some('b' | 'o') => CommitResult::Committed,
                _ => CommitResult::RolledBack,
            });
        };
        let mut st = slot.state.lock().await;
        let Some(mut conn) = st.conn.take() else {
            return Ok(CommitResult::RolledBack);
        };
        if st.abandoned {
            // A statement's caller went away before its answer: what the transaction
            // holds is unknown, so it must not commit. Closing the connection rolls
            // it back.
            conn.discard();
            return Ok(CommitResult::RolledBack);
        }
        if st.failed.is_some() {
            if rollback_conn(&mut conn).await.is_err() {
                conn.discard();
            }
            return Ok(CommitResult::RolledBack);
        }
        if !st.begun {
            // No statement ran: an empty transaction, which commits. Its `'b'` row must
            // still be written, in a transaction of its own: a retry finds no slot and
            // reads the fence, and without the row it would insert a tombstone and
            // answer ROLLED_BACK for a branch this call reported committed.
            return match insert_fence(
                &mut conn,
                gid,
                FenceRow::Committed,
                self.config.fence_lock_wait,
            )
            .await?
            {
                Ok(true) => Ok(CommitResult::Committed),
                // The key exists: a rollback (here before the restart, or at another
                // instance) left its tombstone first, or a retry raced this call.
                Ok(false) => Ok(match Self::fence_state(&mut conn, gid).await? {
                    Some('b' | 'o') => CommitResult::Committed,
                    _ => CommitResult::RolledBack,
                }),
                Err(e) if is(&e, &SqlState::LOCK_NOT_AVAILABLE) => Err(PgError::Unavailable(
                    format!("fence row of {gid} is held by another transaction; ask again"),
                )),
                Err(e) => Err(PgError::from(e)),
            };
        }
        let sql = format!(
            "INSERT INTO ratify_fence (gid, state) VALUES ({}, 'b'); COMMIT",
            gid.quoted()
        );
        let result = conn.client()?.batch_execute(&sql).await;
        match result {
            Ok(()) => Ok(CommitResult::Committed),
            Err(e) if e.as_db_error().is_some() => {
                if rollback_conn(&mut conn).await.is_err() {
                    conn.discard();
                }
                Ok(CommitResult::RolledBack)
            }
            Err(e) => {
                // Unknown whether COMMIT ran; the retry reads the fence row.
                conn.discard();
                Err(PgError::from(e))
            }
        }
    }

    async fn commit_prepared(&self, gid: &Gid) -> Result<CommitResult, PgError> {
        failpoint::hit("pg.before_commit_prepared").await;
        let mut c = self.control.get().await?;
        let result =
            phase2_statement(c.client()?, &format!("COMMIT PREPARED {}", gid.quoted())).await;
        match result {
            Ok(()) => {
                failpoint::hit("pg.after_commit_prepared").await;
                Ok(CommitResult::Committed)
            }
            Err(e) if is(&e, &SqlState::UNDEFINED_OBJECT) => {
                // Not prepared any more: committed earlier (a retry, or recovery and
                // the coordinator raced; or it voted READ_ONLY), unless the fence says
                // it was rolled back. That is a heuristic answer for the coordinator to
                // record (a rollback got there first, or a person rolled it back), not
                // an error: errors are retried for ever.
                match Self::fence_state(&mut c, gid).await? {
                    Some('r') => {
                        tracing::warn!(%gid, "commit of a branch that was rolled back");
                        Ok(CommitResult::RolledBack)
                    }
                    _ => Ok(CommitResult::Committed),
                }
            }
            Err(e) => Err(phase2_error(&mut c, e)),
        }
    }

    async fn rollback_branch(&self, xid: &Xid, gid: &Gid) -> Result<RollbackResult, PgError> {
        let slot = {
            // Under the branches lock, so a concurrent `begin_branch` either got in
            // first (and its slot is taken here) or sees the xid closed.
            let mut branches = self.lock_branches();
            self.remember_closed(xid);
            branches.remove(xid)
        };
        if let Some(slot) = slot {
            self.abort_open(&slot).await;
        }
        failpoint::hit("pg.before_rollback_prepared").await;
        let deadline = Instant::now() + self.config.rollback_deadline;
        let q = gid.quoted();
        let mut c = self.control.get().await?;
        loop {
            let undone = phase2_statement(c.client()?, &format!("ROLLBACK PREPARED {q}")).await;
            match undone {
                Ok(()) => tracing::debug!("prepared branch rolled back"),
                Err(e) if is(&e, &SqlState::UNDEFINED_OBJECT) => {}
                Err(e) => return Err(phase2_error(&mut c, e)),
            }
            match insert_fence(
                &mut c,
                gid,
                FenceRow::Tombstone,
                self.config.fence_lock_wait,
            )
            .await?
            {
                Ok(true) => return Ok(RollbackResult::RolledBack),
                Ok(false) => {
                    // The key existed: a tombstone (a retry), a committed branch, or a
                    // READ_ONLY vote (nothing to undo: rolled back, no heuristic).
                    return Ok(match Self::fence_state(&mut c, gid).await? {
                        Some('b') => RollbackResult::AlreadyCommitted,
                        _ => RollbackResult::RolledBack,
                    });
                }
                Err(e) if is(&e, &SqlState::LOCK_NOT_AVAILABLE) => {
                    // The branch holds the key: it is preparing or prepared. Go round:
                    // ROLLBACK PREPARED will find it.
                    if Instant::now() >= deadline {
                        return Err(PgError::Unavailable(format!(
                            "fence row of {gid} still locked after {:?}",
                            self.config.rollback_deadline
                        )));
                    }
                }
                Err(e) => return Err(PgError::from(e)),
            }
        }
    }

    async fn list_prepared(&self) -> Result<Vec<Xid>, PgError> {
        let mut c = self.control.get().await?;
        let rows = c
            .client()?
            .query(
                "SELECT gid FROM pg_prepared_xacts \
                 WHERE database = current_database() AND starts_with(gid, $1) ORDER BY prepared",
                &[&self.prefix],
            )
            .await?;
        let mut xids = Vec::with_capacity(rows.len());
        for row in rows {
            let gid: String = row.try_get(0)?;
            match Gid::parse(&gid) {
                Ok((tag, xid)) if tag == self.tag => xids.push(xid),
                // Shares our prefix but is not ours to resolve: leave it alone.
                Ok(_) | Err(_) => {
                    tracing::warn!(gid = %gid, "ignoring a prepared transaction with a malformed Ratify gid")
                }
            }
        }
        Ok(xids)
    }
}

/// Runs a phase-2 statement, waiting out "prepared transaction is busy" (another
/// session, e.g. the recovery loop racing the coordinator, is finishing the same gid
/// right now): once that session is done the gid is gone and the caller's
/// missing-gid path gives the answer.
async fn phase2_statement(c: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let mut tries = 0;
    loop {
        match c.batch_execute(sql).await {
            Err(e)
                if is(&e, &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) && tries < BUSY_RETRIES =>
            {
                tries += 1;
                tokio::time::sleep(BUSY_WAIT).await;
            }
            other => return other,
        }
    }
}

/// Phase-2 failure: a busy gid (another session is finishing it) is retryable, as is
/// anything that is not a server error (then the connection is dropped too).
fn phase2_error(c: &mut Pooled, e: tokio_postgres::Error) -> PgError {
    if e.as_db_error().is_none() {
        c.discard();
    }
    if is(&e, &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) {
        return PgError::Unavailable(PgError::from(e).to_string());
    }
    PgError::from(e)
}

/// Commits a fence row for `gid` in a transaction of its own, unless one exists, and
/// says whether this call inserted it. A transaction holding the key (a branch
/// preparing or prepared, or a one-phase commit under way) is waited for at most
/// `lock_wait`; then the error is `LOCK_NOT_AVAILABLE`. `c` must be outside any
/// transaction; on a server error the attempt is rolled back, so `c` is clean (or
/// discarded).
///
/// # Errors
/// The outer error when `c` was discarded before; the inner one is the server's.
async fn insert_fence(
    c: &mut Pooled,
    gid: &Gid,
    row: FenceRow,
    lock_wait: Duration,
) -> Result<Result<bool, tokio_postgres::Error>, PgError> {
    let state = row.code();
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'; \
         INSERT INTO ratify_fence (gid, state) VALUES ({}, '{state}') ON CONFLICT (gid) DO NOTHING RETURNING state; \
         COMMIT",
        lock_wait.as_millis().max(1),
        gid.quoted()
    );
    match c.client()?.simple_query(&sql).await {
        Ok(messages) => Ok(Ok(messages
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(_))))),
        Err(e) => {
            if rollback_conn(c).await.is_err() {
                c.discard();
            }
            Ok(Err(e))
        }
    }
}

/// `ROLLBACK` on a borrowed connection, leaving it clean for the pool.
async fn rollback_conn(c: &mut Pooled) -> Result<(), PgError> {
    c.client()?.batch_execute("ROLLBACK").await?;
    Ok(())
}

/// Startup checks; see [`PgResource::connect`]. Also says whether the fence table
/// takes `'o'` rows (after upgrading it if needed and possible).
async fn check_server(pool: &Pool) -> Result<(ServerInfo, bool), PgError> {
    let conn = pool.connect().await?;
    let c = &conn.client;
    let row = c
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version'), \
               current_setting('max_prepared_transactions')::int4, current_database()::text, \
               current_user::text, to_regclass('ratify_fence') IS NOT NULL",
            &[],
        )
        .await?;
    let version_num: i32 = row.try_get(0)?;
    let info = ServerInfo {
        version: row.try_get(1)?,
        max_prepared_transactions: row.try_get(2)?,
        database: row.try_get(3)?,
        user: row.try_get(4)?,
    };
    let fence_exists: bool = row.try_get(5)?;
    if version_num < MIN_SERVER_VERSION_NUM {
        return Err(PgError::UnsupportedVersion {
            found: info.version,
        });
    }
    if info.max_prepared_transactions == 0 {
        return Err(PgError::PreparedTransactionsDisabled);
    }
    if !fence_exists {
        match c.batch_execute(FENCE_DDL).await {
            Ok(()) => {}
            // Another resource created it at the same moment.
            Err(e) if is(&e, &SqlState::UNIQUE_VIOLATION) || is(&e, &SqlState::DUPLICATE_TABLE) => {
            }
            Err(e) if is(&e, &SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(PgError::PermissionDenied(format!(
                    "role {:?} cannot create table {FENCE_TABLE} in database {:?} ({}); \
                     grant CREATE on the schema, or create it ahead as: {FENCE_DDL}",
                    info.user,
                    info.database,
                    e.as_db_error().map(|d| d.message()).unwrap_or_default()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let allowed: bool = c
        .query_one(
            "SELECT has_table_privilege('ratify_fence', 'SELECT') \
               AND has_table_privilege('ratify_fence', 'INSERT') \
               AND has_table_privilege('ratify_fence', 'DELETE')",
            &[],
        )
        .await?
        .try_get(0)?;
    if !allowed {
        return Err(PgError::PermissionDenied(format!(
            "role {:?} needs SELECT, INSERT and DELETE on {FENCE_TABLE} in database {:?}",
            info.user, info.database
        )));
    }
    let read_only_fence = upgrade_fence(c, &info).await?;
    Ok((info, read_only_fence))
}

/// Does the fence table take an `'o'` row? Probed with an insert that is rolled back.
async fn fence_takes_read_only(c: &Client) -> Result<bool, PgError> {
    match c.batch_execute(FENCE_PROBE).await {
        Ok(()) => Ok(true),
        Err(e) if is(&e, &SqlState::CHECK_VIOLATION) => {
            c.batch_execute("ROLLBACK").await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes a fence table created before the `'o'` state take it, if it does not yet and
/// that can be done now, and says whether it takes it. Failing to upgrade is not
/// fatal (see the module docs): the resource then works as before, and says so.
async fn upgrade_fence(c: &Client, info: &ServerInfo) -> Result<bool, PgError> {
    if fence_takes_read_only(c).await? {
        return Ok(true);
    }
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'; {FENCE_UPGRADE}; COMMIT",
        FENCE_UPGRADE_LOCK_WAIT.as_millis()
    );
    match c.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = %info.database, "fence table upgraded: it now records READ_ONLY votes");
        }
        Err(e) if e.as_db_error().is_some() => {
            c.batch_execute("ROLLBACK").await?;
            // Not the owner, or prepared branches hold locks on the table (they do
            // until phase 2): start anyway, as before the upgrade.
            tracing::warn!(
                database = %info.database,
                user = %info.user,
                error = %e,
                "cannot upgrade {FENCE_TABLE} to record READ_ONLY votes now; a retried \
                 prepare of a read-only branch will vote NO until it is. Run as its owner, \
                 with no branch prepared: {FENCE_UPGRADE}"
            );
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    // A check of another name (the table made by hand) would still refuse `'o'`.
    let upgraded = fence_takes_read_only(c).await?;
    if !upgraded {
        tracing::warn!(
            database = %info.database,
            "{FENCE_TABLE} still refuses state 'o' after the upgrade (a check of another \
             name?); READ_ONLY votes are not recorded: drop that check"
        );
    }
    Ok(upgraded)
}

#[async_trait]
impl Resource for PgResource {
    async fn prepare(&self, xid: &Xid) -> Result<Vote, ResourceError> {
        let gid = self.gid(xid);
        let vote = match self.take_slot(xid) {
            Some(slot) => self.prepare_open(&slot, &gid).await?,
            // A retried prepare that already succeeded, or a branch this process
            // never opened (lost in a restart) or already rolled back.
            None if self.is_prepared(&gid).await? => Vote::Yes,
            None => self.prepare_closed(&gid).await?,
        };
        if vote == Vote::Yes {
            failpoint::hit("pg.after_prepare").await;
        }
        Ok(vote)
    }

    async fn commit(&self, xid: &Xid, one_phase: bool) -> Result<CommitResult, ResourceError> {
        let gid = self.gid(xid);
        if one_phase {
            return Ok(self.commit_one_phase(xid, &gid).await?);
        }
        Ok(self.commit_prepared(&gid).await?)
    }

    async fn rollback(&self, xid: &Xid) -> Result<RollbackResult, ResourceError> {
        let gid = self.gid(xid);
        let result = self.rollback_branch(xid, &gid).await?;
        failpoint::hit("pg.after_rollback").await;
        Ok(result)
    }

    async fn recover(&self) -> Result<Vec<Xid>, ResourceError> {
        Ok(self.list_prepared().await?)
    }

    async fn forget(&self, xid: &Xid) -> Result<(), ResourceError> {
        let gid = self.gid(xid);
        let mut c = self.control.get().await?;
        c.client()?
            .execute("DELETE FROM ratify_fence WHERE gid = $1", &[&gid.as_str()])
            .await
            .map_err(PgError::from)?;
        Ok(())
    }
}

/// The application's handle on one open branch: run SQL on it until the coordinator
/// prepares it. Statements run inside the branch's transaction (started with the
/// first one); a failed statement dooms the branch, which then votes NO.
///
pub struct PgBranch {
    /// The branch.
    xid: Xid,
    /// Shared with the resource.
    slot: Arc<Slot>,
}

impl std::fmt::Debug for PgBranch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBranch").field("xid", &self.xid).finish()
    }
}

/// A statement's parameters and what to do with its result.
enum Op<'p> {
    /// `Client::execute`.
    Execute(&'p [&'p (dyn ToSql + Sync)]),
    /// `Client::query`.
    Query(&'p [&'p (dyn ToSql + Sync)]),
    /// `Client::query_one`.
    QueryOne(&'p [&'p (dyn ToSql + Sync)]),
}

/// What an [`Op`] returned.
enum Out {
    /// Rows changed.
    Count(u64),
    /// Rows.
    Rows(Vec<Row>),
    /// One row.
    Row(Row),
}

impl Op<'_> {
    async fn call(&self, client: &Client, stmt: &Statement) -> Result<Out, tokio_postgres::Error> {
        match self {
            Op::Execute(p) => client.execute(stmt, p).await.map(Out::Count),
            Op::Query(p) => client.query(stmt, p).await.map(Out::Rows),
            Op::QueryOne(p) => client.query_one(stmt, p).await.map(Out::Row),
        }
    }
}

/// An [`Out`] of the wrong kind: a bug in this module, reported rather than panicking.
fn wrong_out() -> PgError {
    PgError::Unavailable("internal error: unexpected statement result".into())
}

impl PgBranch {
    /// The branch id.
    pub fn xid(&self) -> &Xid {
        &self.xid
    }

    /// Runs a statement in the branch and returns the number of rows it changed.
    ///
    /// # Errors
    /// [`PgError::BranchClosed`] once the branch was prepared or rolled back;
    /// the server's error otherwise (the branch will then vote NO).
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        match self.run(sql, Op::Execute(params)).await? {
            Out::Count(n) => Ok(n),
            _ => Err(wrong_out()),
        }
    }

    /// Runs a query in the branch and returns its rows.
    ///
    /// # Errors
    /// As [`Self::execute`].
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgError> {
        match self.run(sql, Op::Query(params)).await? {
            Out::Rows(r) => Ok(r),
            _ => Err(wrong_out()),
        }
    }

    /// Runs a query that returns exactly one row.
    ///
    /// # Errors
    /// As [`Self::execute`], and when the query returns no row or several.
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, PgError> {
        match self.run(sql, Op::QueryOne(params)).await? {
            Out::Row(r) => Ok(r),
            _ => Err(wrong_out()),
        }
    }

    /// Runs `op` on the branch's connection with `sql` prepared (cached per
    /// connection). The first statement is pipelined behind `BEGIN`, so opening the
    /// transaction costs no extra round trip.
    async fn run(&self, sql: &str, op: Op<'_>) -> Result<Out, PgError> {
        let mut st = self.slot.state.lock().await;
        if let Some(why) = &st.failed {
            return Err(PgError::Db {
                code: "25P02".into(),
                message: format!("the branch's transaction is aborted by an earlier error: {why}"),
            });
        }
        if st.abandoned {
            return Err(PgError::Db {
                code: "25P02".into(),
                message: "an earlier statement of the branch was abandoned before it answered"
                    .into(),
            });
        }
        let begun = st.begun;
        if st.conn.is_none() {
            return Err(PgError::BranchClosed(self.xid.clone()));
        }
        // From here on the connection may be inside a transaction, and until the answer
        // arrives it is busy: if this future is dropped half-way, the flags stay set.
        st.begun = true;
        st.abandoned = true;
        let Some(pooled) = st.conn.as_mut() else {
            return Err(PgError::BranchClosed(self.xid.clone()));
        };
        let outcome = async {
            let conn = pooled.conn()?;
            let stmt = conn.statement(sql).await?;
            let client = &conn.client;
            if begun {
                return Ok(op.call(client, &stmt).await?);
            }
            let (b, r) = tokio::join!(client.batch_execute("BEGIN"), op.call(client, &stmt));
            b?;
            Ok::<Out, PgError>(r?)
        }
        .await;
        st.abandoned = false;
        if let Err(e) = &outcome {
            // The transaction is aborted now (or its state is unknown): it votes NO.
            st.failed = Some(e.to_string());
        }
        outcome
    }
}

#[cfg(test)]
mod tests;
