//! Test support for Trekker's crates (a dev-dependency only).
//!
//! - [`postgres`]: a throwaway PostgreSQL server started by the tests
//!   themselves, migrated once into a template, one fresh database per test.
//! - [`pgbouncer`]: a throwaway PgBouncer in front of that server, in
//!   transaction or session mode.
//! - [`creds`]: Baileys-shaped credentials and session IDs for any phone.
//! - [`sqlite_store`]/[`postgres_store`]: ready, migrated stores.

pub mod creds;
pub mod http;
pub mod pgbouncer;
pub mod postgres;

use std::sync::Arc;

use trekker_store::{CredentialCipher, Postgres, SqlStore, Sqlite};

/// Says that the running test skipped, and `why`, straight to the
/// process's stderr: libtest captures `eprintln!` (a passing test's output
/// is never shown), not writes to the stream itself, so a green run still
/// shows every skip.
pub fn announce_skip(why: &str, what: &str) {
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let line = format!("SKIPPED ({why}): {test} {what}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A fixed credentials key for tests (never used outside them).
pub fn test_cipher() -> CredentialCipher {
    CredentialCipher::new(&[0x42; trekker_store::KEY_LEN])
}

/// A SQLite database in its own temporary folder; the folder lives as long
/// as the returned guard.
pub struct SqliteDatabase {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDatabase").field("url", &self.url).finish()
    }
}

pub fn sqlite_database() -> SqliteDatabase {
    let dir = tempfile::Builder::new().prefix("trekker-sqlite-").tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("trekker.db").display());
    SqliteDatabase { url, dir }
}

/// A migrated SQLite store and the guard of its folder.
pub async fn sqlite_store() -> (Arc<SqlStore<Sqlite>>, SqliteDatabase) {
    let database = sqlite_database();
    let store = SqlStore::<Sqlite>::connect(&database.url, test_cipher(), 8).await.expect("sqlite store");
    (Arc::new(store), database)
}

/// A migrated PostgreSQL store on a fresh database, or `None` when the
/// PostgreSQL tests are skipped (see [`postgres::database`]).
pub async fn postgres_store() -> Option<Arc<SqlStore<Postgres>>> {
    let database = postgres::database().await?;
    let store = SqlStore::<Postgres>::connect(&database.url, test_cipher(), 32).await.expect("postgres store");
    Some(Arc::new(store))
}
