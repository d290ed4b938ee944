//! Boot benchmark (not a test): 10,000 approved bots on one node with the
//! simulated driver. Prints the time until all are online and the process's
//! resident memory. Run: `cargo bench -p trekker-runtime --bench boot_10k`
//! (BOTS=n to change the count). Figures are recorded in docs/benchmarks.md.

#![allow(clippy::unwrap_used)] // A benchmark: any failure should stop it loudly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use trekker_domain::{ApprovalStatus, BotId, PhoneNumber, RuntimeStatus, ServerName};
use trekker_runtime::{SimulatedDriver, Supervisor, SupervisorTuning};
use trekker_store::{BotFilter, NewActivity, NewBot, ServerRegistration, SideEffects, Store};

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let bots: u32 = std::env::var("BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let (store, _guard) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let node = ServerName::parse("BENCH").unwrap();
    let registration =
        ServerRegistration { name: node.clone(), max_bot_count: i64::from(bots), base_url: None, description: None };
    store.upsert_server(&registration, 0).await.unwrap();
    let effects = SideEffects::activity(NewActivity::new(&node, "bench", ""));
    let far = 4_000_000_000_000;
    let setup = Instant::now();
    for n in 0..bots {
        let phone = trekker_testkit::creds::phone(99, n);
        let bot = NewBot {
            id: BotId::from_random_bits((u128::from(n) << 80) | 0xBEEF),
            name: format!("bench-{n}"),
            phone: PhoneNumber::parse(&phone).unwrap(),
            server: node.clone(),
            credentials: trekker_testkit::creds::credentials(&phone, 1),
            pending_share_percent: 100,
        };
        let done = store.register_bot(&bot, &effects, 0).await.unwrap();
        store.approve_bot(&done.bot.id, far, &effects, 0).await.unwrap();
    }
    println!("setup: {bots} approved bots in {:.1} s", setup.elapsed().as_secs_f64());
    let rss_before = resident_kib();

    let tuning = SupervisorTuning { start_rate_per_sec: 2_000, ..SupervisorTuning::default() };
    let driver = Arc::new(SimulatedDriver::new(Duration::from_millis(50)));
    let supervisor = Supervisor::new(
        store.clone(),
        Arc::new(trekker_domain::time::SystemClock),
        driver,
        node.clone(),
        bots as usize,
        tuning,
    );
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(supervisor.run(Arc::new(Notify::new()), shutdown.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Count the online bots page by page (a page holds at most 1,000).
        let mut filter = BotFilter {
            server: Some(node.clone()),
            approval: Some(ApprovalStatus::Approved),
            status: Some(RuntimeStatus::Online),
            limit: Some(1000),
            after: None,
        };
        let mut online = 0;
        loop {
            let page = store.list_bots(&filter).await.unwrap();
            online += page.bots.len();
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        if online == bots as usize {
            break;
        }
    }
    let all_online = started.elapsed();
    let rss_running = resident_kib();
    println!("all {bots} bots online after {:.2} s (start rate 2000/s)", all_online.as_secs_f64());
    println!(
        "resident memory: {:.1} MiB before the supervisor, {:.1} MiB with all bots running ({:.1} KiB per bot)",
        rss_before as f64 / 1024.0,
        rss_running as f64 / 1024.0,
        (rss_running.saturating_sub(rss_before)) as f64 / f64::from(bots)
    );
    let stopping = Instant::now();
    shutdown.cancel();
    task.await.unwrap();
    println!("graceful stop of all bots: {:.2} s", stopping.elapsed().as_secs_f64());
}
