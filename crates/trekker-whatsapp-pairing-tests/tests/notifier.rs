//! `NOTIFIER=whatsapp` for a bot that no node runs (waiting for approval,
//! stopped): the guest's message leaves through a short-lived connection
//! made from the registered credentials with an in-memory store. Such a
//! device has no cached server certificate, so it logs in to the fake
//! server by XX, which needs whatsapp-rust's `danger-skip-cert-chain-verify`
//! (hence this crate).

#![cfg(feature = "fake-pairing")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;
#[path = "../../trekker-whatsapp/tests/support/fake_server.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{FakeServer, is_pre_key_upload};
use trekker_app::notify::Notifier as _;
use trekker_domain::PhoneNumber;
use trekker_domain::time::SystemClock;
use trekker_store::Store;
use trekker_testkit::creds;
use trekker_whatsapp::driver::WhatsAppDriver;
use trekker_whatsapp::notifier::WhatsAppNotifier;

const PHONE: &str = "254700000962";
/// The registered session's variant (a companion device).
const VARIANT: u32 = 7;
/// The account's own phone: a primary device.
const PHONE_VARIANT: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_a_bot_nobody_runs_notifies_its_guest_through_a_short_lived_connection() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let server = FakeServer { serves_login: true, ..FakeServer::new(11) };
    let phone = PhoneNumber::parse(PHONE).unwrap();
    common::pending(&store, &phone, &creds::credentials(PHONE, VARIANT)).await;
    let own_chat = Arc::default();
    let on_phone = support::peer::client(&server, PHONE, PHONE_VARIANT, |_| {}, Arc::clone(&own_chat)).await;
    on_phone.client().wait_for_connected(Duration::from_secs(15)).await.unwrap();
    server.stanza("the phone's pre-keys", is_pre_key_upload).await;

    let driver = WhatsAppDriver::new(store.clone(), Arc::new(SystemClock));
    let notifier = WhatsAppNotifier::new(driver.sessions(), store.clone(), store.clone())
        .with_transport(Arc::new(server.clone()), Duration::from_secs(15));
    let sent = notifier.send(PHONE, "Your bot is registered and waits for approval").await;
    let arrived = support::peer::until_text(&own_chat, "Your bot is registered and waits for approval").await;
    let logins = server.logins.lock().unwrap().clone();
    server.hang_up();
    on_phone.shutdown().await;
    assert!(sent.is_ok(), "{sent:?}");
    assert!(arrived.is_ok(), "the guest's own chat never got it: {arrived:?}");
    let companion = logins.iter().flatten().find(|login| login.device == Some(VARIANT)).expect("the session logged in");
    assert_eq!(companion.username, Some(PHONE.parse().unwrap()), "as the registered session's own account");
}
