//! Database time as PostgreSQL itself counts it (`pg_stat_statements`,
//! loaded by the test server): reset, run something, read what every
//! statement of one database cost, per role, so one node's share can be
//! told from another's and from pgbench's.

use sqlx::{Connection as _, PgConnection};

/// One statement's counters since the last [`reset`].
#[derive(Debug, Clone)]
pub struct Statement {
    pub role: String,
    pub query: String,
    pub calls: i64,
    /// Execution time, all calls, in milliseconds.
    pub total_ms: f64,
    /// Rows returned or changed, all calls.
    pub rows: i64,
    /// Shared buffers hit or read, all calls: the pages the statement touched.
    pub blocks: i64,
}

impl Statement {
    /// Pages touched per call: what grows when a statement scans.
    pub fn blocks_per_call(&self) -> f64 {
        self.blocks as f64 / self.calls.max(1) as f64
    }
}

/// Installs the extension's view in the database at `url`; `false` (and a
/// line saying so) when the server did not load the module.
pub async fn enable(url: &str) -> bool {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    match sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut conn).await {
        Ok(_) => true,
        Err(err) => {
            println!("pg_stat_statements is not available ({err}): database time is not measured");
            false
        }
    }
}

/// Forgets every counter of the server.
pub async fn reset(url: &str) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql("SELECT pg_stat_statements_reset()").execute(&mut conn).await.expect("reset statements");
}

/// Every statement run against the database of `url` since [`reset`],
/// costliest first (the benchmark's own reads left out: of the view, and
/// `outbox_drained`'s count).
pub async fn read(url: &str) -> Vec<Statement> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let rows: Vec<(String, String, i64, f64, i64, i64)> = sqlx::query_as(
        "SELECT r.rolname::text, s.query, s.calls, s.total_exec_time, s.rows, \
         s.shared_blks_hit + s.shared_blks_read \
         FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
         WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND s.query NOT ILIKE '%pg_stat_statements%' \
         AND s.query NOT ILIKE '%FROM notification_outbox WHERE status%' \
         ORDER BY s.total_exec_time DESC",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read statements");
    rows.into_iter()
        .map(|(role, query, calls, total_ms, rows, blocks)| Statement { role, query, calls, total_ms, rows, blocks })
        .collect()
}

/// The total execution time of `statements`, in milliseconds.
pub fn total_ms<'a>(statements: impl IntoIterator<Item = &'a Statement>) -> f64 {
    statements.into_iter().map(|s| s.total_ms).sum()
}

/// Creates login role `name` (a superuser of the throwaway server: only
/// its statements' attribution matters) and returns `url` connecting as it.
pub async fn role_url(url: &str, name: &str) -> String {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let create = format!("DO $$ BEGIN CREATE ROLE {name} LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN END $$");
    sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.expect("create role");
    url.replacen("://postgres@", &format!("://{name}@"), 1)
}

/// Prints `statements` as a table, costliest first, at most `limit` rows.
pub fn print_table(title: &str, statements: &[Statement], seconds: f64, limit: usize) {
    println!("{title}:");
    println!("| ms/s | calls/s | ms/call | rows/call | pages/call | statement |");
    println!("|---|---|---|---|---|---|");
    for s in statements.iter().take(limit) {
        let text = shown(&s.query, 110);
        println!(
            "| {:.4} | {:.2} | {:.3} | {:.1} | {:.1} | `{}` |",
            s.total_ms / seconds,
            s.calls as f64 / seconds,
            s.total_ms / s.calls.max(1) as f64,
            s.rows as f64 / s.calls.max(1) as f64,
            s.blocks_per_call(),
            text
        );
    }
}

/// `query` on one line, cut at `width` characters (`BENCH_FULL_SQL=1`
/// prints it whole), for a Markdown table.
pub fn shown(query: &str, width: usize) -> String {
    let width = if std::env::var("BENCH_FULL_SQL").is_ok_and(|v| v == "1") { usize::MAX } else { width };
    let text: String = query.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(width).collect();
    text.replace('|', "\\|")
}
