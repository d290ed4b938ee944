//! Admin API: auth, approve/reject/delete with their side effects, and the
//! guest notifications they queue, delivered once with several dispatchers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use trekker_testkit::creds;

use crate::support::{Answer, TestNode, eventually, postgres_url, raw_sql, settings, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_auth() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let none = Answer::from(node.client.get(node.url("/api/admin/servers")).send().await.unwrap()).await;
    assert_eq!((none.status, none.code()), (401, "UNAUTHORIZED"));
    let wrong =
        Answer::from(node.client.get(node.url("/api/admin/servers")).bearer_auth("nope").send().await.unwrap()).await;
    assert_eq!((wrong.status, wrong.code()), (401, "UNAUTHORIZED"));
    let ok = node.admin(reqwest::Method::GET, "/api/admin/servers", None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["servers"][0]["baseUrl"], format!("http://{}", node.addr));
    assert!(ok.body["servers"][0]["lastHeartbeat"].as_str().unwrap().ends_with('Z'));
    node.stop().await;

    let mut disabled = settings(&database.url, "SERVER0", 5);
    disabled.admin_token = None;
    let node = spawn_node(disabled).await;
    let forbidden = node.admin(reqwest::Method::GET, "/api/admin/bots", None).await;
    assert_eq!((forbidden.status, forbidden.code()), (403, "FORBIDDEN"));
    assert!(forbidden.body["message"].as_str().unwrap().contains("ADMIN_TOKEN"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_reject_delete_and_reregister() {
    let Some(url) = postgres_url().await else { return };
    let node = spawn_node(settings(&url, "SERVER0", 1)).await;
    let phone = creds::phone(40, 1);
    let created = node.register("Approve me", &phone, 1, None).await;
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();

    let approved = node
        .admin(reqwest::Method::POST, &format!("/api/admin/bots/{id}/approve"), Some(json!({"expirationMonths": 6})))
        .await;
    assert_eq!(approved.status, 200, "{:?}", approved.body);
    assert_eq!(approved.body["bot"]["approvalStatus"], "approved");
    let bad_months = node
        .admin(reqwest::Method::POST, &format!("/api/admin/bots/{id}/approve"), Some(json!({"expirationMonths": 0})))
        .await;
    assert_eq!((bad_months.status, bad_months.code()), (400, "INVALID_INPUT"));
    let detail = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    for field in [
        "id",
        "name",
        "phoneNumber",
        "server",
        "approvalStatus",
        "status",
        "credentialsVersion",
        "credentialsUpdatedAt",
        "restarts",
        "expiresAt",
    ] {
        assert!(detail.body.get(field).is_some(), "missing {field}");
    }
    let filtered = node.admin(reqwest::Method::GET, "/api/admin/bots?server=SERVER0&approval=approved", None).await;
    assert_eq!(filtered.body["count"], 1);
    let bad_filter = node.admin(reqwest::Method::GET, "/api/admin/bots?approval=maybe", None).await;
    assert_eq!(bad_filter.code(), "INVALID_INPUT");

    // Reject frees the phone and the slot (the seed left the phone locked).
    let rejected = node.admin(reqwest::Method::POST, &format!("/api/admin/bots/{id}/reject"), None).await;
    assert_eq!(rejected.body["bot"]["approvalStatus"], "rejected");
    let twice = node.admin(reqwest::Method::POST, &format!("/api/admin/bots/{id}/reject"), None).await;
    assert_eq!((twice.status, twice.code()), (409, "CONFLICT"));
    let again = node.register("Approve me", &phone, 2, None).await;
    assert_eq!((again.status, again.body["type"].as_str()), (201, Some("registered")), "{:?}", again.body);

    // Delete frees them too.
    let second = again.body["bot"]["id"].as_str().unwrap().to_owned();
    let deleted = node.admin(reqwest::Method::DELETE, &format!("/api/admin/bots/{second}"), None).await;
    assert_eq!(deleted.status, 200);
    let gone = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{second}"), None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(node.register("Third", &phone, 3, None).await.status, 201);
    node.stop().await;
}

/// A fake WhatsApp gateway that records what it was asked to send.
async fn fake_gateway() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = Router::new().route(
        "/send",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_reaches_the_webhook_once_with_two_dispatchers() {
    let Some(url) = postgres_url().await else { return };
    let (webhook, received) = fake_gateway().await;
    let webhook_settings = |name: &str| {
        let mut s = settings(&url, name, 20);
        s.notifier = trekker_node::config::NotifierKind::Webhook;
        s.notify_webhook_url = Some(webhook.clone());
        s
    };
    let a = spawn_node(webhook_settings("SERVER0")).await;
    let b = spawn_node(webhook_settings("SERVER1")).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let node = if n % 2 == 0 { &a } else { &b };
        let answer = node.register("Notify", &creds::phone(41, n), 1, None).await;
        ids.push(answer.body["bot"]["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(a.approve(id).await.status, 200);
    }
    // 10 registrations + 10 approvals. Once none is pending, every row is
    // finished (sent or failed) and no dispatcher sends any again.
    eventually(Duration::from_secs(30), "every notification finished", || async {
        a.state.store.pending_notifications().await.unwrap() == 0 && received.lock().unwrap().len() >= 20
    })
    .await;
    let messages = received.lock().unwrap().clone();
    assert_eq!(messages.len(), 20, "each message exactly once: {messages:#?}");
    let approvals = messages.iter().filter(|m| m["text"].as_str().unwrap().contains("was approved")).count();
    assert_eq!(approvals, 10);
    assert!(messages.iter().all(|m| m["phone"].as_str().unwrap().starts_with("25474")));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_until_it_answers() {
    let database = trekker_testkit::sqlite_database();
    let attempts = Arc::new(Mutex::new(0u32));
    let counter = attempts.clone();
    let app = Router::new().route(
        "/send",
        post(move || {
            let counter = counter.clone();
            async move {
                let mut n = counter.lock().unwrap();
                *n += 1;
                if *n < 2 { axum::http::StatusCode::BAD_GATEWAY } else { axum::http::StatusCode::OK }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!("http://{}/send", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut s = settings(&database.url, "SERVER0", 5);
    s.notifier = trekker_node::config::NotifierKind::Webhook;
    s.notify_webhook_url = Some(webhook);
    let node = spawn_node(s).await;
    node.register("Retry", &creds::phone(42, 1), 1, None).await;
    // First attempt fails; the retry comes 0.5-1 s later (backoff with jitter).
    eventually(Duration::from_secs(30), "the notification is finished", || async {
        node.state.store.pending_notifications().await.unwrap() == 0
    })
    .await;
    assert_eq!(*attempts.lock().unwrap(), 2);
    node.stop().await;
}

/// `GET /api/admin/bots` pages: 250 bots in pages of 100, each once; bad
/// paging input is refused with INVALID_INPUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_list_pages_through_250_bots() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 300)).await;
    for n in 0..250 {
        assert_eq!(node.register("Paged", &creds::phone(43, n), 1, None).await.status, 201);
    }
    let mut seen = std::collections::HashSet::new();
    let mut path = "/api/admin/bots".to_owned();
    let mut pages = 0;
    loop {
        let page = node.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        pages += 1;
        for bot in page.body["bots"].as_array().unwrap() {
            assert!(seen.insert(bot["id"].as_str().unwrap().to_owned()), "a bot listed twice");
        }
        match page.body["next"].as_str() {
            Some(next) => path = format!("/api/admin/bots?limit=100&after={next}"),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (250, 3));
    for bad in ["limit=0", "limit=1001", "after=not-a-cursor", "status=sleeping"] {
        let answer = node.admin(reqwest::Method::GET, &format!("/api/admin/bots?{bad}"), None).await;
        assert_eq!((answer.status, answer.code()), (400, "INVALID_INPUT"), "{bad}");
    }

    // The audit log pages the same way, newest first, each record once.
    let activities = collect_pages(&node, "/api/admin/activities", "activities", 100).await;
    let ids: Vec<i64> = activities.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert!(ids.len() >= 250 && ids.windows(2).all(|w| w[0] > w[1]), "{} activities", ids.len());
    let one_bot = seen.iter().next().unwrap();
    let of_one = collect_pages(&node, &format!("/api/admin/activities?bot={one_bot}"), "activities", 1).await;
    assert!(!of_one.is_empty() && of_one.iter().all(|a| a["botId"] == one_bot.as_str()));

    // So do inconsistencies: three bots lose their registry rows.
    raw_sql(
        &database.url,
        "DELETE FROM god_register WHERE phone_number IN \
        (SELECT phone_number FROM god_register ORDER BY phone_number LIMIT 3)",
    )
    .await;
    let found = collect_pages(&node, "/api/admin/registry/inconsistencies", "inconsistencies", 2).await;
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().all(|i| i["kind"] == "bot_without_registry"));
    let refused = [
        "activities?limit=0",
        "activities?after=not-a-cursor",
        "activities?bot=not%20an%20id",
        "registry/inconsistencies?limit=1001",
        // "no": base64 of a cursor without its kind.
        "registry/inconsistencies?after=bm8",
    ];
    for bad in refused {
        let answer = node.admin(reqwest::Method::GET, &format!("/api/admin/{bad}"), None).await;
        assert_eq!((answer.status, answer.code()), (400, "INVALID_INPUT"), "{bad}");
    }
    node.stop().await;
}

/// Every item of an admin list, following `next` with pages of `limit`.
async fn collect_pages(node: &TestNode, path: &str, field: &str, limit: u32) -> Vec<Value> {
    let joiner = if path.contains('?') { '&' } else { '?' };
    let mut url = format!("{path}{joiner}limit={limit}");
    let mut items = Vec::new();
    loop {
        let page = node.admin(reqwest::Method::GET, &url, None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let listed = page.body[field].as_array().unwrap();
        assert!(listed.len() <= limit as usize);
        assert_eq!(page.body["count"], listed.len());
        items.extend(listed.iter().cloned());
        match page.body["next"].as_str() {
            Some(next) => url = format!("{path}{joiner}limit={limit}&after={next}"),
            None => return items,
        }
    }
}

/// A stand-in for the `whatsapp` driver's sessions: records what it is
/// asked to send, from the bots it is told run here.
#[derive(Debug, Default)]
struct RecordingMessenger {
    running: Mutex<Vec<trekker_domain::BotId>>,
    sent: Mutex<Vec<(String, Option<String>, String)>>,
}

#[async_trait::async_trait]
impl trekker_app::messaging::BotMessenger for RecordingMessenger {
    async fn send_text(
        &self,
        bot: &trekker_domain::BotId,
        to: Option<&trekker_domain::PhoneNumber>,
        text: &str,
    ) -> Result<String, trekker_app::messaging::MessengerError> {
        if !self.running.lock().unwrap().contains(bot) {
            return Err(trekker_app::messaging::MessengerError::NotRunningHere);
        }
        self.sent.lock().unwrap().push((bot.as_str().to_owned(), to.map(|p| p.to_string()), text.to_owned()));
        Ok("3EB0RECORDED".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_send_texts_from_running_bots_only() {
    let database = trekker_testkit::sqlite_database();
    let messenger = Arc::new(RecordingMessenger::default());
    let mut overrides = crate::support::fast_runtime(None);
    overrides.messenger = Some(messenger.clone());
    let node = crate::support::spawn_node_with(settings(&database.url, "SERVER0", 5), overrides).await;
    let created = node.register("Sender", &creds::phone(41, 1), 1, None).await;
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/admin/bots/{id}/messages");
    let send = |body: Value| node.admin(reqwest::Method::POST, &path, Some(body));

    let not_here = send(json!({"text": "hello"})).await;
    assert_eq!((not_here.status, not_here.code()), (409, "CONFLICT"), "{:?}", not_here.body);
    assert!(not_here.body["message"].as_str().unwrap().contains("not running on SERVER0"));

    messenger.running.lock().unwrap().push(trekker_domain::BotId::parse(&id).unwrap());
    let own_chat = send(json!({"text": "hello me"})).await;
    assert_eq!((own_chat.status, own_chat.body["messageId"].as_str()), (200, Some("3EB0RECORDED")));
    let to_guest = send(json!({"to": "+254 711 000 001", "text": "hello you"})).await;
    assert_eq!(to_guest.status, 200, "{:?}", to_guest.body);
    let sent = messenger.sent.lock().unwrap().clone();
    assert_eq!(
        sent,
        vec![
            (id.clone(), None, "hello me".to_owned()),
            (id.clone(), Some("254711000001".to_owned()), "hello you".to_owned())
        ]
    );

    // Bad input sends nothing.
    for (body, why) in [
        (json!({"text": "   "}), "blank text"),
        (json!({"to": "12", "text": "x"}), "bad phone"),
        (json!({"text": "x".repeat(4097)}), "too long"),
        (json!({"text": 5}), "not a string"),
        (json!({"text": "x", "extra": 1}), "unknown field"),
    ] {
        let refused = send(body).await;
        assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"), "{why}: {:?}", refused.body);
    }
    let unknown =
        node.admin(reqwest::Method::POST, "/api/admin/bots/bot-unknown/messages", Some(json!({"text": "x"}))).await;
    assert_eq!((unknown.status, unknown.code()), (404, "NOT_FOUND"));
    let anonymous = node.client.post(node.url(&path)).json(&json!({"text": "x"})).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(messenger.sent.lock().unwrap().len(), 2, "nothing else was sent");
    node.stop().await;
}
