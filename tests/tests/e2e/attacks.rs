//! Attacks from outside, over real HTTP against real nodes: each finding of
//! the outside probe, reproduced and shown refused.
//!
//! Takeover: a session built for a victim's registered phone, signed by the
//! attacker's own WhatsApp account (or not signed at all), must neither
//! replace the victim's credentials (on its host or forwarded from another
//! node) nor reveal where the victim's bot runs.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use trekker_domain::BotId;
use trekker_testkit::creds;

use crate::support::{TestNode, eventually, postgres_url, settings, spawn_node};

/// A bot of `phone` registered, approved and online on `host`.
async fn running_bot(host: &TestNode, phone: &str) -> String {
    let created = host.register("Victim", phone, 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(host.approve(&id).await.status, 200);
    let path = format!("/api/admin/bots/{id}");
    eventually(Duration::from_secs(20), "the victim's bot runs", || async {
        host.admin(Method::GET, &path, None).await.body["status"] == "online"
    })
    .await;
    id
}

async fn register_session(node: &TestNode, phone: &str, session: &str) -> crate::support::Answer {
    node.post_json(
        "/api/guest/register-bot",
        &json!({"botName": "Mine now", "phoneNumber": phone, "credentialType": "session", "sessionId": session}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_accounts_session_cannot_take_over_a_bot_here_or_through_another_node() {
    let Some(url) = postgres_url().await else { return };
    let host = spawn_node(settings(&url, "SERVER0", 5)).await;
    let other = spawn_node(settings(&url, "SERVER1", 5)).await;
    let phone = creds::phone(80, 1);
    let id = running_bot(&host, &phone).await;
    let bot_id = BotId::parse(&id).unwrap();

    // The forgery: the victim's phone in me.id, the attacker's account.
    let forged = creds::session_id_of_account(&phone, 7, "attacker");
    for node in [&host, &other] {
        let answer = register_session(node, &phone, &forged).await;
        assert_eq!((answer.status, answer.code()), (409, "ACCOUNT_MISMATCH"), "{answer:?}");
        assert!(answer.body["reviewId"].as_str().is_some_and(|id| id.len() == 32), "{answer:?}");
        // Validation does not tell the attacker where the bot runs.
        let probe = node.post_json("/api/validate-credentials", &json!({"sessionId": forged})).await;
        assert_eq!(probe.body["alreadyRegistered"], true);
        assert!(probe.body["targetServer"].is_null() && probe.body["botId"].is_null(), "{:?}", probe.body);
    }
    // Unsigned keys, as the original probe built them: not even credentials.
    let mut unsigned = creds::creds_json(&phone, 8);
    unsigned.as_object_mut().unwrap().remove("account");
    let answer =
        register_session(&host, &phone, &trekker_domain::session::encode_session_id(&unsigned.to_string())).await;
    assert_eq!((answer.status, answer.code()), (400, "INVALID_CREDENTIALS"), "{answer:?}");

    // The victim's bot runs on, on its own credentials, approval kept.
    let (stored, version) = host.state.store.load_credentials(&bot_id).await.unwrap().unwrap();
    assert_eq!((stored, version), (creds::credentials(&phone, 1), 1));
    let detail = host.admin(Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    assert_eq!((&detail.body["approvalStatus"], &detail.body["status"]), (&json!("approved"), &json!("online")));
    // One review waits (the newest replaced the first).
    let reviews = host.admin(Method::GET, "/api/admin/credential-reviews", None).await;
    let open: Vec<_> =
        reviews.body["reviews"].as_array().unwrap().iter().filter(|r| r["status"] == "open").cloned().collect();
    assert_eq!(open.len(), 1, "{:?}", reviews.body);
    assert_eq!(open[0]["botId"], id.as_str());
    // The admin rejects it: still nothing changes.
    let rejected = host
        .admin(Method::POST, &format!("/api/admin/credential-reviews/{}/reject", open[0]["id"].as_str().unwrap()), None)
        .await;
    assert_eq!(rejected.status, 200, "{:?}", rejected.body);
    assert_eq!(host.state.store.load_credentials(&bot_id).await.unwrap().unwrap().1, 1);
    host.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_re_pairs_anywhere_older_sessions_are_refused_and_an_admin_can_move_the_phone() {
    let Some(url) = postgres_url().await else { return };
    let host = spawn_node(settings(&url, "SERVER0", 5)).await;
    let other = spawn_node(settings(&url, "SERVER1", 5)).await;
    let phone = creds::phone(80, 2);
    let id = running_bot(&host, &phone).await;
    let bot_id = BotId::parse(&id).unwrap();

    // A genuine re-pair (new device, newer timestamp) through the other node.
    let repaired = other.register("Victim", &phone, 3, None).await;
    assert_eq!(repaired.status, 200, "{:?}", repaired.body);
    assert_eq!(host.state.store.load_credentials(&bot_id).await.unwrap().unwrap(), (creds::credentials(&phone, 3), 2));
    // Its owner validating sees where the bot runs.
    let seen = other.post_json("/api/validate-credentials", &json!({"sessionId": creds::session_id(&phone, 3)})).await;
    assert_eq!((&seen.body["targetServer"], &seen.body["botId"]), (&json!("SERVER0"), &json!(id)));
    // An older session of the same account is refused, here and there.
    for node in [&host, &other] {
        let stale = node.register("Victim", &phone, 2, None).await;
        assert_eq!((stale.status, stale.code()), (409, "CONFLICT"), "{stale:?}");
    }
    assert_eq!(host.state.store.load_credentials(&bot_id).await.unwrap().unwrap().1, 2);

    // The phone moved to a new WhatsApp account: an admin approves the change.
    let moved = creds::session_id_of_account(&phone, 4, "new-account");
    let answer = register_session(&host, &phone, &moved).await;
    assert_eq!(answer.code(), "ACCOUNT_MISMATCH");
    let review = answer.body["reviewId"].as_str().unwrap().to_owned();
    let approved = host.admin(Method::POST, &format!("/api/admin/credential-reviews/{review}/approve"), None).await;
    assert_eq!(approved.status, 200, "{:?}", approved.body);
    let expected = trekker_domain::Credentials::from_session_id(&moved).unwrap();
    assert_eq!(host.state.store.load_credentials(&bot_id).await.unwrap().unwrap(), (expected, 3));
    let path = format!("/api/admin/bots/{id}");
    eventually(Duration::from_secs(20), "the bot restarts on the new account", || async {
        let bot = host.admin(Method::GET, &path, None).await;
        bot.body["status"] == "online" && bot.body["credentialsVersion"] == 3
    })
    .await;
    // From now on the old account is the stranger.
    let old_owner = host.register("Victim", &phone, 9, None).await;
    assert_eq!(old_owner.code(), "ACCOUNT_MISMATCH");
    host.stop().await;
    other.stop().await;
}

/// Finding 3 of the outside probe: free phone numbers let one address fill
/// every slot with bots nobody approves. They get their share only; the
/// rest stays for bots an admin approves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unapproved_bots_cannot_fill_a_server() {
    let database = trekker_testkit::sqlite_database();
    let mut capped = settings(&database.url, "SERVER0", 10);
    capped.pending_max_percent = 50;
    let node = spawn_node(capped).await;
    let mut statuses = Vec::new();
    for n in 1..=8 {
        statuses.push(node.register("Spam", &creds::phone(81, n), 1, None).await.status);
    }
    assert_eq!(statuses, [201, 201, 201, 201, 201, 503, 503, 503], "5 of 10 slots may wait for approval");
    let servers = node.get("/api/servers/available").await;
    assert_eq!(servers.body["servers"][0]["availableSlots"], 5, "the rest stays free");
    // Approving one makes room for one more guest.
    let bots = node.admin(Method::GET, "/api/admin/bots", None).await;
    let first = bots.body["bots"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(node.approve(&first).await.status, 200);
    assert_eq!(node.register("Guest", &creds::phone(81, 20), 1, None).await.status, 201);
    node.stop().await;
}

/// The guest page (it shows a session ID) and the console are served under
/// a strict policy: no framing, no sniffing, no referrer, nothing loaded
/// but their own inline script and style.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_a_strict_content_security_policy() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    for path in ["/", "/admin"] {
        let page = node.client.get(format!("http://{}{path}", node.addr)).send().await.unwrap();
        let header = |name: &str| page.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let policy = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "connect-src 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "script-src 'sha256-",
        ] {
            assert!(policy.contains(directive), "{path}: {directive} missing from {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
    node.stop().await;
}
