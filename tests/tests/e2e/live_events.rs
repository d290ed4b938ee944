//! Live events over Server-Sent Events, between real nodes: guests see
//! capacity change as another node registers a bot; admins see the bot
//! approved and turn online; each stream starts with a snapshot; guests
//! never see admin events; the admin stream wants the Authorization header.

use std::time::Duration;

use serde_json::Value;
use trekker_testkit::creds;

use crate::support::{ADMIN_TOKEN, SseReader, databases, settings, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_and_admins_see_the_cluster_change_live() {
    for (url, _keep) in databases().await {
        let watched = spawn_node(settings(&url, "SERVER0", 5)).await;
        let other = spawn_node(settings(&url, "SERVER1", 5)).await;
        let mut guests = SseReader::new(SseReader::open(&watched, "/api/events", None).await);
        let (first, snapshot) = guests.next().await;
        assert_eq!(first, "snapshot");
        assert_eq!(snapshot["servers"].as_array().unwrap().len(), 2, "{snapshot}");
        let admin_fields = |data: &Value| data.get("baseUrl").is_some() || data.get("description").is_some();
        for server in snapshot["servers"].as_array().unwrap() {
            assert!(!admin_fields(server), "guests see no admin field: {server}");
        }

        let anonymous = SseReader::open(&watched, "/api/admin/events", None).await;
        assert_eq!(anonymous.status(), 401);
        let in_url = SseReader::open(&watched, &format!("/api/admin/events?token={ADMIN_TOKEN}"), None).await;
        assert_eq!(in_url.status(), 401, "a token in the URL is not accepted");
        let mut admins = SseReader::new(SseReader::open(&watched, "/api/admin/events", Some(ADMIN_TOKEN)).await);
        let (first, snapshot) = admins.next().await;
        assert_eq!(first, "snapshot");
        assert!(snapshot["servers"][0]["baseUrl"].is_string(), "admins see more: {snapshot}");

        // Another node registers a bot on SERVER0: the watching node's
        // guests see SERVER0's count move.
        let registered = other.register("Live", &creds::phone(61, 1), 1, Some("SERVER0")).await;
        assert_eq!(registered.status, 201, "{:?}", registered.body);
        let id = registered.body["bot"]["id"].as_str().unwrap().to_owned();
        let seen = guests
            .until("SERVER0 holding one bot", |event, data| {
                event == "capacity" && data["name"] == "SERVER0" && data["currentBots"] == 1
            })
            .await;
        assert!(seen.iter().all(|(_, data)| !admin_fields(data)), "guests see no admin field: {seen:?}");

        // Approved through the other node, the bot starts on its host and
        // turns online: admins watch it happen.
        assert_eq!(other.approve(&id).await.status, 200);
        let seen = admins
            .until("the bot online", |event, data| {
                event == "bot" && data["id"] == id.as_str() && data["status"] == "online"
            })
            .await;
        assert!(seen.iter().any(|(event, data)| event == "bot" && data["approvalStatus"] == "approved"), "{seen:?}");

        // Guests saw capacity only.
        let deleted = watched.admin(reqwest::Method::DELETE, &format!("/api/admin/bots/{id}"), None).await;
        assert_eq!(deleted.status, 200);
        admins.until("the bot deleted", |event, data| event == "botDeleted" && data["id"] == id.as_str()).await;
        let after =
            guests.until("SERVER0 empty again", |event, data| event == "capacity" && data["currentBots"] == 0).await;
        assert!(after.iter().all(|(event, _)| event == "capacity"), "guests see no admin event: {after:?}");
        drop(guests);
        drop(admins);
        watched.stop().await;
        other.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_streams_are_capped_without_taking_the_admins_view() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    // Everything but one guest slot taken, as by a flood of anonymous streams.
    let slots = &node.state.event_streams;
    let taken = slots.guests.available_permits() - 1;
    let _flood = slots.guests.clone().acquire_many_owned(u32::try_from(taken).unwrap()).await.unwrap();
    let mut last = SseReader::new(SseReader::open(&node, "/api/events", None).await);
    assert_eq!(last.next().await.0, "snapshot");
    let refused = SseReader::open(&node, "/api/events", None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    // Admins still get theirs.
    let mut admins = SseReader::new(SseReader::open(&node, "/api/admin/events", Some(ADMIN_TOKEN)).await);
    assert_eq!(admins.next().await.0, "snapshot");
    // A closed stream gives its slot back.
    drop(last);
    crate::support::eventually(Duration::from_secs(10), "the slot back", || async {
        SseReader::open(&node, "/api/events", None).await.status() == 200
    })
    .await;
    // The admin stream is still open: stopping the node ends it (an open
    // stream must not hold the graceful drain).
    node.stop().await;
    drop(admins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_guest_stream() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let per_address = trekker_node::per_address::GUEST_STREAMS_PER_ADDRESS;
    let mut open = Vec::new();
    for _ in 0..per_address {
        let mut stream = SseReader::new(SseReader::open(&node, "/api/events", None).await);
        assert_eq!(stream.next().await.0, "snapshot");
        open.push(stream);
    }
    let refused = SseReader::open(&node, "/api/events", None).await;
    assert_eq!(refused.status(), 429, "one address held more than {per_address} streams");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    assert!(node.state.event_streams.guests.available_permits() > 1000, "the node's own cap is far from reached");
    // Admins are not held back by it, and a closed stream frees its slot.
    let mut admins = SseReader::new(SseReader::open(&node, "/api/admin/events", Some(ADMIN_TOKEN)).await);
    assert_eq!(admins.next().await.0, "snapshot");
    open.pop();
    crate::support::eventually(Duration::from_secs(10), "the address's slot back", || async {
        SseReader::open(&node, "/api/events", None).await.status() == 200
    })
    .await;
    node.stop().await;
    drop((open, admins));
}
