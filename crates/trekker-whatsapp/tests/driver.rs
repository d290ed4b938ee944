//! The in-process WhatsApp driver, offline: what connection events mean,
//! what the events webhook receives and how it is signed, and a bot built
//! from its imported credentials over a transport that never dials.

#![cfg(feature = "whatsapp")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trekker_app::messaging::{BotMessenger, MessengerError};
use trekker_domain::time::{Clock, SystemClock};
use trekker_domain::{BotId, PhoneNumber, ServerName};
use trekker_runtime::{BotDriver, BotEvent, BotSpec};
use trekker_store::{NewActivity, NewBot, NodeLease, ServerRegistration, SideEffects, Store};
use trekker_testkit::creds;
use trekker_whatsapp::driver::WhatsAppDriver;
use trekker_whatsapp::events::{status_of, webhook_payloads};
use trekker_whatsapp::storage::StoredDevice;
use trekker_whatsapp::web_version::{Version, WebVersion};
use trekker_whatsapp::webhook::{EventsWebhook, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature, verify};
use whatsapp_rust::async_channel::Receiver;
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsapp_rust::types::events::*;
use whatsapp_rust::wacore::proto_helpers::MessageBuilderExt;
use whatsapp_rust::wacore::store::traits::DeviceStore;
use whatsapp_rust::wacore::types::message::{MessageInfo, MessageSource};
use whatsapp_rust::waproto::whatsapp as wa;

const PHONE: &str = "254700000950";

fn bot() -> BotId {
    BotId::from_random_bits(0xd21e)
}

fn phone() -> PhoneNumber {
    PhoneNumber::parse(PHONE).unwrap()
}

#[test]
fn connection_events_become_statuses() {
    assert_eq!(status_of(&Event::Connected(Connected::builder().build())), Some(BotEvent::Connected));
    let disconnected =
        Disconnected::builder().reason(whatsapp_rust::wacore::net::DisconnectReason::StreamEnded).build();
    assert_eq!(
        status_of(&Event::Disconnected(disconnected)),
        Some(BotEvent::Disconnected { reason: "stream ended (EOF)".into() })
    );
    let logged_out = LoggedOut::builder().on_connect(false).reason(ConnectFailureReason::LoggedOut).build();
    assert_eq!(
        status_of(&Event::LoggedOut(logged_out)),
        Some(BotEvent::LoggedOut { reason: Some("LoggedOut".into()) })
    );
    assert_eq!(status_of(&Event::StreamReplaced(StreamReplaced::builder().build())), Some(BotEvent::Replaced));
    let ban = TemporaryBan::builder().code(TempBanReason::SentToTooManyPeople).expire(chrono_secs(3600)).build();
    match status_of(&Event::TemporaryBan(ban)) {
        Some(BotEvent::Banned { reason }) => assert!(reason.ends_with("for 3600 s"), "{reason}"),
        other => panic!("a temporary ban must fail the bot, got {other:?}"),
    }
    // A refusal at connect that is a logout is one; any other is a
    // disconnection the client retries.
    let locked = ConnectFailure::builder().reason(ConnectFailureReason::AccountLocked).build();
    assert!(matches!(status_of(&Event::ConnectFailure(locked)), Some(BotEvent::LoggedOut { .. })));
    let busy =
        ConnectFailure::builder().reason(ConnectFailureReason::ServiceUnavailable).message("later".into()).build();
    match status_of(&Event::ConnectFailure(busy)) {
        Some(BotEvent::Disconnected { reason }) => assert!(reason.contains("ServiceUnavailable: later"), "{reason}"),
        other => panic!("got {other:?}"),
    }
    let code = PairingCode::builder().code("ABCD-EFGH".into()).timeout(Duration::from_secs(60)).build();
    assert_eq!(status_of(&Event::PairingCode(code)), None, "not a status");
}

fn chrono_secs(secs: i64) -> whatsapp_rust::chrono::TimeDelta {
    whatsapp_rust::chrono::TimeDelta::seconds(secs)
}

fn inbound(text: &str, from_me: bool) -> whatsapp_rust::wacore::types::events::InboundMessage {
    let source = MessageSource {
        chat: whatsapp_rust::Jid::pn("254711000001"),
        sender: whatsapp_rust::Jid::pn("254711000001"),
        is_from_me: from_me,
        ..Default::default()
    };
    let info = MessageInfo { source, id: "3EB0ABC".into(), push_name: "Alice".into(), ..Default::default() };
    InboundMessage::builder().message(Arc::new(wa::Message::text(text))).info(Arc::new(info)).build()
}

#[test]
fn the_webhook_gets_incoming_messages_and_status_changes_only() {
    let batch = MessageBatch::builder()
        .messages(Arc::from(vec![inbound("hello bot", false), inbound("my own echo", true)]))
        .origin(BatchOrigin::Live)
        .build();
    let payloads = webhook_payloads(&bot(), &phone(), &Event::Messages(batch));
    assert_eq!(payloads.len(), 1, "the bot's own messages are not forwarded: {payloads:?}");
    let message = &payloads[0];
    assert_eq!(message["type"], "message");
    assert_eq!(message["botId"], bot().as_str());
    assert_eq!(message["phone"], PHONE);
    assert_eq!(message["data"]["text"], "hello bot");
    assert_eq!(message["data"]["sender"], "254711000001@s.whatsapp.net");
    assert_eq!(message["data"]["pushName"], "Alice");

    let status = webhook_payloads(&bot(), &phone(), &Event::StreamReplaced(StreamReplaced::builder().build()));
    assert_eq!(status[0]["data"]["status"], "replaced");
    let receipt_like = Event::OfflineSyncCompleted(OfflineSyncCompleted::builder().count(0).build());
    assert!(webhook_payloads(&bot(), &phone(), &receipt_like).is_empty());
}

#[test]
fn a_webhook_signature_checks_the_body_the_secret_and_the_time() {
    let (secret, body, at) = (b"webhook-secret".as_slice(), br#"{"type":"message"}"#.as_slice(), 1_700_000_000);
    let signed = signature(secret, at, body);
    assert!(signed.starts_with("sha256=") && signed.len() == 7 + 64);
    assert!(verify(secret, &at.to_string(), &signed, body, at + 10, 300));
    assert!(!verify(secret, &at.to_string(), &signed, br#"{"type":"massage"}"#, at, 300), "another body");
    assert!(!verify(b"other-secret", &at.to_string(), &signed, body, at, 300), "another secret");
    assert!(!verify(secret, &(at + 1).to_string(), &signed, body, at, 300), "another timestamp");
    assert!(!verify(secret, &at.to_string(), &signed, body, at + 301, 300), "replayed too late");
    assert!(!verify(secret, "soon", &signed, body, at, 300));
    assert!(!verify(secret, &at.to_string(), "sha256=zz", body, at, 300));
}

/// A known-answer vector computed outside this code, as a receiver
/// following docs/whatsapp.md would:
/// `printf '1700000000.{"event":"message","botId":"b1"}' | openssl dgst -sha256 -hmac 'trekker-webhook-secret'`.
/// A changed separator, order or hex case in both `signature` and `verify`
/// would still agree with itself; not with this.
#[test]
fn the_webhook_signature_matches_openssl_s_hmac() {
    let body = br#"{"event":"message","botId":"b1"}"#;
    let expected = "sha256=7fec988fc0607bbb2675ef3414746f97a94e3ed6d729ee2283b9b1832ae88d80";
    assert_eq!(signature(b"trekker-webhook-secret", 1_700_000_000, body), expected);
    assert!(verify(b"trekker-webhook-secret", "1700000000", expected, body, 1_700_000_000, 300));
}

#[tokio::test]
async fn webhook_events_arrive_signed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let received = tokio::spawn(async move { trekker_testkit::http::receive_request(&listener).await });
    let shutdown = CancellationToken::new();
    let webhook = EventsWebhook::start(url, b"shared-with-the-receiver".to_vec(), shutdown.clone());
    webhook.post(serde_json::json!({"type": "status", "data": {"status": "online"}}));
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), received).await.unwrap().unwrap();
    let header = |name: &str| trekker_testkit::http::header(&head, name);
    let (timestamp, signed) = (header(TIMESTAMP_HEADER).unwrap(), header(SIGNATURE_HEADER).unwrap());
    let now = SystemClock.now_ms() / 1000;
    assert!(verify(b"shared-with-the-receiver", &timestamp, &signed, &body, now, 300), "{head}");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["data"]["status"], "online");
    shutdown.cancel();
}

/// Every dial fails at once, as with no network: a client that exists but
/// never connects.
struct NeverDials;

#[whatsapp_rust::async_trait]
impl TransportFactory for NeverDials {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, Receiver<TransportEvent>), whatsapp_rust::anyhow::Error> {
        Err(whatsapp_rust::anyhow::anyhow!("no network in this test"))
    }
}

/// A server that says nothing and keeps what the client sent it.
#[derive(Clone, Default)]
struct Listens {
    sent: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Kept open: a closed event channel would read as a disconnect.
    events: Arc<std::sync::Mutex<Vec<whatsapp_rust::async_channel::Sender<TransportEvent>>>>,
}

#[whatsapp_rust::async_trait]
impl Transport for Listens {
    async fn send(&self, data: whatsapp_rust::bytes::Bytes) -> Result<(), whatsapp_rust::anyhow::Error> {
        self.sent.lock().unwrap().push(data.to_vec());
        Ok(())
    }

    async fn disconnect(&self) {}
}

#[whatsapp_rust::async_trait]
impl TransportFactory for Listens {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, Receiver<TransportEvent>), whatsapp_rust::anyhow::Error> {
        let (tx, rx) = whatsapp_rust::async_channel::unbounded();
        tx.send(TransportEvent::Connected).await?;
        self.events.lock().unwrap().push(tx);
        Ok((Arc::new(self.clone()), rx))
    }
}

async fn running_bot(store: &Arc<dyn Store>) -> NodeLease {
    let node = ServerName::parse("SERVER0").unwrap();
    let now = SystemClock.now_ms();
    let registration = ServerRegistration { name: node.clone(), max_bot_count: 10, base_url: None, description: None };
    store.upsert_server(&registration, now).await.unwrap();
    let new = NewBot {
        id: bot(),
        name: "driver".into(),
        phone: phone(),
        server: node.clone(),
        credentials: creds::credentials(PHONE, 1),
        pending_share_percent: 100,
    };
    let effects = SideEffects::activity(NewActivity::new(&node, "registered", "test"));
    store.register_bot(&new, &effects, now).await.unwrap();
    store.approve_bot(&bot(), now + 86_400_000, &effects, now).await.unwrap();
    let lease = store.start_node_lease(&node, now, 600_000).await.unwrap();
    assert!(store.acquire_bot(&bot(), &lease, 1, now).await.unwrap());
    lease
}

fn spec(lease: &NodeLease, generation: u64) -> BotSpec {
    BotSpec {
        bot_id: bot(),
        runner: lease.clone(),
        phone: phone(),
        server: lease.node.clone(),
        credentials: creds::credentials(PHONE, 1),
        version: 1,
        generation,
        session: None,
        paired_at: SystemClock.now_ms(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_starts_from_its_imported_credentials_without_connecting() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let lease = running_bot(&store).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(NeverDials));
    let sessions = driver.sessions();
    let (events, _received) = mpsc::unbounded_channel();
    let running = driver.start(spec(&lease, 1), events.clone()).await.unwrap();
    assert_eq!(sessions.running(), 1);

    // The registered session was imported: the stored device is the
    // credentials' (same identity key and registration id).
    let stored = StoredDevice::new(store.clone(), Arc::new(SystemClock), bot(), lease.clone(), 1);
    let device = stored.load().await.unwrap().expect("the import stored the device");
    let creds = creds::creds_json(PHONE, 1);
    assert_eq!(i64::from(device.registration_id), creds["registrationId"].as_i64().unwrap());
    assert_eq!(device.pn.as_ref().map(|jid| jid.user.to_string()).as_deref(), Some(PHONE));

    // Not connected: sending says so; another bot does not run here.
    match sessions.send_text(&bot(), None, "hello").await {
        Err(MessengerError::Refused(reason)) => assert!(reason.contains("not connected"), "{reason}"),
        other => panic!("got {other:?}"),
    }
    let elsewhere = BotId::from_random_bits(7);
    assert!(matches!(sessions.send_text(&elsewhere, None, "hello").await, Err(MessengerError::NotRunningHere)));

    // A later start loads what is stored instead of importing again.
    running.stop().await;
    assert_eq!(sessions.running(), 0);
    let mut changed = device.clone();
    changed.push_name = "kept between runs".into();
    stored.save(&changed).await.unwrap();
    let running = driver.start(spec(&lease, 2), events).await.unwrap();
    assert_eq!(stored.load().await.unwrap().unwrap().push_name, "kept between runs");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_sends_from_the_bots_own_session_or_says_why_not() {
    use trekker_app::notify::Notifier;
    use trekker_whatsapp::notifier::WhatsAppNotifier;

    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let lease = running_bot(&store).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(NeverDials));
    let notifier = WhatsAppNotifier::new(driver.sessions(), store.clone(), store.clone())
        .with_transport(Arc::new(NeverDials), Duration::from_millis(300));
    assert!(notifier.hosted_only(), "only the hosting node holds the session");

    let nobody = notifier.send("254799999999", "hi").await.unwrap_err();
    assert!(nobody.0.contains("no bot is registered"), "{nobody}");
    // Hosted here, waiting for approval, run by nobody: a short-lived
    // connection (here it never comes up, so the outbox will retry).
    let waiting_phone = "254700000951";
    let pending = NewBot {
        id: BotId::from_random_bits(0xd21f),
        name: "pending".into(),
        phone: PhoneNumber::parse(waiting_phone).unwrap(),
        server: lease.node.clone(),
        credentials: creds::credentials(waiting_phone, 1),
        pending_share_percent: 100,
    };
    let effects = SideEffects::activity(NewActivity::new(&lease.node, "registered", "test"));
    store.register_bot(&pending, &effects, SystemClock.now_ms()).await.unwrap();
    let once = notifier.send(waiting_phone, "Your bot is registered").await.unwrap_err();
    assert!(once.0.contains("did not connect within"), "{once}");
    // Taken by a runner (loading): its own connection will send.
    let starting = notifier.send(PHONE, "Your bot is approved").await.unwrap_err();
    assert!(starting.0.contains("its own connection will send"), "{starting}");
    // Running here: its own connection sends, once connected.
    let (events, _received) = mpsc::unbounded_channel();
    let running = driver.start(spec(&lease, 1), events).await.unwrap();
    let waiting = notifier.send(PHONE, "Your bot is approved").await.unwrap_err();
    assert!(waiting.0.contains("not connected"), "{waiting}");
    running.stop().await;
}

/// Another node took the bot while it ran here: the first device-state
/// write this run makes is refused, and the run reports that it ended (the
/// supervisor then stops it) instead of running on beside the new runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_state_write_is_fenced_reports_that_it_ended() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let lease = running_bot(&store).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(NeverDials));
    let sessions = driver.sessions();
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec(&lease, 1), events).await.unwrap();

    // The node restarts elsewhere in time (a new lease) and takes the bot.
    let now = SystemClock.now_ms();
    let next = store.start_node_lease(&lease.node, now, 600_000).await.unwrap();
    assert!(store.acquire_bot(&bot(), &next, 1, now).await.unwrap());

    // The old run's client changes its device and saves it: refused. The
    // client's own background saver races this flush for the dirty flag, so
    // whichever of the two writes first is the one refused; the event and
    // the stored device below are what must hold either way.
    let client = sessions.client_of_phone(&phone()).expect("the bot runs here");
    client.persistence_manager().modify_device(|device| device.push_name = "stale run".into()).await;
    let _ = client.persistence_manager().flush().await;

    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = received.recv().await.expect("the driver's events");
            if let BotEvent::Exited { error, .. } = event.event {
                return error;
            }
        }
    })
    .await
    .expect("the fenced run reports that it ended");
    assert!(ended.unwrap_or_default().contains("no longer runs the bot"));
    let device = StoredDevice::new(store.clone(), Arc::new(SystemClock), bot(), next, 1);
    assert_ne!(device.load().await.unwrap().unwrap().push_name, "stale run", "nothing of the stale run was kept");
    running.stop().await;
    assert_eq!(sessions.running(), 0);
}

/// Nothing on this machine reaches web.whatsapp.com: a client that fetched
/// WhatsApp Web's version before connecting would never say a word to the
/// server. Built with the node's version, it starts the handshake at once
/// and announces that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_connects_without_fetching_whatsapp_webs_version() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let lease = running_bot(&store).await;
    let server = Listens::default();
    let version: Version = "2.3000.1012345678".parse().unwrap();
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock))
        .with_transport(Arc::new(server.clone()))
        .with_web_version(WebVersion::pinned(version));
    let (events, _received) = mpsc::unbounded_channel();
    let running = driver.start(spec(&lease, 1), events).await.unwrap();

    let hello = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(first) = server.sent.lock().unwrap().first() {
                return first.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client began the handshake");
    assert!(hello.starts_with(b"WA"), "the connection header comes first: {:?}", &hello[..hello.len().min(8)]);
    let client = driver.sessions().client_of_phone(&phone()).expect("the bot runs here");
    let device = client.persistence_manager().get_device_snapshot();
    let announced = (device.app_version_primary, device.app_version_secondary, device.app_version_tertiary);
    assert_eq!(announced, version.as_tuple());
    // The server hangs up (else the stop waits out the handshake's timeout).
    server.events.lock().unwrap().clear();
    running.stop().await;
}
