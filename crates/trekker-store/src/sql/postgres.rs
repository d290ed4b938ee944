//! PostgreSQL, the cluster backend: its dialect, and the queries compiled
//! for it.
//!
//! The queries (`queries/`) are written once and compiled twice, here and in
//! `sqlite.rs`, against the concrete `Db` type each module names. That keeps
//! them ordinary code (rustfmt formats them, the IDE shows their types,
//! errors point at the line) without the wall of sqlx trait bounds that
//! code generic over the database would need. Where the dialects differ, a
//! query names one of the fragments below.

/// The database the queries of this module run on.
type Db = sqlx::Postgres;

/// Starts a transaction that will write.
const BEGIN_WRITE: &str = "BEGIN";

/// Locks the selected row until the transaction ends (lock order: bot row,
/// then server row, then registry row).
macro_rules! lock_row {
    () => {
        "FOR UPDATE"
    };
}

/// The database's own clock in epoch milliseconds: every node that asks
/// reads the same time (failover does not trust one node's clock).
macro_rules! db_now_ms {
    () => {
        "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}

/// Locks the claimed queue rows, passing over rows another worker holds.
macro_rules! claim_lock {
    () => {
        "FOR UPDATE SKIP LOCKED"
    };
}

/// The next change-feed cursor ([`crate::ChangeCursor`]): the snapshot as
/// text, `oldest:next:running,...`. A write not visible in it came from a
/// transaction numbered `next` or above, or from one listed as running.
const CHANGE_CURSOR: &str = "SELECT CAST(pg_current_snapshot() AS TEXT)";

/// "Is one of the BIGINTs of the JSON array bound as `$param`", to follow
/// a column. As `= ANY(ARRAY(...))`, not `IN (SELECT ...)`: the array is
/// an init plan whose values become index conditions, where a semi-join
/// with the set function (estimated at 100 rows) had the generic plan read
/// every row of a server to find the few asked for (issue 22: 1,276 pages
/// for 2 rows).
macro_rules! in_json_bigints {
    ($param:literal) => {
        concat!(
            " = ANY(ARRAY(SELECT CAST(value AS BIGINT) FROM jsonb_array_elements_text(CAST(",
            $param,
            " AS JSONB))))"
        )
    };
}

/// The TEXTs of the JSON array bound as `$param`, as a subquery.
macro_rules! json_texts {
    ($param:literal) => {
        concat!("(SELECT value FROM jsonb_array_elements_text(CAST(", $param, " AS JSONB)))")
    };
}

/// Plans are asked for the way a pooled connection ends up running a
/// statement: prepared, with the generic plan PostgreSQL switches to after
/// a few runs (the plan that cannot use an index behind `$1 IS NULL OR`).
const GENERIC_PLANS: bool = true;

/// Whether statements may be named (not through a transaction pooler).
fn named_statements() -> bool {
    super::pool::named_statements()
}

// The same files are compiled for SQLite in `sqlite.rs`, on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "queries/mod.rs"]
mod queries;
