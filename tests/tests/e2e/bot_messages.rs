//! `POST /api/admin/bots/{id}/messages` through a node that does not host
//! the bot, on PostgreSQL: the host sends it (once per Idempotency-Key),
//! its governor's 429 and Retry-After reach the caller, and the trail
//! names who sent it. The host's messenger here is a recording stand-in
//! (the live WhatsApp path has its own tests in trekker-whatsapp).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;
use trekker_app::messaging::{BotMessenger, MessengerError};
use trekker_domain::{BotId, PhoneNumber};
use trekker_testkit::creds;

use crate::support::{TestNode, fast_runtime, postgres_url, settings, spawn_node, spawn_node_with};

/// Records what it is asked to send; holds back any text saying `slow down`.
#[derive(Debug, Default)]
struct RecordingMessenger {
    sent: Mutex<Vec<(String, Option<String>, String)>>,
}

#[async_trait]
impl BotMessenger for RecordingMessenger {
    async fn send_text(&self, bot: &BotId, to: Option<&PhoneNumber>, text: &str) -> Result<String, MessengerError> {
        if text == "slow down" {
            return Err(MessengerError::Throttled { reason: "the bot's send rate".into(), retry_after_secs: 42 });
        }
        let mut sent = self.sent.lock().unwrap();
        sent.push((bot.as_str().to_owned(), to.map(|p| p.as_str().to_owned()), text.to_owned()));
        Ok(format!("MSG{}", sent.len()))
    }
}

async fn send(
    node: &TestNode,
    token: &str,
    bot: &str,
    body: serde_json::Value,
    key: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = node
        .client
        .request(Method::POST, node.url(&format!("/api/admin/bots/{bot}/messages")))
        .bearer_auth(token)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let answer = crate::support::Answer::from(request.send().await.unwrap()).await;
    (answer.status, answer.retry_after, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_text_sent_through_any_node_leaves_the_bots_host_once() {
    let Some(url) = postgres_url().await else { return };
    let messenger = Arc::new(RecordingMessenger::default());
    let mut overrides = fast_runtime(None);
    overrides.messenger = Some(messenger.clone());
    let host = spawn_node_with(settings(&url, "SERVER1", 5), overrides).await;
    let entry = spawn_node(settings(&url, "SERVER0", 5)).await;
    let (_, operator) = entry.make_key("Otto", "operator").await;
    let created = host.register("Talker", &creds::phone(93, 1), 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let bot = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["bot"]["server"], "SERVER1");

    // Through the node that does not host it: the host sends.
    let (status, _, body) = send(&entry, &operator, &bot, json!({"text": "hello"}), None).await;
    assert_eq!((status, body["success"].as_bool()), (200, Some(true)), "{body:?}");
    assert_eq!(body["messageId"], "MSG1");
    let to = creds::phone(93, 2);
    // The same Idempotency-Key and text twice: one message, the first answer.
    for _ in 0..2 {
        let (status, _, body) = send(&entry, &operator, &bot, json!({"to": to, "text": "once"}), Some("k-1")).await;
        assert_eq!((status, body["messageId"].as_str()), (200, Some("MSG2")), "{body:?}");
    }
    let (status, _, body) = send(&entry, &operator, &bot, json!({"text": "other"}), Some("k-1")).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("IDEMPOTENCY_MISMATCH")), "{body:?}");
    // A key is the caller's whichever node it enters by: sent on the host,
    // retried through the other node, one message.
    let (status, _, body) = send(&host, &operator, &bot, json!({"text": "via the host"}), Some("k-2")).await;
    assert_eq!((status, body["messageId"].as_str()), (200, Some("MSG3")), "{body:?}");
    let (status, _, body) = send(&entry, &operator, &bot, json!({"text": "via the host"}), Some("k-2")).await;
    assert_eq!((status, body["messageId"].as_str()), (200, Some("MSG3")), "the retry answered, not sent: {body:?}");
    let (status, retry_after, body) = send(&host, &operator, &bot, json!({"text": "slow down"}), Some("k-3")).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("42")), "{body:?}");
    // The host's governor holds it back: 429 and its Retry-After, passed on.
    let (status, retry_after, body) = send(&entry, &operator, &bot, json!({"text": "slow down"}), None).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMITED")), "{body:?}");
    assert_eq!(retry_after.as_deref(), Some("42"));
    // Refused before any send: bad input, a bad key, an unknown bot.
    let (status, _, _) = send(&entry, &operator, &bot, json!({"text": ""}), None).await;
    assert_eq!(status, 400);
    let (status, _, _) = send(&entry, &operator, &bot, json!({"text": "x"}), Some(&"k".repeat(101))).await;
    assert_eq!(status, 400);
    let (status, _, _) = send(&entry, &operator, "no-such-bot", json!({"text": "x"}), None).await;
    assert_eq!(status, 404);

    let sent = messenger.sent.lock().unwrap().clone();
    assert_eq!(
        sent,
        [
            (bot.clone(), None, "hello".to_owned()),
            (bot.clone(), Some(to.clone()), "once".to_owned()),
            (bot.clone(), None, "via the host".to_owned())
        ],
        "each text left the host once"
    );
    let trail = entry.admin(Method::GET, "/api/admin/audit?action=message_sent", None).await;
    let results: Vec<(&str, &str)> = trail.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"]["name"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    let ok = results.iter().filter(|r| **r == ("Otto", "ok")).count();
    assert_eq!(ok, 5, "three sends and two replayed answers: {results:?}");
    for code in ["IDEMPOTENCY_MISMATCH", "RATE_LIMITED", "INVALID_INPUT", "NOT_FOUND"] {
        assert!(results.contains(&("Otto", code)), "{code} not on the trail: {results:?}");
    }
    assert!(!format!("{}", trail.body).contains("hello"), "the text is never on the trail");
    entry.stop().await;
    host.stop().await;
}
