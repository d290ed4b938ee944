//! What the tests of this crate share: a bot registered in a store.

#![allow(dead_code)] // Each test file takes the parts it needs.

use std::sync::Arc;

use trekker_domain::time::{Clock, SystemClock};
use trekker_domain::{BotId, Credentials, PhoneNumber, ServerName};
use trekker_runtime::BotSpec;
use trekker_store::{NewActivity, NewBot, ServerRegistration, SideEffects, Store};

/// The node the tests' bots are registered on.
pub fn node() -> ServerName {
    ServerName::parse("SERVER0").unwrap()
}

/// Registers `credentials` as a bot of `phone` waiting for approval (no
/// node runs it).
pub async fn pending(store: &Arc<dyn Store>, phone: &PhoneNumber, credentials: &Credentials) -> BotId {
    let now = SystemClock.now_ms();
    let registration = ServerRegistration { name: node(), max_bot_count: 10, base_url: None, description: None };
    store.upsert_server(&registration, now).await.unwrap();
    let id = BotId::from_random_bits(0xfa17);
    let new = NewBot {
        id: id.clone(),
        name: "paired".into(),
        phone: phone.clone(),
        server: node(),
        credentials: credentials.clone(),
        pending_share_percent: 100,
    };
    let effects = SideEffects::activity(NewActivity::new(&node(), "registered", "test"));
    store.register_bot(&new, &effects, now).await.unwrap();
    id
}

/// [`pending`], then approved and taken by this node: the spec to start
/// it with.
pub async fn registered(store: &Arc<dyn Store>, phone: &str, credentials: Credentials) -> BotSpec {
    let phone = PhoneNumber::parse(phone).unwrap();
    let id = pending(store, &phone, &credentials).await;
    let now = SystemClock.now_ms();
    let effects = SideEffects::activity(NewActivity::new(&node(), "approved", "test"));
    store.approve_bot(&id, now + 86_400_000, &effects, now).await.unwrap();
    let lease = store.start_node_lease(&node(), now, 600_000).await.unwrap();
    assert!(store.acquire_bot(&id, &lease, 1, now).await.unwrap());
    BotSpec {
        bot_id: id,
        runner: lease,
        phone,
        server: node(),
        credentials,
        version: 1,
        generation: 1,
        session: None,
        paired_at: now,
    }
}
