//! fake-server, first step: an in-process Noise IK responder over the
//! transport seam, built from wacore's public pieces (as whatsapp-rust's
//! own `tests/handshake_integration.rs` does). A bot registered with a
//! Baileys `creds.json` and started by the driver logs in to it: what the
//! fake decrypts from the client's hello (its static key and its login
//! payload) must be the creds' noise key, phone and device. WhatsApp's
//! root key cannot be replaced, so the device is seeded with a cached
//! server certificate naming the fake's key, which IK trusts without
//! re-checking the chain. Post-login (the `<success>` stanza, pre-keys,
//! app-state sync) is not served yet.

#![cfg(feature = "whatsapp")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::sync::mpsc;
use trekker_domain::time::{Clock, SystemClock};
use trekker_domain::{BotId, PhoneNumber, ServerName};
use trekker_runtime::{BotDriver, BotSpec};
use trekker_store::{NewActivity, NewBot, ServerRegistration, SideEffects, Store};
use trekker_testkit::creds;
use trekker_whatsapp::driver::WhatsAppDriver;
use trekker_whatsapp::session::device_from_creds;
use trekker_whatsapp::storage::StoredDevice;
use whatsapp_rust::async_channel::{Receiver, Sender};
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsapp_rust::wacore::handshake::NoiseHandshake;
use whatsapp_rust::wacore::libsignal::protocol::PrivateKey;
use whatsapp_rust::wacore::store::{CachedNoiseCert, CachedServerCertChain};
use whatsapp_rust::wacore_binary::consts::{NOISE_PATTERN_IK, WA_CONN_HEADER};
use whatsapp_rust::waproto::whatsapp as wa;

const PHONE: &str = "254700000960";
/// The creds' variant: its device id is `VARIANT % 50`.
const VARIANT: u32 = 7;

/// What the fake learned from a client's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Login {
    client_static: Vec<u8>,
    username: Option<u64>,
    device: Option<u32>,
    passive: Option<bool>,
}

/// A WhatsApp server that knows one static key pair and records the login
/// of every client that says hello (or why it could not read it).
#[derive(Clone)]
struct FakeServer {
    private: [u8; 32],
    logins: Arc<Mutex<Vec<Result<Login, String>>>>,
    /// Kept open: a closed event channel would read as a disconnect.
    events: Arc<Mutex<Vec<Sender<TransportEvent>>>>,
}

impl FakeServer {
    fn new(seed: u8) -> Self {
        Self { private: [seed; 32], logins: Arc::default(), events: Arc::default() }
    }

    fn public(&self) -> [u8; 32] {
        let private = PrivateKey::deserialize(&self.private).unwrap();
        private.public_key().unwrap().public_key_bytes().try_into().unwrap()
    }

    /// The IK responder's first half: the client's static key and payload.
    fn read_hello(&self, raw: &[u8]) -> Result<Login, String> {
        let body = raw.strip_prefix(&WA_CONN_HEADER[..]).ok_or("no connection header")?;
        let length = body.get(..3).ok_or("no frame")?;
        let length = (usize::from(length[0]) << 16) | (usize::from(length[1]) << 8) | usize::from(length[2]);
        let frame = body.get(3..3 + length).ok_or("a cut frame")?;
        let hello = wa::HandshakeMessage::decode_from_slice(frame).map_err(|e| e.to_string())?;
        let hello = hello.client_hello.into_option().ok_or("no client hello")?;
        let ephemeral = hello.ephemeral.ok_or("no ephemeral key")?;
        let (encrypted_static, encrypted_payload) =
            (hello.r#static.ok_or("no static key (not IK)")?, hello.payload.ok_or("no payload")?);
        let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER).map_err(|e| e.to_string())?;
        noise.authenticate(&self.public());
        noise.authenticate(&ephemeral);
        noise.mix_shared_secret(&self.private, &ephemeral).map_err(|e| e.to_string())?;
        let client_static = noise.decrypt(&encrypted_static).map_err(|e| format!("static: {e}"))?;
        noise.mix_shared_secret(&self.private, &client_static).map_err(|e| e.to_string())?;
        let payload = noise.decrypt(&encrypted_payload).map_err(|e| format!("payload: {e}"))?;
        let payload = wa::ClientPayload::decode_from_slice(&payload).map_err(|e| e.to_string())?;
        Ok(Login { client_static, username: payload.username, device: payload.device, passive: payload.passive })
    }

    async fn next_login(&self) -> Result<Login, String> {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Some(login) = self.logins.lock().unwrap().first() {
                    return login.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a client said hello")
    }

    /// Hangs up on every client (else a stop waits out the handshake).
    fn hang_up(&self) {
        self.events.lock().unwrap().clear();
    }
}

/// One connection to the fake: every send is a client frame.
struct Connection {
    server: FakeServer,
    said_hello: Mutex<bool>,
}

#[whatsapp_rust::async_trait]
impl Transport for Connection {
    async fn send(&self, data: whatsapp_rust::bytes::Bytes) -> Result<(), whatsapp_rust::anyhow::Error> {
        let mut said_hello = self.said_hello.lock().unwrap();
        if !*said_hello {
            *said_hello = true;
            self.server.logins.lock().unwrap().push(self.server.read_hello(&data));
        }
        Ok(())
    }

    async fn disconnect(&self) {}
}

#[whatsapp_rust::async_trait]
impl TransportFactory for FakeServer {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, Receiver<TransportEvent>), whatsapp_rust::anyhow::Error> {
        let (tx, rx) = whatsapp_rust::async_channel::unbounded();
        tx.send(TransportEvent::Connected).await?;
        self.events.lock().unwrap().push(tx);
        Ok((Arc::new(Connection { server: self.clone(), said_hello: Mutex::new(false) }), rx))
    }
}

/// A Baileys buffer (`{"type": "Buffer", "data": ...}` or base64) as bytes.
fn buffer(value: &Value) -> Vec<u8> {
    match &value["data"] {
        Value::String(text) => base64::engine::general_purpose::STANDARD.decode(text).unwrap(),
        Value::Array(bytes) => bytes.iter().map(|b| u8::try_from(b.as_u64().unwrap()).unwrap()).collect(),
        _ => base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap(),
    }
}

/// A certificate cached as if an earlier XX login had verified it.
fn cached_chain(key: [u8; 32]) -> CachedServerCertChain {
    let now = SystemClock.now_ms() / 1000;
    let cert = CachedNoiseCert { key, not_before: now - 3600, not_after: now + 30 * 86_400 };
    CachedServerCertChain { intermediate: cert.clone(), leaf: cert }
}

/// A bot of PHONE registered and taken by this node; its stored device is
/// the creds' import, seeded with a certificate for `server_key`.
async fn bot_knowing(store: &Arc<dyn Store>, server_key: [u8; 32]) -> (BotSpec, Value) {
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
