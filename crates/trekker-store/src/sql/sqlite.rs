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

/// The database's own clock in epoch milliseconds (see the PostgreSQL twin).
macro_rules! db_now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// Claims need no lock either, for the same reason.
macro_rules! claim_lock {
    () => {
        ""
    };
}

/// The next change-feed cursor, in PostgreSQL's form (`oldest:next:`):
/// one past the change counter. Writers run one at a time and bump the
/// counter inside their transaction, so every later commit has a change
/// number at or above it, and none is ever running while we read.
const CHANGE_CURSOR: &str = "SELECT (seq + 1) || ':' || (seq + 1) || ':' FROM bot_change_counter WHERE id = 1";

/// "Is one of the integers of the JSON array bound as `$param`", to
/// follow a column.
macro_rules! in_json_bigints {
    ($param:literal) => {
        concat!(" IN (SELECT value FROM json_each(", $param, "))")
    };
}

/// The TEXTs of the JSON array bound as `$param`, as a subquery.
macro_rules! json_texts {
    ($param:literal) => {
        concat!("(SELECT value FROM json_each(", $param, "))")
    };
}

/// SQLite plans each statement once, with no generic form: its plan is
/// asked for with the parameters bound.
const GENERIC_PLANS: bool = false;

/// Statements are always named (SQLite has no pooler in between).
fn named_statements() -> bool {
    true
}

// The same files are compiled for PostgreSQL in `postgres.rs`, on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "queries/mod.rs"]
mod queries;
