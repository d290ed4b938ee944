//! `bench-failover`: what a failover costs, against a move-free baseline of
//! the same boot, in one run on a throwaway PostgreSQL.
//!
//! `FAILOVER_BOTS` (default 1,000) simulated bots are registered and
//! approved on server LOST. Baseline: LOST's supervisor boots them all
//! (time to all online, statements per bot). Then LOST's supervisor is
//! aborted as a SIGKILL would (nothing released), and four target nodes'
//! supervisors plus two fleet loops (the failover) take over: time from the
//! kill to every bot online elsewhere, split into the wait the design
//! imposes (the lease running out, then FAILOVER_AFTER) and the rest, and
//! database statements per moved bot (counted as sqlx issues them, every
//! statement of every task in this process, BEGIN and COMMIT included).
//!
//! Prints its figures; asserts nothing about speed beyond "all moved once".

#![allow(clippy::print_stdout)] // Printing figures is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops loudly at any failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use trekker_app::{SystemClock, Trekker};
use trekker_bench::{env_number, postgres_database};
use trekker_domain::{BotId, PhoneNumber, ServerName};
use trekker_runtime::{SimulatedDriver, Supervisor, SupervisorTuning};
use trekker_store::{
    BotStore as _, NewActivity, NewBot, Postgres, ServerRegistration, ServerStore as _, SideEffects, SqlStore,
};

/// Statements sqlx ran in this process (its `sqlx::query` events).
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

struct CountStatements;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountStatements {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

const TARGETS: [&str; 4] = ["TARGET1", "TARGET2", "TARGET3", "TARGET4"];
/// Short, so the bench's wait stays short; the split below reports it apart.
const LEASE: Duration = Duration::from_secs(3);
const FAILOVER_AFTER_MS: i64 = 1_000;

fn tuning() -> SupervisorTuning {
    SupervisorTuning {
        poll_every: Duration::from_millis(200),
        lease: LEASE,
        start_rate_per_sec: 2_000,
        arrivals_per_min: 120_000,
        ..SupervisorTuning::default()
    }
}

fn supervisor(
    store: &Arc<SqlStore<Postgres>>,
    name: &str,
    max: usize,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let driver = Arc::new(SimulatedDriver::new(Duration::from_millis(50)));
    let node = ServerName::parse(name).unwrap();
    let run = Supervisor::new(store.clone(), Arc::new(SystemClock), driver, node, max, tuning());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run.run(Arc::new(tokio::sync::Notify::new()), shutdown.clone()));
    (shutdown, handle)
}

async fn online(url: &str, hosts: &str) -> i64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let sql = format!("SELECT COUNT(*) FROM bot_instances WHERE status = 'online' AND server_name {hosts}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.unwrap()
}

async fn wait_online(url: &str, hosts: &str, count: i64) -> Duration {
    let started = Instant::now();
    while online(url, hosts).await < count {
        assert!(started.elapsed() < Duration::from_secs(600), "bots never came online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CountStatements)).unwrap();
    let bots = env_number("FAILOVER_BOTS", 1_000);
    let url = postgres_database().await;
    let store = Arc::new(SqlStore::<Postgres>::connect(&url, trekker_testkit::test_cipher(), 16).await.unwrap());
    let now = trekker_domain::time::Clock::now_ms(&SystemClock);
    let per_target = i64::try_from(bots).unwrap() / 4 + 50;
    for (name, max) in std::iter::once(("LOST", i64::try_from(bots).unwrap())).chain(TARGETS.map(|t| (t, per_target))) {
        let server = ServerRegistration {
            name: ServerName::parse(name).unwrap(),
            max_bot_count: max,
            base_url: None,
            description: None,
        };
        store.upsert_server(&server, now).await.unwrap();
    }
    let lost = ServerName::parse("LOST").unwrap();
    let seeding = Instant::now();
    for n in 0..bots {
        let phone = format!("2549{n:09}");
        let bot = NewBot {
            id: BotId::from_random_bits(u128::from(n) + 1),
            name: "bench".into(),
            phone: PhoneNumber::parse(&phone).unwrap(),
            server: lost.clone(),
            credentials: trekker_testkit::creds::credentials(&phone, 1),
            pending_share_percent: 100,
        };
        let effects = SideEffects::activity(NewActivity::new(&lost, "registered", "bench"));
        let registered = store.register_bot(&bot, &effects, now).await.unwrap();
        let effects = SideEffects::activity(NewActivity::new(&lost, "approved", "bench"));
        store.approve_bot(&registered.bot.id, now + 86_400_000, &effects, now).await.unwrap();
    }
    println!("seeded {bots} approved bots on LOST in {:.1} s", seeding.elapsed().as_secs_f64());

    // Baseline: LOST boots its own bots, no move.
    let before = STATEMENTS.load(Ordering::Relaxed);
    let (_lost_stop, lost_task) = supervisor(&store, "LOST", usize::try_from(bots).unwrap());
    let baseline = wait_online(&url, "= 'LOST'", i64::try_from(bots).unwrap()).await;
    let baseline_statements = STATEMENTS.load(Ordering::Relaxed) - before;

    // The targets idle, already holding their leases.
    let targets: Vec<_> = TARGETS.iter().map(|t| supervisor(&store, t, usize::try_from(per_target).unwrap())).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Kill: nothing released, the lease simply stops being renewed.
    let before = STATEMENTS.load(Ordering::Relaxed);
    lost_task.abort();
    let killed = Instant::now();
    let shutdown = CancellationToken::new();
    for name in ["TARGET1", "TARGET2"] {
        let mut trekker = Trekker::new(store.clone(), ServerName::parse(name).unwrap(), 60_000);
        trekker.fleet.failover_after_ms = FAILOVER_AFTER_MS;
        tokio::spawn(trekker_app::fleet::run(Arc::new(trekker), Duration::from_millis(200), shutdown.clone()));
    }
    let mut first_move = None;
    while online(&url, "<> 'LOST'").await < i64::try_from(bots).unwrap() {
        if first_move.is_none() && online(&url, "<> 'LOST'").await > 0 {
            first_move = Some(killed.elapsed());
        }
        assert!(killed.elapsed() < Duration::from_secs(600), "failover never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = killed.elapsed();
    let failover_statements = STATEMENTS.load(Ordering::Relaxed) - before;
    shutdown.cancel();
    let moved = store.list_servers().await.unwrap();
    let left = moved.iter().find(|s| s.name == lost).unwrap().current_bot_count;
    assert_eq!(left, 0, "every bot left LOST");
    let waited = LEASE + Duration::from_millis(u64::try_from(FAILOVER_AFTER_MS).unwrap());
    let per_bot = |statements: u64| statements as f64 / bots as f64;
    println!(
        "baseline boot of {bots} bots on one node: {:.2} s, {:.1} statements per bot",
        baseline.as_secs_f64(),
        per_bot(baseline_statements)
    );
    println!(
        "failover of {bots} bots to 4 nodes: {:.2} s from the kill to all online elsewhere \
         (of which up to {:.1} s the design imposes: the lease, {:.0} s from the last renewal, then \
         FAILOVER_AFTER, {:.0} s; first bot online elsewhere after {:.2} s)",
        failover.as_secs_f64(),
        waited.as_secs_f64(),
        LEASE.as_secs_f64(),
        FAILOVER_AFTER_MS as f64 / 1000.0,
        first_move.unwrap_or_default().as_secs_f64(),
    );
    println!(
        "failover beyond the imposed wait: {:.2} s ({:.2}x the baseline boot); {:.1} statements per moved bot, \
         all tasks (baseline boot: {:.1}, so the move itself adds {:.1})",
        failover.saturating_sub(waited).as_secs_f64(),
        failover.saturating_sub(waited).as_secs_f64() / baseline.as_secs_f64(),
        per_bot(failover_statements),
        per_bot(baseline_statements),
        per_bot(failover_statements) - per_bot(baseline_statements),
    );
    for (stop, task) in targets {
        stop.cancel();
        let _ = task.await;
    }
}
