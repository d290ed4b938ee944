//! Capacity warnings across a cluster: three nodes on one PostgreSQL watch
//! the same servers; each crossing of the warning line (and of 100 %) is
//! recorded once, with one message to the admin, whichever nodes see it.

use futures::future::join_all;
use serde_json::json;
use trekker_testkit::creds;

use crate::support::{TestNode, postgres_url, raw_count, settings, spawn_node};

const ADMIN_PHONE: &str = "254799000001";

/// Every node checks at once, as they would on their own timers.
async fn all_nodes_check(nodes: &[TestNode]) {
    let checks = join_all(nodes.iter().map(|node| node.state.trekker.check_capacity())).await;
    for check in checks {
        check.expect("capacity check");
    }
}

async fn warnings(url: &str) -> (i64, i64) {
    let activities = raw_count(url, "SELECT COUNT(*) FROM activities WHERE action = 'capacity_warning'").await;
    let messages = raw_count(url, "SELECT COUNT(*) FROM notification_outbox WHERE phone_number = '254799000001'").await;
    (activities, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_crossing_warns_once_across_the_cluster() {
    let Some(url) = postgres_url().await else { return };
    let mut nodes = Vec::new();
    for name in ["SERVER0", "SERVER1", "SERVER2"] {
        let mut node_settings = settings(&url, name, 5);
        node_settings.admin_phone = Some(ADMIN_PHONE.to_owned());
        nodes.push(spawn_node(node_settings).await);
    }
    let register = |n: u32| {
        let node = &nodes[(n % 3) as usize];
        async move { node.register("Filler", &creds::phone(60, n), 1, Some("SERVER0")).await }
    };
    for n in 0..3 {
        assert_eq!(register(n).await.status, 201);
    }
    all_nodes_check(&nodes).await;
    assert_eq!(warnings(&url).await, (0, 0), "60 % is below the line");

    // 4 of 5: past 80 %. Every node sees it, several times: one warning.
    assert_eq!(register(3).await.status, 201);
    for _ in 0..3 {
        all_nodes_check(&nodes).await;
    }
    assert_eq!(warnings(&url).await, (1, 1));
    // 5 of 5: full, a second crossing.
    let last = register(4).await;
    assert_eq!(last.status, 201);
    all_nodes_check(&nodes).await;
    all_nodes_check(&nodes).await;
    assert_eq!(warnings(&url).await, (2, 2));
    let text = raw_count(
        &url,
        "SELECT COUNT(*) FROM notification_outbox \
         WHERE phone_number = '254799000001' AND message LIKE '%SERVER0 is full%'",
    )
    .await;
    assert_eq!(text, 1, "the admin is told which server and how full");

    // Down to 4 (80 %): below the full line by more than the hysteresis, a
    // recovery (no message); filling it again is a new crossing.
    let id = last.body["bot"]["id"].as_str().unwrap().to_owned();
    let deleted = nodes[1].admin(reqwest::Method::DELETE, &format!("/api/admin/bots/{id}"), None).await;
    assert_eq!(deleted.status, 200);
    all_nodes_check(&nodes).await;
    let recovered = raw_count(&url, "SELECT COUNT(*) FROM activities WHERE action = 'capacity_recovered'").await;
    assert_eq!((recovered, warnings(&url).await.1), (1, 2));
    assert_eq!(register(5).await.status, 201);
    all_nodes_check(&nodes).await;
    assert_eq!(warnings(&url).await, (3, 3));

    // The cluster (5 of 15) never crossed.
    let cluster = raw_count(&url, "SELECT COUNT(*) FROM capacity_levels WHERE scope = '*' AND level > 0").await;
    assert_eq!(cluster, 0);
    let body = nodes[2].admin(reqwest::Method::GET, "/api/admin/activities?limit=10", None).await.body;
    assert!(body.to_string().contains("capacity_warning"), "{}", json!(body));
    for node in nodes {
        node.stop().await;
    }
}
