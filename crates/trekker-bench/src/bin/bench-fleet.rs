//! `bench-fleet`: a synthetic fleet of `FLEET_SERVERS` x `FLEET_BOTS` bots
//! (default 1,000 x 1,000) in the real schema, and what it costs:
//! - two real quiet nodes (every background loop at its default setting):
//!   database time per second of a node and of the duty holder, per
//!   statement (`pg_stat_statements`), and the headroom for 1,000 nodes;
//! - one quiet node's poll, now (node lease + change feed) and as it was
//!   with per-bot leases, as polls per second the database sustains against
//!   the 500 per second 1,000 nodes polling every 2 s need;
//! - a page of 100 bots on the full fleet against one on 1,000 bots;
//! - registrations through a node at 8 clients on the full database
//!   against an empty one, and each statement's pages per call on both;
//! - the plans of the hot queries.
//!
//! Prints its figures; asserts nothing about speed. `BENCH_SECS` (default
//! 10) per measurement; `FLEET_SETTLE_SECS` (20) after the nodes booted and
//! `FLEET_QUIET_SECS` (30) measured.

#![allow(clippy::print_stdout)] // Printing figures is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops loudly at any failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use trekker_bench::fleet::{self, page_times, per_bot_lease_poll, polls_per_second, quiet_poll};
use trekker_bench::statements::{self, Statement, print_table};
use trekker_bench::{BenchNode, RunFigures, env_number, ms, post_load, postgres_database, registration_bodies};
use trekker_domain::{BotId, ServerName};
use trekker_store::{BotCursor, BotFilter, Postgres, RuntimeStore as _, SqlStore};

/// Nodes polling at once in the poll measurements.
const POLLERS: u64 = 8;
/// Polls per second that 1,000 nodes need at a 2 s poll.
const NEEDED_POLLS: f64 = 500.0;
/// Registration clients, full database against empty.
const REGISTER_CLIENTS: usize = 8;

async fn store(url: &str) -> Arc<SqlStore<Postgres>> {
    Arc::new(SqlStore::<Postgres>::connect(url, trekker_testkit::test_cipher(), 16).await.expect("store"))
}

/// Registrations through a fresh node at [`REGISTER_CLIENTS`] clients, and
/// the statements they cost (read after the guests' messages are sent).
async fn register_load(url: &str, series: u32, count: u32, seconds: u64) -> (RunFigures, Vec<Statement>) {
    let bodies = registration_bodies(series, count);
    let node = start_node(url, "BENCHNODE", 1_000_000).await;
    statements::reset(url).await;
    let figures =
        post_load(&node.url("/api/guest/register-bot"), bodies, REGISTER_CLIENTS, Duration::from_secs(seconds), 201)
            .await;
    trekker_bench::outbox_drained(url).await;
    let run = statements::read(url).await;
    stop_node(node).await;
    (figures, run)
}

/// Starts a node off this runtime (it has one of its own).
async fn start_node(url: &str, name: &'static str, capacity: u32) -> BenchNode {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || BenchNode::start(&url, name, capacity)).await.unwrap()
}

async fn stop_node(node: BenchNode) {
    tokio::task::spawn_blocking(move || drop(node)).await.unwrap();
}

/// What quiet nodes cost the database, as PostgreSQL counts it.
struct QuietFigures {
    seconds: f64,
    /// The node holding every duty (the first one started).
    holder: Vec<Statement>,
    /// A node with no duty: what each of the other nodes costs.
    member: Vec<Statement>,
}

impl QuietFigures {
    fn ms_per_second(statements: &[Statement], seconds: f64) -> f64 {
        statements::total_ms(statements) / seconds
    }

    /// How many times over this machine's PostgreSQL could carry `nodes`
    /// such nodes (one holder, the rest members): its cores' time per
    /// second over theirs.
    fn headroom(&self, nodes: f64, cores: f64) -> f64 {
        let member = Self::ms_per_second(&self.member, self.seconds);
        let holder = Self::ms_per_second(&self.holder, self.seconds);
        cores * 1000.0 / (holder + (nodes - 1.0) * member)
    }
}

/// Two real nodes (every background loop at its default setting, simulated
/// bots) run the fleet's first two servers: boot every bot, settle
/// `settle`, then `quiet` seconds without a request. The second connects as a role of its
/// own, so its statements are told apart from the duty holder's.
async fn quiet_nodes(url: &str, per_server: u64, settle: Duration, quiet: Duration) -> QuietFigures {
    let capacity = u32::try_from(per_server * 2).unwrap_or(u32::MAX);
    fleet::seal_credentials(url, "FLEET0001").await;
    fleet::seal_credentials(url, "FLEET0002").await;
    let holder = start_node(url, "FLEET0001", capacity).await;
    // The holder takes the duties before the member is up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let member_url = statements::role_url(url, "quiet_member").await;
    let member = start_node(&member_url, "FLEET0002", capacity).await;
    fleet::wait_until_running(url, &["FLEET0001", "FLEET0002"], per_server * 2).await;
    tokio::time::sleep(settle).await;
    statements::reset(url).await;
    tokio::time::sleep(quiet).await;
    let run = statements::read(url).await;
    stop_node(member).await;
    stop_node(holder).await;
    let (member, holder): (Vec<Statement>, Vec<Statement>) = run.into_iter().partition(|s| s.role == "quiet_member");
    QuietFigures { seconds: quiet.as_secs_f64(), holder, member }
}

/// The registration path's statements on the full database beside the
/// empty one: pages touched per call, the cost that grows with a scan.
fn print_growth(full: &[Statement], empty: &[Statement], full_count: usize, empty_count: usize) {
    println!("statements of registration, full against empty database:");
    println!("| calls per registration (full / empty) | pages per call (full / empty) | ms per call | statement |");
    println!("|---|---|---|---|");
    for on_full in full.iter().take(16) {
        let on_empty = empty.iter().find(|s| s.query == on_full.query);
        let text = statements::shown(&on_full.query, 90);
        println!(
            "| {:.2} / {} | {:.1} / {} | {:.3} / {} | `{}` |",
            on_full.calls as f64 / full_count.max(1) as f64,
            on_empty.map_or("-".to_owned(), |e| format!("{:.2}", e.calls as f64 / empty_count.max(1) as f64)),
            on_full.blocks_per_call(),
            on_empty.map_or("-".to_owned(), |e| format!("{:.1}", e.blocks_per_call())),
            on_full.total_ms / on_full.calls.max(1) as f64,
            on_empty.map_or("-".to_owned(), |e| format!("{:.3}", e.total_ms / e.calls.max(1) as f64)),
            text
        );
    }
}

fn print_plan(title: &str, plan: &str) {
    println!("{title}:");
    for line in plan.lines() {
        println!("    {line}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = env_number("FLEET_SERVERS", 1_000);
    let per_server = env_number("FLEET_BOTS", 1_000);
    let span = Duration::from_secs(env_number("BENCH_SECS", 10));
    let full_url = postgres_database().await;
    let small_url = postgres_database().await;
    let empty_url = postgres_database().await;

    let started = Instant::now();
    println!("seeding {servers} servers x {per_server} bots...");
    fleet::seed(&full_url, servers, per_server).await;
    fleet::seed(&small_url, 1, 1_000).await;
    println!("seeded in {:.0} s", started.elapsed().as_secs_f64());
    statements::enable(&full_url).await;
    statements::enable(&empty_url).await;

    // Quiet real nodes first, on the fleet as seeded.
    let quiet = quiet_nodes(
        &full_url,
        per_server,
        Duration::from_secs(env_number("FLEET_SETTLE_SECS", 20)),
        Duration::from_secs(env_number("FLEET_QUIET_SECS", 30)),
    )
    .await;

    let full = store(&full_url).await;
    let small = store(&small_url).await;

    // Steady state: one poll per node, now and with per-bot leases.
    let nodes: Vec<ServerName> = (1..=POLLERS).map(|n| ServerName::parse(&fleet::server_name(n)).unwrap()).collect();
    let mut cursors = Vec::new();
    for node in &nodes {
        cursors.push(full.bots_to_run(node).await.expect("full read").cursor);
    }
    let (store_now, nodes_now, cursors) = (full.clone(), Arc::new(nodes.clone()), Arc::new(cursors));
    let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let now_rate = polls_per_second(POLLERS, span, move |w| {
        let (store, nodes, cursors, rounds) = (store_now.clone(), nodes_now.clone(), cursors.clone(), rounds.clone());
        async move {
            let round = rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            quiet_poll(&store, &nodes[w as usize], &cursors[w as usize], round).await;
        }
    })
    .await;
    // The per-bot lease poll as it was: without the change-feed trigger,
    // which that code did not have.
    let pool = full.pool().clone();
    sqlx::raw_sql("ALTER TABLE bot_instances DISABLE TRIGGER bot_instances_changed").execute(&pool).await.unwrap();
    let (pool_then, names) = (pool.clone(), Arc::new(nodes.iter().map(ToString::to_string).collect::<Vec<_>>()));
    let then_rate = polls_per_second(POLLERS, span, move |w| {
        let (pool, names) = (pool_then.clone(), names.clone());
        async move { per_bot_lease_poll(&pool, &names[w as usize]).await }
    })
    .await;
    sqlx::raw_sql("ALTER TABLE bot_instances ENABLE TRIGGER bot_instances_changed").execute(&pool).await.unwrap();
    // That poll rewrote its nodes' rows thousands of times: clean up before
    // timing reads, as autovacuum would have by then.
    sqlx::raw_sql("VACUUM ANALYZE bot_instances").execute(&pool).await.unwrap();

    // Admin pages: the first, one filtered by server, and one deep in the
    // list, on the full fleet and on 1,000 bots.
    let deep = |total: u64| BotFilter {
        after: Some(BotCursor {
            created_at: total as i64 / 2,
            id: BotId::parse(&format!("fleet-{}", total / 2)).unwrap(),
        }),
        ..BotFilter::default()
    };
    let by_server =
        BotFilter { server: Some(ServerName::parse(&fleet::server_name(1)).unwrap()), ..BotFilter::default() };
    let filters = [
        ("first page", BotFilter::default(), BotFilter::default()),
        ("deep page", deep(servers * per_server), deep(1_000)),
        ("one server", by_server.clone(), by_server),
    ];
    let mut pages = Vec::new();
    for (name, on_full, on_small) in &filters {
        let full_times = page_times(&full, on_full, 200).await;
        let small_times = page_times(&small, on_small, 200).await;
        pages.push((*name, full_times, small_times));
    }

    // Registrations through a node, full database against empty.
    let count = u32::try_from(span.as_secs() * 2_000).unwrap_or(20_000);
    let (on_full, full_statements) = register_load(&full_url, 30, count, span.as_secs()).await;
    let (on_empty, empty_statements) = register_load(&empty_url, 31, count, span.as_secs()).await;

    println!();
    println!("## Fleet: {servers} servers x {per_server} bots ({} bots)", servers * per_server);
    println!();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let member_ms = QuietFigures::ms_per_second(&quiet.member, quiet.seconds);
    let holder_ms = QuietFigures::ms_per_second(&quiet.holder, quiet.seconds);
    println!(
        "quiet real nodes, {:.0} s: a node {member_ms:.4} ms of database time per second, the duty holder \
         {holder_ms:.4} ms/s; headroom for 1,000 nodes on this {cores:.0}-core PostgreSQL: {:.1}",
        quiet.seconds,
        quiet.headroom(1_000.0, cores)
    );
    print_table("statements of a quiet node (no duty)", &quiet.member, quiet.seconds, 20);
    print_table("statements of the quiet duty holder", &quiet.holder, quiet.seconds, 20);
    println!();
    println!(
        "| quiet node poll | polls/s ({POLLERS} nodes at once) | database time per poll | headroom for 1,000 nodes |"
    );
    println!("|---|---|---|---|");
    for (name, rate) in [("node lease + change feed (now)", now_rate), ("per-bot leases (before)", then_rate)] {
        println!("| {name} | {rate:.0} | {:.2} ms | {:.1}x |", 1000.0 / rate, rate / NEEDED_POLLS);
    }
    println!("quiet poll cost, before / now: {:.0}x", now_rate / then_rate);
    println!();
    println!("| page of 100 bots | full fleet p50 / p99 ms | 1,000 bots p50 / p99 ms | p50 ratio |");
    println!("|---|---|---|---|");
    for (name, (full_p50, full_p99), (small_p50, small_p99)) in &pages {
        println!(
            "| {name} | {} / {} | {} / {} | {:.2} |",
            ms(*full_p50),
            ms(*full_p99),
            ms(*small_p50),
            ms(*small_p99),
            full_p50.as_secs_f64() / small_p50.as_secs_f64()
        );
    }
    println!();
    println!(
        "registration at {REGISTER_CLIENTS} clients: full {:.0}/s p99 {} ms ({} failed); empty {:.0}/s p99 {} ms \
         ({} failed); throughput full / empty {:.2}, p99 full / empty {:.2}",
        on_full.per_second(),
        ms(on_full.quantile(0.99)),
        on_full.failures,
        on_empty.per_second(),
        ms(on_empty.quantile(0.99)),
        on_empty.failures,
        on_full.per_second() / on_empty.per_second(),
        on_full.quantile(0.99).as_secs_f64() / on_empty.quantile(0.99).as_secs_f64()
    );
    print_growth(&full_statements, &empty_statements, on_full.requests, on_empty.requests);
    println!();
    print_plan("plan of a page of one server's bots (generic)", &full.explain_bot_page(&filters[2].1).await.unwrap());
    print_plan("plan of a deep page (generic)", &full.explain_bot_page(&filters[1].1).await.unwrap());
    let change_plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM bot_instances WHERE server_name = 'FLEET0001' AND change_seq >= 9000000",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    print_plan("plan of a quiet change-feed read", &change_plan.join("\n"));
}
