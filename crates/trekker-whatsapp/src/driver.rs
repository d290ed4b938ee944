//! `BOT_DRIVER=whatsapp`: many bots per node, each one whatsapp-rust
//! client in this process, its state in the database ([`StoredDevice`]).
//!
//! The first start of a credentials version imports the registered
//! session ([`device_from_creds`]) into a clean state, so WhatsApp is asked
//! for fresh pre-keys; later starts load what the bot stored. Connection
//! events become the bot's status ([`crate::events::status_of`]); incoming
//! messages and status changes go to the events webhook when one is set.
//! A stop disconnects gracefully (whatsapp-rust flushes its state). A write
//! refused by the runner fence (another node took the bot) stops the bot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trekker_app::messaging::{BotMessenger, MessengerError};
use trekker_domain::governor::SendPolicy;
use trekker_domain::time::Clock;
use trekker_domain::{BotId, PhoneNumber};
use trekker_runtime::{BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, RunningBot};
use trekker_store::DeviceStateStore;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::transport::TransportFactory;
use whatsapp_rust::wacore::proto_helpers::MessageBuilderExt as _;
use whatsapp_rust::wacore::store::traits::DeviceStore;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::{Client, NodeFilter, SendOptions};

use crate::events::{status_of, webhook_payloads};
use crate::governed::{SendGuard, governed_event};
use crate::session::device_from_creds;
use crate::storage::StoredDevice;
use crate::transport::Transports;
use crate::web_version::WebVersion;
use crate::webhook::EventsWebhook;

/// How long a message send may take.
const SEND_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// The live sessions of this node, by bot.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<BotId, Live>>,
}

struct Live {
    generation: u64,
    phone: PhoneNumber,
    client: Arc<Client>,
    guard: Arc<SendGuard>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("running", &self.running()).finish()
    }
}

impl Sessions {
    /// How many bots run here.
    pub fn running(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }

    fn insert(&self, bot: BotId, generation: u64, phone: PhoneNumber, client: Arc<Client>, guard: Arc<SendGuard>) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(bot, Live { generation, phone, client, guard });
        }
    }

    /// Forgets the run `generation` of `bot` (not a newer one).
    fn remove(&self, bot: &BotId, generation: u64) {
        if let Ok(mut live) = self.live.lock()
            && live.get(bot).is_some_and(|l| l.generation == generation)
        {
            live.remove(bot);
        }
    }

    fn client_of_bot(&self, bot: &BotId) -> Option<(Arc<Client>, Arc<SendGuard>)> {
        self.live.lock().ok()?.get(bot).map(|l| (l.client.clone(), l.guard.clone()))
    }

    /// The client of the bot of `phone`, if it runs here.
    pub fn client_of_phone(&self, phone: &PhoneNumber) -> Option<Arc<Client>> {
        self.live_of_phone(phone).map(|(client, _)| client)
    }

    pub(crate) fn live_of_phone(&self, phone: &PhoneNumber) -> Option<(Arc<Client>, Arc<SendGuard>)> {
        self.live.lock().ok()?.values().find(|l| &l.phone == phone).map(|l| (l.client.clone(), l.guard.clone()))
    }
}

/// Sends `text` from a running bot to `to` (`None`: its own chat), if its
/// governor lets it go now.
pub(crate) async fn send_governed(
    client: &Client,
    guard: &SendGuard,
    to: Option<&PhoneNumber>,
    text: &str,
) -> Result<String, MessengerError> {
    guard.admit(to)?;
    let sent = send_from(client, to, text).await?;
    if let Some(phone) = to {
        guard.know(phone.as_str());
    }
    Ok(sent)
}

/// Sends `text` from `client` to `to` (`None`: the account's own chat).
pub(crate) async fn send_from(client: &Client, to: Option<&PhoneNumber>, text: &str) -> Result<String, MessengerError> {
    let to = match to {
        Some(phone) => whatsapp_rust::Jid::pn(phone.as_str()),
        None => client
            .persistence_manager()
            .get_device_snapshot()
            .pn
            .clone()
            .map(|own| own.to_non_ad())
            .ok_or_else(|| MessengerError::Refused("the session has no phone number yet".into()))?,
    };
    // whatsapp-rust 0.7 answers success for a message it encrypted for no
    // device of the recipient (#1298, #1361; fixed after 0.7.0): what went
    // on the wire says whether anyone can read it.
    let id = client.generate_message_id();
    let mut on_the_wire = client.wait_for_sent_node(NodeFilter::tag("message").attr("id", id.clone()));
    let message = whatsapp_rust::waproto::whatsapp::Message::text(text);
    let sending = client.send_message_with_options(to, message, SendOptions::default().with_message_id(id));
    match tokio::time::timeout(SEND_WITHIN, sending).await {
        Ok(Ok(sent)) => match on_the_wire.try_recv() {
            Ok(Some(stanza)) if !reaches_the_addressee(&stanza) => {
                Err(MessengerError::Refused("it reached no device of the recipient".into()))
            }
            _ => Ok(sent.message_id),
        },
        Ok(Err(error)) => Err(MessengerError::Refused(error.to_string())),
        Err(_) => Err(MessengerError::Refused(format!("no answer within {} s", SEND_WITHIN.as_secs()))),
    }
}

/// Whether a `<message>` stanza carries something encrypted for a device
/// of its addressee (its `to` user, in whatever addressing it uses): an
/// `<enc>` of its own, or in a `<participants>` entry of that user.
pub(crate) fn reaches_the_addressee(stanza: &Node) -> bool {
    if stanza.get_optional_child("enc").is_some() {
        return true;
    }
    let addressee = stanza.attrs().optional_jid("to").map(|jid| jid.user);
    let entries = stanza.get_optional_child("participants").map(|p| p.get_children_by_tag("to"));
    entries.into_iter().flatten().any(|entry| {
        entry.get_optional_child("enc").is_some() && entry.attrs().optional_jid("jid").map(|jid| jid.user) == addressee
    })
}

#[async_trait]
impl BotMessenger for Sessions {
    async fn send_text(&self, bot: &BotId, to: Option<&PhoneNumber>, text: &str) -> Result<String, MessengerError> {
        let (client, guard) = self.client_of_bot(bot).ok_or(MessengerError::NotRunningHere)?;
        if !client.is_connected() {
            return Err(MessengerError::Refused("the bot is not connected to WhatsApp right now".into()));
        }
        send_governed(&client, &guard, to, text).await
    }
}

/// The driver (see the module header).
pub struct WhatsAppDriver {
    store: Arc<dyn DeviceStateStore>,
    clock: Arc<dyn Clock>,
    transport: Option<Arc<dyn TransportFactory>>,
    webhook: Option<EventsWebhook>,
    sessions: Arc<Sessions>,
    web_version: WebVersion,
    send_policy: SendPolicy,
}

impl std::fmt::Debug for WhatsAppDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppDriver").field("sessions", &self.sessions).finish_non_exhaustive()
    }
}

impl WhatsAppDriver {
    pub fn new(store: Arc<dyn DeviceStateStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            transport: None,
            webhook: None,
            sessions: Arc::new(Sessions::default()),
            web_version: WebVersion::default(),
            send_policy: SendPolicy::default(),
        }
    }

    /// Every bot's sends are governed by `policy` (BOT_SENDS_PER_MIN, ...).
    pub fn with_send_policy(mut self, policy: SendPolicy) -> Self {
        self.send_policy = policy;
        self
    }

    /// Bots announce `version` (the node's, refreshed): a connect never
    /// waits on WhatsApp Web's own page.
    pub fn with_web_version(mut self, version: WebVersion) -> Self {
        self.web_version = version;
        self
    }

    /// Connections through `transport` instead of WhatsApp's WebSocket.
    pub fn with_transport(mut self, transport: Arc<dyn TransportFactory>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Forwards messages and status changes to `webhook`.
    pub fn with_webhook(mut self, webhook: EventsWebhook) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// The live sessions (to send from them).
    pub fn sessions(&self) -> Arc<Sessions> {
        self.sessions.clone()
    }
}

struct RunningWhatsApp {
    handle: BotHandle,
    device: Arc<StoredDevice>,
    sessions: Arc<Sessions>,
    bot_id: BotId,
    generation: u64,
    watch: CancellationToken,
}

#[async_trait]
impl RunningBot for RunningWhatsApp {
    async fn stop(self: Box<Self>) {
        self.watch.cancel();
        self.sessions.remove(&self.bot_id, self.generation);
        let client = self.handle.client();
        // Disconnects and flushes the device state before returning...
        self.handle.shutdown().await;
        // ... unless whatsapp-rust's background saver had taken the dirty
        // flag and its write was cut short by the shutdown: the flush then
        // finds nothing to do, and the last change (the pre-keys being on
        // the server, a ratchet step) would be lost. The device as it ended
        // is written once more (fenced like every write).
        let ended = client.persistence_manager().get_device_snapshot().to_serializable();
        if let Err(error) = self.device.save(&ended).await
            && !self.device.fenced_out()
        {
            tracing::warn!(bot = %self.bot_id, %error, "the bot's device state could not be saved at its stop");
        }
    }
}

#[async_trait]
impl BotDriver for WhatsAppDriver {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    async fn start(
        &self,
        spec: BotSpec,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Result<Box<dyn RunningBot>, DriverError> {
        let device = Arc::new(StoredDevice::new(
            self.store.clone(),
            self.clock.clone(),
            spec.bot_id.clone(),
            spec.runner.clone(),
            spec.version,
        ));
        let stored = device.exists().await.map_err(|e| DriverError(format!("cannot read the bot's state: {e}")))?;
        if !stored {
            let document: serde_json::Value = serde_json::from_str(spec.credentials.document())
                .map_err(|_| DriverError("the registered session is not JSON".into()))?;
            let imported = device_from_creds(&document)
                .map_err(|e| DriverError(format!("the registered session cannot be imported: {e}")))?;
            device
                .import(&imported)
                .await
                .map_err(|e| DriverError(format!("cannot store the imported session: {e}")))?;
            tracing::info!(bot = %spec.bot_id, version = spec.version, "WhatsApp session imported (credentials)");
        }
        // whatsapp-rust 0.7 treats a device without a push name as freshly
        // paired and holds `Connected` until the critical app-state sync
        // brings one (whatsapp-rust #1291): a session imported without
        // `me.name` could stay `loading` for good. Such a device announces
        // its own number instead, which every contact already sees.
        let nameless = device
            .load()
            .await
            .map_err(|e| DriverError(format!("cannot read the bot's state: {e}")))?
            .is_some_and(|stored| stored.push_name.is_empty());
        let (bot_id, generation, phone) = (spec.bot_id.clone(), spec.generation, spec.phone.clone());
        let hold = device.send_hold().await.map_err(|e| DriverError(format!("cannot read the bot's state: {e}")))?;
        let guard = Arc::new(SendGuard::new(self.send_policy, spec.paired_at, self.clock.clone(), hold));
        let on_event = {
            let (bot_id, phone, events, webhook, guard, device) =
                (bot_id.clone(), phone.clone(), events.clone(), self.webhook.clone(), guard.clone(), device.clone());
            move |event: Arc<whatsapp_rust::types::events::Event>, _client: Arc<Client>| {
                if let Some(status) = status_of(&event) {
                    let _ = events.send(DriverEvent { bot_id: bot_id.clone(), generation, event: status });
                }
                let hold = governed_event(&guard, &event);
                if let Some(hold) = &hold {
                    let event = BotEvent::Held { reason: hold.said.clone() };
                    let _ = events.send(DriverEvent { bot_id: bot_id.clone(), generation, event });
                }
                if let Some(webhook) = &webhook {
                    for payload in webhook_payloads(&bot_id, &phone, &event) {
                        webhook.post(payload);
                    }
                }
                // Kept with the bot's state: its next run (a restart, a
                // move) is held until the same time.
                let (device, bot_id) = (device.clone(), bot_id.clone());
                async move {
                    let Some(hold) = hold else { return };
                    if let Err(error) = device.save_send_hold(hold.until, &hold.reason).await {
                        tracing::warn!(bot = %bot_id, %error, "cannot keep the bot's send hold");
                    }
                }
            }
        };
        let mut builder = Bot::builder()
            .with_backend_arc(device.clone())
            .with_transport_factory(Transports(self.transport.clone()))
            .with_version(self.web_version.current().as_tuple())
            .on_event(on_event);
        if nameless {
            builder = builder.with_push_name(format!("+{phone}"));
        }
        let bot = builder.build().await.map_err(|e| DriverError(format!("cannot build the WhatsApp client: {e}")))?;
        let handle = bot.spawn();
        self.sessions.insert(bot_id.clone(), generation, phone, handle.client(), guard);
        // Another node took the bot: this run must end.
        let watch = CancellationToken::new();
        let (lost, stopped, id) = (device.lost(), watch.clone(), bot_id.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stopped.cancelled() => {}
                () = lost => {
                    let error = Some("this node no longer runs the bot (its state write was refused)".to_owned());
                    let event = BotEvent::Exited { code: Some(1), signal: None, error };
                    let _ = events.send(DriverEvent { bot_id: id, generation, event });
                }
            }
        });
        Ok(Box::new(RunningWhatsApp { handle, device, sessions: self.sessions.clone(), bot_id, generation, watch }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsapp_rust::NodeBuilder;

    fn entry(jid: &str, encrypted: bool) -> Node {
        let enc = encrypted.then(|| NodeBuilder::new("enc").attr("type", "msg").bytes(vec![1]).build());
        NodeBuilder::new("to").attr("jid", jid).children(enc).build()
    }

    fn message(entries: Vec<Node>) -> Node {
        let participants = NodeBuilder::new("participants").children(entries).build();
        NodeBuilder::new("message").attr("to", "254711000555@s.whatsapp.net").children([participants]).build()
    }

    #[test]
    fn a_message_reaches_its_addressee_only_through_one_of_its_devices() {
        assert!(reaches_the_addressee(&message(vec![entry("254711000555:2@s.whatsapp.net", true)])));
        assert!(!reaches_the_addressee(&message(Vec::new())), "encrypted for nobody");
        let own_copy_only = message(vec![entry("254700000960:1@s.whatsapp.net", true)]);
        assert!(!reaches_the_addressee(&own_copy_only), "only the sender's own device can read it");
        let unencrypted = message(vec![entry("254711000555@s.whatsapp.net", false)]);
        assert!(!reaches_the_addressee(&unencrypted));
        let direct = NodeBuilder::new("message")
            .attr("to", "254711000555@s.whatsapp.net")
            .children([NodeBuilder::new("enc").bytes(vec![1]).build()])
            .build();
        assert!(reaches_the_addressee(&direct));
    }
}
