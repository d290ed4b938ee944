//! What the benchmark binaries share: a throwaway PostgreSQL database, a
//! node on its own runtime, an HTTP load generator, latency summaries and
//! pgbench. Figures are printed, never asserted: these machines are shared
//! and noisy, so the binaries compare ratios within one run
//! (docs/benchmarks.md).

#![allow(clippy::print_stdout)] // Printing figures is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops loudly at any failure.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use trekker_node::config::{Config, Settings};
use trekker_node::{Application, Overrides};

pub mod fleet;
pub mod statements;

/// The admin token of benchmark nodes.
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A fresh, migrated database on a throwaway PostgreSQL server (started on
/// first use, removed when the process exits; `DATABASE_URL` points at an
/// existing server instead).
pub async fn postgres_database() -> String {
    trekker_testkit::postgres::database()
        .await
        .expect("a PostgreSQL database (unset TREKKER_SKIP_POSTGRES to run the benchmarks)")
        .url
}

/// A running node, served by its own runtime (so the load generator's
/// tasks do not queue behind the node's, or the other way round).
#[derive(Debug)]
pub struct BenchNode {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BenchNode {
    /// Starts node `name` on `database_url` with room for `capacity` bots,
    /// no rate limit, the simulated pairing and bot drivers.
    pub fn start(database_url: &str, name: &str, capacity: u32) -> Self {
        Self::start_with(database_url, name, capacity, false)
    }

    /// [`start`](Self::start), with `transaction_pooler` telling the node
    /// a transaction pooler sits in front of the database.
    pub fn start_with(database_url: &str, name: &str, capacity: u32, transaction_pooler: bool) -> Self {
        trekker_node::install_crypto_provider();
        let mut settings: Settings = Config::defaults();
        settings.database_url = database_url.to_owned();
        settings.server_name = name.to_owned();
        settings.max_bot_count = capacity;
        settings.bind_addr = "127.0.0.1:0".parse().expect("addr");
        // 32 bytes of 0x42: benchmark data only.
        settings.credentials_key = Some("QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".to_owned());
        settings.admin_token = Some(ADMIN_TOKEN.to_owned());
        settings.cluster_secret = Some("bench-cluster-secret-0123456789abcdef".to_owned());
        settings.rate_limit_per_min = 0;
        settings.pending_max_percent = 100;
        if transaction_pooler {
            settings.database_pooler = trekker_node::config::PoolerMode::Transaction;
        }
        let config = Config::from_settings(settings).expect("valid bench config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("node")
            .enable_all()
            .build()
            .expect("node runtime");
        let (addr, shutdown) = runtime.block_on(async {
            let app = Application::build_with(config, Overrides::default()).await.expect("node starts");
            let addr = app.local_addr();
            let shutdown = app.shutdown_token();
            tokio::spawn(app.run());
            (addr, shutdown)
        });
        Self { addr, shutdown, runtime: Some(runtime) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(10));
        }
    }
}

/// `count` registration bodies with unique phones of `series` (validly
/// signed sessions, built on every core before any timing starts).
pub fn registration_bodies(series: u32, count: u32) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let chunk = count.div_ceil(threads).max(1);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let end = ((t + 1) * chunk).min(count);
                (t * chunk..end)
                    .map(|n| {
                        let phone = trekker_testkit::creds::phone(series, n);
                        serde_json::json!({
                            "botName": "Bench",
                            "phoneNumber": phone,
                            "credentialType": "session",
                            "sessionId": trekker_testkit::creds::session_id(&phone, 1),
                        })
                        .to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("session builder")).collect()
}

/// Latencies of one load run and how long it took.
#[derive(Debug, Clone)]
pub struct RunFigures {
    pub requests: usize,
    pub failures: usize,
    pub elapsed: Duration,
    /// Sorted.
    pub latencies: Vec<Duration>,
}

impl RunFigures {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q`-quantile latency (0.5, 0.99).
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
}

/// The `q`-quantile of sorted `values`.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[index.min(values.len() - 1)]
}

/// POSTs `bodies` to `url` from `clients` concurrent clients (one
/// keep-alive connection each) for at most `duration`; `expected` is the
/// HTTP status of success.
pub async fn post_load(
    url: &str,
    bodies: Vec<String>,
    clients: usize,
    duration: Duration,
    expected: u16,
) -> RunFigures {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (bodies, next, url) = (bodies.clone(), next.clone(), url.to_owned());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
                let (mut latencies, mut failures) = (Vec::new(), 0usize);
                let mut first_failure = true;
                while Instant::now() < deadline {
                    let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    let sent = Instant::now();
                    let answer =
                        client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                    match answer {
                        Ok(response) if response.status().as_u16() == expected => {
                            let _ = response.bytes().await;
                            latencies.push(sent.elapsed());
                        }
                        other => {
                            failures += 1;
                            if std::mem::take(&mut first_failure) {
                                let what = match other {
                                    Ok(response) => {
                                        format!("{} {}", response.status(), response.text().await.unwrap_or_default())
                                    }
                                    Err(err) => err.to_string(),
                                };
                                println!("a request failed: {what}");
                            }
                        }
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (mine, failed) = task.await.expect("client task");
        latencies.extend(mine);
        failures += failed;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    RunFigures { requests: latencies.len(), failures, elapsed, latencies }
}

/// What one pgbench run committed.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchRun {
    pub per_second: f64,
    pub transactions: u64,
}

/// Runs pgbench with `script` at `clients` for `seconds` against
/// `database_url` (prepared statements, as the node's driver uses).
pub fn pgbench(database_url: &str, script: &Path, clients: usize, seconds: u64) -> Option<PgbenchRun> {
    let Some(pgbench) = trekker_testkit::postgres::postgres_tool("pgbench") else {
        println!("pgbench not found beside initdb");
        return None;
    };
    let output = std::process::Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &seconds.to_string()])
        .arg(database_url)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) => {
            println!("pgbench did not run: {err}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next()?.parse().ok());
    let transactions = text
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    if tps.is_none() || transactions.is_none() || !output.status.success() {
        println!("pgbench failed: {text}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Some(PgbenchRun { per_second: tps?, transactions: transactions? })
}

/// CPU seconds this process spent in threads named `node` (the benchmark
/// node's runtime), so the load generator's own work is left out: the
/// process's total less every other live thread's.
pub fn node_cpu_seconds() -> f64 {
    fn ticks(stat: &str) -> Option<u64> {
        // Fields after the parenthesised name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }
    let total = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| ticks(&s)).unwrap_or(0);
    let mut others = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.trim() != "node" {
            others += std::fs::read_to_string(task.path().join("stat")).ok().and_then(|s| ticks(&s)).unwrap_or(0);
        }
    }
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    total.saturating_sub(others) as f64 / 100.0
}

/// Waits until every guest message is sent (at most 30 s).
pub async fn outbox_drained(url: &str) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.expect("connect");
    for _ in 0..300 {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_outbox WHERE status = 'pending'")
            .fetch_one(&mut conn)
            .await
            .expect("outbox count");
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the outbox did not drain in 30 s");
}

/// Milliseconds with two decimals, for tables.
pub fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}
