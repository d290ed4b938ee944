//! `BOT_EVENTS_WEBHOOK_URL`: incoming messages and status changes of the
//! in-process bots, POSTed as JSON to the operator's bot logic.
//!
//! Every request is signed so a receiver can tell it came from Trekker and
//! was not replayed much later: `X-Trekker-Timestamp` (unix seconds) and
//! `X-Trekker-Signature: sha256=<hex>`, the HMAC-SHA256 under
//! `BOT_EVENTS_WEBHOOK_SECRET` of `<timestamp>.<body>` ([`signature`];
//! [`verify`] is what a receiver does). Sending never blocks a bot: events
//! queue (bounded; past it the newest are dropped and counted), a slow or
//! failing receiver is retried a few times, then the event is dropped.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting to be sent, at most.
const QUEUE: usize = 10_000;
/// Tries per event.
const ATTEMPTS: u32 = 3;
/// Budget of one POST.
const TIMEOUT: Duration = Duration::from_secs(10);

pub const TIMESTAMP_HEADER: &str = "x-trekker-timestamp";
pub const SIGNATURE_HEADER: &str = "x-trekker-signature";

/// Events dropped because the queue was full or the receiver kept failing.
pub const WEBHOOK_DROPPED: &str = "trekker_bot_events_dropped_total";

/// `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    format!("sha256={}", crate::hex::encode(tag.as_ref()))
}

/// Whether a received request is authentic: the signature matches (compared
/// in constant time) and its timestamp is within `tolerance_secs` of `now`.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    let Ok(at) = timestamp.parse::<i64>() else { return false };
    if now.abs_diff(at) > tolerance_secs.unsigned_abs() {
        return false;
    }
    let Some(hex) = signature_header.strip_prefix("sha256=") else { return false };
    let Some(tag) = crate::hex::decode(hex) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = at.to_string().into_bytes();
    message.push(b'.');
    message.extend_from_slice(body);
    ring::hmac::verify(&key, &message, &tag).is_ok()
}

/// The sending side: a queue and the task that empties it.
#[derive(Debug, Clone)]
pub struct EventsWebhook {
    queue: mpsc::Sender<Value>,
}

impl EventsWebhook {
    /// Starts the sender; it stops with `shutdown` (after the event in
    /// flight).
    pub fn start(url: String, secret: Vec<u8>, shutdown: CancellationToken) -> Self {
        let (queue, mut events) = mpsc::channel::<Value>(QUEUE);
        // reqwest is built without a TLS provider of its own (one for the
        // whole binary); a library user may not have installed one yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A redirect is not followed: it could send the signed body anywhere.
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = events.recv() => match event { Some(event) => event, None => break },
                };
                if !deliver(&client, &url, &secret, &event).await {
                    metrics::counter!(WEBHOOK_DROPPED).increment(1);
                    tracing::warn!("bot events webhook kept failing; event dropped");
                }
            }
        });
        Self { queue }
    }

    /// Queues an event; never waits.
    pub fn post(&self, event: Value) {
        if self.queue.try_send(event).is_err() {
            metrics::counter!(WEBHOOK_DROPPED).increment(1);
            tracing::warn!("bot events webhook queue full; event dropped");
        }
    }
}

/// One event, signed, tried a few times; whether the receiver took it (2xx).
async fn deliver(client: &reqwest::Client, url: &str, secret: &[u8], event: &Value) -> bool {
    let body = event.to_string().into_bytes();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let timestamp = i64::try_from(now).unwrap_or(i64::MAX);
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(secret, timestamp, &body))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return true,
            // The receiver read it and said no: trying again changes nothing.
            Ok(response) if response.status().is_client_error() => return false,
            _ => {}
        }
    }
    false
}
