//! A fleet that heals itself, through real nodes on PostgreSQL (invariant
//! 11): power actions, an evacuation while guests register, a move racing
//! a registration for the target's last slot, and a move while a
//! cross-server credential update is queued. Failover of a SIGKILLed node
//! with process bots is in bins/trekker-node/tests/failover.rs.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use trekker_domain::{BotId, RuntimeStatus};
use trekker_testkit::creds;

use crate::runtime::{Ledger, register_approved, simulated, wait_status};
use crate::support::{TestNode, eventually, fast_runtime, postgres_url, settings, spawn_node, spawn_node_with};

fn driver(ledger: &Arc<Ledger>) -> Arc<dyn trekker_runtime::BotDriver> {
    Arc::new(simulated().with_observer(ledger.clone()))
}

async fn servers(node: &TestNode) -> Vec<Value> {
    node.admin(Method::GET, "/api/admin/servers", None).await.body["servers"].as_array().unwrap().clone()
}

async fn server(node: &TestNode, name: &str) -> Value {
    servers(node).await.into_iter().find(|s| s["name"] == name).unwrap()
}

async fn no_inconsistencies(node: &TestNode) {
    let found = node.admin(Method::GET, "/api/admin/registry/inconsistencies", None).await;
    assert_eq!(found.body["count"], 0, "{:?}", found.body);
}

fn runs_on(ledger: &Ledger, id: &str) -> Option<String> {
    ledger.running.lock().unwrap().get(&BotId::parse(id).unwrap()).map(ToString::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_keeps_a_bot_stopped_and_restart_runs_it_again() {
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(Ledger::default());
    let a = spawn_node_with(settings(&url, "SERVER0", 5), fast_runtime(Some(driver(&ledger)))).await;
    let id = register_approved(&a, &creds::phone(90, 1)).await;
    wait_status(&a, &id, RuntimeStatus::Online).await;
    let starts = || ledger.starts.lock().unwrap().len();
    assert_eq!(starts(), 1);

    let stopped = a.admin(Method::POST, &format!("/api/admin/bots/{id}/stop"), None).await;
    assert_eq!(stopped.status, 202, "{:?}", stopped.body);
    assert_eq!(stopped.body["bot"]["desiredState"], "stopped");
    eventually(Duration::from_secs(10), "the bot stopped", || async { runs_on(&ledger, &id).is_none() }).await;
    wait_status(&a, &id, RuntimeStatus::Offline).await;
    // It stays stopped across a restart of its node.
    a.stop().await;
    let a = spawn_node_with(settings(&url, "SERVER0", 5), fast_runtime(Some(driver(&ledger)))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((starts(), runs_on(&ledger, &id)), (1, None), "a stopped bot started by its node's restart");
    let detail = a.admin(Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    assert_eq!(detail.body["desiredState"], "stopped");

    let restarted = a.admin(Method::POST, &format!("/api/admin/bots/{id}/restart"), None).await;
    assert_eq!((restarted.status, &restarted.body["bot"]["desiredState"]), (202, &json!("running")));
    wait_status(&a, &id, RuntimeStatus::Online).await;
    assert_eq!(runs_on(&ledger, &id).as_deref(), Some("SERVER0"));
    // A restart of a running bot restarts it once.
    let again = a.admin(Method::POST, &format!("/api/admin/bots/{id}/restart"), None).await;
    assert_eq!(again.status, 202);
    eventually(Duration::from_secs(10), "a third start", || async { starts() == 3 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(starts(), 3, "restarted more than once");

    // Refusals: a bot waiting for approval, an unknown bot, a stranger.
    let pending = a.register("Waiting", &creds::phone(90, 2), 1, None).await;
    let pending_id = pending.body["bot"]["id"].as_str().unwrap().to_owned();
    let refused = a.admin(Method::POST, &format!("/api/admin/bots/{pending_id}/restart"), None).await;
    assert_eq!((refused.status, refused.code()), (409, "CONFLICT"));
    let held = a.admin(Method::POST, &format!("/api/admin/bots/{pending_id}/stop"), None).await;
    assert_eq!((held.status, &held.body["bot"]["desiredState"]), (202, &json!("stopped")), "{:?}", held.body);
    let missing = a.admin(Method::POST, "/api/admin/bots/nope/stop", None).await;
    assert_eq!((missing.status, missing.code()), (404, "NOT_FOUND"));
    let stranger = a.client.post(a.url(&format!("/api/admin/bots/{id}/stop"))).send().await.unwrap();
    assert_eq!(stranger.status(), 401);
    let activities = a.admin(Method::GET, &format!("/api/admin/activities?bot={id}"), None).await;
    let actions: Vec<&str> =
        activities.body["activities"].as_array().unwrap().iter().filter_map(|x| x["action"].as_str()).collect();
    assert!(actions.contains(&"bot_stopped") && actions.contains(&"bot_restarted"), "{actions:?}");
    assert!(ledger.violations.lock().unwrap().is_empty());
    a.stop().await;
}

/// An evacuation moves every bot off a live server, paced, while guests
/// register through another node; nothing lands on the draining server,
/// every count stays exact, and no bot runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evacuation_empties_a_server_while_guests_register() {
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(Ledger::default());
    let mut draining = settings(&url, "SERVER0", 10);
    draining.moves_per_min = 600;
    let a = spawn_node_with(draining, fast_runtime(Some(driver(&ledger)))).await;
    let b = spawn_node_with(settings(&url, "SERVER1", 20), fast_runtime(Some(driver(&ledger)))).await;
    let c = spawn_node_with(settings(&url, "SERVER2", 20), fast_runtime(Some(driver(&ledger)))).await;
    let mut ids = Vec::new();
    for n in 1..=8 {
        ids.push(register_approved(&a, &creds::phone(91, n)).await);
    }
    for id in &ids {
        wait_status(&a, id, RuntimeStatus::Online).await;
    }

    let evacuate = a.admin(Method::POST, "/api/admin/servers/SERVER0/evacuate", None).await;
    assert_eq!(evacuate.status, 202, "{:?}", evacuate.body);
    assert_eq!(evacuate.body, json!({"success": true, "server": "SERVER0", "bots": 8}));
    let row = server(&b, "SERVER0").await;
    assert_eq!(row["status"], "draining");
    // Guests register meanwhile, through the other nodes, choosing nothing.
    let phones: Vec<String> = (1..=12).map(|n| creds::phone(92, n)).collect();
    let guests: Vec<_> = phones
        .iter()
        .enumerate()
        .map(|(n, phone)| {
            let node = if n % 2 == 0 { &b } else { &c };
            node.register("Guest", phone, 1, None)
        })
        .collect();
    for answer in futures::future::join_all(guests).await {
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        assert_ne!(answer.body["bot"]["server"], "SERVER0", "placed on a draining server");
    }
    eventually(Duration::from_secs(30), "SERVER0 empty and its evacuation over", || async {
        let row = server(&b, "SERVER0").await;
        row["currentBots"] == 0 && row["evacuation"].is_null()
    })
    .await;
    for id in &ids {
        eventually(Duration::from_secs(15), "the bot running elsewhere", || async {
            runs_on(&ledger, id).is_some_and(|host| host != "SERVER0")
        })
        .await;
    }
    let all = servers(&b).await;
    let used: i64 = all.iter().map(|s| s["currentBots"].as_i64().unwrap()).sum();
    assert_eq!(used, 8 + 12);
    no_inconsistencies(&b).await;
    assert!(ledger.violations.lock().unwrap().is_empty(), "{:?}", ledger.violations.lock().unwrap());
    // The load of every node is reported with its heartbeat.
    let load = &server(&b, "SERVER1").await["load"];
    assert!(load["memoryAvailableBytes"].as_i64().unwrap() > 0, "{load}");
    let missing = a.admin(Method::POST, "/api/admin/servers/NOPE/evacuate", None).await;
    assert_eq!((missing.status, missing.code()), (404, "NOT_FOUND"));
    for node in [a, b, c] {
        node.stop().await;
    }
}

/// Moves and registrations race for the target's last slot: exactly one
/// wins each round, and the counts are exact after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_racing_a_registration_for_the_last_slot_never_overfills() {
    let Some(url) = postgres_url().await else { return };
    let a = spawn_node(settings(&url, "SERVER0", 20)).await;
    let b = spawn_node(settings(&url, "SERVER1", 20)).await;
    for round in 1..=6u32 {
        let id = register_approved(&a, &creds::phone(93, round)).await;
        // SERVER1 has exactly one free slot this round.
        let fill = b.admin(Method::PATCH, "/api/admin/servers/SERVER1", Some(json!({"maxBotCount": round}))).await;
        assert_eq!(fill.status, 200, "{:?}", fill.body);
        let path = format!("/api/admin/bots/{id}/move");
        let racer = creds::phone(94, round);
        let (moved, registered) = tokio::join!(
            a.admin(Method::POST, &path, Some(json!({"server": "SERVER1"}))),
            b.register("Racer", &racer, 1, Some("SERVER1")),
        );
        let move_won = moved.status == 202;
        let registration_won = registered.status == 201 && registered.body["bot"]["server"] == "SERVER1";
        assert!(move_won != registration_won, "round {round}: move {moved:?}, registration {registered:?}");
        if !move_won {
            assert_eq!((moved.status, moved.code()), (409, "SERVER_FULL"), "{:?}", moved.body);
        }
        let target = server(&a, "SERVER1").await;
        assert_eq!(target["currentBots"], i64::from(round), "round {round}");
        no_inconsistencies(&a).await;
    }
    a.stop().await;
    b.stop().await;
}

/// New credentials queued for a host that is down follow the bot when an
/// admin moves it meanwhile: the new host applies them and runs the bot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_while_a_cross_server_update_is_queued_delivers_it_to_the_new_host() {
    let Some(url) = postgres_url().await else { return };
    let ledger = Arc::new(Ledger::default());
    let a = spawn_node_with(settings(&url, "SERVER0", 5), fast_runtime(Some(driver(&ledger)))).await;
    let b = spawn_node_with(settings(&url, "SERVER1", 5), fast_runtime(Some(driver(&ledger)))).await;
    let c = spawn_node_with(settings(&url, "SERVER2", 5), fast_runtime(Some(driver(&ledger)))).await;
    let phone = creds::phone(95, 1);
    let id = register_approved(&a, &phone).await;
    wait_status(&a, &id, RuntimeStatus::Online).await;
    a.stop().await;
    // The host is down: B queues the guest's new credentials for SERVER0.
    let queued = b.register("Hosted", &phone, 2, None).await;
    assert_eq!(queued.status, 202, "{:?}", queued.body);
    assert_eq!(queued.body["type"], "cross_server_update_queued");
    let update = queued.body["updateId"].as_str().unwrap().to_owned();
    // An admin moves the bot off the dead node.
    let moved = c.admin(Method::POST, &format!("/api/admin/bots/{id}/move"), Some(json!({"server": "SERVER2"}))).await;
    assert_eq!(moved.status, 202, "{:?}", moved.body);
    eventually(Duration::from_secs(30), "the update delivered to the new host", || async {
        b.get(&format!("/api/guest/credential-updates/{update}")).await.body["status"] == "delivered"
    })
    .await;
    let bot_id = BotId::parse(&id).unwrap();
    let (stored, version) = c.state.store.load_credentials(&bot_id).await.unwrap().unwrap();
    assert_eq!((stored, version), (creds::credentials(&phone, 2), 2));
    eventually(Duration::from_secs(15), "the bot online on SERVER2 with the new credentials", || async {
        let bot = c.state.store.get_bot(&bot_id).await.unwrap().unwrap();
        bot.server.as_str() == "SERVER2" && bot.status == RuntimeStatus::Online && bot.credentials_version == 2
    })
    .await;
    assert_eq!(runs_on(&ledger, &id).as_deref(), Some("SERVER2"));
    assert!(ledger.violations.lock().unwrap().is_empty());
    b.stop().await;
    c.stop().await;
}
