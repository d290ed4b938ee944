//! The SQL implementation of [`Store`](crate::Store), written once for both
//! backends: the queries live in `queries/`, one module per aggregate, and
//! are compiled for PostgreSQL (`postgres.rs`) and for SQLite (`sqlite.rs`),
//! each naming its three dialect differences (how a write transaction
//! begins, how a row is locked, how a queue is claimed).
//!
//! Lock order, to keep PostgreSQL free of deadlocks: bot row, then server
//! row, then registry row. Registration locks the server row first (its
//! conditional UPDATE is the slot reservation) and creates the others.

mod pool;
mod postgres;
mod rows;
mod sqlite;

use pool::DbPool;
pub use pool::{DbSettings, Pooler};

use std::collections::HashMap;
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
    /// PostgreSQL: a fleet's shared database.
    Postgres,
    /// SQLite: the embedded default.
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
    pool: DbPool<DB>,
    cipher: Arc<CredentialCipher>,
    /// Duties held by another node, and until when, as last read: no need
    /// to ask before then (see `hold_duty`).
    others_duties: Arc<std::sync::Mutex<HashMap<String, (String, i64)>>>,
}

impl<DB: sqlx::Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), cipher: self.cipher.clone(), others_duties: self.others_duties.clone() }
    }
}

impl<DB: sqlx::Database> SqlStore<DB> {
    /// The connection pool (benchmarks and tests run raw SQL on it).
    pub fn pool(&self) -> &Pool<DB> {
        self.pool.inner()
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
    /// Connects to PostgreSQL with the default settings and applies pending
    /// migrations (sqlx takes an advisory lock, so nodes starting together
    /// migrate once).
    pub async fn connect(url: &str, cipher: CredentialCipher, max_connections: u32) -> Result<Self, StoreError> {
        let settings = DbSettings { max_connections, ..DbSettings::default() };
        Self::connect_with(url, cipher, &settings).await
    }

    /// Connects as `settings` say. Directly (or through a session pooler)
    /// it applies pending migrations; through a transaction pooler it
    /// applies none (their session lock cannot work there) and refuses a
    /// schema that is behind this binary (`trekker-node migrate` with
    /// DATABASE_MIGRATION_URL brings it up to date).
    pub async fn connect_with(url: &str, cipher: CredentialCipher, settings: &DbSettings) -> Result<Self, StoreError> {
        let pool = postgres_pool(url, settings).await?;
        let pool = match settings.pooler {
            Pooler::None => {
                POSTGRES_MIGRATOR.run(&pool).await.map_err(StoreError::Migration)?;
                DbPool::direct(pool)
            }
            Pooler::Transaction => {
                let pool = DbPool::behind_transaction_pooler(pool, settings.statement_timeout_ms);
                let applied: Vec<i64> =
                    match sqlx::query_scalar(APPLIED_MIGRATIONS).persistent(false).fetch_all(&pool).await {
                        Ok(applied) => applied,
                        // No migrations table: an empty database.
                        Err(err) if crate::sqlstate(&err).as_deref() == Some("42P01") => Vec::new(),
                        Err(err) => return Err(err.into()),
                    };
                let pending = POSTGRES_MIGRATOR.iter().filter(|m| !applied.contains(&m.version)).count();
                if pending > 0 {
                    return Err(StoreError::Config(format!(
                        "the database schema is {pending} migration(s) behind this binary; with \
                         DATABASE_POOLER=transaction the node applies none: run `trekker-node migrate` with \
                         DATABASE_MIGRATION_URL set to a direct connection first"
                    )));
                }
                pool
            }
        };
        Ok(Self { pool, cipher: Arc::new(cipher), others_duties: Arc::default() })
    }
}

/// Applies pending PostgreSQL migrations through `url`, which must be a
/// direct connection (or a session pooler): `trekker-node migrate`.
pub async fn migrate_postgres(url: &str, settings: &DbSettings) -> Result<usize, StoreError> {
    let settings = DbSettings { max_connections: 2, pooler: Pooler::None, ..*settings };
    let pool = postgres_pool(url, &settings).await?;
    let applied: Vec<i64> = sqlx::query_scalar(APPLIED_MIGRATIONS).fetch_all(&pool).await.unwrap_or_default();
    let pending = POSTGRES_MIGRATOR.iter().filter(|m| !applied.contains(&m.version)).count();
    POSTGRES_MIGRATOR.run(&pool).await.map_err(StoreError::Migration)?;
    pool.close().await;
    Ok(pending)
}

/// sqlx's pool for PostgreSQL as `settings` say, after one connection on
/// its own: a refusal (no server, a wrong password, too many clients) is
/// reported as it is, at once, rather than as the pool's "timed out" after
/// retrying it for seconds.
async fn postgres_pool(url: &str, settings: &DbSettings) -> Result<Pool<Postgres>, StoreError> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::Config("DATABASE_URL is not a valid PostgreSQL URL".into()))?;
    if settings.pooler == Pooler::Transaction {
        // A startup parameter PgBouncer refuses unless told to ignore it.
        options = options.extra_float_digits(None);
    }
    let probe =
        tokio::time::timeout(Duration::from_millis(settings.acquire_timeout_ms.max(1_000) * 2), options.connect())
            .await
            .map_err(|_| StoreError::Config("the database did not answer a connection in time".into()))??;
    probe.close().await?;
    let timeout_ms = settings.statement_timeout_ms;
    let session_timeout = settings.pooler == Pooler::None && timeout_ms > 0;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms.max(100)))
        // An idle connection is given back soon: behind a session pooler it
        // holds a server connection another node may be waiting for.
        .idle_timeout(Some(Duration::from_secs(10)))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // Per session here; per transaction behind a transaction pooler.
                if session_timeout {
                    let set = format!("SET statement_timeout = {timeout_ms}");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
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
        let pool = DbPool::direct(pool);
        // Two processes starting on one new file can race on the schema; the
        // loser sees the winner's tables on its next try.
        let mut attempt = 0;
        loop {
            match SQLITE_MIGRATOR.run(pool.inner()).await {
                Ok(()) => break,
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => return Err(StoreError::Migration(err)),
            }
        }
        Ok(Self { pool, cipher: Arc::new(cipher), others_duties: Arc::default() })
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
    connect_with(url, cipher, &DbSettings::default()).await
}

/// [`connect`] as `settings` say (PostgreSQL; SQLite takes none of them
/// but the connection count, capped at 8).
pub async fn connect_with(
    url: &str,
    cipher: CredentialCipher,
    settings: &DbSettings,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Backend::from_url(url)? {
        Backend::Postgres => Arc::new(SqlStore::<Postgres>::connect_with(url, cipher, settings).await?),
        Backend::Sqlite => Arc::new(SqlStore::<Sqlite>::connect(url, cipher, settings.max_connections.min(8)).await?),
    })
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Which database it is.
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
            // Unnamed: `check` may run through a transaction pooler.
            let applied = sqlx::query_scalar(APPLIED_MIGRATIONS).persistent(false).fetch_all(&pool).await;
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
            // Unnamed: `check` may run through a transaction pooler.
            let applied = sqlx::query_scalar(APPLIED_MIGRATIONS).persistent(false).fetch_all(&pool).await;
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
