//! The pair-code flow end to end against the fake WhatsApp server
//! (`fake-server`): Trekker's pairing provider asks for a code, the test
//! types it on the fake's phone, the phone links the device, the device
//! reconnects, uploads its pre-keys and only then exports its session ID,
//! which reaches the guest's own chat (a real client on the account's
//! phone decrypts it), registers and starts as a bot with an empty push
//! name. Then the refusals: WhatsApp refusing a code, a wrong code, no
//! code typed in time, a passkey request. The fake's XX handshake needs
//! whatsapp-rust's `danger-skip-cert-chain-verify`: hence this crate.

#![cfg(feature = "fake-pairing")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;
#[path = "../../trekker-whatsapp/tests/support/fake_server.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::FakeServer;
use support::phone::LINKED_DEVICE;
use tokio::sync::mpsc;
use trekker_app::pairing::{PairingProvider, PairingSession};
use trekker_domain::PhoneNumber;
use trekker_domain::time::SystemClock;
use trekker_runtime::{BotDriver, BotEvent};
use trekker_store::Store;
use trekker_whatsapp::driver::WhatsAppDriver;
use trekker_whatsapp::pairing::WhatsAppPairing;

const PHONE: &str = "254700000961";
/// The account's own phone: a primary device (testkit variant 50).
const PHONE_VARIANT: u32 = 50;

fn provider(server: &FakeServer, deadline: Duration) -> WhatsAppPairing {
    WhatsAppPairing {
        code_within: Duration::from_secs(20),
        deadline,
        online_within: Duration::from_secs(3),
        transport: Some(Arc::new(server.clone())),
        ..Default::default()
    }
}

/// Starts a pairing of PHONE and waits for its code.
async fn pairing(provider: &WhatsAppPairing) -> Result<PairingSession, String> {
    let phone = PhoneNumber::parse(PHONE).unwrap();
    tokio::time::timeout(Duration::from_secs(40), provider.start(&phone)).await.expect("start answers in time")
}

/// The guest types `code` on the phone (PBKDF2 twice: off the runtime).
async fn type_code(server: &FakeServer, code: &str) {
    let (server, code) = (server.clone(), code.to_owned());
    tokio::task::spawn_blocking(move || server.type_code(PHONE, &code)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_code_typed_on_the_phone_links_a_device_that_registers_and_starts() {
    let server = FakeServer { serves_login: true, ..FakeServer::new(9) };
    let own_chat = Arc::default();
    let phone = support::peer::client(&server, PHONE, PHONE_VARIANT, |_| {}, Arc::clone(&own_chat)).await;
    phone.client().wait_for_connected(Duration::from_secs(15)).await.unwrap();

    let session = pairing(&provider(&server, Duration::from_secs(60))).await.unwrap();
    assert_eq!(session.code.len(), 8, "WhatsApp's codes are eight characters: {}", session.code);
    type_code(&server, &session.code).await;
    let credentials = tokio::time::timeout(Duration::from_secs(60), session.outcome).await.unwrap();
    let credentials = credentials.unwrap();

    assert_eq!(server.linked.lock().unwrap().len(), 1, "the companion signed its identity once");
    let document: serde_json::Value = serde_json::from_str(credentials.document()).unwrap();
    assert_eq!(document["me"]["id"], format!("{PHONE}:{LINKED_DEVICE}@s.whatsapp.net"));
    let announced = format!("Your Trekker session ID:\n{}", credentials.to_session_id());
    let arrived = support::peer::until_text(&own_chat, &announced).await;
    assert!(arrived.is_ok(), "the session ID never reached the guest's own chat: {arrived:?}");
    let device_uploads = server.uploads.lock().unwrap().keys().filter(|(_, d)| *d == LINKED_DEVICE).count();
    assert_eq!(device_uploads, 1, "the linked device's pre-keys were on the server before the export");

    // The session registers and its first start goes online although the
    // export carries no push name.
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let spec = common::registered(&store, PHONE, credentials).await;
    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock)).with_transport(Arc::new(server.clone()));
    let (events, mut received) = mpsc::unbounded_channel();
    let running = driver.start(spec, events).await.unwrap();
    let online = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = received.recv().await {
            if event.event == BotEvent::Connected {
                return true;
            }
        }
        false
    })
    .await;
    server.hang_up();
    phone.shutdown().await;
    running.stop().await;
    assert_eq!(online, Ok(true), "the registered session's bot went online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_refused_code_request_fails_at_once_with_whatsapps_reason() {
    let server =
        FakeServer { serves_login: true, refuses_codes: Some((429, "rate-overlimit".into())), ..FakeServer::new(9) };
    let refused = pairing(&provider(&server, Duration::from_secs(5))).await;
    server.hang_up();
    let error = refused.expect_err("no code was given");
    assert!(error.contains("WhatsApp gave no pairing code"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_wrong_code_typed_on_the_phone_ends_the_pairing_refused() {
    let server = FakeServer { serves_login: true, ..FakeServer::new(9) };
    let session = pairing(&provider(&server, Duration::from_secs(60))).await.unwrap();
    let wrong = if session.code.starts_with('A') { "BBBBBBBB" } else { "AAAAAAAA" };
    type_code(&server, wrong).await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), session.outcome).await.unwrap();
    server.hang_up();
    let error = outcome.expect_err("a wrong code links nothing");
    assert!(error.contains("WhatsApp refused the pairing"), "{error}");
    assert!(server.linked.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_code_nobody_types_ends_at_the_deadline() {
    let server = FakeServer { serves_login: true, ..FakeServer::new(9) };
    let session = pairing(&provider(&server, Duration::from_secs(2))).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), session.outcome).await.unwrap();
    server.hang_up();
    let error = outcome.expect_err("nobody typed the code");
    assert!(error.contains("not confirmed in time"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_passkey_request_ends_the_pairing_with_what_to_do() {
    let server = FakeServer { serves_login: true, asks_passkey: true, ..FakeServer::new(9) };
    // WhatsApp asks right after the code: the request may come before the
    // code reaches the provider (the start fails) or after (the outcome).
    let outcome = match pairing(&provider(&server, Duration::from_secs(30))).await {
        Ok(session) => tokio::time::timeout(Duration::from_secs(40), session.outcome).await.unwrap(),
        Err(refused) => Err(refused),
    };
    server.hang_up();
    let error = outcome.expect_err("Trekker cannot answer a passkey request");
    assert!(error.contains("passkey"), "{error}");
}
