//! `PAIRING_PROVIDER=whatsapp`: a real pairing code from WhatsApp.
//!
//! Each pairing is one short-lived whatsapp-rust connection with an
//! in-memory store: it asks WhatsApp for a pairing code for the number
//! (the guest types it on the phone), waits under a hard deadline for the
//! phone to confirm, exports the new device as a Baileys `creds.json`
//! ([`crate::session`]), which registers like any other session ID, sends
//! that session ID to the guest's own chat, and closes. Nothing of the
//! connection outlives the pairing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use trekker_app::pairing::{PairingProvider, PairingSession};
use trekker_domain::{Credentials, PhoneNumber};
use whatsapp_rust::Client;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::transport::TransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::store::{Device, InMemoryBackend};

use crate::session::creds_from_device;
use crate::transport::Transports;
use crate::web_version::WebVersion;

/// How long the paired device has, once the phone confirmed, to be online
/// again (whatsapp-rust holds `Connected` for the critical app-state sync,
/// which brings the push name); past it, a logged-in device will do.
const ONLINE_WITHIN: Duration = Duration::from_secs(30);
/// How long it then has to put its pre-keys on the server.
const PRE_KEYS_WITHIN: Duration = Duration::from_secs(20);

/// The end of a pairing the phone confirmed: waits until `client` is
/// online as the new device (after WhatsApp's reconnect; `online_within`,
/// then at least logged in) and its pre-keys are on the server
/// (`keys_within`), and only then gives the device to export, so a session
/// ID never names a device that cannot receive messages yet.
pub async fn settle_paired_device(
    client: &Client,
    online_within: Duration,
    keys_within: Duration,
) -> Result<Device, String> {
    if client.wait_for_connected(online_within).await.is_err() && !client.is_logged_in() {
        return Err("the phone confirmed, but the new device did not come online in time".into());
    }
    let keys_on_server = tokio::time::timeout(keys_within, async {
        while !client.persistence_manager().get_device_snapshot().server_has_prekeys {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if keys_on_server.is_err() {
        return Err("the new device could not publish its keys to WhatsApp in time".into());
    }
    Ok(client.persistence_manager().get_device_snapshot().to_serializable())
}

/// Real pairing through WhatsApp (see the module header).
#[derive(Clone)]
pub struct WhatsAppPairing {
    /// How long WhatsApp has to hand out a pairing code.
    pub code_within: Duration,
    /// How long the guest has to confirm the code on the phone.
    pub deadline: Duration,
    /// How long the confirmed device has to be online again before a
    /// logged-in one is taken as it is (see [`settle_paired_device`]).
    pub online_within: Duration,
    /// How connections to WhatsApp are made: WhatsApp's WebSocket unless
    /// replaced (tests use one that reaches nothing).
    pub transport: Option<Arc<dyn TransportFactory>>,
    /// The WhatsApp Web version the pairing client announces.
    pub web_version: WebVersion,
}

impl std::fmt::Debug for WhatsAppPairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppPairing")
            .field("code_within", &self.code_within)
            .field("deadline", &self.deadline)
            .field("online_within", &self.online_within)
            .field("transport_replaced", &self.transport.is_some())
            .field("web_version", &self.web_version.current())
            .finish()
    }
}

impl Default for WhatsAppPairing {
    fn default() -> Self {
        Self {
            code_within: Duration::from_secs(20),
            deadline: Duration::from_secs(60),
            online_within: ONLINE_WITHIN,
            transport: None,
            web_version: WebVersion::default(),
        }
    }
}

/// What a pairing event means for the guest waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingStep {
    /// The code to type on the phone.
    Code(String),
    /// The phone confirmed: the device is linked (`platform` of the phone).
    Paired { platform: String },
    /// The pairing is over, for this reason (for a person).
    Failed(String),
}

/// The step an event is, if any: a code, WhatsApp's refusal (with its
/// retry-after when it gives one), a passkey WhatsApp wants (which Trekker
/// cannot give), the phone's confirmation or its refusal.
pub fn pairing_step(event: &Event) -> Option<PairingStep> {
    match event {
        Event::PairingCode(code) => Some(PairingStep::Code(code.code.clone())),
        Event::PairingCodeError(error) => {
            let wait = error.backoff.map(|b| format!("; try again in {} s", b.as_secs()));
            Some(PairingStep::Failed(format!("WhatsApp gave no pairing code{}", wait.unwrap_or_default())))
        }
        Event::PairPasskeyRequest(_) => Some(PairingStep::Failed(
            "WhatsApp asks this account for a passkey before linking a device, which Trekker cannot provide: \
             link the device with another tool and register its session ID"
                .into(),
        )),
        Event::PairPasskeyError(error) => {
            Some(PairingStep::Failed(format!("WhatsApp's passkey check failed: {}", error.error)))
        }
        Event::PairSuccess(success) => Some(PairingStep::Paired { platform: success.platform.clone() }),
        Event::PairError(error) => Some(PairingStep::Failed(format!("WhatsApp refused the pairing: {}", error.error))),
        _ => None,
    }
}

/// What the connection reports, once.
type Slot<T> = Arc<Mutex<Option<oneshot::Sender<T>>>>;

fn fill<T>(slot: &Slot<T>, value: T) {
    if let Some(sender) = slot.lock().ok().and_then(|mut s| s.take()) {
        let _ = sender.send(value);
    }
}

#[async_trait]
impl PairingProvider for WhatsAppPairing {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    async fn start(&self, phone: &PhoneNumber) -> Result<PairingSession, String> {
        let (code_tx, code_rx) = oneshot::channel::<Result<String, String>>();
        let (paired_tx, paired_rx) = oneshot::channel::<Result<(Arc<Device>, String), String>>();
        let (code_slot, paired_slot): (Slot<_>, Slot<_>) =
            (Arc::new(Mutex::new(Some(code_tx))), Arc::new(Mutex::new(Some(paired_tx))));
        let options = PairCodeOptions { phone_number: phone.to_string(), ..Default::default() };
        // The phone's confirmation is not the end: the client reconnects as
        // the new device, and only once it is online and its pre-keys are on
        // the server is the device worth exporting.
        let confirmed = Arc::new(AtomicBool::new(false));
        let confirmed_seen = confirmed.clone();
        let online_within = self.online_within;
        let bot = Bot::builder()
            .with_backend(InMemoryBackend::new())
            .with_transport_factory(Transports(self.transport.clone()))
            .with_version(self.web_version.current().as_tuple())
            .with_pair_code(options)
            .on_event(move |event, client| {
                let (code_slot, paired_slot, confirmed) = (code_slot.clone(), paired_slot.clone(), confirmed.clone());
                async move {
                    match pairing_step(&event) {
                        Some(PairingStep::Code(code)) => fill(&code_slot, Ok(code)),
                        Some(PairingStep::Failed(message)) => {
                            // The same event ends a pairing whose code was
                            // given (the phone's half failed): say so.
                            let code_given = code_slot.lock().is_ok_and(|slot| slot.is_none());
                            let message = match &*event {
                                Event::PairingCodeError(error) if code_given => {
                                    format!("WhatsApp refused the pairing: {}", error.error)
                                }
                                _ => message,
                            };
                            fill(&code_slot, Err(message.clone()));
                            fill(&paired_slot, Err(message));
                        }
                        Some(PairingStep::Paired { platform }) => {
                            confirmed.store(true, Ordering::SeqCst);
                            // Off the event loop: settling waits for the reconnect.
                            tokio::spawn(async move {
                                let settled = settle_paired_device(&client, online_within, PRE_KEYS_WITHIN).await;
                                fill(&paired_slot, settled.map(|device| (Arc::new(device), platform)));
                            });
                        }
                        None => {}
                    }
                }
            })
            .build()
            .await
            .map_err(|e| format!("cannot open a WhatsApp connection: {e}"))?;
        let handle = bot.spawn();
        let code = match tokio::time::timeout(self.code_within, code_rx).await {
            Ok(Ok(Ok(code))) => code,
            Ok(Ok(Err(message))) => {
                handle.shutdown().await;
                return Err(message);
            }
            _ => {
                handle.shutdown().await;
                return Err("WhatsApp gave no pairing code in time (is WhatsApp reachable from this node?)".into());
            }
        };
        let deadline = self.deadline;
        let outcome = Box::pin(async move {
            let mut paired_rx = paired_rx;
            let mut paired = tokio::time::timeout(deadline, &mut paired_rx).await;
            if paired.is_err() && confirmed_seen.load(Ordering::SeqCst) {
                // Confirmed just in time: the device gets its own budget.
                paired = tokio::time::timeout(online_within + PRE_KEYS_WITHIN, &mut paired_rx).await;
            }
            let paired = match paired {
                Ok(Ok(result)) => result,
                _ if confirmed_seen.load(Ordering::SeqCst) => {
                    Err("the phone confirmed, but the new device did not come online in time".to_owned())
                }
                _ => Err("the pairing code was not confirmed in time".to_owned()),
            };
            let credentials = paired.and_then(|(device, platform)| {
                let creds = creds_from_device(&device, &platform).map_err(|e| e.to_string())?;
                Credentials::from_json_value(&creds).map_err(|e| format!("the new session does not check out: {e}"))
            });
            if let Ok(credentials) = &credentials
                && let Some(own) = handle.client().persistence_manager().get_device_snapshot().pn.clone()
            {
                // The session ID in the guest's own chat, best effort: the
                // status poll returns it too.
                let text = format!("Your Trekker session ID:\n{}", credentials.to_session_id());
                let sent = tokio::time::timeout(Duration::from_secs(10), handle.client().send_text(own, text)).await;
                if !matches!(sent, Ok(Ok(_))) {
                    tracing::warn!("could not send the session ID to the guest's own chat");
                }
            }
            handle.shutdown().await;
            credentials
        });
        Ok(PairingSession { code, outcome })
    }
}
