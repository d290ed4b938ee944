//! Real whatsapp-rust clients of the test credentials, logged in to the
//! fake server with an in-memory store (a peer, a phone, a pairing-like
//! client), and what they received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use trekker_testkit::creds;
use trekker_whatsapp::session::device_from_creds;
use trekker_whatsapp::web_version::WebVersion;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::prelude::MessageExt as _;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::store::traits::DeviceStore as _;
use whatsapp_rust::wacore::store::{Device, InMemoryBackend};

use super::{FakeServer, cached_chain};

/// A whatsapp-rust client of `phone`'s test credentials (`variant`) over
/// the fake, with an in-memory store, spawned; the texts it receives are
/// added to `texts`.
pub async fn client(
    server: &FakeServer,
    phone: &str,
    variant: u32,
    change: impl FnOnce(&mut Device),
    texts: Arc<Mutex<Vec<String>>>,
) -> BotHandle {
    let document: Value = serde_json::from_str(creds::credentials(phone, variant).document()).unwrap();
    let mut device = device_from_creds(&document).unwrap();
    device.server_cert_chain = Some(cached_chain(server.public()));
    change(&mut device);
    let backend = InMemoryBackend::new();
    backend.save(&device).await.unwrap();
    let bot = Bot::builder()
        .with_backend(backend)
        .with_transport_factory(server.clone())
        .with_version(WebVersion::default().current().as_tuple())
        .on_event(move |event, _client| {
            if let Event::Messages(batch) = &*event {
                let received = batch.messages.iter().filter_map(|inbound| inbound.message.text_content());
                texts.lock().unwrap().extend(received.map(str::to_owned));
            }
            async {}
        })
        .build()
        .await
        .unwrap();
    bot.spawn()
}

/// Waits (15 s at most) until `texts` holds `text`.
pub async fn until_text(texts: &Mutex<Vec<String>>, text: &str) -> Result<(), Vec<String>> {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while !texts.lock().unwrap().iter().any(|t| t == text) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.map_err(|_| texts.lock().unwrap().clone())
}
