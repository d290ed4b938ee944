//! The fake WhatsApp server (`fake-server` in test names and docs),
//! in-process over the transport seam, built from wacore's public pieces
//! as whatsapp-rust's own `tests/handshake_integration.rs` does: the Noise
//! responders (`fake_handshake.rs`), WhatsApp's relay between the clients
//! logged in to it (`fake_relay.rs`), and the phone's side of pairing by
//! code (`fake_phone.rs`). WhatsApp's root key cannot be replaced, so a
//! registered device is seeded with a cached server certificate naming the
//! fake's key ([`cached_chain`]), which IK trusts without re-checking the
//! chain; only pairing needs XX, and with it whatsapp-rust's
//! `danger-skip-cert-chain-verify` (in a test crate of its own). Serving the
//! login, the fake says `<success>` and the end of offline delivery, and
//! reads every stanza the client sends. Not served: the app-state sync,
//! receipts, groups. Shared by `tests/fake_server.rs`,
//! `benches/sessions_memory.rs` and the pairing test crate.

#![allow(dead_code)] // Each user takes the parts it needs.

#[path = "fake_handshake.rs"]
mod handshake;
#[path = "fake_peer.rs"]
pub mod peer;
#[path = "fake_phone.rs"]
pub mod phone;
#[path = "fake_relay.rs"]
mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use trekker_domain::time::{Clock, SystemClock};
use whatsapp_rust::NodeBuilder;
use whatsapp_rust::async_channel::{Receiver, Sender};
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsapp_rust::wacore::framing;
use whatsapp_rust::wacore::handshake::NoiseCipher;
use whatsapp_rust::wacore::libsignal::protocol::PrivateKey;
use whatsapp_rust::wacore::store::{CachedNoiseCert, CachedServerCertChain};
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::marshal::{marshal, unmarshal_ref};
use whatsapp_rust::wacore_binary::util::unpack;

/// What the fake learned from a client's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub client_static: Vec<u8>,
    pub username: Option<u64>,
    pub device: Option<u32>,
    pub passive: Option<bool>,
}

/// A WhatsApp server that knows one static key pair and records the login
/// of every client that says hello (or why it could not read it).
#[derive(Clone)]
pub struct FakeServer {
    pub private: [u8; 32],
    /// Whether it completes the login (else it only reads the hello).
    pub serves_login: bool,
    /// Said instead of `<success>` (a `<failure>`), or right after it.
    pub instead_of_success: Option<Node>,
    pub after_success: Option<Node>,
    /// Whether it answers a pre-key upload (else the upload never ends).
    pub answers_uploads: bool,
    pub logins: Arc<Mutex<Vec<Result<Login, String>>>>,
    /// Every stanza logged-in clients sent, decrypted (unless not kept:
    /// a benchmark's memory reading must not count them).
    pub stanzas: Arc<Mutex<Vec<Node>>>,
    pub keeps_stanzas: bool,
    /// Kept open: a closed event channel would read as a disconnect.
    pub events: Arc<Mutex<Vec<Sender<TransportEvent>>>>,
    /// Every connection, to say something to logged-in clients unasked.
    pub connections: Arc<Mutex<Vec<Weak<Connection>>>>,
    /// Each logged-in device's pre-key upload, by (user, device): the
    /// bundles the fake hands to whoever writes to that device.
    pub uploads: Arc<Mutex<HashMap<(u64, u16), relay::Bundle>>>,
    /// When set, a client's message is refused with this code (a nack)
    /// instead of relayed.
    pub nacks_messages: Arc<Mutex<Option<String>>>,
    /// When set, a companion's request for a pairing code is refused with
    /// this error (code, text).
    pub refuses_codes: Option<(u16, String)>,
    /// Whether a pairing is followed by WhatsApp's passkey request.
    pub asks_passkey: bool,
    /// Pairings by code under way, by number.
    pub pairings: Arc<Mutex<HashMap<u64, phone::Pairing>>>,
    /// The device identities companions signed (each a linked device).
    pub linked: Arc<Mutex<Vec<Node>>>,
}

impl FakeServer {
    pub fn new(seed: u8) -> Self {
        Self {
            private: [seed; 32],
            serves_login: false,
            instead_of_success: None,
            after_success: None,
            answers_uploads: true,
            logins: Arc::default(),
            stanzas: Arc::default(),
            keeps_stanzas: true,
            events: Arc::default(),
            connections: Arc::default(),
            uploads: Arc::default(),
            nacks_messages: Arc::default(),
            refuses_codes: None,
            asks_passkey: false,
            pairings: Arc::default(),
            linked: Arc::default(),
        }
    }

    /// The live connections logged in as `user` (and `device`, if given).
    fn logged_in(&self, user: u64, device: Option<u16>) -> Vec<Arc<Connection>> {
        let connections = self.connections.lock().unwrap();
        let live = connections.iter().filter_map(Weak::upgrade);
        live.filter(|c| {
            c.login.lock().unwrap().as_ref().is_some_and(|login| {
                login.username == Some(user) && device.is_none_or(|d| login.device == Some(u32::from(d)))
            })
        })
        .collect()
    }

    /// Says `node` to every logged-in client, as the server does unasked.
    pub fn push(&self, node: &Node) {
        for connection in self.connections.lock().unwrap().iter().filter_map(Weak::upgrade) {
            if let Some(live) = connection.live.lock().unwrap().as_mut() {
                connection.say(live, node);
            }
        }
    }

    pub fn public(&self) -> [u8; 32] {
        let private = PrivateKey::deserialize(&self.private).unwrap();
        private.public_key().unwrap().public_key_bytes().try_into().unwrap()
    }

    pub async fn next_login(&self) -> Result<Login, String> {
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

    /// Waits for a stanza `matches` picks out.
    pub async fn stanza(&self, what: &str, matches: impl Fn(&Node) -> bool) -> Node {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(found) = self.stanzas.lock().unwrap().iter().find(|n| matches(n)) {
                    return found.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            let seen: Vec<String> = self.stanzas.lock().unwrap().iter().map(|n| n.tag.to_string()).collect();
            panic!("the client never sent {what}; it sent {seen:?}")
        })
    }

    /// Hangs up on every client (else a stop waits out the handshake).
    pub fn hang_up(&self) {
        for events in self.events.lock().unwrap().drain(..) {
            events.close();
        }
    }
}

/// A logged-in connection: the transport ciphers and their counters.
struct Live {
    decoder: framing::FrameDecoder,
    from_client: (NoiseCipher, u32),
    to_client: (NoiseCipher, u32),
}

/// One connection to the fake.
pub struct Connection {
    server: FakeServer,
    to_client: Sender<TransportEvent>,
    live: Mutex<Option<Live>>,
    stage: Mutex<Stage>,
    /// Who logged in on it (once the login is served).
    login: Mutex<Option<Login>>,
}

/// Where a connection's handshake stands.
enum Stage {
    Hello,
    Xx(handshake::Handshaking),
    Done,
}

impl Connection {
    /// Encrypts, frames and sends `node` to the client.
    fn say(&self, live: &mut Live, node: &Node) {
        // Marshalled with its leading flag byte (0: not compressed).
        let plain = marshal(node).unwrap();
        let (cipher, counter) = &mut live.to_client;
        let sealed = cipher.encrypt_with_counter(*counter, &plain).unwrap();
        *counter += 1;
        let frame = framing::encode_frame(&sealed, None).unwrap();
        let _ = self.to_client.try_send(TransportEvent::DataReceived(frame.into()));
    }

    /// Reads a client's hello and answers it (serving the login): IK
    /// completes at once, XX waits for the client's finish.
    fn hello(&self, data: &[u8]) -> Stage {
        match self.server.read_hello(data) {
            Ok(handshake::Hello::Ik(login, accepting)) => {
                self.server.logins.lock().unwrap().push(Ok(login.clone()));
                if let (true, Ok((frame, ciphers))) = (self.server.serves_login, self.server.answer_ik(accepting)) {
                    let _ = self.to_client.try_send(TransportEvent::DataReceived(frame.into()));
                    self.welcome(login, ciphers);
                }
                Stage::Done
            }
            Ok(handshake::Hello::Xx(client_ephemeral)) if self.server.serves_login => {
                match self.server.answer_xx(&client_ephemeral) {
                    Ok((frame, handshaking)) => {
                        let _ = self.to_client.try_send(TransportEvent::DataReceived(frame.into()));
                        Stage::Xx(handshaking)
                    }
                    Err(error) => {
                        self.server.logins.lock().unwrap().push(Err(error));
                        Stage::Done
                    }
                }
            }
            Ok(handshake::Hello::Xx(_)) => Stage::Done,
            Err(error) => {
                self.server.logins.lock().unwrap().push(Err(error));
                Stage::Done
            }
        }
    }

    /// The handshake is done: a registered device is logged in
    /// (`<success>` or the fake's failure, then the end of offline
    /// delivery); a device to pair is offered a pairing ref.
    fn welcome(&self, login: Login, (from_client, to_client): handshake::Ciphers) {
        let mut live =
            Live { decoder: framing::FrameDecoder::new(), from_client: (from_client, 0), to_client: (to_client, 0) };
        let Some(user) = login.username else {
            *self.login.lock().unwrap() = Some(login);
            let reference = NodeBuilder::new("ref").bytes(b"fake-pairing-ref".to_vec()).build();
            let offer = NodeBuilder::new("iq")
                .attr("type", "set")
                .attr("id", "pair-device-1")
                .attr("from", "s.whatsapp.net")
                .attr("xmlns", "md")
                .children([NodeBuilder::new("pair-device").children([reference]).build()]);
            self.say(&mut live, &offer.build());
            *self.live.lock().unwrap() = Some(live);
            return;
        };
        *self.login.lock().unwrap() = Some(login);
        let success = NodeBuilder::new("success")
            .attr("t", (SystemClock.now_ms() / 1000).to_string())
            .attr("lid", format!("{}@lid", 100_000_000_000_000 + user % 1_000_000_000_000))
            .build();
        self.say(&mut live, self.server.instead_of_success.as_ref().unwrap_or(&success));
        if let Some(then) = &self.server.after_success {
            self.say(&mut live, then);
        }
        if self.server.instead_of_success.is_none() {
            // No messages were waiting: offline delivery is over.
            let offline = NodeBuilder::new("offline").attr("count", "0").build();
            self.say(&mut live, &NodeBuilder::new("ib").children([offline]).build());
        }
        *self.live.lock().unwrap() = Some(live);
    }

    /// Who is logged in on this connection: (user, device).
    fn who(&self) -> Option<(u64, u16)> {
        let login = self.login.lock().unwrap();
        let login = login.as_ref()?;
        Some((login.username?, u16::try_from(login.device.unwrap_or(0)).ok()?))
    }
}

#[whatsapp_rust::async_trait]
impl Transport for Connection {
    async fn send(&self, data: whatsapp_rust::bytes::Bytes) -> Result<(), whatsapp_rust::anyhow::Error> {
        {
            let mut stage = self.stage.lock().unwrap();
            match std::mem::replace(&mut *stage, Stage::Done) {
                Stage::Hello => {
                    *stage = self.hello(&data);
                    return Ok(());
                }
                Stage::Xx(handshaking) => {
                    match self.server.finish_xx(handshaking, &data) {
                        Ok((login, ciphers)) => {
                            self.server.logins.lock().unwrap().push(Ok(login.clone()));
                            self.welcome(login, ciphers);
                        }
                        Err(error) => self.server.logins.lock().unwrap().push(Err(error)),
                    }
                    return Ok(());
                }
                Stage::Done => {}
            }
        }
        let mut deliveries = Vec::new();
        {
            let mut live = self.live.lock().unwrap();
            let Some(live) = live.as_mut() else { return Ok(()) };
            live.decoder.feed(&data);
            while let Some(frame) = live.decoder.decode_frame() {
                let mut plain = frame.to_vec();
                let (cipher, counter) = &live.from_client;
                cipher.decrypt_in_place_with_counter(*counter, &mut plain).unwrap();
                live.from_client.1 += 1;
                let stanza = unmarshal_ref(&unpack(&plain).unwrap()).unwrap().to_owned();
                if self.server.keeps_stanzas {
                    self.server.stanzas.lock().unwrap().push(stanza.clone());
                }
                deliveries.extend(self.answer(live, &stanza));
            }
        }
        // Said with this connection's lock released: two clients writing
        // to each other at once must not wait on each other's lock.
        for (connection, node) in deliveries {
            if let Some(live) = connection.live.lock().unwrap().as_mut() {
                connection.say(live, &node);
            }
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
        self.events.lock().unwrap().push(tx.clone());
        let connection = Connection {
            server: self.clone(),
            to_client: tx,
            live: Mutex::new(None),
            stage: Mutex::new(Stage::Hello),
            login: Mutex::default(),
        };
        let connection = Arc::new(connection);
        self.connections.lock().unwrap().push(Arc::downgrade(&connection));
        Ok((connection, rx))
    }
}

/// Whether `stanza` is a client's pre-key upload.
pub fn is_pre_key_upload(stanza: &Node) -> bool {
    stanza.tag == "iq"
        && stanza.attrs().optional_string("xmlns").is_some_and(|x| x == "encrypt")
        && stanza.attrs().optional_string("type").is_some_and(|t| t == "set")
        && stanza.get_optional_child("list").is_some()
}

/// A certificate cached as if an earlier XX login had verified it.
pub fn cached_chain(key: [u8; 32]) -> CachedServerCertChain {
    let now = SystemClock.now_ms() / 1000;
    let cert = CachedNoiseCert { key, not_before: now - 3600, not_after: now + 30 * 86_400 };
    CachedServerCertChain { intermediate: cert.clone(), leaf: cert }
}
