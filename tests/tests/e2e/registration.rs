//! Registration through HTTP with several nodes on one database: the seed's
//! Tests 2, 3 and 4, placement rules, and the capacity invariant under load.

use std::collections::HashMap;

use futures::future::join_all;
use trekker_domain::{PhoneNumber, ServerName};
use trekker_store::{BotFilter, ServerRegistration};
use trekker_testkit::creds;

use crate::support::{databases, postgres_url, raw_count, raw_sql, settings, spawn_node};

/// Seed Test 2: a new phone registers on the node that received it.
/// Seed Test 3: that node is full: the bot goes to the server with the most free slots.
/// Seed Test 4: every server is full: 503 ALL_SERVERS_FULL with Retry-After.
async fn seed_tests_2_3_4(database_url: &str) {
    let a = spawn_node(settings(database_url, "SERVER0", 1)).await;
    let b = spawn_node(settings(database_url, "SERVER1", 3)).await;
    let c = spawn_node(settings(database_url, "SERVER2", 2)).await;

    // Test 2.
    let first = a.register("Alpha", &creds::phone(20, 1), 1, None).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["type"], "registered");
    assert_eq!(first.body["server"], "SERVER0");
    assert_eq!(first.body["bot"]["approvalStatus"], "pending");
    assert_eq!(first.body["bot"]["phoneNumber"], creds::phone(20, 1));
    assert!(first.body["message"].as_str().unwrap().contains("waiting for admin approval"));

    // Test 3: SERVER0 is full; SERVER1 has the most free slots (3 vs 2).
    let second = a.register("Beta", &creds::phone(20, 2), 1, None).await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert_eq!(second.body["type"], "auto_assigned");
    assert_eq!(second.body["assignedServer"], "SERVER1");
    assert_eq!(second.body["currentServer"], "SERVER0");
    assert_eq!(second.body["availableSlots"], 2);
    assert_eq!(second.body["bot"]["server"], "SERVER1");
    // Now SERVER1 and SERVER2 both have 2: the tie goes to the name.
    let third = a.register("Gamma", &creds::phone(20, 3), 1, None).await;
    assert_eq!(third.body["assignedServer"], "SERVER1");
    for n in 4..=6 {
        assert_eq!(a.register("More", &creds::phone(20, n), 1, None).await.status, 201);
    }

    // Test 4.
    let refused = b.register("Omega", &creds::phone(20, 7), 1, None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.code(), "ALL_SERVERS_FULL");
    assert_eq!(refused.body["message"], "All servers are at capacity. Please try again later or contact support.");
    assert!(refused.retry_after.is_some(), "ALL_SERVERS_FULL carries Retry-After");

    let servers = c.get("/api/servers/available").await;
    assert_eq!(servers.body["count"], 3);
    for server in servers.body["servers"].as_array().unwrap() {
        assert_eq!(server["availableSlots"], 0, "{server}");
        assert_eq!(server["online"], true);
    }
    // Every registration (6 succeeded) wrote one activity row and one
    // notification; the refusal wrote neither.
    let store = &a.state.store;
    let activities = store.list_activities(None, None, 100).await.unwrap().activities;
    for n in 1..=7 {
        let phone = creds::phone(20, n);
        let written = activities
            .iter()
            .filter(|x| x.phone.as_deref() == Some(phone.as_str()))
            .filter(|x| x.action == "registered" || x.action == "auto_assigned")
            .count();
        assert_eq!(written, usize::from(n <= 6), "phone {n}: {activities:?}");
    }
    assert_eq!(raw_count(database_url, "SELECT COUNT(*) FROM notification_outbox").await, 6);
    assert!(store.find_inconsistencies().await.unwrap().is_empty());
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_tests_2_3_4_on_postgres() {
    if let Some(url) = postgres_url().await {
        seed_tests_2_3_4(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_tests_2_3_4_on_sqlite_shared_by_three_nodes() {
    let database = trekker_testkit::sqlite_database();
    seed_tests_2_3_4(&database.url).await;
}

/// Invariant 2 through HTTP: 4 nodes, 400 registrations at once, 100 slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_nodes_400_registrations_fill_exactly_100_slots() {
    let Some(url) = postgres_url().await else { return };
    let nodes = vec![
        spawn_node(settings(&url, "N0", 25)).await,
        spawn_node(settings(&url, "N1", 25)).await,
        spawn_node(settings(&url, "N2", 25)).await,
        spawn_node(settings(&url, "N3", 25)).await,
    ];
    let answers = join_all((0..400u32).map(|n| {
        let node = &nodes[(n % 4) as usize];
        async move { node.register("Load", &creds::phone(21, n), 1, None).await }
    }))
    .await;
    let mut by_outcome: HashMap<String, usize> = HashMap::new();
    for answer in &answers {
        let key = match answer.status {
            201 => answer.body["type"].as_str().unwrap().to_owned(),
            _ => answer.code().to_owned(),
        };
        *by_outcome.entry(key).or_default() += 1;
    }
    let succeeded = by_outcome.get("registered").unwrap_or(&0) + by_outcome.get("auto_assigned").unwrap_or(&0);
    assert_eq!(succeeded, 100, "{by_outcome:?}");
    assert_eq!(by_outcome.get("ALL_SERVERS_FULL"), Some(&300), "{by_outcome:?}");

    let store = &nodes[0].state.store;
    for server in store.list_servers().await.unwrap() {
        assert_eq!(server.current_bot_count, 25, "{server:?}");
        let filter = BotFilter { server: Some(server.name.clone()), ..BotFilter::default() };
        let bots = store.list_bots(&filter).await.unwrap().bots;
        assert_eq!(bots.len(), 25);
        for bot in bots {
            let entry = store.find_registration(&bot.phone).await.unwrap().expect("registry row");
            assert_eq!((entry.server, entry.bot_id), (bot.server.clone(), bot.id.clone()));
        }
    }
    assert!(store.find_inconsistencies().await.unwrap().is_empty());
    for node in nodes {
        node.stop().await;
    }
}

/// Invariant 1 through HTTP: one phone, 60 registrations at once through 4
/// nodes. Exactly one creates the bot; every other one is answered as an
/// update of that bot (never a second bot, never a server error).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_phone_raced_through_four_nodes_registers_once() {
    let Some(url) = postgres_url().await else { return };
    let nodes = vec![
        spawn_node(settings(&url, "N0", 10)).await,
        spawn_node(settings(&url, "N1", 10)).await,
        spawn_node(settings(&url, "N2", 10)).await,
        spawn_node(settings(&url, "N3", 10)).await,
    ];
    let phone = creds::phone(22, 1);
    let answers = join_all((0..60u32).map(|n| {
        let node = &nodes[(n % 4) as usize];
        let phone = &phone;
        async move { node.register("Race", phone, n + 1, None).await }
    }))
    .await;
    let created: Vec<_> = answers.iter().filter(|a| a.status == 201).collect();
    assert_eq!(created.len(), 1, "{answers:#?}");
    let bot_id = created[0].body["bot"]["id"].clone();
    for answer in &answers {
        match answer.status {
            201 => {}
            200 | 202 => assert_eq!(answer.body["bot"]["id"], bot_id, "{answer:?}"),
            // The host refused a stale forwarded version: still no 2nd bot.
            409 | 502 => assert!(matches!(answer.code(), "CONFLICT" | "REMOTE_UPDATE_FAILED"), "{answer:?}"),
            _ => panic!("unexpected answer {answer:?}"),
        }
    }
    assert_eq!(raw_count(&url, "SELECT COUNT(*) FROM bot_instances").await, 1);
    assert_eq!(raw_count(&url, "SELECT COUNT(*) FROM god_register").await, 1);
    let total: i64 = nodes[0].state.store.list_servers().await.unwrap().iter().map(|s| s.current_bot_count).sum();
    assert_eq!(total, 1);
    assert!(nodes[0].state.store.find_inconsistencies().await.unwrap().is_empty());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_inactive_and_draining_servers_are_never_chosen() {
    let Some(url) = postgres_url().await else { return };
    let a = spawn_node(settings(&url, "SERVER0", 0)).await;
    let now = trekker_domain::time::Clock::now_ms(&trekker_domain::time::SystemClock);
    // A server that stopped beating an hour ago, with plenty of room.
    let ghost = ServerRegistration {
        name: ServerName::parse("GHOST").unwrap(),
        max_bot_count: 100,
        base_url: None,
        description: None,
    };
    a.state.store.upsert_server(&ghost, now - 3_600_000).await.unwrap();
    let b = spawn_node(settings(&url, "SERVER1", 50)).await;
    let drain = b
        .admin(reqwest::Method::PATCH, "/api/admin/servers/server1", Some(serde_json::json!({"status": "draining"})))
        .await;
    assert_eq!(drain.status, 200, "{:?}", drain.body);
    assert_eq!(drain.body["server"]["status"], "draining");
    // The roomiest server of all, but switched off by an admin.
    let c = spawn_node(settings(&url, "SERVER2", 80)).await;
    let off = c
        .admin(reqwest::Method::PATCH, "/api/admin/servers/SERVER2", Some(serde_json::json!({"status": "inactive"})))
        .await;
    assert_eq!((off.status, &off.body["server"]["status"]), (200, &serde_json::json!("inactive")));

    let refused = a.register("Nowhere", &creds::phone(25, 1), 1, None).await;
    assert_eq!(refused.code(), "ALL_SERVERS_FULL", "{:?}", refused.body);
    let servers = a.get("/api/servers/available").await;
    let row = |name: &str| servers.body["servers"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned();
    assert_eq!(row("GHOST").unwrap()["online"], false);
    assert_eq!(row("SERVER2").unwrap()["online"], false, "an inactive server is shown offline");

    let back = b
        .admin(reqwest::Method::PATCH, "/api/admin/servers/SERVER1", Some(serde_json::json!({"status": "active"})))
        .await;
    assert_eq!(back.status, 200);
    let placed = a.register("Somewhere", &creds::phone(25, 1), 1, None).await;
    assert_eq!(placed.body["assignedServer"], "SERVER1", "not the inactive SERVER2: {:?}", placed.body);
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selected_server_rules() {
    for (url, _guard) in databases().await {
        let a = spawn_node(settings(&url, "SERVER0", 5)).await;
        let b = spawn_node(settings(&url, "SERVER1", 1)).await;
        let unknown = a.register("X", &creds::phone(23, 1), 1, Some("SERVER9")).await;
        assert_eq!((unknown.status, unknown.code()), (404, "UNKNOWN_SERVER"));
        let chosen = a.register("X", &creds::phone(23, 1), 1, Some("server1")).await;
        assert_eq!((chosen.status, chosen.body["type"].as_str()), (201, Some("registered")), "{:?}", chosen.body);
        assert_eq!(chosen.body["server"], "SERVER1");
        let full = a.register("Y", &creds::phone(23, 2), 1, Some("SERVER1")).await;
        assert_eq!((full.status, full.code()), (409, "SERVER_FULL"));
        let moved = b.register("X", &creds::phone(23, 1), 2, Some("SERVER0")).await;
        assert_eq!((moved.status, moved.code()), (409, "SERVER_MISMATCH"));
        assert_eq!(moved.body["message"], "This phone number is registered on SERVER1. Cannot move to SERVER0.");
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reregistering_updates_credentials_on_the_host_from_any_node() {
    for (url, _guard) in databases().await {
        let a = spawn_node(settings(&url, "SERVER0", 5)).await;
        let b = spawn_node(settings(&url, "SERVER1", 5)).await;
        let phone = creds::phone(24, 1);
        let created = a.register("Echo", &phone, 1, None).await;
        let bot_id = created.body["bot"]["id"].as_str().unwrap().to_owned();
        assert_eq!(a.approve(&bot_id).await.status, 200);

        let updated = a.register("Echo", &phone, 2, None).await;
        assert_eq!(
            (updated.status, updated.body["type"].as_str()),
            (200, Some("credentials_updated")),
            "{:?}",
            updated.body
        );
        assert_eq!(updated.body["server"], "SERVER0");
        assert_eq!(updated.body["bot"]["status"], "loading", "an approved bot restarts");
        let detail = a.admin(reqwest::Method::GET, &format!("/api/admin/bots/{bot_id}"), None).await;
        assert_eq!(detail.body["credentialsVersion"], 2);
        let phone_number = PhoneNumber::parse(&phone).unwrap();
        let bot = trekker_domain::BotId::parse(&bot_id).unwrap();
        let (stored, version) = a.state.store.load_credentials(&bot).await.unwrap().unwrap();
        assert_eq!((stored, version), (creds::credentials(phone_number.as_str(), 2), 2));

        // From the other node, the same phone is forwarded to its host.
        let elsewhere = b.register("Echo", &phone, 3, None).await;
        assert_eq!(
            (elsewhere.status, elsewhere.body["type"].as_str()),
            (200, Some("cross_server_credential_update")),
            "{:?}",
            elsewhere.body
        );
        assert_eq!(a.state.store.load_credentials(&bot).await.unwrap().unwrap().1, 3);
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_row_without_bot_is_reported_and_repaired() {
    for (url, _guard) in databases().await {
        let a = spawn_node(settings(&url, "SERVER0", 5)).await;
        let phone = creds::phone(25, 1);
        assert_eq!(a.register("Orphan", &phone, 1, None).await.status, 201);
        raw_sql(&url, "DELETE FROM bot_instances WHERE phone_number = '254725000001'").await;

        let validation = a
            .post_json("/api/validate-credentials", &serde_json::json!({"sessionId": creds::session_id(&phone, 1)}))
            .await;
        assert_eq!((validation.status, validation.code()), (404, "REGISTRY_INCONSISTENT"));
        assert_eq!(
            validation.body["message"],
            "Bot found in registry on SERVER0 but not in database. Please contact support."
        );
        let register = a.register("Orphan", &phone, 1, None).await;
        assert_eq!(register.code(), "REGISTRY_INCONSISTENT");

        let listed = a.admin(reqwest::Method::GET, "/api/admin/registry/inconsistencies", None).await;
        let kinds: Vec<&str> =
            listed.body["inconsistencies"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"registry_without_bot") && kinds.contains(&"count_drift"), "{kinds:?}");
        let dry = a
            .admin(reqwest::Method::POST, "/api/admin/registry/repair", Some(serde_json::json!({"dryRun": true})))
            .await;
        assert_eq!((dry.body["dryRun"].as_bool(), dry.body["repaired"].as_u64()), (Some(true), Some(0)));
        let fixed = a.admin(reqwest::Method::POST, "/api/admin/registry/repair", None).await;
        assert_eq!(fixed.body["repaired"].as_u64(), Some(2), "{:?}", fixed.body);
        let after = a.admin(reqwest::Method::GET, "/api/admin/registry/inconsistencies", None).await;
        assert_eq!(after.body["count"], 0);
        assert_eq!(a.register("Orphan", &phone, 1, None).await.status, 201, "the phone is usable again");
        a.stop().await;
    }
}
