//! Errors of the Postgres adapter, and how Postgres errors map onto the resource
//! contract's retry-or-give-up split.

use tokio_postgres::error::SqlState;

use super::gid::GidError;
use crate::resource::ResourceError;
use crate::xid::Xid;

/// Errors of [`super::PgResource`] and [`super::PgBranch`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The configuration is unusable (bad URL, bad tag, zero pool size).
    #[error("invalid Postgres resource configuration: {0}")]
    Config(String),
    /// The resource tag is malformed.
    #[error(transparent)]
    Tag(#[from] GidError),
    /// The server is older than [`super::MIN_SERVER_VERSION_NUM`].
    #[error(
        "PostgreSQL server version {found} is not supported: the adapter needs {}.0 or newer (tested with 15)",
        super::MIN_SERVER_VERSION_NUM / 10_000
    )]
    UnsupportedVersion {
        /// `server_version` as the server reports it.
        found: String,
    },
    /// `max_prepared_transactions` is 0, so `PREPARE TRANSACTION` always fails.
    #[error(
        "max_prepared_transactions is 0 on this server, so no branch can be prepared: \
         set it (e.g. `-c max_prepared_transactions=200` or in postgresql.conf, at least \
         the number of concurrent global transactions) and restart the server"
    )]
    PreparedTransactionsDisabled,
    /// The role lacks a privilege the adapter needs.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The database could not be reached, or the connection broke; retry later.
    #[error("Postgres unavailable: {0}")]
    Unavailable(String),
    /// A statement failed (the message is the server's).
    #[error("Postgres error {code}: {message}")]
    Db {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A branch is already open for this xid in this process.
    #[error("branch {0} is already open")]
    BranchExists(Xid),
    /// The branch was prepared, rolled back or finished: it takes no more SQL.
    #[error("branch {0} is closed (prepared, rolled back or finished) and takes no more work")]
    BranchClosed(Xid),
}

impl PgError {
    /// True when the same call may succeed later (connection trouble, server
    /// restarting, serialization failures and deadlocks).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// SQLSTATE classes and codes after which retrying may succeed.
fn is_transient(code: &SqlState) -> bool {
    let c = code.code();
    // 08: connection exception; 53: insufficient resources; 57P0x: shutdown, crash
    // recovery, cannot connect now; 40001/40P01: serialization failure, deadlock.
    c.starts_with("08")
        || c.starts_with("53")
        || matches!(c, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if is_transient(db.code()) => Self::Unavailable(db.to_string()),
            Some(db) if *db.code() == SqlState::INSUFFICIENT_PRIVILEGE => {
                Self::PermissionDenied(db.message().to_owned())
            }
            Some(db) => Self::Db {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
            },
            // No server error: I/O, closed connection, protocol trouble.
            None => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<PgError> for ResourceError {
    fn from(e: PgError) -> Self {
        if e.is_retryable() {
            ResourceError::Unavailable(e.to_string())
        } else {
            ResourceError::Failed(e.to_string())
        }
    }
}

/// The SQLSTATE of a server error, if `e` is one.
pub(super) fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes_are_retryable() {
        for c in ["08006", "53300", "57P01", "57P03", "40001", "40P01"] {
            assert!(is_transient(&SqlState::from_code(c)), "{c}");
        }
        for c in ["23505", "42704", "42601", "25P02"] {
            assert!(!is_transient(&SqlState::from_code(c)), "{c}");
        }
        assert!(PgError::Unavailable("x".into()).is_retryable());
        assert!(!PgError::PreparedTransactionsDisabled.is_retryable());
    }
}
