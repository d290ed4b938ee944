//! The phone's side of pairing by code, played by the fake server: the
//! companion's hello is answered with a pairing ref (or refused, or
//! followed by a passkey request, on cue); when the test types the code
//! ([`FakeServer::type_code`]) the phone answers with its own ephemeral
//! key; the companion's key bundle is opened with the shared secret, and
//! `pair-success` carries a device identity the test account's key signs
//! (testkit's `account_private`, so the session passes Trekker's ownership
//! check) with an HMAC under the secret both sides derived. Once the
//! companion signs it, a 515 makes it reconnect as the new device.

use std::sync::Weak;

use trekker_domain::account::{public_key, xeddsa_sign};
use trekker_domain::time::Clock as _;
use trekker_testkit::creds::account_private;
use whatsapp_rust::NodeBuilder;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::crypto::{generate_curve_key_pair, hkdf_sha256_into};
use whatsapp_rust::wacore::libsignal::crypto::{aes_256_gcm_decrypt, hmac_sha256};
use whatsapp_rust::wacore::libsignal::protocol::{KeyPair, PrivateKey, PublicKey};
use whatsapp_rust::wacore::pair_code::PairCodeUtils;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::waproto::whatsapp as wa;

use super::{Connection, FakeServer, Live, SystemClock};

/// The device id a pairing links.
pub const LINKED_DEVICE: u16 = 3;

/// A pairing by code under way, for one number.
pub struct Pairing {
    connection: Weak<Connection>,
    pairing_ref: Vec<u8>,
    wrapped_companion_ephemeral: Vec<u8>,
    /// Once the code is typed: the phone's ephemeral key pair and the
    /// companion's ephemeral key as that code reads it.
    typed: Option<(KeyPair, [u8; 32])>,
}

fn bytes_of(node: &Node, tag: &str) -> Option<Vec<u8>> {
    match &node.get_optional_child(tag)?.content {
        Some(whatsapp_rust::wacore_binary::node::NodeContent::Bytes(bytes)) => Some(bytes.clone()),
        _ => None,
    }
}

fn error_iq(id: &str, code: u16, text: &str) -> Node {
    let error = NodeBuilder::new("error").attr("code", code.to_string()).attr("text", text).build();
    NodeBuilder::new("iq").attr("type", "error").attr("id", id).attr("from", "s.whatsapp.net").children([error]).build()
}

fn result_iq(id: &str, children: Vec<Node>) -> Node {
    NodeBuilder::new("iq")
        .attr("type", "result")
        .attr("id", id)
        .attr("from", "s.whatsapp.net")
        .children(children)
        .build()
}

impl FakeServer {
    /// The guest types `code` on the phone of `phone`: the phone reads the
    /// companion's key with it and answers (`primary_hello`). A wrong code
    /// reads a wrong key; the bundle then cannot be opened.
    pub fn type_code(&self, phone: &str, code: &str) -> Result<(), String> {
        let user: u64 = phone.parse().map_err(|_| "not a number")?;
        let mut pairings = self.pairings.lock().unwrap();
        let pairing = pairings.get_mut(&user).ok_or("no pairing for this number")?;
        let companion = PairCodeUtils::decrypt_primary_ephemeral_pub(&pairing.wrapped_companion_ephemeral, code)
            .map_err(|e| e.to_string())?;
        let ephemeral = generate_curve_key_pair();
        let public: [u8; 32] = ephemeral.public_key.public_key_bytes().try_into().map_err(|_| "a 32-byte key")?;
        let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&public, code);
        let children = vec![
            NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub").bytes(wrapped.to_vec()).build(),
            NodeBuilder::new("primary_identity_pub").bytes(public_key(&account_private(phone, "own")).to_vec()).build(),
            NodeBuilder::new("link_code_pairing_ref").bytes(pairing.pairing_ref.clone()).build(),
        ];
        let stage = NodeBuilder::new("link_code_companion_reg").attr("stage", "primary_hello").children(children);
        let hello = NodeBuilder::new("notification")
            .attr("type", "link_code_companion_reg")
            .attr("id", format!("primary-hello-{user}"))
            .attr("from", "s.whatsapp.net")
            .attr("t", (SystemClock.now_ms() / 1000).to_string())
            .children([stage.build()])
            .build();
        pairing.typed = Some((ephemeral, companion));
        let connection = pairing.connection.upgrade().ok_or("the companion hung up")?;
        drop(pairings);
        if let Some(live) = connection.live.lock().unwrap().as_mut() {
            connection.say(live, &hello);
        }
        Ok(())
    }
}

impl Connection {
    /// This connection, shared (to be found again when the code is typed).
    fn shared(&self) -> Weak<Connection> {
        let connections = self.server.connections.lock().unwrap();
        connections.iter().find(|c| std::ptr::eq(c.as_ptr(), self)).cloned().unwrap_or_default()
    }

    /// A `link_code_companion_reg` stage of the companion (`iq`).
    pub(super) fn answer_link_code(&self, live: &mut Live, iq: &Node, stage: &Node) {
        let id = iq.attrs().optional_string("id").map(|id| id.to_string()).unwrap_or_default();
        let user = stage.attrs().optional_jid("jid").and_then(|jid| jid.user.parse::<u64>().ok()).unwrap_or_default();
        match stage.attrs().optional_string("stage").as_deref() {
            Some("companion_hello") => self.companion_hello(live, &id, user, stage),
            Some("companion_finish") => {
                let answer = self.companion_finish(live, &id, user, stage);
                if let Err(text) = answer {
                    self.say(live, &error_iq(&id, 401, &text));
                }
            }
            _ => self.say(live, &error_iq(&id, 400, "bad-request")),
        }
    }

    fn companion_hello(&self, live: &mut Live, id: &str, user: u64, stage: &Node) {
        if let Some((code, text)) = &self.server.refuses_codes {
            self.say(live, &error_iq(id, *code, text));
            return;
        }
        let Some(wrapped) = bytes_of(stage, "link_code_pairing_wrapped_companion_ephemeral_pub") else {
            self.say(live, &error_iq(id, 400, "bad-request"));
            return;
        };
        let pairing_ref = format!("ref-{user}").into_bytes();
        let pairing = Pairing {
            connection: self.shared(),
            pairing_ref: pairing_ref.clone(),
            wrapped_companion_ephemeral: wrapped,
            typed: None,
        };
        self.server.pairings.lock().unwrap().insert(user, pairing);
        let reference = NodeBuilder::new("link_code_pairing_ref").bytes(pairing_ref).build();
        let reg = NodeBuilder::new("link_code_companion_reg").children([reference]).build();
        self.say(live, &result_iq(id, vec![reg]));
        if self.server.asks_passkey {
            let options = NodeBuilder::new("passkey_request_options").bytes(br#"{"challenge":"fake"}"#.to_vec());
            let request = NodeBuilder::new("notification")
                .attr("type", "passkey_prologue_request")
                .attr("id", format!("passkey-{user}"))
                .attr("from", "s.whatsapp.net")
                .children([options.build()]);
            self.say(live, &request.build());
        }
    }

    /// Opens the companion's key bundle, derives the ADV secret as the
    /// companion did, and says `pair-success`.
    fn companion_finish(&self, live: &mut Live, id: &str, user: u64, stage: &Node) -> Result<(), String> {
        let bundle = bytes_of(stage, "link_code_pairing_wrapped_key_bundle").ok_or("no key bundle")?;
        let companion_identity = bytes_of(stage, "companion_identity_public").ok_or("no identity")?;
        let (ephemeral, companion_ephemeral) = {
            let pairings = self.server.pairings.lock().unwrap();
            let pairing = pairings.get(&user).ok_or("no pairing")?;
            let (ephemeral, companion) = pairing.typed.as_ref().ok_or("the code was not typed")?;
            (ephemeral.private_key.clone(), *companion)
        };
        let agree = |private: &PrivateKey, public: &[u8]| {
            let public = PublicKey::from_djb_public_key_bytes(public).map_err(|e| e.to_string())?;
            private.calculate_agreement(&public).map_err(|e| e.to_string())
        };
        let ephemeral_shared = agree(&ephemeral, &companion_ephemeral)?;
        let (salt, rest) = bundle.split_at_checked(32).ok_or("a short bundle")?;
        let (iv, sealed) = rest.split_at_checked(12).ok_or("a short bundle")?;
        let mut key = [0u8; 32];
        hkdf_sha256_into(&ephemeral_shared, Some(salt), b"link_code_pairing_key_bundle_encryption_key", &mut key)
            .map_err(|e| e.to_string())?;
        let mut opened = Vec::new();
        let iv: &[u8; 12] = iv.try_into().map_err(|_| "a 12-byte iv")?;
        aes_256_gcm_decrypt(&key, iv, b"", sealed, &mut opened).map_err(|_| "not-authorized: wrong code")?;
        let random = opened.get(64..96).ok_or("a short bundle")?;
        let phone = user.to_string();
        let account = account_private(&phone, "own");
        let identity_shared =
            agree(&PrivateKey::deserialize(&account).map_err(|e| e.to_string())?, &companion_identity)?;
        let mut adv_secret = [0u8; 32];
        let secret = [&ephemeral_shared[..], &identity_shared, random].concat();
        hkdf_sha256_into(&secret, None, b"adv_secret", &mut adv_secret).map_err(|e| e.to_string())?;
        self.say(live, &result_iq(id, Vec::new()));
        self.say(live, &pair_success(&phone, &account, &companion_identity, &adv_secret));
        Ok(())
    }

    /// The companion signed its identity: it is linked, and WhatsApp tells
    /// it to reconnect as itself (515).
    pub(super) fn linked(&self, live: &mut Live, signed: &Node) {
        if let Some(identity) = signed.get_optional_child("device-identity") {
            self.server.linked.lock().unwrap().push(identity.clone());
        }
        self.say(live, &NodeBuilder::new("stream:error").attr("code", "515").build());
    }
}

/// `pair-success` for `phone`'s device [`LINKED_DEVICE`]: its identity
/// signed by the account, in an HMAC under the pairing's secret.
fn pair_success(phone: &str, account: &[u8; 32], companion_identity: &[u8], adv_secret: &[u8; 32]) -> Node {
    let now = SystemClock.now_ms() / 1000;
    let details = wa::ADVDeviceIdentity {
        raw_id: Some(1),
        timestamp: Some(u64::try_from(now).unwrap_or_default()),
        key_index: Some(u32::from(LINKED_DEVICE)),
        ..Default::default()
    }
    .encode_to_vec();
    let signature = xeddsa_sign(account, &[&[6, 0][..], &details, companion_identity].concat());
    let signed = wa::ADVSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(public_key(account).to_vec()),
        account_signature: Some(signature.to_vec()),
        ..Default::default()
    }
    .encode_to_vec();
    let hmac = hmac_sha256(adv_secret, &signed);
    let container =
        wa::ADVSignedDeviceIdentityHMAC { details: Some(signed), hmac: Some(hmac.to_vec()), ..Default::default() };
    let lid = 100_000_000_000_000 + phone.parse::<u64>().unwrap_or_default() % 1_000_000_000_000;
    let device = NodeBuilder::new("device")
        .attr("jid", format!("{phone}:{LINKED_DEVICE}@s.whatsapp.net"))
        .attr("lid", format!("{lid}:{LINKED_DEVICE}@lid"));
    let success = NodeBuilder::new("pair-success").children([
        NodeBuilder::new("device-identity").bytes(container.encode_to_vec()).build(),
        device.build(),
        NodeBuilder::new("platform").attr("name", "android").build(),
    ]);
    NodeBuilder::new("iq")
        .attr("type", "set")
        .attr("id", format!("pair-success-{phone}"))
        .attr("from", "s.whatsapp.net")
        .attr("xmlns", "md")
        .children([success.build()])
        .build()
}
