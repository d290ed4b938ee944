//! Memory per in-process WhatsApp session: N whatsapp-rust clients built
//! from imported devices (synthetic credentials), each spawned over a
//! transport that never dials, so nothing leaves the machine; with
//! `CONNECTED=1`, each logs in to the in-process fake server
//! (`tests/support/fake_server.rs`: IK login, pre-key upload, online) and
//! the reading is taken once all are online; with `MESSAGES=n` as well,
//! each then sends `n` texts to the next session (a ring, so every session
//! holds two Signal sessions) and the reading waits until all arrived,
//! decrypted. Prints the resident memory before and after, and per session.
//!
//! `cargo bench -p trekker-whatsapp --features whatsapp --bench sessions_memory`
//! (`SESSIONS=2000` for more; default 500; `CONNECTED=1`; `MESSAGES=3`).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use whatsapp_rust::async_channel::Receiver;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::store::traits::DeviceStore;

#[path = "../tests/support/fake_server.rs"]
mod fake_server;

/// Dialling never completes: the client exists, idle, as a bot between
/// connection attempts does.
struct NeverDials;

#[whatsapp_rust::async_trait]
impl TransportFactory for NeverDials {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, Receiver<TransportEvent>), whatsapp_rust::anyhow::Error> {
        std::future::pending().await
    }
}

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4
}

/// Where the sessions connect: nowhere, or the fake server (and how many
/// of them went online).
enum Network {
    Never,
    /// The server, how many sessions went online, how many texts arrived.
    Fake(Box<fake_server::FakeServer>, Arc<AtomicUsize>, Arc<AtomicUsize>),
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions: usize = std::env::var("SESSIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let network = if std::env::var("CONNECTED").is_ok_and(|v| v == "1") {
        let server =
            fake_server::FakeServer { serves_login: true, keeps_stanzas: false, ..fake_server::FakeServer::new(7) };
        Network::Fake(Box::new(server), Arc::default(), Arc::default())
    } else {
        Network::Never
    };
    // Warm up the allocator and the library's statics with one session.
    let mut handles = Vec::with_capacity(sessions + 1);
    handles.push(start(0, &network).await);
    wait_online(&network, 1).await;
    let before = resident_kib();
    let started = Instant::now();
    for n in 1..=sessions {
        handles.push(start(n, &network).await);
    }
    let built = started.elapsed();
    wait_online(&network, sessions + 1).await;
    let online = started.elapsed();
    let messages: usize = std::env::var("MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let exchanged = exchange(&network, &handles, messages).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resident_kib();
    let per_session = (after.saturating_sub(before)) as f64 / sessions as f64;
    match &network {
        Network::Never => {
            println!("sessions: {sessions} built and spawned in {:.2} s (no connection)", built.as_secs_f64());
        }
        Network::Fake(..) => println!(
            "sessions: {sessions} built in {:.2} s, all logged in to the fake server and online after {:.2} s",
            built.as_secs_f64(),
            online.as_secs_f64()
        ),
    }
    if let Some(took) = exchanged {
        println!("messages: {messages} from each session to the next, all decrypted after {:.2} s", took.as_secs_f64());
    }
    println!("resident: {:.1} MiB before, {:.1} MiB after", before as f64 / 1024.0, after as f64 / 1024.0);
    println!("per session: {per_session:.0} KiB ({:.2} MiB)", per_session / 1024.0);
    for handle in handles {
        handle.abort();
    }
}

/// Each session sends `count` texts to the next one (the last to the
/// first); returns once every text arrived, with the time it took.
async fn exchange(network: &Network, handles: &[whatsapp_rust::bot::BotHandle], count: usize) -> Option<Duration> {
    let Network::Fake(server, _, received) = network else { return None };
    if count == 0 {
        return None;
    }
    let started = Instant::now();
    let sessions = handles.len();
    // Online comes before the pre-key upload ends: wait for every bundle.
    while server.uploads.lock().unwrap().len() < sessions {
        assert!(started.elapsed() < Duration::from_secs(600), "not every session uploaded its pre-keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for round in 0..count {
        for (n, handle) in handles.iter().enumerate() {
            let next = whatsapp_rust::Jid::pn(phone_of((n + 1) % sessions));
            handle.client().send_text(next, format!("message {round} from {n}")).await.unwrap();
        }
    }
    let expected = sessions * count;
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < expected {
        assert!(Instant::now() < deadline, "only {} of {expected} texts arrived", received.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(started.elapsed())
}

/// Session `n`'s number.
fn phone_of(n: usize) -> String {
    format!("2547{n:08}")
}

/// Waits until `count` sessions went online (at once without a network).
async fn wait_online(network: &Network, count: usize) {
    let Network::Fake(_, online, _) = network else { return };
    let deadline = Instant::now() + Duration::from_secs(600);
    while online.load(Ordering::Relaxed) < count {
        assert!(Instant::now() < deadline, "only {} of {count} online", online.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(n: usize, network: &Network) -> whatsapp_rust::bot::BotHandle {
    let phone = phone_of(n);
    let creds = trekker_testkit::creds::creds_json(&phone, 1);
    let mut device = trekker_whatsapp::session::device_from_creds(&creds).unwrap();
    let backend = InMemoryBackend::new();
    let bot = match network {
        Network::Never => {
            backend.save(&device).await.unwrap();
            Bot::builder().with_backend(backend).with_transport_factory(NeverDials).build().await.unwrap()
        }
        Network::Fake(server, online, received) => {
            device.server_cert_chain = Some(fake_server::cached_chain(server.public()));
            backend.save(&device).await.unwrap();
            let (online, received) = (online.clone(), received.clone());
            Bot::builder()
                .with_backend(backend)
                .with_transport_factory((**server).clone())
                .with_version(trekker_whatsapp::web_version::PINNED.as_tuple())
                .on_event(move |event, _| {
                    match &*event {
                        whatsapp_rust::types::events::Event::Connected(_) => {
                            online.fetch_add(1, Ordering::Relaxed);
                        }
                        whatsapp_rust::types::events::Event::Messages(batch) => {
                            received.fetch_add(batch.messages.len(), Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    async {}
                })
                .build()
                .await
                .unwrap()
        }
    };
    bot.spawn()
}
