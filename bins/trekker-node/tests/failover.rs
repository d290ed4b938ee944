//! Failover with real nodes on PostgreSQL (DESIGN.md invariant 11): a node
//! is SIGKILLed with 50 `process` bots, each with session state; they all
//! run again on the other nodes, each exactly once, with their state, and
//! the node, started again, runs none of them. The bots keep the ledger
//! themselves (tests/fixtures/ledger-worker.sh): where each started, with
//! which counter, and whether another copy held its lock at that moment.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{http, json_body, register_approved, start_node};

const BOTS: u32 = 50;
const ADMIN: &str = "Authorization: Bearer admin-token\r\n";
/// The supervisor's node lease (SupervisorTuning's default): a lost
/// node's bots are taken only once it ran out.
const LEASE: Duration = Duration::from_secs(30);
const FAILOVER_AFTER_SECS: u64 = 3;

fn envs(url: &str, name: &str, max: u32, dir: &Path) -> Vec<(&'static str, String)> {
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/ledger-worker.sh");
    vec![
        ("DATABASE_URL", url.to_owned()),
        ("SERVER_NAME", name.to_owned()),
        ("MAX_BOT_COUNT", max.to_string()),
        ("CREDENTIALS_KEY", "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".to_owned()),
        ("CLUSTER_SECRET", "failover-cluster-secret-0123456789abcdef".to_owned()),
        ("ADMIN_TOKEN", "admin-token".to_owned()),
        ("RATE_LIMIT_PER_MIN", "0".to_owned()),
        ("PENDING_MAX_PERCENT", "100".to_owned()),
        ("HEARTBEAT_INTERVAL_SECS", "2".to_owned()),
        ("BOT_DRIVER", "process".to_owned()),
        // The worker writes its ledger outside any sandbox's view.
        ("BOT_SANDBOX", "off".to_owned()),
        ("BOT_COMMAND", format!("bash {worker} {}", dir.join("out").display())),
        ("BOT_AUTH_DIR", dir.join(format!("bots-{name}")).display().to_string()),
        ("BOT_STATE_SYNC_SECS", "1".to_owned()),
        ("FAILOVER_AFTER_SECS", FAILOVER_AFTER_SECS.to_string()),
        ("MOVES_PER_MIN", "1200".to_owned()),
    ]
}

/// Per phone, the servers it started on with their counters, in order.
fn ledger(dir: &Path) -> HashMap<String, Vec<(String, u32)>> {
    let text = std::fs::read_to_string(dir.join("out/ledger")).unwrap_or_default();
    let mut starts: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [_, phone, server, counter] = words.as_slice() {
            let server = server.trim_start_matches("server=").to_owned();
            let counter = counter.trim_start_matches("counter=").parse().unwrap_or(0);
            starts.entry((*phone).to_owned()).or_default().push((server, counter));
        }
    }
    starts
}

fn wait(what: &str, within: Duration, check: &mut dyn FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(mut node: Child) {
    let _ = kill(Pid::from_raw(node.id() as i32), Signal::SIGTERM);
    let _ = node.wait();
}

#[test]
fn a_killed_nodes_bots_run_elsewhere_once_with_their_state_and_never_come_back() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let Some(database) = runtime.block_on(trekker_testkit::postgres::database()) else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let url = database.url.as_str();
    let (b, b_addr) = start_node(dir.path(), &envs(url, "SERVER1", 30, dir.path()));
    let (c, _) = start_node(dir.path(), &envs(url, "SERVER2", 30, dir.path()));
    let (a, a_addr) = start_node(dir.path(), &envs(url, "SERVER0", BOTS, dir.path()));

    let phones: Vec<String> = (1..=BOTS).map(|n| trekker_testkit::creds::phone(81, n)).collect();
    let ids: Vec<String> = phones.iter().map(|phone| register_approved(&a_addr, phone)).collect();
    wait("every bot running on SERVER0", Duration::from_secs(60), &mut || {
        let starts = ledger(dir.path());
        phones.iter().all(|p| starts.get(p).is_some_and(|s| s == &[("SERVER0".to_owned(), 1)]))
    });
    // Each bot's session saved at least once (the node syncs every second).
    wait("every session saved", Duration::from_secs(60), &mut || {
        ids.iter().all(|id| {
            let bot = json_body(&http(&b_addr, "GET", &format!("/api/admin/bots/{id}"), ADMIN, ""));
            bot["sessionState"]["files"].as_i64().unwrap_or(0) >= 1
        })
    });

    kill(Pid::from_raw(a.id() as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let mut a = a;
    a.wait().unwrap();
    // The lease runs out, then FAILOVER_AFTER_SECS, then a fleet pass (5 s)
    // and the paced starts; the margin is for a loaded machine.
    let budget = LEASE + Duration::from_secs(FAILOVER_AFTER_SECS + 5 + 60);
    wait("every bot running elsewhere", budget, &mut || {
        let starts = ledger(dir.path());
        phones.iter().all(|p| starts.get(p).is_some_and(|s| s.len() >= 2))
    });
    eprintln!("failover of {BOTS} bots: all running elsewhere {:.1} s after the kill", killed.elapsed().as_secs_f64());

    let starts = ledger(dir.path());
    for phone in &phones {
        let runs = &starts[phone];
        assert_eq!(runs.len(), 2, "{phone} started once on SERVER0 and once elsewhere: {runs:?}");
        assert_ne!(runs[1].0, "SERVER0");
        assert_eq!(runs[1].1, 2, "{phone} ran on with its saved session: {runs:?}");
    }
    let violations = std::fs::read_to_string(dir.path().join("out/violations")).unwrap_or_default();
    assert!(violations.is_empty(), "two copies of a bot ran at once: {violations}");
    let servers = json_body(&http(&b_addr, "GET", "/api/admin/servers", ADMIN, ""));
    let used = |name: &str| {
        servers["servers"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["currentBots"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((used("SERVER0"), used("SERVER1") + used("SERVER2")), (0, i64::from(BOTS)));
    let found = json_body(&http(&b_addr, "GET", "/api/admin/registry/inconsistencies", ADMIN, ""));
    assert_eq!(found["count"], 0, "{found}");
    let activities = json_body(&http(&b_addr, "GET", &format!("/api/admin/activities?bot={}", ids[0]), ADMIN, ""));
    assert_eq!(activities["activities"][0]["action"], "bot_failed_over", "{activities}");
    // On the audit trail as the cluster's own act, once per bot.
    let trail = json_body(&http(&b_addr, "GET", "/api/admin/audit?actor=system&action=bot_failed_over", ADMIN, ""));
    let moved: Vec<&str> = trail["entries"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap()).collect();
    let mut distinct = moved.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!((moved.len(), distinct.len()), (BOTS as usize, BOTS as usize), "{trail}");
    assert!(moved.contains(&format!("bot/{}", ids[0]).as_str()), "{trail}");

    // The node comes back: none of its old bots start there.
    let (a, a_addr) = start_node(dir.path(), &envs(url, "SERVER0", BOTS, dir.path()));
    wait("the revived node online", Duration::from_secs(30), &mut || {
        let servers = json_body(&http(&a_addr, "GET", "/api/admin/servers", ADMIN, ""));
        servers["servers"]
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s["name"] == "SERVER0" && s["online"] == true))
    });
    std::thread::sleep(Duration::from_secs(5));
    let after = ledger(dir.path());
    for phone in &phones {
        assert_eq!(after[phone].len(), 2, "{phone} started again after the node came back: {:?}", after[phone]);
    }
    for node in [a, b, c] {
        stop(node);
    }
}
