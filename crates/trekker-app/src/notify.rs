//! Guest notifications: the outbox dispatcher and the [`Notifier`]s.
//!
//! Messages are written to the outbox in the same transaction as the change
//! they announce. Every node runs a dispatcher; a message is claimed by one
//! dispatcher at a time (a lease), sent, and marked sent. If a node dies
//! between sending and marking, the lease runs out and the message is sent
//! again: delivery is at least once, duplicates need a crash at that moment.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use trekker_store::{Notification, NotificationOutcome};

use crate::{Trekker, random_u128, telemetry};

/// Attempts before a message is marked failed.
pub const MAX_ATTEMPTS: i64 = 8;
/// How long a claim holds.
const LEASE_MS: i64 = 60_000;
/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle poll, for messages queued by other nodes (and retries): from the
/// first, doubled while nothing is found, up to the second.
const POLL_EVERY: Duration = Duration::from_secs(1);
const POLL_AT_MOST: Duration = Duration::from_secs(15);
/// How long a wake-up, or a batch that was not full, waits for more
/// messages before claiming: under a steady stream of registrations one
/// claim and one "sent" write then serve a batch rather than one or two
/// messages each (they were most of a registration's database time beyond
/// its own transaction; issue 22).
const GATHER: Duration = Duration::from_millis(50);
/// Messages claimed (and sent concurrently) at once.
const BATCH: i64 = 32;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// Sends one message to a guest's phone.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// Whether this notifier can send only to phones whose bot this node
    /// hosts (it sends from the bot's own session): the dispatcher then
    /// claims only those messages.
    fn hosted_only(&self) -> bool {
        false
    }
    async fn send(&self, phone: &str, text: &str) -> Result<(), NotifyError>;
}

/// Writes each message to the log (the default; sends nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, phone: &str, text: &str) -> Result<(), NotifyError> {
        tracing::info!(%phone, "📨 {text}");
        Ok(())
    }
}

/// POSTs `{"phone", "text"}` to a WhatsApp gateway; 2xx means sent.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: String,
}

impl WebhookNotifier {
    pub fn new(url: impl Into<String>) -> Result<Self, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            // A redirect is not followed: the receiver is configured, not chosen
            // by whoever answers.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError(format!("webhook client: {e}")))?;
        Ok(Self { client, url: url.into() })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, phone: &str, text: &str) -> Result<(), NotifyError> {
        let response = self
            .client
            .post(&self.url)
            .json(&serde_json::json!({"phone": phone, "text": text}))
            .send()
            .await
            .map_err(|e| NotifyError(format!("webhook unreachable: {}", e.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(NotifyError(format!("webhook answered {}", response.status())))
        }
    }
}

/// The delay before attempt `attempts + 1`: 2^attempts seconds, capped at
/// five minutes, with full jitter so many messages don't retry in step.
pub fn retry_delay_ms(attempts: i64) -> i64 {
    let cap = 300_000i64;
    let base = 1000i64.saturating_mul(1i64 << attempts.clamp(0, 20)).min(cap);
    let jitter = (random_u128() % (base as u128 / 2 + 1)) as i64;
    base / 2 + jitter
}

/// Delivers due notifications until `shutdown`.
pub async fn run_dispatcher(trekker: Arc<Trekker>, notifier: Arc<dyn Notifier>, shutdown: CancellationToken) {
    let worker = format!("{}-{:08x}", trekker.node, random_u128() as u32);
    tracing::info!(notifier = notifier.name(), %worker, "notification dispatcher started");
    let mut backoff = crate::idle::IdleBackoff::new(POLL_EVERY, POLL_AT_MOST);
    loop {
        let outbox = &trekker.store.notifications;
        let claimed = if notifier.hosted_only() {
            outbox.claim_hosted_notifications(&worker, &trekker.node, trekker.now(), LEASE_MS, BATCH).await
        } else {
            outbox.claim_notifications(&worker, trekker.now(), LEASE_MS, BATCH).await
        };
        let batch = match claimed {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = ?err, "claiming notifications failed; will retry");
                Vec::new()
            }
        };
        let idle = batch.is_empty();
        let full = batch.len() as i64 >= BATCH;
        if !idle {
            backoff.busy();
        }
        deliver_batch(&trekker, &*notifier, &worker, batch).await;
        if !idle && !full {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(GATHER) => {}
            }
        } else if idle {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = trekker.notifications_queued.notified() => {
                    backoff.busy();
                    // Let the messages of a burst of registrations gather:
                    // one claim and one "sent" write serve them all.
                    tokio::time::sleep(GATHER).await;
                }
                () = tokio::time::sleep(backoff.idle()) => {}
            }
        } else if shutdown.is_cancelled() {
            break;
        }
    }
}

/// Sends a claimed batch concurrently, then records the results: every
/// message sent in one write, each retry or failure on its own (rare).
async fn deliver_batch(trekker: &Trekker, notifier: &dyn Notifier, worker: &str, batch: Vec<Notification>) {
    if batch.is_empty() {
        return;
    }
    let attempts = batch.iter().map(|n| async move { (n.id, attempt(trekker, notifier, n).await) });
    let outcomes = futures::future::join_all(attempts).await;
    let sent: Vec<i64> = outcomes.iter().filter(|(_, o)| *o == NotificationOutcome::Sent).map(|(id, _)| *id).collect();
    if let Err(err) = trekker.store.notifications.finish_notifications_sent(&sent, worker, trekker.now()).await {
        tracing::warn!(count = sent.len(), error = ?err, "could not record sent notifications; they may be resent");
    }
    for (id, outcome) in outcomes.into_iter().filter(|(_, o)| *o != NotificationOutcome::Sent) {
        if let Err(err) = trekker.store.notifications.finish_notification(id, worker, outcome, trekker.now()).await {
            tracing::warn!(id, error = ?err, "could not record the notification result");
        }
    }
}

/// Sends one message, within the send timeout; what to record of it.
async fn attempt(trekker: &Trekker, notifier: &dyn Notifier, notification: &Notification) -> NotificationOutcome {
    let sent = tokio::time::timeout(SEND_TIMEOUT, notifier.send(&notification.phone, &notification.text)).await;
    let outcome = match sent {
        Ok(Ok(())) => NotificationOutcome::Sent,
        Ok(Err(err)) if notification.attempts >= MAX_ATTEMPTS => NotificationOutcome::Failed { error: err.0 },
        Ok(Err(err)) => {
            NotificationOutcome::Retry { retry_at: trekker.now() + retry_delay_ms(notification.attempts), error: err.0 }
        }
        Err(_) if notification.attempts >= MAX_ATTEMPTS => NotificationOutcome::Failed { error: "timed out".into() },
        Err(_) => NotificationOutcome::Retry {
            retry_at: trekker.now() + retry_delay_ms(notification.attempts),
            error: "timed out".into(),
        },
    };
    let result = match &outcome {
        NotificationOutcome::Sent => "sent",
        NotificationOutcome::Retry { error, .. } => {
            let (id, attempts) = (notification.id, notification.attempts);
            tracing::warn!(id, attempts, %error, "notification not sent; will retry");
            "retried"
        }
        NotificationOutcome::Failed { error } => {
            tracing::error!(id = notification.id, %error, "notification failed for good");
            "failed"
        }
    };
    metrics::counter!(telemetry::NOTIFICATIONS, "result" => result).increment(1);
    outcome
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use trekker_store::NotificationOutcome;

    use super::*;
    use crate::test_support::{Mocks, NOW, trekker};

    /// A notifier that fails, or never answers.
    #[derive(Debug)]
    enum Broken {
        Refuses,
        Hangs,
    }

    #[async_trait]
    impl Notifier for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }

        async fn send(&self, _: &str, _: &str) -> Result<(), NotifyError> {
            match self {
                Self::Refuses => Err(NotifyError("gateway said no".into())),
                Self::Hangs => std::future::pending().await,
            }
        }
    }

    fn notification(attempts: i64) -> Notification {
        Notification { id: 7, phone: "254700000001".into(), text: "hello".into(), attempts, created_at: NOW }
    }

    /// The outcome `deliver` records for one attempt.
    async fn outcome_of(notifier: Broken, attempts: i64) -> NotificationOutcome {
        attempt(&trekker(Mocks::default()), &notifier, &notification(attempts)).await
    }

    /// Refuses one phone's messages, sends the others'.
    #[derive(Debug)]
    struct RefusesOne(&'static str);

    #[async_trait]
    impl Notifier for RefusesOne {
        fn name(&self) -> &'static str {
            "refuses-one"
        }

        async fn send(&self, phone: &str, _: &str) -> Result<(), NotifyError> {
            if phone == self.0 { Err(NotifyError("no".into())) } else { Ok(()) }
        }
    }

    /// A gateway that answers with a redirect does not get the message
    /// forwarded to wherever it points.
    #[tokio::test]
    async fn the_webhook_does_not_follow_redirects() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/send", redirector.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = redirector.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{target}/steal\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let notifier = WebhookNotifier::new(url).unwrap();
        assert!(notifier.send("254700000001", "hello").await.is_err(), "a redirect is not a delivery");
        let followed = tokio::time::timeout(std::time::Duration::from_millis(300), elsewhere.accept()).await;
        assert!(followed.is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn a_batch_is_recorded_sent_in_one_write_and_each_failure_on_its_own() {
        let mut store = Mocks::default();
        store
            .notifications
            .expect_finish_notifications_sent()
            .withf(|ids, worker, _| ids == [1, 3] && worker == "w")
            .times(1)
            .returning(|ids, _, _| Ok(ids.len() as u64));
        store
            .notifications
            .expect_finish_notification()
            .withf(|id, _, outcome, _| *id == 2 && matches!(outcome, NotificationOutcome::Retry { .. }))
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let batch =
            (1..=3).map(|id| Notification { id, phone: format!("25470000000{id}"), ..notification(1) }).collect();
        deliver_batch(&trekker(store), &RefusesOne("254700000002"), "w", batch).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_send_is_retried_with_backoff_until_the_last_attempt_then_given_up() {
        match outcome_of(Broken::Refuses, 1).await {
            NotificationOutcome::Retry { retry_at, error } => {
                assert!((NOW + 1_000..=NOW + 2_000).contains(&retry_at), "{retry_at}");
                assert_eq!(error, "gateway said no");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(outcome_of(Broken::Refuses, MAX_ATTEMPTS - 1).await, NotificationOutcome::Retry { .. }));
        assert_eq!(
            outcome_of(Broken::Refuses, MAX_ATTEMPTS).await,
            NotificationOutcome::Failed { error: "gateway said no".into() }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_never_answers_times_out_and_is_retried_then_given_up() {
        let started = tokio::time::Instant::now();
        match outcome_of(Broken::Hangs, 1).await {
            NotificationOutcome::Retry { error, retry_at } => {
                assert_eq!(error, "timed out");
                assert!((NOW + 1_000..=NOW + 2_000).contains(&retry_at), "{retry_at}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(started.elapsed(), SEND_TIMEOUT, "gave up at the send timeout, not before");
        assert_eq!(
            outcome_of(Broken::Hangs, MAX_ATTEMPTS).await,
            NotificationOutcome::Failed { error: "timed out".into() }
        );
    }

    /// An idle dispatcher looks less and less often (1, 2, 4, 8, then every
    /// 15 s), and a message queued on this node wakes it at once.
    #[tokio::test(start_paused = true)]
    async fn an_idle_dispatcher_backs_off_and_a_local_message_wakes_it() {
        let claims = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut store = Mocks::default();
        let counted = claims.clone();
        store.notifications.expect_claim_notifications().returning(move |_, _, _, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Vec::new())
        });
        let trekker = Arc::new(trekker(store));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_dispatcher(trekker.clone(), Arc::new(LogNotifier), shutdown.clone()));
        let count = || claims.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60_500)).await;
        // At 0, 1, 3, 7, 15, 30, 45 and 60 s: 8 reads in a minute, not 61.
        assert_eq!(count(), 8);
        trekker.notifications_queued.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(), 9, "a local message is looked for at once");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(count(), 10, "and the wait starts short again");
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Under a stream of messages, a batch that was not full is followed by
    /// a wait for more (one claim and one "sent" write then serve many); a
    /// full batch is followed by the next claim at once (a backlog drains
    /// at full speed).
    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_waits_to_gather_more_and_a_full_one_does_not() {
        let claimed_at = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut store = Mocks::default();
        let times = claimed_at.clone();
        store.notifications.expect_claim_notifications().returning(move |_, _, _, limit| {
            let mut times = times.lock().unwrap();
            times.push(tokio::time::Instant::now());
            let size = match times.len() {
                1 => 3,
                2 => limit,
                3 => 1,
                _ => 0,
            };
            Ok((1..=size).map(|id| Notification { id, ..notification(0) }).collect())
        });
        store.notifications.expect_finish_notifications_sent().returning(|ids, _, _| Ok(ids.len() as u64));
        let trekker = Arc::new(trekker(store));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_dispatcher(trekker, Arc::new(LogNotifier), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        shutdown.cancel();
        task.await.unwrap();
        let times = claimed_at.lock().unwrap();
        assert!(times.len() >= 4, "{} claims", times.len());
        assert!(times[1] - times[0] >= GATHER, "3 of {BATCH}: waited for more");
        assert!(times[2] - times[1] < Duration::from_millis(1), "a full batch: claimed again at once");
        assert!(times[3] - times[2] >= GATHER, "1 of {BATCH}: waited for more");
    }

    #[test]
    fn retry_delay_doubles_from_one_second_up_to_five_minutes_with_jitter() {
        // (attempts so far, shortest and longest wait in milliseconds)
        let expected = [
            (-3, 500, 1_000),
            (0, 500, 1_000),
            (1, 1_000, 2_000),
            (3, 4_000, 8_000),
            (8, 128_000, 256_000),
            (9, 150_000, 300_000),
            (40, 150_000, 300_000),
            (i64::MAX, 150_000, 300_000),
        ];
        for (attempts, shortest, longest) in expected {
            for _ in 0..50 {
                let delay = retry_delay_ms(attempts);
                assert!((shortest..=longest).contains(&delay), "attempt {attempts}: {delay}");
            }
        }
        // Jittered: retries of many messages do not move in step.
        let delays: std::collections::HashSet<i64> = (0..50).map(|_| retry_delay_ms(5)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
