//! A participant application for the chaos suite, in its own process so the nemesis can
//! SIGKILL it (or a fail point inside it can) and start it again.
//!
//! It hosts one resource of the kind asked for:
//! - `pg`: the Postgres adapter on a bank database (`chaos_accounts`, and one
//!   `chaos_ledger` row per committed branch, keyed by gtrid);
//! - `store`: the SDK's embedded durable account store;
//! - `kafka`: the Kafka adapter, one event per branch on the events topic.
//!
//! The participant service (what the coordinator calls) listens on `--listen`; the
//! application's own work API on `--app`: a TCP socket taking one JSON object per line
//! and answering each with one line, `{"ok":true,...}` or `{"ok":false,"error":...}`:
//! - `{"op":"work","xid":"<rendered xid>","account":N,"delta":D}`: does the branch's
//!   work (moves money, or stages an event carrying the gtrid); with `"counter":M`
//!   (Postgres and store) it also moves `-D` to account M in the same branch, a
//!   transfer inside this application;
//! - `{"op":"inspect"}`: the state a checker needs that only this process can read
//!   (`store`: `total`, `prepared`, `committed` xids; `kafka`: `prepared`).
//!
//! With `--slow-one-phase SHARE,MAX_MS`, that share of one-phase commits is answered
//! late, by 0 to MAX_MS ms, after the branch committed (a participant that commits at
//! once but whose answer is slow, as a loaded database's is).
//!
//! Prints `ready` on stdout once both are serving.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures::future::BoxFuture;
use rand::Rng;
use ratify_devkit::accounts::AccountStore;
use ratify_participant_sdk::adapters::kafka::{KafkaConfig, KafkaRecord, KafkaResource};
use ratify_participant_sdk::adapters::postgres::{PgConfig, PgResource};
use ratify_participant_sdk::resource::{
    CommitResult, Resource, ResourceError, RollbackResult, Vote,
};
use ratify_participant_sdk::xid::Xid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Which resource the process hosts.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// Postgres bank accounts.
    Pg,
    /// The embedded account store.
    Store,
    /// Kafka events.
    Kafka,
}

#[derive(Parser, Debug)]
#[command(about = "Participant application of Ratify's chaos suite")]
struct Args {
    /// Resource kind.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Participant service address (fixed, so a restart keeps it).
    #[arg(long)]
    listen: String,
    /// Work API address (fixed too).
    #[arg(long)]
    app: String,
    /// Coordinator API addresses, comma-separated (for the recovery loop).
    #[arg(long, value_delimiter = ',')]
    coordinator: Vec<String>,
    /// Local state folder (store: the sled database; kafka: the stage).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Postgres URL of the bank database (`pg`).
    #[arg(long, default_value = "")]
    pg_url: String,
    /// Kafka bootstrap servers (`kafka`).
    #[arg(long, default_value = "")]
    bootstrap: String,
    /// Events topic (`kafka`).
    #[arg(long, default_value = "chaos.events")]
    topic: String,
    /// The Kafka adapter's ledger topic (`kafka`).
    #[arg(long, default_value = ratify_participant_sdk::adapters::kafka::DEFAULT_LEDGER_TOPIC)]
    ledger_topic: String,
    /// Name of this participant in gids and `transactional.id`s.
    #[arg(long, default_value = "chaos")]
    tag: String,
    /// Accounts the store opens at start (`store`; missing ones only).
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// Opening balance of each account (`store`).
    #[arg(long, default_value_t = 1_000)]
    balance: i64,
    /// Recovery loop interval, ms.
    #[arg(long, default_value_t = 500)]
    recovery_ms: u64,
    /// Answer this share of one-phase commits late, by up to this many ms: SHARE,MAX_MS.
    #[arg(long, value_delimiter = ',')]
    slow_one_phase: Option<Vec<f64>>,
}

/// The hosted resource, with what its work needs.
enum App {
    /// Postgres.
    Pg(Arc<PgResource>),
    /// Account store.
    Store(Arc<AccountStore>),
    /// Kafka, and its events topic.
    Kafka(Arc<KafkaResource>, String),
}

/// Resource name of each kind at its participant.
fn resource_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Pg => "bank",
        Kind::Store => "accounts",
        Kind::Kafka => "events",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ratify_tests::init_logging_stderr();
    let args = Args::parse();
    let (app, resource): (App, Arc<dyn Resource>) = match args.kind {
        Kind::Pg => {
            let mut config = PgConfig::new(&args.pg_url, &args.tag);
            config.pool_size = 24;
            let r = retry("connecting the Postgres adapter", || {
                PgResource::connect(config.clone())
            })
            .await;
            (App::Pg(r.clone()), r)
        }
        Kind::Store => {
            let r = AccountStore::open(&args.data_dir).context("opening the account store")?;
            r.open_numbered_accounts("acct-", args.accounts, args.balance)
                .await
                .context("opening the accounts")?;
            (App::Store(r.clone()), r)
        }
        Kind::Kafka => {
            let mut config = KafkaConfig::new(&args.bootstrap, format!("{}-events", args.tag));
            config.transaction_timeout = Duration::from_secs(20);
            config.request_timeout = Duration::from_secs(10);
            config.ledger_topic = args.ledger_topic.clone();
            let r = retry("opening the Kafka adapter", || {
                KafkaResource::open(&args.data_dir, config.clone())
            })
            .await;
            (App::Kafka(r.clone(), args.topic.clone()), r)
        }
    };
    let resource: Arc<dyn Resource> = match args.slow_one_phase.as_deref() {
        None => resource,
        Some(&[share, max_ms]) => Arc::new(SlowOnePhase {
            inner: resource,
            share: share.clamp(0.0, 1.0),
            max: Duration::from_secs_f64(max_ms.max(0.0) / 1000.0),
        }),
        Some(other) => anyhow::bail!("--slow-one-phase takes SHARE,MAX_MS, not {other:?}"),
    };
    let name = resource_name(args.kind);
    // Served until the process is killed (the suite only ever SIGKILLs it).
    let _participant = ratify_participant_sdk::App::builder()
        .coordinators(args.coordinator.clone())
        .listen(&args.listen)
        .recovery_interval(Duration::from_millis(args.recovery_ms))
        .resource(name, resource)
        .start()
        .await
        .with_context(|| format!("serving on {}", args.listen))?;
    let work_listener = tokio::net::TcpListener::bind(&args.app)
        .await
        .with_context(|| format!("binding {}", args.app))?;
    let app = Arc::new(app);
    println!("ready");
    loop {
        let (socket, _) = work_listener.accept().await?;
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(&app, socket).await {
                tracing::debug!("work connection ended: {e:#}");
            }
        });
    }
}

/// A resource that answers some one-phase commits late, after committing them.
struct SlowOnePhase {
    /// The real resource.
    inner: Arc<dyn Resource>,
    /// Share of one-phase commits answered late.
    share: f64,
    /// Longest delay.
    max: Duration,
}

type Answer<'a, T> = BoxFuture<'a, Result<T, ResourceError>>;

// `Resource` is an `async_trait`: these are the signatures its macro produces.
impl Resource for SlowOnePhase {
    fn prepare<'a, 'b, 'f>(&'a self, xid: &'b Xid) -> Answer<'f, Vote>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.prepare(xid)
    }

    fn commit<'a, 'b, 'f>(&'a self, xid: &'b Xid, one_phase: bool) -> Answer<'f, CommitResult>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let result = self.inner.commit(xid, one_phase).await;
            let delay = {
                let mut rng = rand::thread_rng();
                (one_phase && rng.gen_bool(self.share)).then(|| self.max.mul_f64(rng.gen()))
            };
            if let Some(d) = delay {
                tracing::info!(%xid, ?result, ?d, "answering a one-phase commit late");
                tokio::time::sleep(d).await;
            }
            result
        })
    }

    fn rollback<'a, 'b, 'f>(&'a self, xid: &'b Xid) -> Answer<'f, RollbackResult>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.rollback(xid)
    }

    fn recover<'a, 'f>(&'a self) -> Answer<'f, Vec<Xid>>
    where
        'a: 'f,
        Self: 'f,
    {
        self.inner.recover()
    }

    fn forget<'a, 'b, 'f>(&'a self, xid: &'b Xid) -> Answer<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.forget(xid)
    }
}

/// Retries `open` until it succeeds: like a real application, this one waits for its
/// database or broker (the nemesis may have killed it) instead of exiting.
async fn retry<T, E, F, Fut>(what: &str, mut open: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match open().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!("{what} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn serve_connection(app: &App, socket: tokio::net::TcpStream) -> anyhow::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match handle(app, &line).await {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        };
        write.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

async fn handle(app: &App, line: &str) -> anyhow::Result<Value> {
    let req: Value = serde_json::from_str(line).context("request is not JSON")?;
    match req["op"].as_str() {
        Some("work") => {
            let xid: Xid = req["xid"]
                .as_str()
                .context("work needs an xid")?
                .parse()
                .context("malformed xid")?;
            let account = req["account"].as_i64().context("work needs an account")?;
            let delta = req["delta"].as_i64().context("work needs a delta")?;
            let mut changes = vec![(account, delta)];
            if let Some(counter) = req["counter"].as_i64() {
                anyhow::ensure!(counter != account, "counter is the same account");
                changes.push((counter, -delta));
            }
            work(app, &xid, &changes).await?;
            Ok(json!({}))
        }
        Some("inspect") => inspect(app),
        other => anyhow::bail!("unknown op {other:?}"),
    }
}

/// Does a branch's work: each (account, delta) of `changes` (Kafka: one event, for the
/// first).
async fn work(app: &App, xid: &Xid, changes: &[(i64, i64)]) -> anyhow::Result<()> {
    match app {
        App::Pg(pg) => {
            let branch = pg.begin_branch(xid).await?;
            // A row held by a branch in doubt (its coordinator down) must not hang the
            // client: give up, and the transaction aborts.
            branch.execute("SET LOCAL lock_timeout = '2s'", &[]).await?;
            // Rows in id order, so two transfers inside Postgres cannot deadlock.
            let mut changes = changes.to_vec();
            changes.sort_unstable();
            for (account, delta) in changes {
                let id = i32::try_from(account).context("account out of range")?;
                let updated = branch
                    .execute(
                        "UPDATE chaos_accounts SET balance = balance + $1 WHERE id = $2",
                        &[&delta, &id],
                    )
                    .await?;
                anyhow::ensure!(updated == 1, "no account {id}");
                branch
                    .execute(
                        "INSERT INTO chaos_ledger (gtrid, account, delta) VALUES ($1, $2, $3)",
                        &[&xid.gtrid(), &id, &delta],
                    )
                    .await?;
            }
        }
        App::Store(store) => {
            let branch = store.branch(xid)?;
            for &(account, delta) in changes {
                let name = format!("acct-{account}");
                if delta >= 0 {
                    branch.credit(&name, delta)?;
                } else {
                    branch.debit(&name, -delta)?;
                }
            }
        }
        App::Kafka(kafka, topic) => {
            let &[(account, delta), ..] = changes else {
                anyhow::bail!("no work");
            };
            let branch = kafka.branch(xid)?;
            let value = json!({"gtrid": xid.gtrid(), "account": account, "delta": delta});
            branch.send(KafkaRecord::new(
                topic.clone(),
                xid.gtrid().as_bytes().to_vec(),
                value.to_string().into_bytes(),
            ))?;
        }
    }
    Ok(())
}

fn inspect(app: &App) -> anyhow::Result<Value> {
    Ok(match app {
        App::Pg(pg) => json!({"open": pg.open_branches()}),
        App::Store(store) => json!({
            "total": store.total()?,
            "prepared": store.prepared_count(),
            "committed": store.committed_xids()?,
        }),
        App::Kafka(kafka, _) => json!({"prepared": kafka.prepared_count()}),
    })
}
