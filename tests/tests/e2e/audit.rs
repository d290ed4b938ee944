//! The audit trail through two real nodes on PostgreSQL: every admin write
//! names its actor (a key's id and name, or `bootstrap`) and its result,
//! whichever node took it; a refused write is on it with its code; racing
//! writes leave exactly one entry each; the filters and pages hold.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use trekker_testkit::creds;

use crate::support::{TestNode, postgres_url, settings, spawn_node};

/// The whole trail (of `query`), newest first, read a page of 3 at a time.
async fn trail(node: &TestNode, token: &str, query: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/admin/audit?limit=3{query}{after}");
        let page = node.call_as(token, Method::GET, &path, None).await;
        assert_eq!(page.status, 200, "{path}: {:?}", page.body);
        entries.extend(page.body["entries"].as_array().unwrap().iter().cloned());
        match page.body["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return entries,
        }
    }
}

/// (action, actor name, target, result) of each entry.
fn summary(entries: &[Value]) -> Vec<(String, String, String, String)> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    entries
        .iter()
        .map(|e| (text(&e["action"]), text(&e["actor"]["name"]), text(&e["target"]), text(&e["result"])))
        .collect()
}

fn row(action: &str, actor: &str, target: &str, result: &str) -> (String, String, String, String) {
    (action.to_owned(), actor.to_owned(), target.to_owned(), result.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_admin_write_is_on_the_trail_with_its_actor_whichever_node_took_it() {
    let Some(url) = postgres_url().await else { return };
    let one = spawn_node(settings(&url, "SERVER0", 20)).await;
    let two = spawn_node(settings(&url, "SERVER1", 20)).await;
    let (_, viewer) = one.make_key("Vera", "viewer").await;
    let (otto_id, operator) = one.make_key("Otto", "operator").await;
    let (ada_id, admin) = two.make_key("Ada", "admin").await;
    let created = one.register("Audited", &creds::phone(91, 1), 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let bot = created.body["bot"]["id"].as_str().unwrap().to_owned();
    let on_bot = format!("bot/{bot}");

    let approve = format!("/api/admin/bots/{bot}/approve");
    assert_eq!(two.call_as(&operator, Method::POST, &approve, None).await.status, 200);
    let again = one.call_as(&operator, Method::POST, &approve, Some(json!({"expirationMonths": 0}))).await;
    assert_eq!((again.status, again.code()), (400, "INVALID_INPUT"));
    let stop = one.call_as(&operator, Method::POST, &format!("/api/admin/bots/{bot}/stop"), None).await;
    assert_eq!(stop.status, 202, "{:?}", stop.body);
    let ghost = one.call_as(&operator, Method::POST, "/api/admin/bots/no-such-bot/restart", None).await;
    assert_eq!(ghost.status, 404);
    // Refused for its role: no write was attempted, nothing on the trail.
    assert_eq!(one.call_as(&viewer, Method::POST, &approve, None).await.status, 403);
    let patch = json!({"maxBotCount": 30});
    let patched = two.call_as(&admin, Method::PATCH, "/api/admin/servers/SERVER0", Some(patch)).await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let drained = one.admin(Method::PATCH, "/api/admin/servers/SERVER1", Some(json!({"status": "paused"}))).await;
    assert_eq!(drained.status, 400);
    let deleted = one.call_as(&admin, Method::DELETE, &format!("/api/admin/bots/{bot}"), None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let (temp_id, _) = one.make_key("Temp", "viewer").await;
    assert_eq!(two.call_as(&admin, Method::DELETE, &format!("/api/admin/keys/{temp_id}"), None).await.status, 200);

    // Read by a viewer through either node: the same trail, newest first.
    let entries = trail(&two, &viewer, "").await;
    assert_eq!(entries, trail(&one, &viewer, "").await);
    let temp = format!("key/{temp_id}");
    let expected = [
        row("key_revoked", "Ada", &temp, "ok"),
        row("key_created", "bootstrap", &temp, "ok"),
        row("deleted", "Ada", &on_bot, "ok"),
        row("server_updated", "bootstrap", "server/SERVER1", "INVALID_INPUT"),
        row("server_updated", "Ada", "server/SERVER0", "ok"),
        row("bot_restarted", "Otto", "bot/no-such-bot", "NOT_FOUND"),
        row("bot_stopped", "Otto", &on_bot, "ok"),
        row("approved", "Otto", &on_bot, "INVALID_INPUT"),
        row("approved", "Otto", &on_bot, "ok"),
    ];
    assert_eq!(summary(&entries[..expected.len()]), expected, "{entries:#?}");
    assert_eq!(entries[2]["actor"]["keyId"], ada_id.as_str());
    assert_eq!(entries[8]["actor"]["keyId"], otto_id.as_str());
    assert!(entries[1]["actor"].get("keyId").is_none(), "the bootstrap token has no key id: {:?}", entries[1]);
    assert_eq!(entries[8]["server"], "SERVER1", "the node that took the write");
    assert!(entries.iter().all(|e| e["actor"]["name"] != "Vera"), "a 403 is no write");
    assert!(entries.iter().all(|e| e["action"] != "registered"), "a guest's step is no audit entry");

    // The filters; a made-up filter finds nothing, a hostile one is refused.
    let otto = summary(&trail(&one, &viewer, "&actor=Otto").await);
    assert_eq!(otto, expected[5..].to_vec());
    let approvals = summary(&trail(&one, &viewer, "&actor=Otto&action=approved").await);
    assert_eq!(approvals, expected[7..].to_vec());
    assert!(trail(&one, &viewer, "&actor=nobody").await.is_empty());
    let long = "x".repeat(101);
    let refused = one.call_as(&viewer, Method::GET, &format!("/api/admin/audit?action={long}"), None).await;
    assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"));
    let refused = one.call_as(&viewer, Method::GET, "/api/admin/audit?after=nonsense", None).await;
    assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"));

    two.stop().await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_approvals_through_two_nodes_leave_one_entry_per_change() {
    let Some(url) = postgres_url().await else { return };
    let one = spawn_node(settings(&url, "SERVER0", 40)).await;
    let two = spawn_node(settings(&url, "SERVER1", 40)).await;
    let (_, operator) = one.make_key("Otto", "operator").await;
    let mut bots = Vec::new();
    for n in 0..12 {
        let created = one.register(&format!("Race{n}"), &creds::phone(92, n), 1, None).await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        bots.push(created.body["bot"]["id"].as_str().unwrap().to_owned());
    }
    // Every bot approved twice at once, once through each node: one wins.
    let mut approvals = Vec::new();
    for bot in &bots {
        for node in [&one, &two] {
            let (path, operator) = (format!("/api/admin/bots/{bot}/approve"), &operator);
            approvals.push(async move { node.call_as(operator, Method::POST, &path, None).await.status });
        }
    }
    let statuses = join_all(approvals).await;
    let made = statuses.iter().filter(|status| **status == 200).count();
    assert!(made >= bots.len(), "{statuses:?}");
    let entries = trail(&one, &operator, "&action=approved").await;
    let ok: Vec<&Value> = entries.iter().filter(|e| e["result"] == "ok").collect();
    assert_eq!(ok.len(), made, "one entry per approval made, none without one");
    for bot in &bots {
        let target = format!("bot/{bot}");
        assert!(ok.iter().any(|e| e["target"] == target.as_str()), "{bot} approved without an entry");
    }
    let refused = entries.len() - ok.len();
    assert_eq!(refused, statuses.len() - made, "each refused approval is recorded with its code");
    two.stop().await;
    one.stop().await;
}
