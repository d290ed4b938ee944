//! The WhatsApp pairing provider without WhatsApp: its connections go
//! through a transport that reaches nothing (so no machine running this
//! test ever asks WhatsApp for a code); a pairing that gets no code fails
//! with a clear message within its own deadline.

#![cfg(feature = "whatsapp")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::Arc;
use std::time::Duration;

use trekker_app::pairing::PairingProvider;
use trekker_domain::PhoneNumber;
use trekker_whatsapp::pairing::WhatsAppPairing;
use whatsapp_rust::async_channel::Receiver;
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};

/// Every connection attempt fails at once, as with no network.
struct Unreachable;

#[whatsapp_rust::async_trait]
impl TransportFactory for Unreachable {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, Receiver<TransportEvent>), whatsapp_rust::anyhow::Error> {
        Err(whatsapp_rust::anyhow::anyhow!("no network in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_without_a_code_fails_with_a_clear_message() {
    let provider = WhatsAppPairing {
        code_within: Duration::from_secs(3),
        deadline: Duration::from_secs(3),
        transport: Some(Arc::new(Unreachable)),
        ..Default::default()
    };
    let phone = PhoneNumber::parse("254700000001").unwrap();
    let started = tokio::time::timeout(Duration::from_secs(60), provider.start(&phone)).await;
    let error = started.expect("start gave up within its own deadline").expect_err("no code can come");
    assert!(error.contains("WhatsApp gave no pairing code"), "{error}");
    assert_eq!(provider.name(), "whatsapp");
}

#[test]
fn each_pairing_event_is_a_step_the_guest_sees() {
    use trekker_whatsapp::pairing::{PairingStep, pairing_step};
    use whatsapp_rust::types::events::*;

    let code = PairingCode::builder().code("ABCD-EFGH".into()).timeout(Duration::from_secs(60)).build();
    assert_eq!(pairing_step(&Event::PairingCode(code)), Some(PairingStep::Code("ABCD-EFGH".into())));
    let throttled =
        PairingCodeError::builder().backoff(Duration::from_secs(120)).error("rate-overlimit".into()).build();
    match pairing_step(&Event::PairingCodeError(throttled)) {
        Some(PairingStep::Failed(message)) => assert!(message.ends_with("try again in 120 s"), "{message}"),
        other => panic!("got {other:?}"),
    }
    let passkey = PairPasskeyRequest::builder().request_options_json("{}".into()).build();
    match pairing_step(&Event::PairPasskeyRequest(passkey)) {
        Some(PairingStep::Failed(message)) => assert!(message.contains("passkey"), "{message}"),
        other => panic!("a passkey request must end the pairing clearly, got {other:?}"),
    }
    let jid = whatsapp_rust::Jid::pn("254700000001");
    let paired = PairSuccess::builder()
        .id(jid.clone())
        .lid(jid.clone())
        .business_name(String::new())
        .platform("android".into())
        .build();
    assert_eq!(pairing_step(&Event::PairSuccess(paired)), Some(PairingStep::Paired { platform: "android".into() }));
    let refused = PairError::builder()
        .id(jid.clone())
        .lid(jid)
        .business_name(String::new())
        .platform("android".into())
        .error("bad code".into())
        .build();
    assert_eq!(
        pairing_step(&Event::PairError(refused)),
        Some(PairingStep::Failed("WhatsApp refused the pairing: bad code".into()))
    );
    assert_eq!(pairing_step(&Event::Connected(Connected::builder().build())), None);
}
