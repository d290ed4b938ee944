//! `bench-register`: registrations per second through a real node over
//! HTTP (unique phones, validly signed sessions) at 1, 8 and 32 clients,
//! against what the same database commits of the same writes through
//! pgbench, in one run; and the same through PgBouncer in transaction mode
//! (`DATABASE_POOLER=transaction`), when Debian's pgbouncer is installed.
//! Per level it also measures what one registration costs apart: database
//! time (`pg_stat_statements`, every statement until the guests' messages
//! are sent) against pgbench's transaction, and the node threads' CPU
//! against the crypto floor (decode, two XEdDSA checks, seal).
//! Prints tables; asserts nothing about speed.
//!
//! `BENCH_SECS` (default 10) per level; `BENCH_MAX_REGISTRATIONS` (default
//! 40,000) sessions built per level before any timing.

#![allow(clippy::print_stdout)] // Printing figures is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops loudly at any failure.

use std::time::Duration;

use sqlx::Connection as _;
use trekker_bench::statements::{self, print_table};
use trekker_bench::{
    BenchNode, RunFigures, env_number, ms, node_cpu_seconds, pgbench, post_load, postgres_database, registration_bodies,
};

const LEVELS: [usize; 3] = [1, 8, 32];

/// One registration's writes, as the store issues them for a new phone
/// (the pgbench script, beside this crate's sources).
const REGISTRATION_SQL: &str = include_str!("../../pgbench/register.sql");

/// What one registration cost, averaged over a level.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// Database execution time (pg_stat_statements), ms.
    database_ms: f64,
    /// CPU of the node's threads, ms.
    cpu_ms: f64,
}

/// The node's unavoidable work per registration, on one thread: decoding
/// the session ID and its two XEdDSA verifications, then sealing the
/// credentials (ms per registration).
fn crypto_floor(bodies: &[String]) -> f64 {
    let sessions: Vec<String> = bodies
        .iter()
        .map(|body| {
            let value: serde_json::Value = serde_json::from_str(body).expect("body");
            value["sessionId"].as_str().expect("session").to_owned()
        })
        .collect();
    let cipher = trekker_testkit::test_cipher();
    let started = std::time::Instant::now();
    for session in &sessions {
        let credentials = trekker_domain::Credentials::from_session_id(session).expect("valid session");
        let sealed = cipher.seal("bench-row", credentials.document().as_bytes()).expect("seal");
        std::hint::black_box(sealed);
    }
    started.elapsed().as_secs_f64() * 1000.0 / sessions.len() as f64
}

fn main() {
    let seconds = env_number("BENCH_SECS", 10);
    let per_level = u32::try_from(env_number("BENCH_MAX_REGISTRATIONS", 40_000)).unwrap_or(40_000);
    let client = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    println!("building {} signed sessions...", per_level as usize * LEVELS.len());
    let bodies: Vec<Vec<String>> = (0..LEVELS.len()).map(|i| registration_bodies(20 + i as u32, per_level)).collect();
    let pooled_bodies: Vec<Vec<String>> =
        (0..LEVELS.len()).map(|i| registration_bodies(30 + i as u32, per_level)).collect();
    let floor_bodies = registration_bodies(40, 2_000);
    let url = client.block_on(postgres_database());
    let measured = client.block_on(statements::enable(&url));
    client.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql(
            "INSERT INTO server_registry (server_name, max_bot_count, server_status, created_at, updated_at, \
             last_heartbeat) VALUES ('PGBENCH', 1000000000, 'active', 0, 0, 0)",
        )
        .execute(&mut conn)
        .await
        .expect("pgbench server row");
        // Credentials as the node seals them, for the pgbench script.
        sqlx::raw_sql("CREATE TABLE pgbench_sealed (id INT PRIMARY KEY, bytes BYTEA NOT NULL)")
            .execute(&mut conn)
            .await
            .expect("pgbench_sealed");
        let cipher = trekker_testkit::test_cipher();
        for id in 1..=1000i32 {
            let phone = trekker_testkit::creds::phone(50, id as u32);
            let document = trekker_testkit::creds::credentials(&phone, 1);
            let sealed = cipher.seal(&format!("pgb-{id}"), document.document().as_bytes()).expect("seal");
            sqlx::query("INSERT INTO pgbench_sealed (id, bytes) VALUES ($1, $2)")
                .bind(id)
                .bind(sealed.ciphertext)
                .execute(&mut conn)
                .await
                .expect("a sealed document");
        }
    });

    // The node alone on the database first, then pgbench alone.
    let node = BenchNode::start(&url, "SERVER0", 1_000_000);
    let register = node.url("/api/guest/register-bot");
    let mut node_figures: Vec<RunFigures> = Vec::new();
    let mut node_costs: Vec<Cost> = Vec::new();
    for (clients, bodies) in LEVELS.iter().zip(bodies) {
        if measured {
            client.block_on(statements::reset(&url));
        }
        let cpu_before = node_cpu_seconds();
        let figures = client.block_on(post_load(&register, bodies, *clients, Duration::from_secs(seconds), 201));
        // Every guest message sent: the dispatcher's work is the
        // registration's too.
        client.block_on(trekker_bench::outbox_drained(&url));
        let cpu_ms = (node_cpu_seconds() - cpu_before) * 1000.0 / figures.requests.max(1) as f64;
        let database_ms = if measured {
            let run = client.block_on(statements::read(&url));
            print_table(&format!("database time of the node at {clients} clients"), &run, seconds as f64, 12);
            statements::total_ms(&run) / figures.requests.max(1) as f64
        } else {
            f64::NAN
        };
        println!(
            "node, {clients} clients: {:.0} registrations/s (p50 {} ms, p99 {} ms, {} failed), \
             database {database_ms:.3} ms and node CPU {cpu_ms:.3} ms per registration",
            figures.per_second(),
            ms(figures.quantile(0.5)),
            ms(figures.quantile(0.99)),
            figures.failures
        );
        node_figures.push(figures);
        node_costs.push(Cost { database_ms, cpu_ms });
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
    let mut database: Vec<Option<f64>> = Vec::new();
    let mut pgbench_ms: Vec<f64> = Vec::new();
    for clients in LEVELS {
        if measured {
            client.block_on(statements::reset(&url));
        }
        let run = pgbench(&url, &script, clients, seconds);
        let per_transaction = match run {
            Some(run) if measured => {
                let statements = client.block_on(statements::read(&url));
                print_table(&format!("database time of pgbench at {clients} clients"), &statements, seconds as f64, 8);
                statements::total_ms(&statements) / run.transactions.max(1) as f64
            }
            _ => f64::NAN,
        };
        database.push(run.map(|r| r.per_second));
        pgbench_ms.push(per_transaction);
    }
    let _ = std::fs::remove_file(&script);
    let floor = crypto_floor(&floor_bodies);

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
    println!();
    println!(
        "| clients | database ms per registration | per pgbench transaction | ratio | node CPU ms per registration \
         | crypto floor ms | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((clients, cost), pgbench_ms) in LEVELS.iter().zip(&node_costs).zip(&pgbench_ms) {
        println!(
            "| {clients} | {:.3} | {pgbench_ms:.3} | {:.2} | {:.3} | {floor:.3} | {:.2} |",
            cost.database_ms,
            cost.database_ms / pgbench_ms,
            cost.cpu_ms,
            cost.cpu_ms / floor
        );
    }
}
