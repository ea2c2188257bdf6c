//! A bank spread over two Postgres databases (`<prefix>_a` and `<prefix>_b`), each an
//! XA resource of one [`App`]; a transfer debits an account in A and credits one in B
//! as one Ratify global transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_participant_sdk::adapters::postgres::{PgConfig, PgResource, PgTls};
use ratify_participant_sdk::client::CoordinatorClient;
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::{App, AppError, Tx};
use tokio_postgres::{Client, NoTls};

/// Resource name of bank A at the participant.
pub const RESOURCE_A: &str = "bank_a";
/// Resource name of bank B at the participant.
pub const RESOURCE_B: &str = "bank_b";

/// Where the two databases are.
#[derive(Debug, Clone)]
pub struct BankDbs {
    /// Bank A's URL.
    pub a_url: String,
    /// Bank B's URL.
    pub b_url: String,
    /// Bank A's database name (also its gid tag).
    pub a_name: String,
    /// Bank B's database name (also its gid tag).
    pub b_name: String,
}

impl BankDbs {
    /// The databases `<prefix>_a` and `<prefix>_b` on the server of `base_url`.
    ///
    /// # Errors
    /// When `prefix` is not 1 to 30 characters of `[a-z0-9_]` (it becomes database
    /// names and gid tags).
    pub fn new(base_url: &str, prefix: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=30).contains(&prefix.len())
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database prefix must be 1 to 30 characters of [a-z0-9_], got {prefix:?}"
        );
        let (a_name, b_name) = (format!("{prefix}_a"), format!("{prefix}_b"));
        Ok(Self {
            a_url: with_database(base_url, &a_name),
            b_url: with_database(base_url, &b_name),
            a_name,
            b_name,
        })
    }
}

/// `url` (a `postgres://` URL) pointing at database `db` instead.
pub fn with_database(url: &str, db: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let after_scheme = main.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match main[after_scheme..].find('/') {
        Some(i) => &main[..after_scheme + i],
        None => main,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A plain connection (setup, checks, the raw baselines of the benchmark).
///
/// # Errors
/// When the server cannot be reached.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection closed");
        }
    });
    Ok(client)
}

/// Creates both databases if missing and (re)sets `accounts` to ids `0..accounts`,
/// each holding `balance`.
///
/// # Errors
/// Connection or SQL failures (for example prepared transactions still holding rows).
pub async fn setup(
    base_url: &str,
    dbs: &BankDbs,
    accounts: i32,
    balance: i64,
) -> anyhow::Result<()> {
    let admin = connect(base_url).await?;
    for (name, url) in [(&dbs.a_name, &dbs.a_url), (&dbs.b_name, &dbs.b_url)] {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
            .await?
            .is_some();
        if !exists {
            // The name was validated by BankDbs::new ([a-z0-9_]).
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await?;
        }
        let db = connect(url).await?;
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS accounts (\
                 id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)); \
             TRUNCATE accounts",
        )
        .await?;
        db.execute(
            "INSERT INTO accounts SELECT g, $2 FROM generate_series(0, $1 - 1) g",
            &[&accounts, &balance],
        )
        .await?;
    }
    Ok(())
}

/// Sum of all balances in the database at `url`.
///
/// # Errors
/// Connection or SQL failures.
pub async fn total(url: &str) -> anyhow::Result<i64> {
    let c = connect(url).await?;
    let row = c
        .query_one("SELECT coalesce(sum(balance), 0)::int8 FROM accounts", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// Balance of account `id` in the database at `url`.
///
/// # Errors
/// Connection or SQL failures, or no such account.
pub async fn balance(url: &str, id: i32) -> anyhow::Result<i64> {
    let c = connect(url).await?;
    Ok(
        c.query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
            .await?
            .try_get(0)?,
    )
}

/// Gids prepared in the database at `url`.
///
/// # Errors
/// Connection or SQL failures.
pub async fn prepared_gids(url: &str) -> anyhow::Result<Vec<String>> {
    let c = connect(url).await?;
    let rows = c
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The fence row state of `gid` in the database at `url` (`b` committed, `r` rolled back).
///
/// # Errors
/// Connection or SQL failures.
pub async fn fence_state(url: &str, gid: &str) -> anyhow::Result<Option<String>> {
    let c = connect(url).await?;
    let row = c
        .query_opt(
            "SELECT state::text FROM ratify_fence WHERE gid = $1",
            &[&gid],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Both banks as resources.
#[derive(Debug, Clone)]
pub struct Bank {
    /// Bank A.
    pub a: Arc<PgResource>,
    /// Bank B.
    pub b: Arc<PgResource>,
}

impl Bank {
    /// Connects both resources (startup checks included), `pool_size` connections each.
    ///
    /// # Errors
    /// The adapter's startup errors.
    pub async fn open(dbs: &BankDbs, pool_size: usize) -> anyhow::Result<Self> {
        Self::open_tls(dbs, pool_size, None).await
    }

    /// [`Bank::open`], over TLS to the server when `tls` is given (the URLs'
    /// `sslmode` says whether plaintext is allowed).
    ///
    /// # Errors
    /// The adapter's startup errors.
    pub async fn open_tls(
        dbs: &BankDbs,
        pool_size: usize,
        tls: Option<PgTls>,
    ) -> anyhow::Result<Self> {
        let cfg = |url: &str, tag: &str| PgConfig {
            pool_size,
            tls: tls.clone(),
            ..PgConfig::new(url, tag)
        };
        let a = PgResource::connect(cfg(&dbs.a_url, &dbs.a_name)).await?;
        let b = PgResource::connect(cfg(&dbs.b_url, &dbs.b_name)).await?;
        Ok(Self { a, b })
    }

    /// Hosts both banks in one [`App`] listening on `listen`, with their recovery
    /// loop every `recovery_interval` (`None`: no loop, for tests that watch a
    /// branch stay prepared) and a prepared-transactions logger each. Transfers
    /// time out after 10 s undecided; a commit without an answer within the client's
    /// deadline is reported as [`AppError::OutcomeUnknown`].
    ///
    /// # Errors
    /// When `listen` cannot be bound.
    pub async fn host(
        &self,
        client: CoordinatorClient,
        listen: &str,
        recovery_interval: Option<Duration>,
    ) -> anyhow::Result<App> {
        let builder = App::builder()
            .client(client)
            .listen(listen)
            .transaction_timeout(Duration::from_secs(10))
            // One commit call's deadline, then the transfer reports its outcome
            // unknown (the demo counts it, `pg_bank participant` prints it) instead of
            // asking for ever.
            .outcome_timeout(Duration::ZERO)
            .resource(RESOURCE_A, Arc::clone(&self.a) as Arc<dyn Resource>)
            .resource(RESOURCE_B, Arc::clone(&self.b) as Arc<dyn Resource>);
        let builder = match recovery_interval {
            Some(every) => builder.recovery_interval(every),
            None => builder.without_recovery(),
        };
        let app = builder
            .start()
            .await
            .with_context(|| format!("cannot serve the banks on {listen}"))?;
        self.a
            .spawn_stats_logger(Duration::from_secs(10), app.stopped());
        self.b
            .spawn_stats_logger(Duration::from_secs(10), app.stopped());
        Ok(app)
    }

    /// Moves `amount` from A's account `from` to B's account `to` as one global
    /// transaction of `app` (the SQL of both branches runs concurrently) and commits
    /// it. `begun` is told the gtrid once the work is done, before the commit.
    ///
    /// # Errors
    /// As [`App::transaction`]: [`AppError::Work`] for a failed statement (rolled
    /// back), [`AppError::Aborted`], and the rest.
    pub async fn transfer(
        &self,
        app: &App,
        from: i32,
        to: i32,
        amount: i64,
        begun: impl FnOnce(&str) + Send,
    ) -> Result<Transferred, AppError> {
        let started = Instant::now();
        let work = |tx: Tx| async move {
            let (ba, bb) = futures::try_join!(
                self.a.begin_branch(tx.xid(RESOURCE_A)?),
                self.b.begin_branch(tx.xid(RESOURCE_B)?)
            )?;
            let (debit, credit) = ([&amount as _, &from as _], [&amount as _, &to as _]);
            futures::try_join!(
                ba.execute(
                    "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                    &debit
                ),
                bb.execute(
                    "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                    &credit
                ),
            )?;
            begun(tx.gtrid());
            anyhow::Ok(Transferred {
                gtrid: tx.gtrid().to_owned(),
                work: started.elapsed(),
                total: Duration::ZERO,
            })
        };
        let mut t = app.transaction(work).await?;
        t.total = started.elapsed();
        Ok(t)
    }
}

/// A committed transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// Its global transaction id.
    pub gtrid: String,
    /// Begin and the SQL of both branches.
    pub work: Duration,
    /// The whole transfer: the work and the commit.
    pub total: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_point_at_the_named_database() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x_a"),
            "postgres://u@h:5/x_a"
        );
        assert_eq!(
            with_database("postgres://u@h:5", "x_a"),
            "postgres://u@h:5/x_a"
        );
        assert_eq!(
            with_database("postgres://u@h:5/db?sslmode=disable", "x_a"),
            "postgres://u@h:5/x_a?sslmode=disable"
        );
        assert!(BankDbs::new("postgres://h/db", "Bad-Prefix").is_err());
    }
}
