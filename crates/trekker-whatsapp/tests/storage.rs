//! One conformance suite for whatsapp-rust's storage backend, run against
//! the library's own `InMemoryBackend` (the reference), and Trekker's
//! `StoredDevice` on SQLite and on PostgreSQL: every case states what the
//! library expects, and all three must answer the same.

#![cfg(feature = "whatsapp")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::Arc;

use trekker_domain::time::{Clock, SystemClock};
use trekker_domain::{BotId, ServerName};
use trekker_store::{NewActivity, NewBot, NodeLease, ServerRegistration, SideEffects, Store};
use trekker_testkit::creds;
use trekker_whatsapp::storage::StoredDevice;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::traits::*;

const PHONE: &str = "254700000900";
const LEASE_MS: i64 = 600_000;

/// A bot on `store`, approved and run by a fresh lease of SERVER0.
async fn running_bot(store: &Arc<dyn Store>) -> (BotId, NodeLease) {
    let node = ServerName::parse("SERVER0").unwrap();
    let now = SystemClock.now_ms();
    let registration = ServerRegistration { name: node.clone(), max_bot_count: 10, base_url: None, description: None };
    store.upsert_server(&registration, now).await.unwrap();
    let bot = NewBot {
        id: BotId::from_random_bits(0x5eed),
        name: "storage".into(),
        phone: trekker_domain::PhoneNumber::parse(PHONE).unwrap(),
        server: node.clone(),
        credentials: creds::credentials(PHONE, 1),
        pending_share_percent: 100,
    };
    let effects = SideEffects::activity(NewActivity::new(&node, "registered", "test"));
    let bot = store.register_bot(&bot, &effects, now).await.unwrap().bot;
    store.approve_bot(&bot.id, now + LEASE_MS * 10, &effects, now).await.unwrap();
    let lease = store.start_node_lease(&node, now, LEASE_MS).await.unwrap();
    assert!(store.acquire_bot(&bot.id, &lease, 1, now).await.unwrap());
    (bot.id, lease)
}

fn stored(store: &Arc<dyn Store>, bot: &BotId, lease: &NodeLease) -> StoredDevice {
    StoredDevice::new(store.clone(), Arc::new(SystemClock), bot.clone(), lease.clone(), 1)
}

/// Runs `case` against the reference and both databases.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&whatsapp_rust::wacore::store::InMemoryBackend::new()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _file) = trekker_testkit::sqlite_store().await;
                    let store: std::sync::Arc<dyn trekker_store::Store> = store;
                    let (bot, lease) = super::running_bot(&store).await;
                    super::$case(&super::stored(&store, &bot, &lease)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(store) = trekker_testkit::postgres_store().await else { return };
                    let store: std::sync::Arc<dyn trekker_store::Store> = store;
                    let (bot, lease) = super::running_bot(&store).await;
                    super::$case(&super::stored(&store, &bot, &lease)).await;
                }
            )*
        }
    };
}

conformance!(
    identities_and_sessions,
    prekeys_and_signed_prekeys,
    sender_keys_and_their_devices,
    app_state_keys_versions_and_macs,
    lid_mappings_follow_the_latest_phone,
    base_keys_device_lists_and_group_metadata,
    tc_tokens_keep_the_newer_and_expire_when_both_windows_pass,
    sent_messages_are_taken_once_and_expire,
    pending_inbound_messages,
    message_secrets_merge_and_expire,
    the_device_is_created_saved_and_loaded,
);

async fn identities_and_sessions(b: &dyn Backend) {
    let alice = "254711111111.0";
    assert_eq!(b.load_identity(alice).await.unwrap(), None);
    b.put_identity(alice, [1; 32]).await.unwrap();
    b.put_identity(alice, [2; 32]).await.unwrap();
    assert_eq!(b.load_identity(alice).await.unwrap(), Some([2; 32]));
    b.put_identities_batch(&[(Arc::from("bob.0"), [3; 32]), (Arc::from("carol:2.0"), [4; 32])]).await.unwrap();
    assert_eq!(b.load_identity("carol:2.0").await.unwrap(), Some([4; 32]));
    b.delete_identity(alice).await.unwrap();
    assert_eq!(b.load_identity(alice).await.unwrap(), None);

    assert!(!b.has_session("dave@s.whatsapp.net.0").await.unwrap());
    b.put_session("dave@s.whatsapp.net.0", b"ratchet-1").await.unwrap();
    b.put_sessions_batch(&[
        (Arc::from("dave@s.whatsapp.net.0"), Bytes::from_static(b"ratchet-2")),
        (Arc::from("erin@s.whatsapp.net.0"), Bytes::from_static(b"e")),
    ])
    .await
    .unwrap();
    assert_eq!(b.get_session("dave@s.whatsapp.net.0").await.unwrap().as_deref(), Some(&b"ratchet-2"[..]));
    assert!(b.has_session("erin@s.whatsapp.net.0").await.unwrap());
    // A user has Signal state when a session or identity names them
    // (`user@...` or `user:device...`), not when another user's name starts
    // with theirs.
    assert!(b.has_signal_state_for_user("dave").await.unwrap());
    assert!(b.has_signal_state_for_user("carol").await.unwrap());
    assert!(!b.has_signal_state_for_user("dav").await.unwrap());
    b.delete_session("dave@s.whatsapp.net.0").await.unwrap();
    assert_eq!(b.get_session("dave@s.whatsapp.net.0").await.unwrap(), None);
    assert!(!b.has_signal_state_for_user("dave").await.unwrap());
}

async fn prekeys_and_signed_prekeys(b: &dyn Backend) {
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 0);
    b.store_prekey(7, b"seven", false).await.unwrap();
    b.store_prekeys_batch(&[(8, Bytes::from_static(b"eight")), (9, Bytes::from_static(b"nine"))], false).await.unwrap();
    assert_eq!(b.load_prekey(8).await.unwrap().as_deref(), Some(&b"eight"[..]));
    assert_eq!(b.load_prekey(10).await.unwrap(), None);
    let batch = b.load_prekeys_batch(&[9, 10, 7]).await.unwrap();
    assert_eq!(batch, vec![(9, Bytes::from_static(b"nine")), (7, Bytes::from_static(b"seven"))]);
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 9);
    // Marking keys uploaded never brings back one that was used up.
    b.remove_prekey(9).await.unwrap();
    b.mark_prekeys_uploaded(&[7, 9]).await.unwrap();
    assert_eq!(b.load_prekey(9).await.unwrap(), None);
    assert_eq!(b.load_prekey(7).await.unwrap().as_deref(), Some(&b"seven"[..]));
    assert_eq!(b.get_max_prekey_id().await.unwrap(), 8);

    b.store_signed_prekey(1, b"signed-1").await.unwrap();
    b.store_signed_prekey(2, b"signed-2").await.unwrap();
    assert_eq!(b.load_signed_prekey(2).await.unwrap(), Some(b"signed-2".to_vec()));
    let mut all = b.load_all_signed_prekeys().await.unwrap();
    all.sort();
    assert_eq!(all, vec![(1, b"signed-1".to_vec()), (2, b"signed-2".to_vec())]);
    b.remove_signed_prekey(1).await.unwrap();
    assert_eq!(b.load_signed_prekey(1).await.unwrap(), None);
}

async fn sender_keys_and_their_devices(b: &dyn Backend) {
    let group = "120363021033254949@g.us";
    b.put_sender_key("group::alice", b"sk-1").await.unwrap();
    b.put_sender_keys_batch(&[(Arc::from("group::alice"), Bytes::from_static(b"sk-2"))]).await.unwrap();
    assert_eq!(b.get_sender_key("group::alice").await.unwrap(), Some(b"sk-2".to_vec()));
    b.delete_sender_key("group::alice").await.unwrap();
    assert_eq!(b.get_sender_key("group::alice").await.unwrap(), None);

    assert!(b.get_sender_key_devices(group).await.unwrap().is_empty());
    b.set_sender_key_status(group, &[("a:1", true), ("b:2", false)]).await.unwrap();
    b.set_sender_key_status(group, &[("b:2", true), ("c:3", false)]).await.unwrap();
    b.set_sender_key_status("other@g.us", &[("a:1", true)]).await.unwrap();
    let mut devices = b.get_sender_key_devices(group).await.unwrap();
    devices.sort();
    assert_eq!(devices, vec![("a:1".into(), true), ("b:2".into(), true), ("c:3".into(), false)]);
    // A device removed from every group.
    b.delete_sender_key_device_rows(&["a:1"]).await.unwrap();
    let mut devices = b.get_sender_key_devices(group).await.unwrap();
    devices.sort();
    assert_eq!(devices, vec![("b:2".into(), true), ("c:3".into(), false)]);
    assert!(b.get_sender_key_devices("other@g.us").await.unwrap().is_empty());
    b.clear_sender_key_devices(group).await.unwrap();
    assert!(b.get_sender_key_devices(group).await.unwrap().is_empty());
    b.set_sender_key_status("other@g.us", &[("z:9", true)]).await.unwrap();
    b.clear_all_sender_key_devices().await.unwrap();
    assert!(b.get_sender_key_devices("other@g.us").await.unwrap().is_empty());
}

async fn app_state_keys_versions_and_macs(b: &dyn Backend) {
    assert_eq!(b.get_latest_sync_key_id().await.unwrap(), None);
    let key = |n: u8| AppStateSyncKey { key_data: vec![n; 32], fingerprint: vec![n], timestamp: i64::from(n) };
    b.set_sync_key(b"key-a", key(1)).await.unwrap();
    b.set_sync_key(b"key-b", key(2)).await.unwrap();
    assert_eq!(b.get_sync_key(b"key-a").await.unwrap().unwrap().key_data, vec![1; 32]);
    assert!(b.get_sync_key(b"key-c").await.unwrap().is_none());
    assert_eq!(b.get_latest_sync_key_id().await.unwrap(), Some(b"key-b".to_vec()));

    assert_eq!(b.get_version("regular").await.unwrap().version, 0, "a new collection starts at 0");
    let state = HashState { version: 42, hash: [7; 128], ..Default::default() };
    b.set_version("regular", state).await.unwrap();
    let read = b.get_version("regular").await.unwrap();
    assert_eq!((read.version, read.hash), (42, [7; 128]));

    let mac = |i: u8, v: u8| AppStateMutationMAC { index_mac: vec![i; 32], value_mac: vec![v; 32] };
    b.put_mutation_macs("regular", 42, &[mac(1, 10), mac(2, 20)]).await.unwrap();
    b.put_mutation_macs("critical", 1, &[mac(1, 99)]).await.unwrap();
    assert_eq!(b.get_mutation_mac("regular", &[1; 32]).await.unwrap(), Some(vec![10; 32]));
    let many = b.get_mutation_macs("regular", &[[1; 32], [3; 32], [2; 32]]).await.unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(many[&[2; 32]], vec![20; 32]);
    b.delete_mutation_macs("regular", &[vec![1; 32]]).await.unwrap();
    assert_eq!(b.get_mutation_mac("regular", &[1; 32]).await.unwrap(), None);
    b.clear_mutation_macs("regular").await.unwrap();
    assert_eq!(b.get_mutation_mac("regular", &[2; 32]).await.unwrap(), None);
    assert_eq!(b.get_mutation_mac("critical", &[1; 32]).await.unwrap(), Some(vec![99; 32]), "other collections stay");
}

fn mapping(lid: &str, phone: &str, at: i64) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: lid.into(),
        phone_number: phone.into(),
        created_at: at,
        updated_at: at,
        learning_source: "usync".into(),
    }
}

async fn lid_mappings_follow_the_latest_phone(b: &dyn Backend) {
    b.put_lid_mapping(&mapping("100000012345678", "254711000001", 1)).await.unwrap();
    assert_eq!(b.get_pn_mapping("254711000001").await.unwrap().unwrap().lid, "100000012345678");
    // The LID moves to another phone: the old phone no longer leads to it.
    b.put_lid_mappings(&[mapping("100000012345678", "254711000002", 2), mapping("100000099999999", "254711000003", 3)])
        .await
        .unwrap();
    assert!(b.get_pn_mapping("254711000001").await.unwrap().is_none());
    assert_eq!(b.get_lid_mapping("100000012345678").await.unwrap().unwrap().phone_number, "254711000002");
    let mut all: Vec<String> = b.get_all_lid_mappings().await.unwrap().into_iter().map(|m| m.lid).collect();
    all.sort();
    assert_eq!(all, vec!["100000012345678", "100000099999999"]);
}

async fn base_keys_device_lists_and_group_metadata(b: &dyn Backend) {
    b.save_base_key("alice.0", "msg-1", b"base").await.unwrap();
    assert!(b.has_same_base_key("alice.0", "msg-1", b"base").await.unwrap());
    assert!(!b.has_same_base_key("alice.0", "msg-1", b"other").await.unwrap());
    assert!(!b.has_same_base_key("alice.0m", "sg-1", b"base").await.unwrap(), "parts of a key stay apart");
    b.delete_base_key("alice.0", "msg-1").await.unwrap();
    assert!(!b.has_same_base_key("alice.0", "msg-1", b"base").await.unwrap());

    let record = |user: &str, devices: u32| DeviceListRecord {
        user: user.into(),
        devices: (0..devices).map(|d| DeviceInfo::new(d, Some(d))).collect(),
        timestamp: 5,
        phash: Some("2:abc".into()),
        raw_id: Some(9),
    };
    b.update_device_list(record("alice", 2)).await.unwrap();
    b.update_device_lists(vec![record("alice", 3), record("bob", 1)]).await.unwrap();
    let alice = b.get_devices("alice").await.unwrap().unwrap();
    assert_eq!((alice.devices.len(), alice.raw_id, alice.phash.as_deref()), (3, Some(9), Some("2:abc")));
    b.delete_devices("alice").await.unwrap();
    assert!(b.get_devices("alice").await.unwrap().is_none());
    assert!(b.get_devices("bob").await.unwrap().is_some());

    b.put_group_metadata("g@g.us", b"meta").await.unwrap();
    assert_eq!(b.get_group_metadata("g@g.us").await.unwrap(), Some(b"meta".to_vec()));
    b.delete_group_metadata("g@g.us").await.unwrap();
    assert_eq!(b.get_group_metadata("g@g.us").await.unwrap(), None);
}

async fn tc_tokens_keep_the_newer_and_expire_when_both_windows_pass(b: &dyn Backend) {
    b.store_received_tc_token("alice", b"token-new", 200).await.unwrap();
    b.store_received_tc_token("alice", b"token-old", 100).await.unwrap();
    assert_eq!(b.get_tc_token("alice").await.unwrap().unwrap().token, b"token-new");
    b.touch_tc_token_sender_timestamp("alice", 300).await.unwrap();
    b.touch_tc_token_sender_timestamp("alice", 250).await.unwrap();
    let alice = b.get_tc_token("alice").await.unwrap().unwrap();
    assert_eq!((alice.token_timestamp, alice.sender_timestamp), (200, Some(300)));
    // A sender stamp alone makes a placeholder that a real token replaces.
    b.touch_tc_token_sender_timestamp("bob", 50).await.unwrap();
    b.store_received_tc_token("bob", b"bob-token", 10).await.unwrap();
    let bob = b.get_tc_token("bob").await.unwrap().unwrap();
    assert_eq!((bob.token.as_slice(), bob.sender_timestamp), (&b"bob-token"[..], Some(50)));
    let entry = TcTokenEntry { token: b"c".to_vec(), token_timestamp: 400, sender_timestamp: None };
    b.put_tc_token("carol", &entry).await.unwrap();
    let mut jids = b.get_all_tc_token_jids().await.unwrap();
    jids.sort();
    assert_eq!(jids, vec!["alice", "bob", "carol"]);
    // bob: token 10 and sender 50 both before the cutoffs; alice's sender
    // stamp (300) is still live; carol's token (400) is live.
    assert_eq!(b.delete_expired_tc_tokens(220, 280).await.unwrap(), 1);
    let mut jids = b.get_all_tc_token_jids().await.unwrap();
    jids.sort();
    assert_eq!(jids, vec!["alice", "carol"]);
    b.delete_tc_token("carol").await.unwrap();
    assert!(b.get_tc_token("carol").await.unwrap().is_none());
}

async fn sent_messages_are_taken_once_and_expire(b: &dyn Backend) {
    let now = SystemClock.now_ms() / 1000;
    b.store_sent_message("chat@s.whatsapp.net", "m1", b"payload-1").await.unwrap();
    b.store_sent_message("chat@s.whatsapp.net", "m2", b"payload-2").await.unwrap();
    assert_eq!(b.take_sent_message("chat@s.whatsapp.net", "m1").await.unwrap(), Some(b"payload-1".to_vec()));
    assert_eq!(b.take_sent_message("chat@s.whatsapp.net", "m1").await.unwrap(), None, "taken once");
    assert_eq!(b.delete_expired_sent_messages(now - 60).await.unwrap(), 0, "stored just now");
    assert_eq!(b.delete_expired_sent_messages(now + 60).await.unwrap(), 1);
    assert_eq!(b.take_sent_message("chat@s.whatsapp.net", "m2").await.unwrap(), None);
}

async fn pending_inbound_messages(b: &dyn Backend) {
    let now = SystemClock.now_ms() / 1000;
    b.store_pending_inbound("chat", "alice", "id-1", b"one").await.unwrap();
    b.store_pending_inbound_batch(&[
        PendingInboundRow { chat: "chat", sender: "alice", id: "id-2", message: b"two" },
        PendingInboundRow { chat: "chat", sender: "bob", id: "id-1", message: b"three" },
    ])
    .await
    .unwrap();
    assert_eq!(b.get_pending_inbound("chat", "alice", "id-2").await.unwrap(), Some(b"two".to_vec()));
    assert_eq!(b.get_pending_inbound("chat", "bob", "id-1").await.unwrap(), Some(b"three".to_vec()));
    b.delete_pending_inbound("chat", "alice", "id-1").await.unwrap();
    b.delete_pending_inbound_batch(&[PendingInboundKey { chat: "chat", sender: "bob", id: "id-1" }]).await.unwrap();
    assert_eq!(b.get_pending_inbound("chat", "alice", "id-1").await.unwrap(), None);
    assert_eq!(b.delete_expired_pending_inbound(now - 60).await.unwrap(), 0);
    assert_eq!(b.delete_expired_pending_inbound(now + 60).await.unwrap(), 1);
    assert_eq!(b.get_pending_inbound("chat", "alice", "id-2").await.unwrap(), None);
}

fn secret(chat: &str, msg: &str, byte: u8, expires_at: i64, message_ts: i64) -> MsgSecretEntry {
    MsgSecretEntry {
        chat: Arc::from(chat),
        sender: Arc::from("alice@s.whatsapp.net"),
        msg_id: Arc::from(msg),
        secret: [byte; 32],
        expires_at,
        message_ts,
    }
}

async fn message_secrets_merge_and_expire(b: &dyn Backend) {
    let (chat, sender) = ("chat@s.whatsapp.net", "alice@s.whatsapp.net");
    b.put_msg_secret(chat, sender, "forever", &[9; 32]).await.unwrap();
    let stored = b
        .put_msg_secrets(vec![
            secret(chat, "m1", 1, 100, 50),
            secret(chat, "m1", 2, 300, 40),
            secret(chat, "m2", 3, 150, 0),
        ])
        .await
        .unwrap();
    assert_eq!(stored, 3);
    // The later secret wins; the later deadline and message time are kept.
    assert_eq!(b.get_msg_secret_with_ts(chat, sender, "m1").await.unwrap(), Some((vec![2; 32], 50)));
    assert_eq!(b.get_msg_secret(chat, sender, "m2").await.unwrap(), Some(vec![3; 32]));
    assert_eq!(b.get_msg_secret(chat, "bob@s.whatsapp.net", "m2").await.unwrap(), None, "sender is part of the key");
    // Deadline 150 passes at 150; 300 does not; 0 never does.
    assert_eq!(b.delete_expired_msg_secrets(150).await.unwrap(), 1);
    assert_eq!(b.get_msg_secret(chat, sender, "m2").await.unwrap(), None);
    assert!(b.get_msg_secret(chat, sender, "m1").await.unwrap().is_some());
    assert_eq!(b.delete_expired_msg_secrets(i64::MAX).await.unwrap(), 1);
    assert_eq!(b.get_msg_secret(chat, sender, "forever").await.unwrap(), Some(vec![9; 32]));
}

async fn the_device_is_created_saved_and_loaded(b: &dyn Backend) {
    assert!(!b.exists().await.unwrap());
    assert!(b.load().await.unwrap().is_none());
    b.create().await.unwrap();
    assert!(b.exists().await.unwrap());
    let mut device: Device = b.load().await.unwrap().unwrap();
    device.push_name = "Trekker test".into();
    device.registration_id = 4242;
    b.save(&device).await.unwrap();
    let loaded = b.load().await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&loaded).unwrap(), serde_json::to_value(&device).unwrap());
    assert_eq!(loaded.registration_id, 4242);
    // Creating again keeps the device.
    b.create().await.unwrap();
    assert_eq!(b.load().await.unwrap().unwrap().push_name, "Trekker test");
}

/// A second run of the bot reads what the first wrote; a node that lost the
/// bot writes nothing and learns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_outlives_a_run_and_only_the_runner_writes() {
    let (store, _file) = trekker_testkit::sqlite_store().await;
    let store: Arc<dyn Store> = store;
    let (bot, lease) = running_bot(&store).await;
    let first = stored(&store, &bot, &lease);
    first.put_session("alice.0", b"ratchet").await.unwrap();
    drop(first);
    let second = stored(&store, &bot, &lease);
    assert_eq!(second.get_session("alice.0").await.unwrap().as_deref(), Some(&b"ratchet"[..]));

    // The node restarts (a new epoch) and takes the bot again: the old
    // run's writes are refused.
    let now = SystemClock.now_ms();
    let node = ServerName::parse("SERVER0").unwrap();
    let next = store.start_node_lease(&node, now, LEASE_MS).await.unwrap();
    assert!(store.acquire_bot(&bot, &next, 1, now).await.unwrap());
    assert!(second.put_session("alice.0", b"stale").await.is_err());
    assert!(second.fenced_out());
    let third = stored(&store, &bot, &next);
    assert_eq!(third.get_session("alice.0").await.unwrap().as_deref(), Some(&b"ratchet"[..]));
    assert!(!third.fenced_out());
}
