//! `bench-register`: registrations per second through a real node over
//! HTTP (unique phones, validly signed sessions) at 1, 8 and 32 clients,
//! against what the same database commits of the same writes through
//! pgbench, in one run; and the same through PgBouncer in transaction mode
//! (`DATABASE_POOLER=transaction`), when Debian's pgbouncer is installed.
//! Prints a table; asserts nothing about speed.
//!
//! `BENCH_SECS` (default 10) per level; `BENCH_MAX_REGISTRATIONS` (default
//! 40,000) sessions built per level before any timing.

#![allow(clippy::print_stdout)] // Printing figures is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops loudly at any failure.

use std::time::Duration;

use sqlx::Connection as _;
use trekker_bench::{
    BenchNode, RunFigures, env_number, ms, pgbench, post_load, postgres_database, registration_bodies,
};

const LEVELS: [usize; 3] = [1, 8, 32];

/// One registration's writes, as the store issues them for a new phone
/// (the pgbench script, beside this crate's sources).
const REGISTRATION_SQL: &str = include_str!("../../pgbench/register.sql");

fn main() {
    let seconds = env_number("BENCH_SECS", 10);
    let per_level = u32::try_from(env_number("BENCH_MAX_REGISTRATIONS", 40_000)).unwrap_or(40_000);
    let client = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    println!("building {} signed sessions...", per_level as usize * LEVELS.len());
    let bodies: Vec<Vec<String>> = (0..LEVELS.len()).map(|i| registration_bodies(20 + i as u32, per_level)).collect();
    let pooled_bodies: Vec<Vec<String>> =
        (0..LEVELS.len()).map(|i| registration_bodies(30 + i as u32, per_level)).collect();
    let url = client.block_on(postgres_database());
    client.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql(
            "INSERT INTO server_registry (server_name, max_bot_count, server_status, created_at, updated_at, \
             last_heartbeat) VALUES ('PGBENCH', 1000000000, 'active', 0, 0, 0)",
        )
        .execute(&mut conn)
        .await
        .expect("pgbench server row");
    });

    // The node alone on the database first, then pgbench alone.
    let node = BenchNode::start(&url, "SERVER0", 1_000_000);
    let register = node.url("/api/guest/register-bot");
    let mut node_figures: Vec<RunFigures> = Vec::new();
    for (clients, bodies) in LEVELS.iter().zip(bodies) {
        let figures = client.block_on(post_load(&register, bodies, *clients, Duration::from_secs(seconds), 201));
        println!(
            "node, {clients} clients: {:.0} registrations/s (p50 {} ms, p99 {} ms, {} failed)",
            figures.per_second(),
            ms(figures.quantile(0.5)),
            ms(figures.quantile(0.99)),
            figures.failures
        );
        node_figures.push(figures);
    }
    drop(node);

    // The same through PgBouncer in transaction mode (8 server connections).
    let bouncer = trekker_testkit::pgbouncer::start(
        &trekker_testkit::postgres::TestDatabase { url: url.clone() },
        trekker_testkit::pgbouncer::PoolMode::Transaction,
        8,
    );
    let mut pooled_figures: Vec<Option<RunFigures>> = Vec::new();
    if let Some(bouncer) = &bouncer {
        let node = BenchNode::start_with(&bouncer.url, "SERVER1", 1_000_000, true);
        let register = node.url("/api/guest/register-bot");
        for (clients, bodies) in LEVELS.iter().zip(pooled_bodies) {
            let figures = client.block_on(post_load(&register, bodies, *clients, Duration::from_secs(seconds), 201));
            println!(
                "node through PgBouncer (transaction), {clients} clients: {:.0} registrations/s (p50 {} ms, p99 {} ms, \
                 {} failed)",
                figures.per_second(),
                ms(figures.quantile(0.5)),
                ms(figures.quantile(0.99)),
                figures.failures
            );
            pooled_figures.push(Some(figures));
        }
        drop(node);
    } else {
        pooled_figures.resize_with(LEVELS.len(), || None);
    }

    let script = std::env::temp_dir().join(format!("trekker-register-{}.sql", std::process::id()));
    std::fs::write(&script, REGISTRATION_SQL).expect("pgbench script");
    let database: Vec<Option<f64>> = LEVELS.iter().map(|clients| pgbench(&url, &script, *clients, seconds)).collect();
    let _ = std::fs::remove_file(&script);

    println!();
    println!(
        "| clients | node registrations/s | p50 ms | p99 ms | failed | pgbench tx/s | node / database | \
         through PgBouncer (transaction) /s | p99 ms | pooled / direct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (((clients, figures), database), pooled) in LEVELS.iter().zip(&node_figures).zip(&database).zip(&pooled_figures)
    {
        let (tps, ratio) = match database {
            Some(tps) => (format!("{tps:.0}"), format!("{:.2}", figures.per_second() / tps)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let pooled = match pooled {
            Some(p) => format!(
                "{:.0} | {} | {:.2}",
                p.per_second(),
                ms(p.quantile(0.99)),
                p.per_second() / figures.per_second()
            ),
            None => "- | - | -".to_owned(),
        };
        println!(
            "| {clients} | {:.0} | {} | {} | {} | {tps} | {ratio} | {pooled} |",
            figures.per_second(),
            ms(figures.quantile(0.5)),
            ms(figures.quantile(0.99)),
            figures.failures
        );
    }
}
