//! A small connection pool: branches borrow a connection for their whole life, phase
//! 2 and recovery borrow one per statement.
//!
//! Each connection keeps its own cache of prepared statements, so a statement the
//! application runs often is parsed once per connection and then costs one round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

use super::error::PgError;

/// Most statements cached per connection; past that the cache is cleared (cheap, and
/// protects the server from applications that build SQL text dynamically).
const MAX_CACHED_STATEMENTS: usize = 256;

/// One server connection and its statement cache.
pub(super) struct Conn {
    /// The connection.
    pub(super) client: Client,
    /// SQL text → statement prepared on this connection.
    stmts: HashMap<String, Statement>,
}

impl Conn {
    /// The prepared statement for `sql` on this connection, parsing it on first use.
    pub(super) async fn statement(
        &mut self,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        if self.stmts.len() >= MAX_CACHED_STATEMENTS {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// How connections to the server are made: plaintext, or TLS (rustls).
#[derive(Clone)]
pub(super) enum Connector {
    /// `NoTls`.
    Plain,
    /// TLS, as the URL's `sslmode` says (`require`: never plaintext).
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Connector {
    /// Sends a cancel request for the statement `token`'s connection runs.
    pub(super) async fn cancel(
        &self,
        token: &tokio_postgres::CancelToken,
    ) -> Result<(), tokio_postgres::Error> {
        match self {
            Connector::Plain => token.cancel_query(NoTls).await,
            Connector::Tls(tls) => token.cancel_query(tls.clone()).await,
        }
    }
}

/// Shared state of a [`Pool`].
struct Inner {
    /// Where to connect.
    config: tokio_postgres::Config,
    /// Plaintext or TLS.
    connector: Connector,
    /// Connections not lent out, healthy and outside any transaction.
    idle: Mutex<Vec<Conn>>,
    /// Caps open connections at the configured size (branches hold theirs until
    /// prepare, so this also caps concurrent open branches).
    permits: Arc<Semaphore>,
}

/// A bounded pool of connections to one database.
#[derive(Clone)]
pub(super) struct Pool(Arc<Inner>);

impl Pool {
    /// A pool of at most `size` connections to `config`; connects lazily.
    pub(super) fn new(config: tokio_postgres::Config, connector: Connector, size: usize) -> Self {
        Self(Arc::new(Inner {
            config,
            connector,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        }))
    }

    /// Borrows a connection, waiting for a free slot and connecting if no idle one
    /// is left.
    ///
    /// # Errors
    /// [`PgError::Unavailable`] when a new connection cannot be made.
    pub(super) async fn get(&self) -> Result<Pooled, PgError> {
        let permit = Arc::clone(&self.0.permits)
            .acquire_owned()
            .await
            .map_err(|_| PgError::Unavailable("connection pool closed".into()))?;
        loop {
            let idle = self
                .0
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => {
                    return Ok(Pooled {
                        conn: Some(c),
                        pool: Arc::clone(&self.0),
                        _permit: permit,
                    })
                }
                None => break,
            }
        }
        let conn = self.connect().await?;
        Ok(Pooled {
            conn: Some(conn),
            pool: Arc::clone(&self.0),
            _permit: permit,
        })
    }

    /// How this pool connects (for cancel requests).
    pub(super) fn connector(&self) -> &Connector {
        &self.0.connector
    }

    /// A new connection outside the pool's accounting (startup checks).
    pub(super) async fn connect(&self) -> Result<Conn, PgError> {
        let unavailable = |e: tokio_postgres::Error| match PgError::from(e) {
            PgError::Db { code, message } => PgError::Unavailable(format!("{code}: {message}")),
            other => other,
        };
        let closed = |e: tokio_postgres::Error| {
            tracing::debug!(error = %e, "postgres connection closed");
        };
        let client = match &self.0.connector {
            Connector::Plain => {
                let (client, connection) =
                    self.0.config.connect(NoTls).await.map_err(unavailable)?;
                tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                client
            }
            Connector::Tls(tls) => {
                let (client, connection) = self
                    .0
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(unavailable)?;
                tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                client
            }
        };
        Ok(Conn {
            client,
            stmts: HashMap::new(),
        })
    }
}

/// A borrowed connection. Dropping it returns the connection to the pool, so only
/// drop it when the connection is outside any transaction; call
/// [`Pooled::discard`] when its state is unknown.
pub(super) struct Pooled {
    /// The connection; `None` once discarded.
    conn: Option<Conn>,
    /// Where it goes back.
    pool: Arc<Inner>,
    /// The pool slot, released on drop.
    _permit: OwnedSemaphorePermit,
}

impl Pooled {
    /// The connection.
    ///
    /// # Errors
    /// [`PgError::Unavailable`] after [`Pooled::discard`].
    pub(super) fn conn(&mut self) -> Result<&mut Conn, PgError> {
        self.conn
            .as_mut()
            .ok_or_else(|| PgError::Unavailable("connection was discarded".into()))
    }

    /// The client.
    ///
    /// # Errors
    /// [`PgError::Unavailable`] after [`Pooled::discard`].
    pub(super) fn client(&mut self) -> Result<&Client, PgError> {
        Ok(&self.conn()?.client)
    }

    /// Closes the connection instead of returning it (its transaction state is
    /// unknown, or it broke). Postgres rolls back whatever it had open.
    pub(super) fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(c);
            }
        }
    }
}
