//! `NOTIFIER=whatsapp`: guest messages (registered, updated, approved,
//! capacity...) sent to the guest's own chat from the bot's own session.
//!
//! Only the bot's hosting node holds its session, so this notifier asks the
//! dispatcher for those messages alone ([`Notifier::hosted_only`]). A bot
//! running here sends from its live connection. A bot hosted here that no
//! node runs (waiting for approval, stopped) sends through a short-lived
//! connection made from its registered credentials with an in-memory
//! store: nothing else runs the session then, and nothing of that
//! connection is kept (the bot's first real start imports the credentials
//! afresh). A bot that is running but not connected yet makes the message
//! wait: the outbox retries it with backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use trekker_app::notify::{Notifier, NotifyError};
use trekker_domain::{PhoneNumber, RuntimeStatus};
use trekker_store::{BotStore, RuntimeStore};
use whatsapp_rust::bot::Bot;
use whatsapp_rust::transport::TransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::store::traits::DeviceStore;

use crate::driver::{Sessions, send_from, send_governed};
use crate::session::device_from_creds;
use crate::transport::Transports;
use crate::web_version::WebVersion;

/// How long a short-lived connection may take to come up, by default.
const CONNECT_WITHIN: Duration = Duration::from_secs(20);

/// The notifier (see the module header).
pub struct WhatsAppNotifier {
    sessions: Arc<Sessions>,
    bots: Arc<dyn BotStore>,
    runtime: Arc<dyn RuntimeStore>,
    transport: Option<Arc<dyn TransportFactory>>,
    connect_within: Duration,
    web_version: WebVersion,
}

impl std::fmt::Debug for WhatsAppNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppNotifier").field("sessions", &self.sessions).finish_non_exhaustive()
    }
}

impl WhatsAppNotifier {
    /// Sends from the sessions of this node's `BOT_DRIVER=whatsapp`.
    pub fn new(sessions: Arc<Sessions>, bots: Arc<dyn BotStore>, runtime: Arc<dyn RuntimeStore>) -> Self {
        Self {
            sessions,
            bots,
            runtime,
            transport: None,
            connect_within: CONNECT_WITHIN,
            web_version: WebVersion::default(),
        }
    }

    /// Short-lived connections announce `version` (the node's, refreshed).
    pub fn with_web_version(mut self, version: WebVersion) -> Self {
        self.web_version = version;
        self
    }

    /// Short-lived connections through `transport`, given `within` to come
    /// up (tests).
    pub fn with_transport(mut self, transport: Arc<dyn TransportFactory>, within: Duration) -> Self {
        self.transport = Some(transport);
        self.connect_within = within;
        self
    }

    /// One connection from the bot's registered credentials, for one message.
    async fn send_once(&self, phone: &PhoneNumber, text: &str) -> Result<(), NotifyError> {
        let entry = self
            .bots
            .find_registration(phone)
            .await
            .map_err(|e| NotifyError(format!("cannot read the registry: {e}")))?
            .ok_or_else(|| NotifyError("no bot is registered for this phone: no session to send from".into()))?;
        let bot = self
            .bots
            .get_bot(&entry.bot_id)
            .await
            .map_err(|e| NotifyError(format!("cannot read the bot: {e}")))?
            .ok_or_else(|| NotifyError("the phone's bot is gone: no session to send from".into()))?;
        if matches!(bot.status, RuntimeStatus::Online | RuntimeStatus::Loading) {
            // A runner holds the session; two connections would replace each other.
            return Err(NotifyError("the bot is starting; its own connection will send".into()));
        }
        let (credentials, _) = self
            .runtime
            .load_credentials(&bot.id)
            .await
            .map_err(|e| NotifyError(format!("cannot load the bot's credentials: {e}")))?
            .ok_or_else(|| NotifyError("the bot has no credentials".into()))?;
        let document: serde_json::Value = serde_json::from_str(credentials.document())
            .map_err(|_| NotifyError("the registered session is not JSON".into()))?;
        let device = device_from_creds(&document).map_err(|e| NotifyError(format!("unusable session: {e}")))?;
        let backend = InMemoryBackend::new();
        backend.save(&device).await.map_err(|e| NotifyError(format!("cannot load the session: {e}")))?;
        let (connected_tx, connected_rx) = oneshot::channel::<Result<(), String>>();
        let slot = Arc::new(std::sync::Mutex::new(Some(connected_tx)));
        let client = Bot::builder()
            .with_backend(backend)
            .with_transport_factory(Transports(self.transport.clone()))
            .with_version(self.web_version.current().as_tuple())
            .on_event(move |event, _| {
                let outcome = match &*event {
                    Event::Connected(_) => Some(Ok(())),
                    Event::LoggedOut(_) => Some(Err("the session is logged out".to_owned())),
                    Event::ConnectFailure(failure) => Some(Err(format!("connect failure {:?}", failure.reason))),
                    _ => None,
                };
                if let Some(outcome) = outcome
                    && let Some(tx) = slot.lock().ok().and_then(|mut s| s.take())
                {
                    let _ = tx.send(outcome);
                }
                async {}
            })
            .build()
            .await
            .map_err(|e| NotifyError(format!("cannot open a WhatsApp connection: {e}")))?;
        let handle = client.spawn();
        let sent = match tokio::time::timeout(self.connect_within, connected_rx).await {
            Ok(Ok(Ok(()))) => {
                send_from(&handle.client(), None, text).await.map(|_| ()).map_err(|e| NotifyError(e.to_string()))
            }
            Ok(Ok(Err(reason))) => Err(NotifyError(reason)),
            _ => Err(NotifyError(format!("WhatsApp did not connect within {} s", self.connect_within.as_secs()))),
        };
        handle.shutdown().await;
        sent
    }
}

#[async_trait]
impl Notifier for WhatsAppNotifier {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn hosted_only(&self) -> bool {
        true
    }

    async fn send(&self, phone: &str, text: &str) -> Result<(), NotifyError> {
        let phone = PhoneNumber::parse(phone).map_err(|e| NotifyError(format!("not a phone number: {e}")))?;
        match self.sessions.live_of_phone(&phone) {
            // Governed like any send: a held or busy bot makes the message
            // wait, and the outbox retries it.
            Some((client, guard)) if client.is_connected() => {
                send_governed(&client, &guard, None, text).await.map(|_| ()).map_err(|e| NotifyError(e.to_string()))
            }
            Some(_) => Err(NotifyError("the bot is not connected to WhatsApp yet".into())),
            None => self.send_once(&phone, text).await,
        }
    }
}
