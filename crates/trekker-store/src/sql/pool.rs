//! The store's connection pool, and what a transaction pooler between the
//! node and PostgreSQL (PgBouncer, Supavisor, a managed "pooled" endpoint;
//! DATABASE_POOLER=transaction) asks of it.
//!
//! Such a pooler hands the node a server connection for one transaction
//! at a time. So, in that mode:
//! - no statement is named (a named statement prepared on one server
//!   connection is missing on the next, or clashes with another client's):
//!   the queries ask `named()` (`queries/mod.rs`), which this mode turns
//!   off for the process;
//! - an unnamed statement is parsed and executed in two round trips, and the
//!   pooler may switch server connections between them outside a
//!   transaction: every statement run on the pool itself runs inside a
//!   transaction of its own here (its rows are read whole, then committed);
//! - nothing outlives a transaction: the statement timeout is `SET LOCAL`
//!   at the start of each one (a session `SET` would stay on a server
//!   connection another client gets next).
//!
//! Without a pooler, statements are named and cached per connection, and
//! the pool is sqlx's own, untouched.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Either, Execute, Executor, Pool, Transaction};

/// Off once any store of this process works through a transaction pooler
/// (a node has one store; tests that mix both only lose statement caching).
static NAMED_STATEMENTS: AtomicBool = AtomicBool::new(true);

/// Whether PostgreSQL statements may be named and cached per connection.
pub(crate) fn named_statements() -> bool {
    NAMED_STATEMENTS.load(Ordering::Relaxed)
}

/// How a node reaches PostgreSQL (DATABASE_* settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbSettings {
    /// Connections this node holds at most (DATABASE_MAX_CONNECTIONS).
    pub max_connections: u32,
    /// What sits between the node and PostgreSQL (DATABASE_POOLER).
    pub pooler: Pooler,
    /// A statement running longer is cancelled (DATABASE_STATEMENT_TIMEOUT_MS).
    pub statement_timeout_ms: u64,
    /// A request that waits longer for a free connection fails (503)
    /// rather than queueing without end.
    pub acquire_timeout_ms: u64,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self { max_connections: 16, pooler: Pooler::None, statement_timeout_ms: 5_000, acquire_timeout_ms: 3_000 }
    }
}

/// What sits between the node and PostgreSQL (DATABASE_POOLER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooler {
    /// A direct connection, or a pooler in session mode.
    None,
    /// A transaction-pooling proxy.
    Transaction,
}

/// The pool the queries run on; see the module header.
#[derive(Debug)]
pub struct DbPool<DB: Database> {
    pool: Pool<DB>,
    /// Through a transaction pooler: the statement timeout of each
    /// transaction, in milliseconds.
    pooled: Option<u64>,
}

impl<DB: Database> Clone for DbPool<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), pooled: self.pooled }
    }
}

/// A connection for a few reads: a plain pooled connection, or (through a
/// transaction pooler) one inside a transaction, rolled back when dropped.
pub(crate) enum Held<DB: Database> {
    Connection(PoolConnection<DB>),
    Transaction(Transaction<'static, DB>),
}

impl<DB: Database> std::ops::Deref for Held<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            Self::Connection(conn) => conn,
            Self::Transaction(tx) => tx,
        }
    }
}

impl<DB: Database> std::ops::DerefMut for Held<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Self::Connection(conn) => conn,
            Self::Transaction(tx) => tx,
        }
    }
}

impl<DB: Database> DbPool<DB> {
    /// A pool used as it is (no pooler in between).
    pub(crate) fn direct(pool: Pool<DB>) -> Self {
        Self { pool, pooled: None }
    }

    /// A pool behind a transaction pooler; turns statement naming off for
    /// the process.
    pub(crate) fn behind_transaction_pooler(pool: Pool<DB>, statement_timeout_ms: u64) -> Self {
        NAMED_STATEMENTS.store(false, Ordering::Relaxed);
        Self { pool, pooled: Some(statement_timeout_ms) }
    }

    /// sqlx's pool underneath (closing, plans in tests).
    pub fn inner(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: Database> DbPool<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Begins a transaction with `statement` (BEGIN, or the dialect's write
    /// begin); through a pooler, sets its statement timeout first thing.
    pub(crate) async fn begin_with(&self, statement: &'static str) -> Result<Transaction<'static, DB>, sqlx::Error> {
        match self.pooled {
            None => self.pool.begin_with(statement).await,
            // One round trip: the simple protocol takes both statements.
            Some(timeout_ms) => {
                let begin = format!("{statement}; SET LOCAL statement_timeout = {timeout_ms}");
                self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await
            }
        }
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, DB>, sqlx::Error> {
        self.begin_with("BEGIN").await
    }

    /// A connection for reads that belong together (see [`Held`]).
    pub(crate) async fn acquire(&self) -> Result<Held<DB>, sqlx::Error> {
        Ok(match self.pooled {
            None => Held::Connection(self.pool.acquire().await?),
            Some(_) => Held::Transaction(self.begin().await?),
        })
    }
}

impl<'p, DB: Database> Executor<'p> for &'p DbPool<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, DB>,
    {
        if self.pooled.is_none() {
            return self.pool.fetch_many(query);
        }
        let run = async move {
            let mut tx = self.begin().await?;
            let items: Vec<_> = (&mut *tx).fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures::stream::iter(items.into_iter().map(Ok)))
        };
        futures::stream::once(run).try_flatten().boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, DB>,
    {
        if self.pooled.is_none() {
            return self.pool.fetch_optional(query);
        }
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row = (&mut *tx).fetch_optional(query).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<DB>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}
