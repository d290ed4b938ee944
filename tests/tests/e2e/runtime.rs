//! The bot runtime through real nodes: approval starts bots, new credentials
//! restart them, crashes back off then fail, logged-out bots stop, moved and
//! removed bots stop, capacity is respected, and a bot never runs on two
//! nodes at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use trekker_domain::{BotId, RuntimeStatus, ServerName};
use trekker_runtime::{Fault, ProcessDriver, RunObserver, SimulatedDriver};
use trekker_testkit::creds;

use crate::support::{TestNode, eventually, fast_runtime, postgres_url, raw_count, raw_sql, settings, spawn_node_with};

pub(crate) async fn status(node: &TestNode, id: &str) -> (RuntimeStatus, i64) {
    let bot = node.state.store.get_bot(&BotId::parse(id).unwrap()).await.unwrap().unwrap();
    (bot.status, bot.restarts)
}

pub(crate) async fn wait_status(node: &TestNode, id: &str, wanted: RuntimeStatus) {
    eventually(Duration::from_secs(10), &format!("bot {id} {wanted}"), || async { status(node, id).await.0 == wanted })
        .await;
}

pub(crate) async fn register_approved(node: &TestNode, phone: &str) -> String {
    let created = node.register("Runner", phone, 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(node.approve(&id).await.status, 200);
    id
}

pub(crate) fn simulated() -> SimulatedDriver {
    SimulatedDriver::new(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_starts_a_bot_and_reject_expiry_delete_and_shutdown_stop_it() {
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(Ledger::default());
    let driver = Arc::new(simulated().with_observer(ledger.clone()));
    let node = spawn_node_with(settings(&url, "SERVER0", 5), fast_runtime(Some(driver))).await;
    let id = register_approved(&node, &creds::phone(60, 1)).await;
    wait_status(&node, &id, RuntimeStatus::Online).await;
    let detail = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    assert_eq!((detail.body["status"].as_str(), detail.body["restarts"].as_i64()), (Some("online"), Some(0)));

    // Expiry stops it: the node's own sweeper loop finds it.
    raw_sql(&url, "UPDATE bot_instances SET expires_at = 1 WHERE phone_number = '254760000001'").await;
    // The supervisor stops it at once (it only runs unexpired bots); the
    // sweeper then records the expiry.
    wait_status(&node, &id, RuntimeStatus::Offline).await;
    let path = format!("/api/admin/bots/{id}");
    eventually(Duration::from_secs(10), "the sweeper expires it", || async {
        node.admin(reqwest::Method::GET, &path, None).await.body["approvalStatus"] == "expired"
    })
    .await;

    // Reject and delete stop theirs.
    let second = register_approved(&node, &creds::phone(60, 2)).await;
    let third = register_approved(&node, &creds::phone(60, 3)).await;
    wait_status(&node, &second, RuntimeStatus::Online).await;
    wait_status(&node, &third, RuntimeStatus::Online).await;
    node.admin(reqwest::Method::POST, &format!("/api/admin/bots/{second}/reject"), None).await;
    wait_status(&node, &second, RuntimeStatus::Offline).await;
    let deleted = node.admin(reqwest::Method::DELETE, &format!("/api/admin/bots/{third}"), None).await;
    assert_eq!(deleted.status, 200);
    let third_id = BotId::parse(&third).unwrap();
    eventually(Duration::from_secs(10), "the deleted bot is stopped", || async {
        !ledger.running.lock().unwrap().contains_key(&third_id)
    })
    .await;
    assert!(ledger.starts.lock().unwrap().iter().any(|(bot, _)| bot == &third_id), "it did run before");
    // Graceful shutdown leaves every running bot offline.
    let fourth = register_approved(&node, &creds::phone(60, 4)).await;
    wait_status(&node, &fourth, RuntimeStatus::Online).await;
    let store = node.state.store.clone();
    node.stop().await;
    let bot = store.get_bot(&BotId::parse(&fourth).unwrap()).await.unwrap().unwrap();
    assert_eq!(bot.status, RuntimeStatus::Offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_backs_off_then_fails_until_new_credentials() {
    let database = trekker_testkit::sqlite_database();
    let driver = simulated();
    let phone = creds::phone(61, 1);
    driver.set_fault(&phone, Some(Fault::CrashAfter(Duration::from_millis(30))));
    let node =
        spawn_node_with(settings(&database.url, "SERVER0", 5), fast_runtime(Some(Arc::new(driver.clone())))).await;
    let id = register_approved(&node, &phone).await;
    wait_status(&node, &id, RuntimeStatus::Failed).await;
    let bot = node.state.store.get_bot(&BotId::parse(&id).unwrap()).await.unwrap().unwrap();
    assert!(bot.restarts >= 2, "restarted with backoff before giving up: {bot:?}");
    assert!(bot.last_error.as_deref().unwrap().starts_with("crashed 3 times"), "{bot:?}");
    // That failed stays failed over time is the supervisor's own test on a
    // paused clock (`crashes_back_off_exponentially_then_the_bot_is_held_failed`).

    driver.set_fault(&phone, None);
    let updated = node.register("Runner", &phone, 2, None).await;
    assert_eq!(updated.body["type"], "credentials_updated");
    wait_status(&node, &id, RuntimeStatus::Online).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logged_out_bot_goes_to_error_without_restarts() {
    let database = trekker_testkit::sqlite_database();
    let driver = simulated();
    let phone = creds::phone(62, 1);
    driver.set_fault(&phone, Some(Fault::LogOutAfter(Duration::from_millis(30))));
    let node = spawn_node_with(settings(&database.url, "SERVER0", 5), fast_runtime(Some(Arc::new(driver)))).await;
    let id = register_approved(&node, &phone).await;
    wait_status(&node, &id, RuntimeStatus::Error).await;
    let bot = node.state.store.get_bot(&BotId::parse(&id).unwrap()).await.unwrap().unwrap();
    assert_eq!((bot.status, bot.restarts), (RuntimeStatus::Error, 0));
    assert!(bot.invalid_reason.as_deref().unwrap().contains("logged out"));
    // Recorded, once, and its owner told to pair again (the outbox's message).
    let activities = node.state.store.list_activities(Some(bot.id.clone()), None, 50).await.unwrap().activities;
    assert_eq!(activities.iter().filter(|a| a.action == "logged_out").count(), 1, "{activities:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_never_runs_more_than_its_capacity() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node_with(settings(&database.url, "SERVER0", 3), fast_runtime(Some(Arc::new(simulated())))).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(register_approved(&node, &creds::phone(63, n)).await);
    }
    for id in &ids {
        wait_status(&node, id, RuntimeStatus::Online).await;
    }
    node.stop().await;
    // The same node comes back with room for 2: the database says 3 are approved.
    let node = spawn_node_with(settings(&database.url, "SERVER0", 2), fast_runtime(Some(Arc::new(simulated())))).await;
    eventually(Duration::from_secs(5), "two bots online", || async {
        let mut online = 0;
        for id in &ids {
            online += usize::from(status(&node, id).await.0 == RuntimeStatus::Online);
        }
        online == 2
    })
    .await;
    // That it stays at two over time is the supervisor's own test
    // (`never_runs_more_than_its_capacity`, on a paused clock).
    node.stop().await;
}

/// Which node runs which bot, as the drivers saw it; overlaps are violations.
#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) running: Mutex<HashMap<BotId, ServerName>>,
    pub(crate) starts: Mutex<Vec<(BotId, ServerName)>>,
    pub(crate) violations: Mutex<Vec<String>>,
}

impl RunObserver for Ledger {
    fn started(&self, bot: &BotId, node: &ServerName) {
        self.starts.lock().unwrap().push((bot.clone(), node.clone()));
        if let Some(other) = self.running.lock().unwrap().insert(bot.clone(), node.clone())
            && &other != node
        {
            self.violations.lock().unwrap().push(format!("{bot} started on {node} while running on {other}"));
        }
    }

    fn stopped(&self, bot: &BotId, node: &ServerName) {
        let mut running = self.running.lock().unwrap();
        if running.get(bot) == Some(node) {
            running.remove(bot);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_never_run_one_bot_at_once_across_moves_and_updates() {
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(Ledger::default());
    let driver = || -> Arc<dyn trekker_runtime::BotDriver> { Arc::new(simulated().with_observer(ledger.clone())) };
    let a = spawn_node_with(settings(&url, "SERVER0", 10), fast_runtime(Some(driver()))).await;
    let b = spawn_node_with(settings(&url, "SERVER1", 10), fast_runtime(Some(driver()))).await;
    let phones: Vec<String> = (1..=4).map(|n| creds::phone(64, n)).collect();
    let mut ids = Vec::new();
    for phone in &phones {
        ids.push(register_approved(&a, phone).await);
    }
    for id in &ids {
        wait_status(&a, id, RuntimeStatus::Online).await;
    }
    for round in 0..8u32 {
        // Move every bot to the other node (as an operator would by hand:
        // bot row and registry row), and push new credentials to half of
        // them through their new host at the same time.
        let to = if round % 2 == 0 { "SERVER1" } else { "SERVER0" };
        let (bots_sql, registry_sql): (&'static str, &'static str) = if to == "SERVER1" {
            (
                "UPDATE bot_instances SET server_name = 'SERVER1' WHERE phone_number LIKE '25476400000%'",
                "UPDATE god_register SET tenancy_name = 'SERVER1' WHERE phone_number LIKE '25476400000%'",
            )
        } else {
            (
                "UPDATE bot_instances SET server_name = 'SERVER0' WHERE phone_number LIKE '25476400000%'",
                "UPDATE god_register SET tenancy_name = 'SERVER0' WHERE phone_number LIKE '25476400000%'",
            )
        };
        raw_sql(&url, bots_sql).await;
        raw_sql(&url, registry_sql).await;
        let host = if to == "SERVER1" { &b } else { &a };
        for phone in phones.iter().take(2) {
            let answer = host.register("Runner", phone, round + 2, None).await;
            assert_eq!((answer.status, &answer.body["type"]), (200, &json!("credentials_updated")), "{answer:?}");
        }
        // Every bot runs on its new host (per the drivers' own ledger)
        // before the next move.
        eventually(Duration::from_secs(15), "every bot runs on its new host", || async {
            let running = ledger.running.lock().unwrap();
            ids.iter().all(|id| running.get(&BotId::parse(id).unwrap()).is_some_and(|node| node.as_str() == to))
        })
        .await;
    }
    let violations = ledger.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let starts = ledger.starts.lock().unwrap().len();
    assert!(starts >= ids.len() * 4, "bots really moved back and forth ({starts} starts)");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_driver_follows_the_contract() {
    let database = trekker_testkit::sqlite_database();
    let out = tempfile::tempdir().unwrap();
    let auth = tempfile::tempdir().unwrap();
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bot-worker.sh");
    let command = format!("bash {worker} {}", out.path().display());
    let driver = ProcessDriver::new(&command, auth.path(), Duration::from_secs(2)).unwrap();
    let node = spawn_node_with(settings(&database.url, "SERVER0", 5), fast_runtime(Some(Arc::new(driver)))).await;
    let log = |phone: &str| std::fs::read_to_string(out.path().join(format!("log-{phone}"))).unwrap_or_default();

    // New credentials: the worker is restarted and sees the new creds.json.
    let phone = creds::phone(65, 1);
    let id = register_approved(&node, &phone).await;
    wait_status(&node, &id, RuntimeStatus::Online).await;
    assert!(log(&phone).contains("dir=700 file=600 reg=1001 server=SERVER0"), "{}", log(&phone));
    node.register("Runner", &phone, 2, None).await;
    eventually(Duration::from_secs(10), "restart with v2", || async {
        log(&phone).contains("v2 dir=700 file=600 reg=1002")
    })
    .await;
    wait_status(&node, &id, RuntimeStatus::Online).await;
    assert_eq!(status(&node, &id).await.1, 1, "the restart is counted");
    assert!(log(&phone).contains(&format!("stop {id}")), "stopped with SIGTERM first: {}", log(&phone));

    // Exit code 40: logged out, error, no restarts.
    let logout = creds::phone(65, 2);
    std::fs::write(out.path().join(format!("mode-{logout}")), "logout").unwrap();
    let logged_out = register_approved(&node, &logout).await;
    wait_status(&node, &logged_out, RuntimeStatus::Error).await;
    assert_eq!(log(&logout).matches("start ").count(), 1);

    // Other exit codes: crash loop, backoff, failed.
    let crash = creds::phone(65, 3);
    std::fs::write(out.path().join(format!("mode-{crash}")), "crash").unwrap();
    let crashing = register_approved(&node, &crash).await;
    wait_status(&node, &crashing, RuntimeStatus::Failed).await;
    assert_eq!(log(&crash).matches("start ").count(), 3, "{}", log(&crash));

    // Graceful shutdown stops the worker and removes its private directory.
    node.stop().await;
    assert!(log(&phone).ends_with(&format!("stop {id}\n")), "{}", log(&phone));
    assert!(!auth.path().join(&id).exists(), "auth directory removed");
}

/// Wall-clock starts and stops, per node, for the stall test.
#[derive(Default)]
struct TimedLedger {
    events: Mutex<Vec<(i64, BotId, ServerName, &'static str)>>,
}

impl TimedLedger {
    fn push(&self, bot: &BotId, node: &ServerName, what: &'static str) {
        use trekker_domain::time::Clock as _;
        let now = trekker_domain::time::SystemClock.now_ms();
        self.events.lock().unwrap().push((now, bot.clone(), node.clone(), what));
    }

    /// Whether `bot` is running on `node` (started and not stopped since).
    fn runs_on(&self, bot: &BotId, node: &str) -> bool {
        let events = self.events.lock().unwrap();
        let last = events.iter().rev().find(|(_, b, n, _)| b == bot && n.as_str() == node);
        last.is_some_and(|(.., what)| *what == "start")
    }

    fn starts(&self, bot: &BotId, node: &str) -> Vec<i64> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|(_, b, n, w)| b == bot && n.as_str() == node && *w == "start").map(|e| e.0).collect()
    }
}

impl RunObserver for TimedLedger {
    fn started(&self, bot: &BotId, node: &ServerName) {
        self.push(bot, node, "start");
    }

    fn stopped(&self, bot: &BotId, node: &ServerName) {
        self.push(bot, node, "stop");
    }
}

/// A simulated driver whose start of one phone's bot hangs until released:
/// the supervisor that calls it stalls (as a node stuck in I/O or paused
/// would), and stops renewing its node lease.
#[derive(Debug)]
struct StallingDriver {
    inner: SimulatedDriver,
    phone: String,
    release: Arc<tokio::sync::Semaphore>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl trekker_runtime::BotDriver for StallingDriver {
    fn name(&self) -> &'static str {
        "stalling"
    }

    async fn start(
        &self,
        spec: trekker_runtime::BotSpec,
        events: tokio::sync::mpsc::UnboundedSender<trekker_runtime::DriverEvent>,
    ) -> Result<Box<dyn trekker_runtime::RunningBot>, trekker_runtime::DriverError> {
        // Only the first start hangs; later starts of the bot go through.
        if spec.phone.as_str() == self.phone && !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.release.acquire().await.expect("semaphore").forget();
        }
        self.inner.start(spec, events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stalled_past_its_lease_loses_its_bots_to_their_new_host() {
    use trekker_domain::time::Clock as _;
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(TimedLedger::default());
    let stall_phone = creds::phone(66, 2);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stalling = StallingDriver {
        inner: simulated().with_observer(ledger.clone()),
        phone: stall_phone.clone(),
        release: release.clone(),
        stalled: stalled.clone(),
    };
    let a = spawn_node_with(settings(&url, "SERVER0", 10), fast_runtime(Some(Arc::new(stalling)))).await;
    let b = spawn_node_with(
        settings(&url, "SERVER1", 10),
        fast_runtime(Some(Arc::new(simulated().with_observer(ledger.clone())))),
    )
    .await;
    let moved = register_approved(&a, &creds::phone(66, 1)).await;
    wait_status(&a, &moved, RuntimeStatus::Online).await;
    let moved_id = BotId::parse(&moved).unwrap();

    // A stalls starting another bot: its supervisor renews nothing now.
    let stuck = register_approved(&a, &stall_phone).await;
    let stuck_id = BotId::parse(&stuck).unwrap();
    eventually(Duration::from_secs(10), "A stalls", || async { stalled.load(std::sync::atomic::Ordering::SeqCst) })
        .await;
    // The operator moves the running bot to B meanwhile.
    raw_sql(&url, "UPDATE bot_instances SET server_name = 'SERVER1' WHERE phone_number = '254766000001'").await;
    raw_sql(&url, "UPDATE god_register SET tenancy_name = 'SERVER1' WHERE phone_number = '254766000001'").await;
    let moved_at = trekker_domain::time::SystemClock.now_ms();
    eventually(Duration::from_secs(15), "B runs the moved bot", || async { ledger.runs_on(&moved_id, "SERVER1") })
        .await;
    // B started it only once A's lease had run out (A never released it:
    // it is stalled, and still runs its copy).
    let lease_end: i64 = raw_count(&url, "SELECT lease_until FROM server_registry WHERE server_name = 'SERVER0'").await;
    let b_started = ledger.starts(&moved_id, "SERVER1")[0];
    assert!(b_started >= lease_end, "B started at {b_started}, A's lease ran until {lease_end}");
    assert!(lease_end > moved_at, "A held a live lease when the bot moved: until {lease_end}, moved at {moved_at}");
    assert!(ledger.runs_on(&moved_id, "SERVER0"), "a stalled node cannot act, not even stop");

    // A wakes up: its lease is gone, so it stops everything it ran without
    // writing, takes a new epoch and starts again only what is still its own.
    release.add_permits(1);
    eventually(Duration::from_secs(15), "A stopped its stale copy", || async { !ledger.runs_on(&moved_id, "SERVER0") })
        .await;
    wait_status(&a, &stuck, RuntimeStatus::Online).await;
    eventually(Duration::from_secs(15), "A runs its own bot again", || async { ledger.runs_on(&stuck_id, "SERVER0") })
        .await;
    assert!(ledger.runs_on(&moved_id, "SERVER1"), "B keeps the moved bot");
    assert_eq!(ledger.starts(&moved_id, "SERVER0").len(), 1, "A never took the moved bot back");
    let epoch: i64 = raw_count(&url, "SELECT epoch FROM server_registry WHERE server_name = 'SERVER0'").await;
    assert!(epoch >= 2, "A took a new epoch after losing its lease (epoch {epoch})");
    assert_eq!(status(&b, &moved).await.0, RuntimeStatus::Online, "A wrote nothing over B's run");
    a.stop().await;
    b.stop().await;
}

/// `POST /api/admin/bots/{id}/move` (invariant 11): one transaction moves
/// the bot, its old host stops it, its new host starts it, never both at
/// once; the guest is told; refused moves change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_move_runs_the_bot_on_its_new_host_and_never_on_both() {
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(Ledger::default());
    let driver = || -> Arc<dyn trekker_runtime::BotDriver> { Arc::new(simulated().with_observer(ledger.clone())) };
    let a = spawn_node_with(settings(&url, "SERVER0", 5), fast_runtime(Some(driver()))).await;
    let b = spawn_node_with(settings(&url, "SERVER1", 5), fast_runtime(Some(driver()))).await;
    let id = register_approved(&a, &creds::phone(66, 1)).await;
    wait_status(&a, &id, RuntimeStatus::Online).await;
    let bot = BotId::parse(&id).unwrap();
    let runs_on = |node: &str| ledger.running.lock().unwrap().get(&bot).is_some_and(|n| n.as_str() == node);
    assert!(runs_on("SERVER0"));

    // Asked of either node, the move is committed at once (202)...
    let path = format!("/api/admin/bots/{id}/move");
    let moved = b.admin(reqwest::Method::POST, &path, Some(json!({"server": "SERVER1"}))).await;
    assert_eq!(moved.status, 202, "{:?}", moved.body);
    assert_eq!(moved.body, json!({"success": true, "botId": id, "from": "SERVER0", "to": "SERVER1"}));
    // ...and the bot then runs on its new host only.
    eventually(Duration::from_secs(15), "the bot running on SERVER1", || async { runs_on("SERVER1") }).await;
    wait_status(&b, &id, RuntimeStatus::Online).await;
    let detail = a.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    assert_eq!(detail.body["server"], "SERVER1");
    let servers = a.admin(reqwest::Method::GET, "/api/admin/servers", None).await;
    let used = |name: &str| {
        servers.body["servers"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["currentBots"].clone()
    };
    assert_eq!((used("SERVER0"), used("SERVER1")), (json!(0), json!(1)));
    let activities = a.admin(reqwest::Method::GET, &format!("/api/admin/activities?bot={id}"), None).await;
    assert_eq!(activities.body["activities"][0]["action"], "bot_moved");
    let told = raw_count(
        &url,
        "SELECT COUNT(*) FROM notification_outbox WHERE message LIKE '%was moved from SERVER0 to SERVER1%'",
    )
    .await;
    assert_eq!(told, 1, "the guest is told once");

    // Refusals: the same server, an unknown one, a bad body, a stranger.
    let same = a.admin(reqwest::Method::POST, &path, Some(json!({"server": "SERVER1"}))).await;
    assert_eq!((same.status, same.body["code"].as_str()), (409, Some("CONFLICT")));
    let unknown = a.admin(reqwest::Method::POST, &path, Some(json!({"server": "SERVER9"}))).await;
    assert_eq!((unknown.status, unknown.body["code"].as_str()), (404, Some("UNKNOWN_SERVER")));
    let garbage = a.admin(reqwest::Method::POST, &path, Some(json!({"server": 7, "extra": true}))).await;
    assert_eq!((garbage.status, garbage.body["code"].as_str()), (400, Some("INVALID_INPUT")));
    let missing = a.admin(reqwest::Method::POST, "/api/admin/bots/no-such-bot/move", None).await;
    assert_eq!((missing.status, missing.body["code"].as_str()), (404, Some("NOT_FOUND")));
    let stranger = a.client.post(a.url(&path)).send().await.unwrap();
    assert_eq!(stranger.status(), 401);

    // Without a target, placement chooses: the only other server.
    let back = a.admin(reqwest::Method::POST, &path, None).await;
    assert_eq!((back.status, back.body["to"].as_str()), (202, Some("SERVER0")), "{:?}", back.body);
    eventually(Duration::from_secs(15), "the bot back on SERVER0", || async { runs_on("SERVER0") }).await;
    assert!(ledger.violations.lock().unwrap().is_empty(), "{:?}", ledger.violations.lock().unwrap());
    a.stop().await;
    b.stop().await;
}
