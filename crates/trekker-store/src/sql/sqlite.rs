//! SQLite, the embedded default: its dialect, and the queries compiled for
//! it (see `postgres.rs` for why the queries are compiled once per backend).

/// The database the queries of this module run on.
type Db = sqlx::Sqlite;

/// SQLite has one writer at a time: `BEGIN IMMEDIATE` takes the write lock
/// up front, so a transaction that reads before it writes never fails with
/// SQLITE_BUSY halfway.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Rows need no lock of their own: the write transaction holds the database.
macro_rules! lock_row {
    () => {
        ""
    };
}

/// Claims need no lock either, for the same reason.
macro_rules! claim_lock {
    () => {
        ""
    };
}

// The same files are compiled for PostgreSQL in `postgres.rs`, on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "queries/mod.rs"]
mod queries;
