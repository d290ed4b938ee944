//! The fake WhatsApp server (`fake-server` in test names and docs): an
//! in-process Noise IK responder over the transport seam, built from
//! wacore's public pieces as whatsapp-rust's own
//! `tests/handshake_integration.rs` does. WhatsApp's root key cannot be
//! replaced, so a device is seeded with a cached server certificate naming
//! the fake's key ([`cached_chain`]), which IK trusts without re-checking
//! the chain. Serving the login, the fake answers IK, says `<success>` and
//! the end of offline delivery, reads every stanza the client sends, and
//! answers device queries (no device for anyone) and every other query (an
//! empty result). Not served yet: the app-state sync, messages, receipts.
//! Shared by `tests/fake_server.rs` and `benches/sessions_memory.rs`.

#![allow(dead_code)] // Each user takes the parts it needs.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use trekker_domain::time::{Clock, SystemClock};
use whatsapp_rust::NodeBuilder;
use whatsapp_rust::async_channel::{Receiver, Sender};
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsapp_rust::wacore::framing;
use whatsapp_rust::wacore::handshake::{NoiseCipher, NoiseHandshake};
use whatsapp_rust::wacore::libsignal::protocol::PrivateKey;
use whatsapp_rust::wacore::store::{CachedNoiseCert, CachedServerCertChain};
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::consts::{NOISE_PATTERN_IK, WA_CONN_HEADER};
use whatsapp_rust::wacore_binary::marshal::{marshal, unmarshal_ref};
use whatsapp_rust::wacore_binary::util::unpack;
use whatsapp_rust::waproto::whatsapp as wa;

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
        }
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

    /// The IK responder's first half: the client's static key and payload
    /// (and the handshake, to answer).
    fn read_hello(&self, raw: &[u8]) -> Result<(Login, Accepting), String> {
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
        let login = Login {
            client_static: client_static.clone(),
            username: payload.username,
            device: payload.device,
            passive: payload.passive,
        };
        Ok((login, Accepting { noise, client_ephemeral: ephemeral, client_static }))
    }

    /// The IK responder's second half: the server's hello, and the two
    /// transport ciphers (client to server, server to client).
    fn answer_hello(&self, accepting: Accepting) -> Result<(Vec<u8>, NoiseCipher, NoiseCipher), String> {
        let Accepting { mut noise, client_ephemeral, client_static } = accepting;
        let ephemeral = PrivateKey::deserialize(&[self.private[0].wrapping_add(100); 32]).map_err(|e| e.to_string())?;
        let ephemeral_public = ephemeral.public_key().map_err(|e| e.to_string())?.public_key_bytes().to_vec();
        let ephemeral = ephemeral.serialize().to_vec();
        noise.authenticate(&ephemeral_public);
        noise.mix_shared_secret(&ephemeral, &client_ephemeral).map_err(|e| e.to_string())?;
        noise.mix_shared_secret(&ephemeral, &client_static).map_err(|e| e.to_string())?;
        let certificate = noise.encrypt(b"fake certificate").map_err(|e| e.to_string())?;
        let hello = wa::HandshakeMessage {
            server_hello: whatsapp_rust::buffa::MessageField::some(wa::handshake_message::ServerHello {
                ephemeral: Some(ephemeral_public),
                r#static: None,
                payload: Some(certificate),
                ..Default::default()
            }),
            ..Default::default()
        };
        let frame = framing::encode_frame(&hello.encode_to_vec(), None).map_err(|e| e.to_string())?;
        let (from_client, to_client) = noise.finish().map_err(|e| e.to_string())?;
        Ok((frame, from_client, to_client))
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

/// The server's half of a handshake between hello and answer.
struct Accepting {
    noise: NoiseHandshake,
    client_ephemeral: Vec<u8>,
    client_static: Vec<u8>,
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
    said_hello: Mutex<bool>,
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

    /// What the fake answers a client's stanza: a device query says every
    /// user asked about has no device; any other query an empty result.
    fn answer(&self, live: &mut Live, stanza: &Node) {
        if stanza.tag != "iq" || (!self.server.answers_uploads && is_pre_key_upload(stanza)) {
            return;
        }
        let id = stanza.attrs().optional_string("id").map(|id| id.to_string()).unwrap_or_default();
        let mut result = NodeBuilder::new("iq").attr("type", "result").attr("id", id).attr("from", "s.whatsapp.net");
        let asked = stanza.get_optional_child("usync").and_then(|usync| usync.get_optional_child("list"));
        if let Some(list) = asked {
            let users = list.get_children_by_tag("user").filter_map(|user| {
                let jid = user.attrs().optional_string("jid")?.to_string();
                let devices = NodeBuilder::new("devices").children([NodeBuilder::new("device-list").build()]);
                Some(NodeBuilder::new("user").attr("jid", jid).children([devices.build()]).build())
            });
            let list = NodeBuilder::new("list").children(users.collect::<Vec<_>>()).build();
            result = result.children([NodeBuilder::new("usync").children([list]).build()]);
        }
        self.say(live, &result.build());
    }
}

#[whatsapp_rust::async_trait]
impl Transport for Connection {
    async fn send(&self, data: whatsapp_rust::bytes::Bytes) -> Result<(), whatsapp_rust::anyhow::Error> {
        let mut said_hello = self.said_hello.lock().unwrap();
        if !*said_hello {
            *said_hello = true;
            let hello = self.server.read_hello(&data);
            let accepted = hello.map(|(login, accepting)| {
                self.server.logins.lock().unwrap().push(Ok(login));
                self.server.answer_hello(accepting)
            });
            match accepted {
                Ok(Ok((frame, from_client, to_client))) if self.server.serves_login => {
                    let _ = self.to_client.try_send(TransportEvent::DataReceived(frame.into()));
                    let mut live = Live {
                        decoder: framing::FrameDecoder::new(),
                        from_client: (from_client, 0),
                        to_client: (to_client, 0),
                    };
                    let success = NodeBuilder::new("success")
                        .attr("t", (SystemClock.now_ms() / 1000).to_string())
                        .attr("lid", "100000000000001@lid")
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
                Ok(_) => {}
                Err(error) => self.server.logins.lock().unwrap().push(Err(error)),
            }
            return Ok(());
        }
        drop(said_hello);
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
            self.answer(live, &stanza);
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
        let connection =
            Connection { server: self.clone(), to_client: tx, live: Mutex::new(None), said_hello: Mutex::new(false) };
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
