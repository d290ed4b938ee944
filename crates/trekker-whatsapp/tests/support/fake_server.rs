//! The fake WhatsApp server (`fake-server` in test names and docs): an
//! in-process Noise IK responder over the transport seam, built from
//! wacore's public pieces as whatsapp-rust's own
//! `tests/handshake_integration.rs` does. WhatsApp's root key cannot be
//! replaced, so a device is seeded with a cached server certificate naming
//! the fake's key ([`cached_chain`]), which IK trusts without re-checking
//! the chain. Serving the login, the fake answers IK, says `<success>` and
//! the end of offline delivery, and reads every stanza the client sends.
//! Between the clients logged in to it, it is WhatsApp's relay: a device
//! query lists the devices logged in as the user asked about, a pre-key
//! query hands out the bundle that device uploaded, and a message is acked
//! (or nacked with a code, on cue) and handed to each device it was
//! encrypted for. Every other query gets an empty result. Not served: the
//! app-state sync, receipts, groups, pairing.
//! Shared by `tests/fake_server.rs` and `benches/sessions_memory.rs`.

#![allow(dead_code)] // Each user takes the parts it needs.

use std::collections::HashMap;
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
use whatsapp_rust::wacore_binary::consts::{NOISE_PATTERN_IK, WA_CONN_HEADER};
use whatsapp_rust::wacore_binary::marshal::{marshal, unmarshal_ref};
use whatsapp_rust::wacore_binary::util::unpack;
use whatsapp_rust::wacore_binary::{Jid, Node};
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
    /// Each logged-in device's pre-key upload, by (user, device): the
    /// bundles the fake hands to whoever writes to that device.
    pub uploads: Arc<Mutex<HashMap<(u64, u16), Node>>>,
    /// When set, a client's message is refused with this code (a nack)
    /// instead of relayed.
    pub nacks_messages: Arc<Mutex<Option<String>>>,
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
    /// Who logged in on it (once the login is served).
    login: Mutex<Option<Login>>,
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

    /// Who is logged in on this connection: (user, device).
    fn who(&self) -> Option<(u64, u16)> {
        let login = self.login.lock().unwrap();
        let login = login.as_ref()?;
        Some((login.username?, u16::try_from(login.device.unwrap_or(0)).ok()?))
    }

    /// What the fake answers a client's stanza (see [`Self::answer_query`]
    /// and [`Self::relay`]); what it must say to other clients comes back,
    /// to be said once this connection's lock is released.
    fn answer(&self, live: &mut Live, stanza: &Node) -> Vec<(Arc<Connection>, Node)> {
        match stanza.tag.as_ref() {
            "message" => self.relay(live, stanza),
            "iq" => {
                self.answer_query(live, stanza);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A device query lists the devices logged in as each user asked about
    /// (none for anyone else); a pre-key query hands out the bundle that
    /// device uploaded; an upload is kept (and answered unless the fake
    /// is told not to); any other query gets an empty result.
    fn answer_query(&self, live: &mut Live, stanza: &Node) {
        if is_pre_key_upload(stanza) {
            if let Some(who) = self.who() {
                self.server.uploads.lock().unwrap().insert(who, stanza.clone());
            }
            if !self.server.answers_uploads {
                return;
            }
        }
        let id = stanza.attrs().optional_string("id").map(|id| id.to_string()).unwrap_or_default();
        let mut result = NodeBuilder::new("iq").attr("type", "result").attr("id", id).attr("from", "s.whatsapp.net");
        let asked = stanza.get_optional_child("usync").and_then(|usync| usync.get_optional_child("list"));
        if let Some(list) = asked {
            let users = list.get_children_by_tag("user").filter_map(|user| {
                let jid = user.attrs().optional_jid("jid")?;
                Some(self.server.devices_of(&jid))
            });
            let list = NodeBuilder::new("list").children(users.collect::<Vec<_>>()).build();
            result = result.children([NodeBuilder::new("usync").children([list]).build()]);
        }
        let is_key_fetch = stanza.attrs().optional_string("xmlns").is_some_and(|x| x == "encrypt")
            && stanza.attrs().optional_string("type").is_some_and(|t| t == "get");
        if let Some(keys) = stanza.get_optional_child("key").filter(|_| is_key_fetch) {
            let bundles = keys.get_children_by_tag("user").filter_map(|user| {
                let jid = user.attrs().optional_jid("jid")?;
                self.server.bundle_of(&jid)
            });
            result = result.children([NodeBuilder::new("list").children(bundles.collect::<Vec<_>>()).build()]);
        }
        self.say(live, &result.build());
    }

    /// A client's message: acknowledged to the sender (or refused with the
    /// fake's nack code) and handed to each device it was encrypted for,
    /// from the sender's own device, as WhatsApp delivers it.
    fn relay(&self, live: &mut Live, message: &Node) -> Vec<(Arc<Connection>, Node)> {
        let id = message.attrs().optional_string("id").map(|id| id.to_string()).unwrap_or_default();
        let to = message.attrs().optional_string("to").map(|to| to.to_string()).unwrap_or_default();
        let mut ack = NodeBuilder::new("ack").attr("class", "message").attr("id", id.clone()).attr("from", to);
        let nack = self.server.nacks_messages.lock().unwrap().clone();
        if let Some(code) = nack {
            self.say(live, &ack.attr("error", code).build());
            return Vec::new();
        }
        let now = (SystemClock.now_ms() / 1000).to_string();
        ack = ack.attr("t", now.clone());
        self.say(live, &ack.build());
        let Some((user, device)) = self.who() else { return Vec::new() };
        let kind = message.attrs().optional_string("type").map(|t| t.to_string()).unwrap_or_default();
        let identity = message.get_optional_child("device-identity").cloned();
        let mut deliveries = Vec::new();
        let participants = message.get_optional_child("participants").map(|p| p.get_children_by_tag("to"));
        for to in participants.into_iter().flatten() {
            let Some(jid) = to.attrs().optional_jid("jid") else { continue };
            let Ok(target) = jid.user.parse::<u64>() else { continue };
            let encrypted: Vec<Node> = to.get_children_by_tag("enc").cloned().collect();
            let mut children = encrypted;
            children.extend(identity.clone());
            let delivered = NodeBuilder::new("message")
                .attr("from", format!("{user}:{device}@s.whatsapp.net"))
                .attr("id", id.clone())
                .attr("t", now.clone())
                .attr("type", kind.clone())
                .children(children)
                .build();
            for connection in self.server.logged_in(target, Some(jid.device)) {
                deliveries.push((connection, delivered.clone()));
            }
        }
        deliveries
    }
}

impl FakeServer {
    /// `<user>` of a device query's answer: the devices logged in as
    /// `jid`'s user, with a key index list naming them (the test
    /// credentials' key index is their device id).
    fn devices_of(&self, jid: &Jid) -> Node {
        let mut ids: Vec<u16> = match jid.user.parse::<u64>() {
            Ok(user) => self.logged_in(user, None).iter().filter_map(|c| c.who()).map(|(_, d)| d).collect(),
            Err(_) => Vec::new(),
        };
        ids.sort_unstable();
        ids.dedup();
        let devices = ids.iter().map(|&id| {
            let device = NodeBuilder::new("device").attr("id", id.to_string());
            if id == 0 { device } else { device.attr("key-index", id.to_string()) }.build()
        });
        let devices = devices.collect::<Vec<_>>();
        let mut children = vec![NodeBuilder::new("device-list").children(devices).build()];
        if ids.iter().any(|&id| id != 0) {
            let details = wa::ADVKeyIndexList {
                raw_id: Some(1),
                timestamp: Some(SystemClock.now_ms().unsigned_abs() / 1000),
                current_index: ids.iter().copied().max().map(u32::from),
                valid_indexes: ids.iter().copied().map(u32::from).collect(),
                ..Default::default()
            };
            let signed = wa::ADVSignedKeyIndexList { details: Some(details.encode_to_vec()), ..Default::default() };
            children.push(NodeBuilder::new("key-index-list").attr("ts", "1000").bytes(signed.encode_to_vec()).build());
        }
        let user = NodeBuilder::new("user").attr("jid", jid.clone());
        user.children([NodeBuilder::new("devices").children(children).build()]).build()
    }

    /// `<user>` of a pre-key query's answer: the bundle `jid`'s device
    /// uploaded (its first one-time key), if it uploaded one.
    fn bundle_of(&self, jid: &Jid) -> Option<Node> {
        let user = jid.user.parse::<u64>().ok()?;
        let upload = self.uploads.lock().unwrap().get(&(user, jid.device))?.clone();
        let mut children: Vec<Node> = ["registration", "type", "identity", "skey"]
            .iter()
            .filter_map(|tag| upload.get_optional_child(tag).cloned())
            .collect();
        children.extend(upload.get_optional_child("list").and_then(|l| l.get_optional_child("key")).cloned());
        let jid = format!("{user}:{}@s.whatsapp.net", jid.device);
        Some(NodeBuilder::new("user").attr("jid", jid).children(children).build())
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
                self.server.logins.lock().unwrap().push(Ok(login.clone()));
                (login, self.server.answer_hello(accepting))
            });
            match accepted {
                Ok((login, Ok((frame, from_client, to_client)))) if self.server.serves_login => {
                    let _ = self.to_client.try_send(TransportEvent::DataReceived(frame.into()));
                    let mut live = Live {
                        decoder: framing::FrameDecoder::new(),
                        from_client: (from_client, 0),
                        to_client: (to_client, 0),
                    };
                    let user = login.username.unwrap_or_default();
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
                Ok(_) => {}
                Err(error) => self.server.logins.lock().unwrap().push(Err(error)),
            }
            return Ok(());
        }
        drop(said_hello);
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
            said_hello: Mutex::new(false),
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
