//! API keys and roles through two real nodes on PostgreSQL: keys made by
//! the bootstrap token, each role's allowed and refused calls (403
//! FORBIDDEN) on both nodes, tokens shown once and never listed, bad input
//! refused, and a revoked or expired key refused by both nodes.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use trekker_testkit::creds;

use crate::support::{TestNode, eventually, postgres_url, raw_sql_owned, settings, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_may_do_what_it_is_given_on_every_node_and_is_refused_the_rest() {
    let Some(url) = postgres_url().await else { return };
    let one = spawn_node(settings(&url, "SERVER0", 5)).await;
    let two = spawn_node(settings(&url, "SERVER1", 5)).await;
    let (_, viewer) = one.make_key("Vera (support)", "viewer").await;
    let (_, operator) = one.make_key("Otto (ops)", "operator").await;
    let (admin_id, admin) = two.make_key("Ada (lead)", "admin").await;
    let created = one.register("Keyed", &creds::phone(90, 1), 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let bot = created.body["bot"]["id"].as_str().unwrap().to_owned();
    let forbidden = |answer: &crate::support::Answer, what: &str| {
        assert_eq!((answer.status, answer.code()), (403, "FORBIDDEN"), "{what}: {:?}", answer.body);
    };

    for node in [&one, &two] {
        // A viewer reads everything but the keys, and changes nothing.
        for path in
            ["/api/admin/bots", "/api/admin/servers", "/api/admin/activities", &format!("/api/admin/bots/{bot}")]
        {
            let read = node.call_as(&viewer, Method::GET, path, None).await;
            assert_eq!(read.status, 200, "viewer GET {path}: {:?}", read.body);
        }
        forbidden(&node.call_as(&viewer, Method::GET, "/api/admin/keys", None).await, "viewer lists keys");
        let approve = format!("/api/admin/bots/{bot}/approve");
        forbidden(&node.call_as(&viewer, Method::POST, &approve, None).await, "viewer approves");
        // An operator acts on bots, but touches no server, delete or key.
        let patch = json!({"maxBotCount": 9});
        forbidden(&node.call_as(&operator, Method::PATCH, "/api/admin/servers/SERVER0", Some(patch)).await, "op");
        forbidden(&node.call_as(&operator, Method::DELETE, &format!("/api/admin/bots/{bot}"), None).await, "op");
        let new_key = json!({"name": "mine", "role": "admin"});
        forbidden(&node.call_as(&operator, Method::POST, "/api/admin/keys", Some(new_key)).await, "op makes a key");
    }
    let approved = two.call_as(&operator, Method::POST, &format!("/api/admin/bots/{bot}/approve"), None).await;
    assert_eq!(approved.status, 200, "an operator approves: {:?}", approved.body);

    // An admin key does everything; the list names every key, never a token.
    let listed = one.call_as(&admin, Method::GET, "/api/admin/keys?limit=2", None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(listed.body["count"], 2);
    let next = listed.body["next"].as_str().unwrap().to_owned();
    let rest = one.call_as(&admin, Method::GET, &format!("/api/admin/keys?after={next}"), None).await;
    let names: Vec<Value> = [&listed, &rest]
        .iter()
        .flat_map(|page| page.body["keys"].as_array().unwrap().iter().map(|k| k["name"].clone()))
        .collect();
    assert_eq!(names, [json!("Ada (lead)"), json!("Otto (ops)"), json!("Vera (support)")], "newest first");
    let everything = format!("{:?}{:?}", listed.body, rest.body);
    for token in [&viewer, &operator, &admin] {
        assert!(!everything.contains(&token[21..]), "a listed key shows its secret");
    }
    assert_eq!(rest.body["keys"][0]["createdBy"], "bootstrap");
    let deleted = one.call_as(&admin, Method::DELETE, &format!("/api/admin/bots/{bot}"), None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let answer = one.call_as(&admin, Method::DELETE, &format!("/api/admin/keys/{admin_id}"), None).await;
    assert_eq!(answer.status, 200, "an admin key may revoke itself: {:?}", answer.body);

    // Whatever is not a live key is a 401, before any role is looked at.
    let made_up = "trk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for token in [made_up, "", "trk_", &admin] {
        let answer = one.call_as(token, Method::GET, "/api/admin/bots", None).await;
        assert_eq!((answer.status, answer.code()), (401, "UNAUTHORIZED"), "{token:?}");
    }
    two.stop().await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_keys_are_refused_with_their_reason() {
    let Some(url) = postgres_url().await else { return };
    let node = spawn_node(settings(&url, "SERVER0", 5)).await;
    for (body, what) in [
        (json!({"name": "x", "role": "root"}), "an unknown role"),
        (json!({"name": "x", "role": "Admin"}), "a role's name is exact"),
        (json!({"name": "  ", "role": "viewer"}), "a blank name"),
        (json!({"name": "x".repeat(101), "role": "viewer"}), "a long name"),
        (json!({"name": "a\u{7}b", "role": "viewer"}), "a control character"),
        (json!({"name": "x", "role": "viewer", "expiresInDays": 0}), "no life"),
        (json!({"name": "x", "role": "viewer", "expiresInDays": 3651}), "too long a life"),
        (json!({"name": "x", "role": "viewer", "scopes": ["all"]}), "an unknown field"),
        (json!({"role": "viewer"}), "no name"),
    ] {
        let answer = node.admin(Method::POST, "/api/admin/keys", Some(body)).await;
        assert_eq!((answer.status, answer.code()), (400, "INVALID_INPUT"), "{what}: {:?}", answer.body);
    }
    let listed = node.admin(Method::GET, "/api/admin/keys", None).await;
    assert_eq!(listed.body["count"], 0, "nothing half-made");
    let answer = node.admin(Method::DELETE, "/api/admin/keys/0123456789abcdef", None).await;
    assert_eq!((answer.status, answer.code()), (404, "NOT_FOUND"));
    for limit in ["0", "1001", "-1", "x"] {
        let refused = node.admin(Method::GET, &format!("/api/admin/keys?limit={limit}"), None).await;
        assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"), "limit={limit}: {:?}", refused.body);
    }
    node.stop().await;
}

/// What `token` gets for a read on `node`.
async fn reads(node: &TestNode, token: &str) -> u16 {
    node.call_as(token, Method::GET, "/api/admin/bots", None).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_or_expired_key_is_refused_by_every_node() {
    let Some(url) = postgres_url().await else { return };
    let one = spawn_node(settings(&url, "SERVER0", 5)).await;
    let two = spawn_node(settings(&url, "SERVER1", 5)).await;
    let (id, token) = one.make_key("leaked", "viewer").await;
    // Both nodes know the key (and may cache it).
    assert_eq!(reads(&one, &token).await, 200);
    assert_eq!(reads(&two, &token).await, 200);
    let revoked = two.admin(Method::DELETE, &format!("/api/admin/keys/{id}"), None).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(reads(&two, &token).await, 401, "the revoking node refuses it at once");
    eventually(Duration::from_secs(5), "the other node refuses the revoked key", || async {
        reads(&one, &token).await == 401
    })
    .await;
    let again = two.admin(Method::DELETE, &format!("/api/admin/keys/{id}"), None).await;
    assert_eq!(again.status, 404, "revoked once");
    let listed = one.admin(Method::GET, "/api/admin/keys", None).await;
    assert!(listed.body["keys"][0]["revokedAt"].is_string(), "{:?}", listed.body);

    let (expiring, expiring_token) = one.make_key("temporary", "operator").await;
    assert_eq!(reads(&two, &expiring_token).await, 200);
    raw_sql_owned(&url, format!("UPDATE api_keys SET expires_at = 1 WHERE id = '{expiring}'")).await;
    for node in [&one, &two] {
        eventually(Duration::from_secs(5), "an expired key is refused", || async {
            reads(node, &expiring_token).await == 401
        })
        .await;
    }
    two.stop().await;
    one.stop().await;
}
