//! A node's start-up, health, heartbeat and graceful shutdown.

use std::time::Duration;

use trekker_domain::ServerName;

use crate::support::{eventually, postgres_url, settings, spawn_node};

async fn starts_serves_beats_and_stops(database_url: &str) {
    let mut fast_beats = settings(database_url, "node-a", 7);
    fast_beats.heartbeat_interval_secs = 1;
    let node = spawn_node(fast_beats).await;
    let health = node.client.get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = node.client.get(node.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["serverName"], "NODE-A");

    // The registry row holds the capacity and the bound address.
    let name = ServerName::parse("NODE-A").unwrap();
    let row = node.state.store.get_server(&name).await.unwrap().unwrap();
    assert_eq!(row.max_bot_count, 7);
    assert_eq!(row.base_url.as_deref(), Some(format!("http://{}", node.addr).as_str()));
    let first_beat = row.last_heartbeat.unwrap();
    eventually(Duration::from_secs(30), "the heartbeat loop advances the row", || async {
        node.state.store.get_server(&name).await.unwrap().unwrap().last_heartbeat.unwrap() > first_beat
    })
    .await;

    let unknown = node.client.get(node.url("/no/such/path")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!((body["success"].as_bool(), body["code"].as_str()), (Some(false), Some("NOT_FOUND")));

    let addr = node.addr;
    node.stop().await;
    assert!(reqwest::get(format!("http://{addr}/healthz")).await.is_err(), "a stopped node takes no requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lifecycle_on_postgres() {
    if let Some(url) = postgres_url().await {
        starts_serves_beats_and_stops(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lifecycle_on_sqlite() {
    let database = trekker_testkit::sqlite_database();
    starts_serves_beats_and_stops(&database.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_without_key_generates_a_private_key_file_and_reuses_it() {
    let database = trekker_testkit::sqlite_database();
    let mut first = settings(&database.url, "solo", 3);
    first.credentials_key = None;
    let node = spawn_node(first.clone()).await;
    let key_path = database.dir.path().join("trekker.db.key");
    let key = std::fs::read_to_string(&key_path).expect("key file written beside the database");
    node.stop().await;
    let node = spawn_node(first).await;
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key, "the key survives a restart");
    node.stop().await;
}
