//! The fake server as WhatsApp's relay between the clients logged in to
//! it: a device query lists the devices logged in as each user asked
//! about, a pre-key query hands out the bundle that device uploaded, and
//! a message is acked (or nacked with a code, on cue) and handed to each
//! device it was encrypted for. Every other query gets an empty result;
//! the pairing stages go to [`super::phone`].

use std::collections::VecDeque;
use std::sync::Arc;

use trekker_domain::time::Clock as _;
use whatsapp_rust::NodeBuilder;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore_binary::{Jid, Node};
use whatsapp_rust::waproto::whatsapp as wa;

use super::{Connection, FakeServer, Live, SystemClock, is_pre_key_upload};

impl Connection {
    /// What the fake answers a client's stanza (see [`Self::answer_query`]
    /// and [`Self::relay`]); what it must say to other clients comes back,
    /// to be said once this connection's lock is released.
    pub(super) fn answer(&self, live: &mut Live, stanza: &Node) -> Vec<(Arc<Connection>, Node)> {
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
        match stanza.attrs().optional_string("type").as_deref() {
            Some("result") => {
                if let Some(signed) = stanza.get_optional_child("pair-device-sign") {
                    self.linked(live, signed);
                }
                return;
            }
            Some("error") => return,
            _ => {}
        }
        if let Some(stage) = stanza.get_optional_child("link_code_companion_reg") {
            self.answer_link_code(live, stanza, stage);
            return;
        }
        if is_pre_key_upload(stanza) {
            if let Some(who) = self.who() {
                self.server.uploads.lock().unwrap().insert(who, bundle_source(stanza));
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
    /// uploaded, with one of its one-time keys, handed out once (as
    /// WhatsApp does), if it uploaded one.
    fn bundle_of(&self, jid: &Jid) -> Option<Node> {
        let user = jid.user.parse::<u64>().ok()?;
        let mut uploads = self.uploads.lock().unwrap();
        let bundle = uploads.get_mut(&(user, jid.device))?;
        let mut children = bundle.base.clone();
        children.extend(bundle.one_time.pop_front());
        let jid = format!("{user}:{}@s.whatsapp.net", jid.device);
        Some(NodeBuilder::new("user").attr("jid", jid).children(children).build())
    }
}

/// What the fake keeps of a device's pre-key upload: its identity and
/// signed pre-key, and a few one-time keys (not hundreds per device: a
/// memory benchmark runs in the same process).
pub struct Bundle {
    base: Vec<Node>,
    one_time: VecDeque<Node>,
}

fn bundle_source(upload: &Node) -> Bundle {
    const KEPT_ONE_TIME_KEYS: usize = 8;
    let base = ["registration", "type", "identity", "skey"]
        .iter()
        .filter_map(|tag| upload.get_optional_child(tag).cloned())
        .collect();
    let keys = upload.get_optional_child("list").map(|list| list.get_children_by_tag("key").take(KEPT_ONE_TIME_KEYS));
    Bundle { base, one_time: keys.into_iter().flatten().cloned().collect() }
}
