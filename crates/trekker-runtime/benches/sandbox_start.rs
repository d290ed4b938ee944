//! Sandbox benchmark (not a test): what isolation costs a bot's start.
//! Starts the same 100 `process` bots (a shell that reports `connected`,
//! then waits on stdin) without a sandbox and in one, in the same run, and
//! prints for each the time until all 100 are connected and the memory
//! their processes hold (resident set of every descendant of this process),
//! and the ratio of the two. Needs root (or an unprivileged user's
//! namespace, see docs/security.md) and bubblewrap for the sandboxed half.
//! Run: `cargo bench -p trekker-runtime --bench sandbox_start` (BOTS=n to
//! change the count). Figures are recorded in docs/benchmarks.md.

#![allow(clippy::unwrap_used)] // A benchmark: any failure should stop it loudly.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trekker_domain::{BotId, PhoneNumber, ServerName};
use trekker_runtime::sandbox::{Limits, Sandbox, SandboxConfig};
use trekker_runtime::{BotDriver, BotEvent, BotSpec, ProcessDriver, RunningBot};
use trekker_store::NodeLease;

/// Resident memory (KiB) of every process below this one.
fn descendants_rss_kib() -> u64 {
    let me = std::process::id();
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut rss: HashMap<u32, u64> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        };
        parent.insert(pid, field("PPid:").unwrap_or(0) as u32);
        rss.insert(pid, field("VmRSS:").unwrap_or(0));
    }
    let mut below: HashSet<u32> = HashSet::new();
    let mut grew = true;
    while grew {
        grew = false;
        for (&pid, &ppid) in &parent {
            if (ppid == me || below.contains(&ppid)) && below.insert(pid) {
                grew = true;
            }
        }
    }
    below.iter().map(|pid| rss.get(pid).copied().unwrap_or(0)).sum()
}

fn spec(n: u32) -> BotSpec {
    let phone = trekker_testkit::creds::phone(98, n);
    BotSpec {
        bot_id: BotId::from_random_bits((u128::from(n) << 80) | 0xB0B),
        runner: NodeLease { node: ServerName::parse("BENCH").unwrap(), epoch: 1 },
        phone: PhoneNumber::parse(&phone).unwrap(),
        server: ServerName::parse("BENCH").unwrap(),
        credentials: trekker_testkit::creds::credentials(&phone, 1),
        version: 1,
        generation: u64::from(n) + 1,
        session: None,
        paired_at: 0,
    }
}

/// Starts `bots` bots with `driver`; returns (seconds until all connected,
/// KiB held by their processes then), after stopping them again.
async fn run(driver: &ProcessDriver, bots: u32) -> (f64, u64) {
    let (events, mut received) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut running: Vec<Box<dyn RunningBot>> = Vec::new();
    for n in 0..bots {
        running.push(driver.start(spec(n), events.clone()).await.unwrap());
    }
    let mut connected = 0;
    while connected < bots {
        let event = tokio::time::timeout(Duration::from_secs(60), received.recv()).await.unwrap().unwrap();
        match event.event {
            BotEvent::Connected => connected += 1,
            other => panic!("a bot did not connect: {other:?}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib = descendants_rss_kib();
    for bot in running {
        bot.stop().await;
    }
    (seconds, kib)
}

#[tokio::main]
async fn main() {
    let bots: u32 = std::env::var("BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let work = std::env::current_dir().unwrap().join("target/bench-sandbox");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("bot.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{\"event\":\"connected\"}'\nexec cat > /dev/null\n").unwrap();
    let command = format!("/bin/sh {}", script.display());
    let grace = Duration::from_secs(2);

    let plain = ProcessDriver::new(&command, work.join("plain"), grace).unwrap();
    let (plain_secs, plain_kib) = run(&plain, bots).await;
    println!(
        "unsandboxed: {bots} bots connected in {plain_secs:.2} s ({:.1} ms each), {plain_kib} KiB ({:.0} KiB each)",
        plain_secs * 1000.0 / f64::from(bots),
        plain_kib as f64 / f64::from(bots)
    );

    let config = SandboxConfig {
        limits: Limits { memory_bytes: 512 << 20, pids: 128, cpu_percent: 100 },
        disk_bytes: 64 << 20,
        hidden: vec![work.join("sandboxed")],
    };
    let sandbox = match Sandbox::prepare(config) {
        Ok(sandbox) => sandbox,
        Err(err) => {
            println!("sandboxed: SKIPPED ({err})");
            return;
        }
    };
    let sandboxed = ProcessDriver::new(&command, work.join("sandboxed"), grace).unwrap().with_sandbox(sandbox);
    let (boxed_secs, boxed_kib) = run(&sandboxed, bots).await;
    println!(
        "sandboxed:   {bots} bots connected in {boxed_secs:.2} s ({:.1} ms each), {boxed_kib} KiB ({:.0} KiB each)",
        boxed_secs * 1000.0 / f64::from(bots),
        boxed_kib as f64 / f64::from(bots)
    );
    println!(
        "sandboxed / unsandboxed: time {:.2}x, memory {:.2}x",
        boxed_secs / plain_secs,
        boxed_kib as f64 / plain_kib.max(1) as f64
    );
}
