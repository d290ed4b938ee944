//! The SQL implementation of [`Store`](crate::Store), written once for both
//! backends: the queries live in `queries/`, one module per aggregate, and
//! are compiled for PostgreSQL (`postgres.rs`) and for SQLite (`sqlite.rs`),
//! each naming its three dialect differences (how a write transaction
//! begins, how a row is locked, how a queue is claimed).
//!
//! Lock order, to keep PostgreSQL free of deadlocks: bot row, then server
//! row, then registry row. Registration locks the server row first (its
//! conditional UPDATE is the slot reservation) and creates the others.

mod postgres;
mod rows;
mod sqlite;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};
use trekker_domain::Credentials;

use self::rows::ClaimedRow;
use crate::Store;
use crate::cipher::{CredentialCipher, Sealed};
use crate::error::StoreError;
use crate::model::*;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// `postgres://`/`postgresql://` or `sqlite:`; anything else is refused.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(StoreError::Config("DATABASE_URL must start with postgres://, postgresql:// or sqlite://".into()))
        }
    }
}

/// A [`Store`] over a sqlx pool of `DB` (PostgreSQL or SQLite).
#[derive(Debug)]
pub struct SqlStore<DB: sqlx::Database> {
    pool: Pool<DB>,
    cipher: Arc<CredentialCipher>,
}

impl<DB: sqlx::Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), cipher: self.cipher.clone() }
    }
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    fn open_claimed(&self, rows: Vec<ClaimedRow>) -> Result<Vec<ClaimedUpdate>, StoreError> {
        let mut claimed = rows
            .into_iter()
            .map(|row| {
                let sealed = Sealed {
                    ciphertext: row.credentials_ciphertext,
                    nonce: row.credentials_nonce,
                    key_id: row.credentials_key_id,
                };
                let credentials = self.open(&row.outbox.id, &sealed)?;
                Ok(ClaimedUpdate { update: row.outbox.try_into()?, credentials })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by_key(|c| c.update.created_at);
        Ok(claimed)
    }

    fn seal(&self, row_id: &str, credentials: &Credentials) -> Result<Sealed, StoreError> {
        self.cipher.seal(row_id, credentials.document().as_bytes())
    }

    fn open(&self, row_id: &str, sealed: &Sealed) -> Result<Credentials, StoreError> {
        let plain = self.cipher.open(row_id, sealed)?;
        let text = String::from_utf8(plain).map_err(|_| StoreError::Decrypt)?;
        Credentials::from_json_text(&text)
            .map_err(|_| StoreError::Corrupt(format!("stored credentials of {row_id} no longer parse")))
    }
}

static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

impl SqlStore<Postgres> {
    /// Connects to PostgreSQL and applies pending migrations (sqlx takes an
    /// advisory lock, so nodes starting together migrate once).
    pub async fn connect(url: &str, cipher: CredentialCipher, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Config("DATABASE_URL is not a valid PostgreSQL URL".into()))?;
        // One connection first, on its own: a refusal (no server, a wrong
        // password, too many clients) is reported as it is, at once, rather
        // than as the pool's "timed out" after retrying it for seconds.
        use sqlx::{ConnectOptions as _, Connection as _};
        options.connect().await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        POSTGRES_MIGRATOR.run(&pool).await.map_err(StoreError::Migration)?;
        Ok(Self { pool, cipher: Arc::new(cipher) })
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if missing) a SQLite database in WAL mode and
    /// applies pending migrations.
    pub async fn connect(url: &str, cipher: CredentialCipher, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Config("DATABASE_URL is not a valid SQLite URL".into()))?;
        create_private_file(options.get_filename())?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Writers queue on the database lock instead of failing at once.
            .busy_timeout(Duration::from_secs(15));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        // Two processes starting on one new file can race on the schema; the
        // loser sees the winner's tables on its next try.
        let mut attempt = 0;
        loop {
            match SQLITE_MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => return Err(StoreError::Migration(err)),
            }
        }
        Ok(Self { pool, cipher: Arc::new(cipher) })
    }
}

/// Creates a new database file readable by its owner only (0600). SQLite
/// gives the `-wal` and `-shm` files it adds the database file's mode, so
/// they are private too. An existing file is left as it is.
fn create_private_file(path: &std::path::Path) -> Result<(), StoreError> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" || path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        // Another process created it first: fine, it is the same file.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::Config(format!("cannot create the database file {}: {err}", path.display()))),
    }
}

/// Connects to the database `url` names and migrates it.
pub async fn connect(url: &str, cipher: CredentialCipher) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Backend::from_url(url)? {
        Backend::Postgres => Arc::new(SqlStore::<Postgres>::connect(url, cipher, 16).await?),
        Backend::Sqlite => Arc::new(SqlStore::<Sqlite>::connect(url, cipher, 8).await?),
    })
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub backend: Backend,
    /// Migrations this binary has that the database has not applied.
    pub pending_migrations: usize,
}

/// Connects to the database `url` names and reads it, writing nothing: no
/// migration, and a SQLite file is opened read-only and never created.
pub async fn check(url: &str) -> Result<CheckReport, StoreError> {
    let backend = Backend::from_url(url)?;
    let applied: Result<Vec<i64>, sqlx::Error> = match backend {
        Backend::Postgres => {
            let options = PgConnectOptions::from_str(url)
                .map_err(|_| StoreError::Config("DATABASE_URL is not a valid PostgreSQL URL".into()))?;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            sqlx::query("SELECT 1").execute(&pool).await?;
            let applied = sqlx::query_scalar(APPLIED_MIGRATIONS).fetch_all(&pool).await;
            pool.close().await;
            applied
        }
        Backend::Sqlite => {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|_| StoreError::Config("DATABASE_URL is not a valid SQLite URL".into()))?
                .create_if_missing(false)
                .read_only(true);
            let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
            sqlx::query("SELECT 1").execute(&pool).await?;
            let applied = sqlx::query_scalar(APPLIED_MIGRATIONS).fetch_all(&pool).await;
            pool.close().await;
            applied
        }
    };
    let migrator = match backend {
        Backend::Postgres => &POSTGRES_MIGRATOR,
        Backend::Sqlite => &SQLITE_MIGRATOR,
    };
    // No migrations table yet: nothing is applied.
    let applied = applied.unwrap_or_default();
    let pending_migrations = migrator.iter().filter(|m| !applied.contains(&m.version)).count();
    Ok(CheckReport { backend, pending_migrations })
}

const APPLIED_MIGRATIONS: &str = "SELECT version FROM _sqlx_migrations WHERE success";
