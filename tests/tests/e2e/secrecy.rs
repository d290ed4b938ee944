//! Invariant 6 in the logs: every line the nodes write at the most verbose
//! level, across a registration, a cross-server update, a pairing and a
//! bot run, is captured and searched for credential material.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use trekker_testkit::creds;

use crate::support::{eventually, settings, spawn_node};

/// A `MakeWriter` that appends every log line to one shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// One thread: the subscriber below is this thread's default, and every task
// the nodes spawn runs on this thread, so every event they emit reaches it.
#[tokio::test(flavor = "current_thread")]
async fn no_log_line_at_trace_level_carries_a_credential() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let database = trekker_testkit::sqlite_database();
    let a = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let b = spawn_node(settings(&database.url, "SERVER1", 5)).await;
    let phone = creds::phone(36, 1);

    // Registration on A, approval, the bot comes online (a bot run).
    let registered = a.register("Quiet", &phone, 1, None).await;
    assert_eq!(registered.status, 201, "{:?}", registered.body);
    let id = registered.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(a.approve(&id).await.status, 200);
    let detail = format!("/api/admin/bots/{id}");
    eventually(Duration::from_secs(20), "the bot runs", || async {
        a.admin(reqwest::Method::GET, &detail, None).await.body["status"] == "online"
    })
    .await;
    // A cross-server update: the guest re-pairs through B.
    let forwarded = b.register("Quiet", &phone, 2, None).await;
    assert!(forwarded.status == 200 || forwarded.status == 202, "{:?}", forwarded.body);
    // A pairing: its session ID exists only in the status answer.
    let ticket = a.get(&format!("/api/pair?number={}", creds::phone(36, 2))).await;
    let request = ticket.body["requestId"].as_str().unwrap().to_owned();
    let paired = Arc::new(Mutex::new(None));
    eventually(Duration::from_secs(10), "the simulated pairing completes", || async {
        let status = a.get(&format!("/api/pair/status/{request}")).await;
        *paired.lock().unwrap() = status.body["sessionId"].as_str().map(str::to_owned);
        paired.lock().unwrap().is_some()
    })
    .await;
    let validation =
        a.post_json("/api/validate-credentials", &json!({"sessionId": creds::session_id(&phone, 3)})).await;
    assert_eq!(validation.status, 200);
    a.stop().await;
    b.stop().await;

    let log = captured.text();
    assert!(log.contains("TRACE") && log.contains(&id), "the capture sees the nodes' events");
    let mut secrets: Vec<String> = (1..=3).flat_map(|variant| creds::secret_markers(&phone, variant)).collect();
    let paired = paired.lock().unwrap().clone().unwrap();
    secrets.push(paired.trim_start_matches("TREKKER~").chars().take(40).collect());
    for (n, secret) in secrets.iter().enumerate() {
        assert!(!log.contains(secret), "a log line carries credential material (marker {n})");
    }
}
