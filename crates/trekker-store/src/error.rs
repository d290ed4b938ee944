//! The store layer's one error type.
//!
//! The variants above `Database` are outcomes a caller acts on (full,
//! taken, stale...). `Database` keeps the sqlx error as its source for the
//! logs; its Display never repeats it, so nothing internal reaches a client.

use trekker_domain::{ApprovalTransitionError, BotId, ServerName, ServerStatus};

/// What a store operation can fail with; the node maps each to one HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Server … is not registered.
    #[error("server {0} is not registered")]
    UnknownServer(ServerName),
    /// Server … has no free slot.
    #[error("server {0} has no free slot")]
    ServerFull(ServerName),
    /// Server … is … and takes no new bots.
    #[error("server {server} is {status} and takes no new bots")]
    ServerNotAccepting {
        /// The server.
        server: ServerName,
        /// Its status (draining or inactive).
        status: ServerStatus,
    },
    /// The phone number is already registered on ….
    #[error("the phone number is already registered on {server}")]
    PhoneTaken {
        /// The server hosting the phone's bot.
        server: ServerName,
        /// That bot.
        bot_id: BotId,
    },
    /// The phone number changed hands repeatedly while it was being registered.
    #[error("the phone number changed hands repeatedly while it was being registered")]
    Contended,
    /// Bot not found.
    #[error("bot not found")]
    BotNotFound,
    /// Pairing request not found.
    #[error("pairing request not found")]
    PairingNotFound,
    /// A newer credentials version (…) is already stored.
    #[error("a newer credentials version ({current}) is already stored")]
    StaleVersion {
        /// The version stored now.
        current: i64,
    },
    /// The credentials are signed by another WhatsApp account than the one
    /// pinned for the bot (invariant 8); nothing was written.
    #[error("the session is signed by another WhatsApp account")]
    AccountMismatch,
    /// Same account, but an older pairing than the stored one.
    #[error("a newer session of this WhatsApp account is already stored")]
    OlderSession,
    /// Credential review not found or already decided.
    #[error("credential review not found or already decided")]
    ReviewNotFound,
    /// The change does not fit the bot's state (e.g. a move to its own
    /// server, or while an earlier move is still under way).
    #[error("{0}")]
    Conflict(String),
    /// The target took MOVES_PER_MIN moves within the last minute.
    #[error("server {0} takes no more moved bots this minute")]
    Paced(ServerName),
    /// The bot's approval status does not allow the change.
    #[error(transparent)]
    Transition(#[from] ApprovalTransitionError),
    /// Invalid value: ….
    #[error("invalid value: {0}")]
    InvalidInput(String),
    /// Stored data is not valid: ….
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// Stored credentials could not be decrypted.
    #[error("stored credentials could not be decrypted")]
    Decrypt,
    /// Store configuration: ….
    #[error("store configuration: {0}")]
    Config(String),
    /// Database migration failed.
    #[error("database migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// Database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether the same call may succeed when tried again (a busy or lost
    /// connection), as opposed to an answer that will not change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(err) => {
                matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed)
                    || is_busy(err)
                    || is_unavailable(err)
            }
            _ => false,
        }
    }

    /// The database is there but cannot take this node now: every pooled
    /// connection taken (a session pooler full), too many clients, the
    /// server starting up. Worth waiting for; a refused connection is not.
    pub fn is_busy_now(&self) -> bool {
        let Self::Database(err) = self else { return false };
        matches!(err, sqlx::Error::PoolTimedOut)
            || err.as_database_error().and_then(|db| db.code()).is_some_and(|c| matches!(c.as_ref(), "53300" | "57P03"))
    }

    /// What to tell the operator when the error says a transaction pooler
    /// sits between the node and PostgreSQL but the node does not know it.
    pub fn pooler_hint(&self) -> Option<&'static str> {
        let Self::Database(err) = self else { return None };
        let code = err.as_database_error().and_then(|db| db.code())?;
        matches!(code.as_ref(), "42P05" | "26000").then_some(
            "this looks like a transaction pooler (PgBouncer, Supavisor, a pooled endpoint) between the node and \
             PostgreSQL: set DATABASE_POOLER=transaction (and DATABASE_MIGRATION_URL to a direct connection)",
        )
    }
}

/// The SQLSTATE of a database error anywhere in a cause chain's link, for
/// the log (`42P05`, `57014`...).
pub fn sqlstate(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let db = err.downcast_ref::<sqlx::Error>()?.as_database_error()?;
    db.code().map(|code| code.into_owned())
}

/// PostgreSQL says it cannot serve now: a statement cancelled by
/// `statement_timeout`, too many connections, the server shutting down or
/// starting, or a lost connection.
fn is_unavailable(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|db| db.code()).is_some_and(|code| {
        matches!(code.as_ref(), "57014" | "53300" | "57P01" | "57P02" | "57P03" | "53000") || code.starts_with("08")
    })
}

fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        // SQLite busy/locked, PostgreSQL serialization failure / deadlock.
        .is_some_and(|code| matches!(code.as_ref(), "5" | "6" | "40001" | "40P01"))
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err)
    }
}
