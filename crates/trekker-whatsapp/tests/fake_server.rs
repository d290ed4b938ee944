//! The fake-server suite: bots registered with Baileys `creds.json` and
//! started by the driver log in to an in-process WhatsApp server
//! (`support/fake_server.rs`) over the transport seam: what the server
//! sees at login, the pre-key upload, going online (also without a push
//! name), a send that reaches nobody, the stream errors and failures that
//! end a session, a restart from stored state, the runner fence stopping a
//! live client, a pairing's device settled before it is exported, and,
//! with a second whatsapp-rust client as the peer, messages both ways (the
//! peer decrypts the bot's; the peer's reaches the signed events webhook)
//! and WhatsApp's 463/475 limits holding the bot.

#![cfg(feature = "whatsapp")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

#[path = "support/fake_server.rs"]
mod support;

use support::{FakeServer, cached_chain, is_pre_key_upload};

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trekker_app::messaging::{BotMessenger, MessengerError};
use trekker_app::notify::Notifier as _;
use trekker_domain::time::{Clock, SystemClock};
use trekker_domain::{BotId, PhoneNumber, ServerName};
use trekker_runtime::{BotDriver, BotEvent, BotSpec, DriverEvent, RunningBot};
use trekker_store::{NewActivity, NewBot, ServerRegistration, SideEffects, Store};
use trekker_testkit::creds;
use trekker_whatsapp::driver::WhatsAppDriver;
use trekker_whatsapp::notifier::WhatsAppNotifier;
use trekker_whatsapp::pairing::settle_paired_device;
use trekker_whatsapp::session::device_from_creds;
use trekker_whatsapp::storage::StoredDevice;
use trekker_whatsapp::webhook::{EventsWebhook, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};
use whatsapp_rust::NodeBuilder;
use whatsapp_rust::bot::BotHandle;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::node::NodeContent;

const PHONE: &str = "254700000960";
/// The creds' variant: its device id is `VARIANT % 50`.
const VARIANT: u32 = 7;

/// A Baileys buffer (`{"type": "Buffer", "data": ...}` or base64) as bytes.
fn buffer(value: &Value) -> Vec<u8> {
    match &value["data"] {
        Value::String(text) => base64::engine::general_purpose::STANDARD.decode(text).unwrap(),
        Value::Array(bytes) => bytes.iter().map(|b| u8::try_from(b.as_u64().unwrap()).unwrap()).collect(),
        _ => base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap(),
    }
}

/// Waits (15 s at most) for the driver's event that `wanted` picks out;
/// else the events seen meanwhile.
async fn until_event(
    received: &mut mpsc::UnboundedReceiver<DriverEvent>,
    wanted: impl Fn(&BotEvent) -> bool,
) -> Result<(), Vec<BotEvent>> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = received.recv().await {
            if wanted(&event.event) {
                return true;
            }
            seen.push(event.event);
        }
        false
    })
    .await;
    if found == Ok(true) { Ok(()) } else { Err(seen) }
}

/// A bot of PHONE registered and taken by this node; its stored device is
/// the creds' import, seeded with a certificate for `server_key`.
async fn bot_knowing(store: &Arc<dyn Store>, server_key: [u8; 32]) -> (BotSpec, Value) {
    bot_whose_device(store, server_key, |_| {}).await
}

/// [`bot_knowing`], with its imported device changed by `change` first.
async fn bot_whose_device(
    store: &Arc<dyn Store>,
    server_key: [u8; 32],
    change: impl FnOnce(&mut Device),
) -> (BotSpec, Value) {
    let node = ServerName::parse("SERVER0").unwrap();
    let now = SystemClock.now_ms();
    let registration = ServerRegistration { name: node.clone(), max_bot_count: 10, base_url: None, description: None };
    store.upsert_server(&registration, now).await.unwrap();
    let (id, phone) = (BotId::from_random_bits(0xfa1e), PhoneNumber::parse(PHONE).unwrap());
    let credentials = creds::credentials(PHONE, VARIANT);
    let new = NewBot {
        id: id.clone(),
        name: "fake-server".into(),
        phone: phone.clone(),
        server: node.clone(),
        credentials: credentials.clone(),
        pending_share_percent: 100,
    };
    let effects = SideEffects::activity(NewActivity::new(&node, "registered", "test"));
    store.register_bot(&new, &effects, now).await.unwrap();
    store.approve_bot(&id, now + 86_400_000, &effects, now).await.unwrap();
    let lease = store.start_node_lease(&node, now, 600_000).await.unwrap();
    assert!(store.acquire_bot(&id, &lease, 1, now).await.unwrap());

    let document: Value = serde_json::from_str(credentials.document()).unwrap();
    let mut device = device_from_creds(&document).unwrap();
    device.server_cert_chain = Some(cached_chain(server_key));
    change(&mut device);
    let stored = StoredDevice::new(store.clone(), Arc::new(SystemClock), id.clone(), lease.clone(), 1);
    stored.import(&device).await.unwrap();
    let spec = BotSpec {
        bot_id: id,
        runner: lease.clone(),
        phone,
        server: node,
        credentials,
        version: 1,
        generation: 1,
        session: None,
        paired_at: now,
    };
    (spec, document)
}

/// The usual start of a test: a store with PHONE's bot registered and
/// taken, its device seeded for a fake that serves logins, and a driver
/// that dials that fake.
struct Online {
    store: Arc<dyn Store>,
    _file: trekker_testkit::SqliteDatabase,
    server: FakeServer,
    spec: BotSpec,
    driver: WhatsAppDriver,
}

async fn logged_in_bot() -> Online {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
    let (spec, _) = bot_knowing(&store, server.public()).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    Online { store, _file, server, spec, driver }
}

/// The server sees the creds' own account: the noise key's public half,
/// the phone as the username, the device id from `me.id`, and an active
/// (not passive) login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_sees_the_creds_phone_device_and_noise_key_at_login() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer::new(7);
    let (spec, document) = bot_knowing(&store, server.public()).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    let (events, _received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();

    let login = server.next_login().await.expect("the fake read the client's login");
    server.hang_up();
    running.stop().await;
    assert_eq!(login.client_static, buffer(&document["noiseKey"]["public"]), "the creds' noise key");
    assert_eq!(login.username, Some(PHONE.parse().unwrap()), "the creds' phone");
    assert_eq!(login.device, Some(VARIANT % 50), "the device id of me.id");
    assert_ne!(login.passive, Some(true), "a bot logs in to receive");
}

/// A client that trusts another key says nothing the fake can read: the
/// check above is not one any server would pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_cannot_read_a_login_meant_for_another_key() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer::new(7);
    let (spec, _) = bot_knowing(&store, FakeServer::new(8).public()).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    let (events, _received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let login = server.next_login().await;
    server.hang_up();
    running.stop().await;
    let error = login.expect_err("the wrong key reads nothing");
    assert!(error.starts_with("static:"), "{error}");
}

/// The content of `name` in `node`, as bytes.
fn bytes_of(node: &Node, name: &str) -> Vec<u8> {
    match node.get_optional_child(name).map(|child| &child.content) {
        Some(Some(NodeContent::Bytes(bytes))) => bytes.clone(),
        other => panic!("no bytes in <{name}>: {other:?}"),
    }
}

/// Logged in (the fake answers IK and says `<success>`), the bot uploads a
/// batch of pre-keys made from the creds' own identity, registration id and
/// signed pre-key (an imported device has none on the server); the
/// pre-keys it uploads are kept in the bot's own storage first (else the
/// first message of a contact could not be decrypted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_logged_in_bot_uploads_pre_keys_of_its_own_identity() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
    let (spec, document) = bot_knowing(&store, server.public()).await;
    let bot = spec.bot_id.clone();
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    let (events, _received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let attr = |node: &Node, name: &str| node.attrs().optional_string(name).map(|v| v.to_string());
    let is_encrypt = |node: &Node, kind: &str| {
        node.tag == "iq"
            && attr(node, "xmlns").as_deref() == Some("encrypt")
            && attr(node, "type").as_deref() == Some(kind)
    };
    let upload = server.stanza("a pre-key upload", |n| is_encrypt(n, "set")).await;
    server.hang_up();
    running.stop().await;

    let registration = u32::try_from(document["registrationId"].as_u64().unwrap()).unwrap();
    assert_eq!(bytes_of(&upload, "registration"), registration.to_be_bytes());
    assert_eq!(bytes_of(&upload, "identity"), buffer(&document["signedIdentityKey"]["public"]));
    let signed = upload.get_optional_child("skey").expect("the signed pre-key");
    let key_id = u32::try_from(document["signedPreKey"]["keyId"].as_u64().unwrap()).unwrap();
    assert_eq!(bytes_of(signed, "id"), key_id.to_be_bytes()[1..]);
    assert_eq!(bytes_of(signed, "value"), buffer(&document["signedPreKey"]["keyPair"]["public"]));
    assert_eq!(bytes_of(signed, "signature"), buffer(&document["signedPreKey"]["signature"]));
    let uploaded = upload.get_optional_child("list").and_then(|list| list.children()).map_or(0, <[Node]>::len);
    assert!(uploaded > 0, "a batch of one-time pre-keys");
    let kept = store.device_state_scan(&bot, 1, "prekey").await.unwrap().len();
    assert!(kept >= uploaded, "{uploaded} uploaded, {kept} kept in the database");
}

/// What WhatsApp says to end a session reaches the bot's status: a 401
/// stream error is a logout, 409 another client taking the stream, a 402
/// `<failure>` a temporary ban with its length. (A 429 stream error is
/// whatsapp-rust's own to handle: it dispatches no event at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_stream_errors_and_failures_reach_the_bots_status() {
    let stream_error = |code: &str| NodeBuilder::new("stream:error").attr("code", code.to_owned()).build();
    let ban = NodeBuilder::new("failure").attr("reason", "402").attr("code", "101").attr("expire", "3600").build();
    /// Said instead of `<success>`, said after it, and the event it must give.
    type Case = (Option<Node>, Option<Node>, fn(&BotEvent) -> bool);
    let cases: [Case; 3] = [
        (None, Some(stream_error("401")), |e| matches!(e, BotEvent::LoggedOut { .. })),
        (None, Some(stream_error("409")), |e| matches!(e, BotEvent::Replaced)),
        (Some(ban), None, |e| matches!(e, BotEvent::Banned { reason } if reason.ends_with("for 3600 s"))),
    ];
    for (instead_of_success, after_success, expected) in cases {
        let (store, _file) = trekker_testkit::sqlite_store().await;
        let store: Arc<dyn Store> = store;
        let server = FakeServer { serves_login: true, instead_of_success, after_success, ..FakeServer::new(7) };
        let (spec, _) = bot_knowing(&store, server.public()).await;
        let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
        let (events, mut received) = mpsc::unbounded_channel();
        let running = driver.start(spec, events).await.unwrap();
        let found = until_event(&mut received, expected).await;
        server.hang_up();
        running.stop().await;
        let said = server.instead_of_success.or(server.after_success);
        assert!(found.is_ok(), "{said:?}; saw {:?}", found.unwrap_err());
    }
}

/// Logged in with nothing waiting offline, a bot whose device knows its
/// push name goes online. A text to someone with no WhatsApp device (the
/// fake lists no device for anyone, and has no keys to give) is an error
/// that names WhatsApp's refusal, never the id of a message that reached
/// nobody (here whatsapp-rust refuses by itself; for the case where it
/// does not, see `..._encrypted_for_no_device_is_not_reported_sent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_bot_goes_online_and_a_send_that_reaches_no_device_fails() {
    let Online { _file, server, spec, driver, .. } = logged_in_bot().await;
    let bot = spec.bot_id.clone();
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
    assert!(online.is_ok(), "the bot never went online: {online:?}");

    let nobody = PhoneNumber::parse("254711000777").unwrap();
    let sent = driver.sessions().send_text(&bot, Some(&nobody), "hello").await;
    server.hang_up();
    running.stop().await;
    let error = sent.expect_err("nothing was delivered");
    assert!(error.to_string().starts_with("WhatsApp did not take the message"), "{error}");
    let asked = server.stanzas.lock().unwrap().iter().any(|n| {
        n.get_optional_child("usync").and_then(|u| u.get_optional_child("list")).is_some_and(|list| {
            list.get_children_by_tag("user")
                .any(|u| u.attrs().optional_string("jid").is_some_and(|j| j.to_string().starts_with(nobody.as_str())))
        })
    });
    assert!(asked, "the client asked the server for the recipient's devices");
}

/// A stopped bot starts again from what it stored, not from its creds: the
/// same device logs in, and the pre-keys it uploaded the first time are
/// not uploaded again (the device remembers the server holds them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_restarted_bot_logs_in_from_its_stored_state() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
    let (spec, document) = bot_knowing(&store, server.public()).await;
    let is_upload = is_pre_key_upload;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    for run in 1..=2u64 {
        let (events, mut received) = mpsc::unbounded_channel();
        let running = driver.start(BotSpec { generation: run, ..spec.clone() }, events).await.unwrap();
        let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
        assert!(online.is_ok(), "run {run} never went online: {online:?}");
        // The key digest check comes after the upload, if there is one.
        let digests =
            || server.stanzas.lock().unwrap().iter().filter(|n| n.get_optional_child("digest").is_some()).count();
        tokio::time::timeout(Duration::from_secs(15), async {
            while digests() < usize::try_from(run).unwrap() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the pre-key digest is checked at every login");
        server.hang_up();
        running.stop().await;
        let uploads = server.stanzas.lock().unwrap().iter().filter(|n| is_upload(n)).count();
        assert_eq!(uploads, 1, "after run {run}: pre-keys are uploaded once, by the first run");
    }
    let logins = server.logins.lock().unwrap().clone();
    assert_eq!(logins.len(), 2);
    let noise = buffer(&document["noiseKey"]["public"]);
    assert!(logins.iter().all(|login| login.as_ref().is_ok_and(|l| l.client_static == noise)), "{logins:?}");
}

/// A session imported without a push name (a `creds.json` with no
/// `me.name`) still goes online: whatsapp-rust 0.7 would hold it for the
/// critical app-state sync, which this server (like a session whose
/// app-state keys never came) does not serve (#1291). It announces the
/// number itself as its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_session_without_a_push_name_goes_online_under_its_number() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
    let (spec, _) = bot_whose_device(&store, server.public(), |device| device.push_name.clear()).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
    let presence = if online.is_ok() { Some(server.stanza("a presence", |n| n.tag == "presence").await) } else { None };
    server.hang_up();
    running.stop().await;
    assert!(online.is_ok(), "the bot never went online: {online:?}");
    let name = presence.unwrap().attrs().optional_string("name").map(|n| n.to_string());
    assert_eq!(name.as_deref(), Some(format!("+{PHONE}").as_str()));
}

/// A client of the creds' device over the fake, with an in-memory store
/// (as a pairing's), spawned; `change` edits the device first.
async fn in_memory_client(server: &FakeServer, change: impl FnOnce(&mut Device)) -> BotHandle {
    support::peer::client(server, PHONE, VARIANT, change, Arc::default()).await
}

/// A pairing exports its device (and sends the session ID) only once the
/// device is online again and its pre-keys are on the server: with the
/// upload answered, the export says the server holds them; with it never
/// answered, there is no export, only a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_paired_device_is_exported_only_with_its_pre_keys_on_the_server() {
    for answers_uploads in [true, false] {
        let server = FakeServer { serves_login: true, answers_uploads, ..FakeServer::new(7) };
        let handle = in_memory_client(&server, |device| device.server_has_prekeys = false).await;
        let settled = settle_paired_device(&handle.client(), Duration::from_secs(15), Duration::from_secs(3)).await;
        server.hang_up();
        handle.shutdown().await;
        if answers_uploads {
            let device = settled.map_err(|e| e.to_string()).unwrap();
            assert!(device.server_has_prekeys, "exported before the server held its pre-keys");
            assert!(server.stanzas.lock().unwrap().iter().any(is_pre_key_upload));
        } else {
            let error = settled.err().expect("the keys never reached the server");
            assert!(error.contains("could not publish its keys"), "{error}");
        }
    }
}

/// A confirmed device that never logs in again is no session; one that
/// logs in but waits on the critical sync (no push name yet) is exported
/// once its budget is out (the bot's first start names it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_paired_device_is_exported_once_logged_in_even_without_a_push_name() {
    let silent = FakeServer::new(7);
    let handle = in_memory_client(&silent, |_| {}).await;
    let settled = settle_paired_device(&handle.client(), Duration::from_secs(2), Duration::from_secs(2)).await;
    silent.hang_up();
    handle.shutdown().await;
    let error = settled.err().expect("the device never logged in");
    assert!(error.contains("did not come online"), "{error}");

    let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
    let handle = in_memory_client(&server, |device| device.push_name.clear()).await;
    let settled = settle_paired_device(&handle.client(), Duration::from_secs(2), Duration::from_secs(15)).await;
    server.hang_up();
    handle.shutdown().await;
    let device = settled.map_err(|e| e.to_string()).unwrap();
    assert_eq!(device.pn.map(|pn| pn.user.to_string()), Some(PHONE.to_owned()));
}

/// Another node took the bot while its client was online here: the next
/// write the live client makes (new pre-keys, after the server says its
/// pool ran low) is refused by the runner fence, the run reports that it
/// ended, and none of those keys reach the new runner's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_live_client_whose_bot_was_taken_is_fenced_out() {
    let Online { store, _file, server, spec, driver } = logged_in_bot().await;
    let (bot, old) = (spec.bot_id.clone(), spec.runner.clone());
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
    assert!(online.is_ok(), "the bot never went online: {online:?}");
    server.stanza("the first pre-key upload", is_pre_key_upload).await;
    let stored_keys = || async { store.device_state_scan(&bot, 1, "prekey").await.unwrap().len() };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stored_keys().await;

    let now = SystemClock.now_ms();
    let next = store.start_node_lease(&old.node, now, 600_000).await.unwrap();
    assert!(store.acquire_bot(&bot, &next, 1, now).await.unwrap());
    let low = NodeBuilder::new("count").attr("value", "2").build();
    server.push(
        &NodeBuilder::new("notification")
            .attr("type", "encrypt")
            .attr("from", "s.whatsapp.net")
            .attr("id", "low-1")
            .children([low])
            .build(),
    );
    let ended = until_event(&mut received, |event| matches!(event, BotEvent::Exited { .. })).await;
    server.hang_up();
    running.stop().await;
    assert!(ended.is_ok(), "the fenced run never reported its end: {ended:?}");
    assert_eq!(stored_keys().await, before, "no key of the fenced run was stored");
}

const PEER: &str = "254711000555";
/// The peer's creds' variant: device 0, a primary (the fake lists it as
/// WhatsApp lists a phone; companions need a key index, which it has too).
const PEER_VARIANT: u32 = 50;

/// Starts the bot of `spec` with `driver` and, once it is online, a peer
/// of PEER (a primary device, as a phone is) whose received texts go to
/// `texts`; returns when both have their pre-keys on the fake.
async fn bot_and_peer(
    server: &FakeServer,
    driver: &WhatsAppDriver,
    spec: BotSpec,
    texts: Arc<std::sync::Mutex<Vec<String>>>,
) -> (Box<dyn RunningBot>, mpsc::UnboundedReceiver<DriverEvent>, BotHandle) {
    bot_and_client_of(server, driver, spec, PEER, texts).await
}

/// [`bot_and_peer`], the peer being the primary device of `phone`.
async fn bot_and_client_of(
    server: &FakeServer,
    driver: &WhatsAppDriver,
    spec: BotSpec,
    phone: &str,
    texts: Arc<std::sync::Mutex<Vec<String>>>,
) -> (Box<dyn RunningBot>, mpsc::UnboundedReceiver<DriverEvent>, BotHandle) {
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
    assert!(online.is_ok(), "the bot never went online: {online:?}");
    let peer = support::peer::client(server, phone, PEER_VARIANT, |_| {}, texts).await;
    peer.client().wait_for_connected(Duration::from_secs(15)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), async {
        while server.uploads.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both clients uploaded their pre-keys");
    (running, received, peer)
}

/// A message sent through the admin path reaches a real peer: a second
/// whatsapp-rust client, logged in to the same fake, fetches nothing but
/// what WhatsApp would relay, decrypts it and reads the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_bots_message_is_received_and_decrypted_by_a_peer() {
    let Online { _file, server, spec, driver, .. } = logged_in_bot().await;
    let bot = spec.bot_id.clone();
    let peer_texts = Arc::default();
    let (running, _received, peer) = bot_and_peer(&server, &driver, spec, Arc::clone(&peer_texts)).await;

    let to = PhoneNumber::parse(PEER).unwrap();
    let sent = driver.sessions().send_text(&bot, Some(&to), "hello peer").await;
    let arrived = support::peer::until_text(&peer_texts, "hello peer").await;
    server.hang_up();
    peer.shutdown().await;
    running.stop().await;
    assert!(sent.is_ok(), "{sent:?}");
    assert!(arrived.is_ok(), "the peer never read it: {arrived:?}");
}

/// A message a real peer sends to the bot arrives as the signed events
/// webhook: decrypted by the bot's driver, with the text and the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_peers_message_reaches_the_events_webhook_signed() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
    let (spec, _) = bot_knowing(&store, server.public()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let webhook = EventsWebhook::start(url, b"shared-with-the-receiver".to_vec(), shutdown.clone());
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock))
        .with_transport(Arc::new(server.clone()))
        .with_webhook(webhook);
    let (running, _received, peer) = bot_and_peer(&server, &driver, spec.clone(), Arc::default()).await;

    let sent = peer.client().send_text(whatsapp_rust::Jid::pn(PHONE), "hi bot").await;
    let message = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (head, body) = trekker_testkit::http::receive_request(&listener).await;
            let payload: Value = serde_json::from_slice(&body).unwrap();
            if payload["type"] == "message" {
                return (head, body, payload);
            }
        }
    })
    .await;
    server.hang_up();
    peer.shutdown().await;
    running.stop().await;
    shutdown.cancel();
    assert!(sent.is_ok(), "the peer's send: {:?}", sent.err());
    let (head, body, payload) = message.expect("the bot's webhook posted the peer's message");
    let header = |name: &str| trekker_testkit::http::header(&head, name);
    let (timestamp, signed) = (header(TIMESTAMP_HEADER).unwrap(), header(SIGNATURE_HEADER).unwrap());
    let now = SystemClock.now_ms() / 1000;
    assert!(verify(b"shared-with-the-receiver", &timestamp, &signed, &body, now, 300), "{head}");
    assert_eq!(payload["botId"], spec.bot_id.as_str());
    assert_eq!(payload["data"]["text"], "hi bot");
    let sender = payload["data"]["sender"].as_str().unwrap();
    assert!(sender.starts_with(PEER), "{sender}");
}

/// WhatsApp's limit codes, on cue: with the fake nacking messages with
/// 463 (reach-out timelock) or 475 (message capping), the bot's send is
/// taken, then the nack holds the bot (a `held` event naming the code) and
/// its next send is refused by the governor before it reaches WhatsApp;
/// the bot restarted (a node restart, a move) is still held: the hold is
/// kept with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_463_or_475_nack_holds_the_bot_and_its_next_send() {
    for code in ["463", "475"] {
        let (store, _file) = trekker_testkit::sqlite_store().await;
        let store: Arc<dyn Store> = store;
        let server = FakeServer { serves_login: true, ..FakeServer::new(7) };
        let (spec, _) = bot_knowing(&store, server.public()).await;
        let bot = spec.bot_id.clone();
        let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
        let (running, mut received, peer) = bot_and_peer(&server, &driver, spec.clone(), Arc::default()).await;
        *server.nacks_messages.lock().unwrap() = Some(code.to_owned());

        let to = PhoneNumber::parse(PEER).unwrap();
        let first = driver.sessions().send_text(&bot, Some(&to), "first").await;
        let held =
            until_event(&mut received, |event| matches!(event, BotEvent::Held { reason } if reason.contains(code)))
                .await;
        let next = driver.sessions().send_text(&bot, Some(&to), "second").await;
        // The hold is kept with the bot's state (the event handler writes
        // it); then the bot restarts.
        let kept = tokio::time::timeout(Duration::from_secs(15), async {
            while store.send_hold(&bot).await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(kept.is_ok(), "{code}: the hold was never kept");
        running.stop().await;
        let (events, mut received) = mpsc::unbounded_channel();
        let restarted = driver.start(spec, events).await.unwrap();
        let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
        let after_restart = driver.sessions().send_text(&bot, Some(&to), "third").await;
        let messages = || server.stanzas.lock().unwrap().iter().filter(|n| n.tag == "message").count();
        let sent_to_whatsapp = messages();
        server.hang_up();
        peer.shutdown().await;
        restarted.stop().await;
        assert!(online.is_ok(), "{code}: the restarted bot never went online: {online:?}");
        assert!(
            matches!(&after_restart, Err(MessengerError::Throttled { reason, retry_after_secs })
                if reason.contains(code) && *retry_after_secs > 3600),
            "{code}: a restart lifted the hold: {after_restart:?}"
        );
        assert!(first.is_ok(), "{code}: the first send was taken before the nack: {first:?}");
        assert!(held.is_ok(), "{code}: the nack never held the bot: {held:?}");
        match next {
            Err(MessengerError::Throttled { reason, retry_after_secs }) => {
                assert!(reason.contains(code), "{reason}");
                assert!(retry_after_secs > 3600, "a {code} hold lasts a day: {retry_after_secs}");
            }
            other => panic!("{code}: the held bot sent again: {other:?}"),
        }
        assert_eq!(sent_to_whatsapp, 1, "{code}: only the first message reached WhatsApp");
    }
}

/// `NOTIFIER=whatsapp` with the bot running here: the guest's message
/// leaves from the bot's live session and arrives in the account's own
/// chat, where a real client on the account's phone decrypts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_the_notifier_sends_from_the_running_bot_to_the_guests_own_chat() {
    let Online { store, _file, server, spec, driver } = logged_in_bot().await;
    let notifier = WhatsAppNotifier::new(driver.sessions(), store.clone(), store.clone());
    // The phone is online first, as it is in life: the bot's own device
    // list (fetched at its login) names it.
    let own_chat = Arc::default();
    let phone = support::peer::client(&server, PHONE, PEER_VARIANT, |_| {}, Arc::clone(&own_chat)).await;
    phone.client().wait_for_connected(Duration::from_secs(15)).await.unwrap();
    server.stanza("the phone's pre-keys", is_pre_key_upload).await;
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
    assert!(online.is_ok(), "the bot never went online: {online:?}");

    let sent = notifier.send(PHONE, "Your bot is approved").await;
    let arrived = support::peer::until_text(&own_chat, "Your bot is approved").await;
    server.hang_up();
    phone.shutdown().await;
    running.stop().await;
    assert!(sent.is_ok(), "{sent:?}");
    assert!(arrived.is_ok(), "the guest's own chat never got it: {arrived:?}");
}

/// whatsapp-rust 0.7 answers success for a message it encrypted for no
/// device (#1298): a guest's message to the account's own chat, from a bot
/// whose account has no other device online, goes out with no recipient
/// and comes back with a message id. The notifier (like the admin path)
/// reads the stanza and reports it undelivered, so the outbox retries
/// instead of recording a delivery that never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_message_encrypted_for_no_device_is_not_reported_sent() {
    let Online { store, _file, server, spec, driver } = logged_in_bot().await;
    let notifier = WhatsAppNotifier::new(driver.sessions(), store.clone(), store.clone());
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = until_event(&mut received, |event| *event == BotEvent::Connected).await;
    assert!(online.is_ok(), "the bot never went online: {online:?}");

    let sent = notifier.send(PHONE, "Your bot is approved").await;
    let on_the_wire: Vec<Node> =
        server.stanzas.lock().unwrap().iter().filter(|n| n.tag == "message").cloned().collect();
    server.hang_up();
    running.stop().await;
    let error = sent.expect_err("nobody could read it");
    assert!(error.0.contains("reached no device"), "{error}");
    assert_eq!(on_the_wire.len(), 1, "whatsapp-rust did send it: {on_the_wire:?}");
    let participants = on_the_wire[0].get_optional_child("participants").and_then(|p| p.children().map(<[_]>::len));
    assert_eq!(participants.unwrap_or_default(), 0, "encrypted for nobody");
}
