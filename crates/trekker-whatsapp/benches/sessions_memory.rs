//! Memory per in-process WhatsApp session: N whatsapp-rust clients built
//! from imported devices (synthetic credentials), each spawned over a
//! transport that never dials, so nothing leaves the machine. Prints the
//! resident memory before and after, and per session.
//!
//! `cargo bench -p trekker-whatsapp --features whatsapp --bench sessions_memory`
//! (`SESSIONS=2000` for more; default 500).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A benchmark binary.

use std::sync::Arc;
use std::time::Instant;

use whatsapp_rust::async_channel::Receiver;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::store::traits::DeviceStore;

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions: usize = std::env::var("SESSIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    // Warm up the allocator and the library's statics with one session.
    let mut handles = Vec::with_capacity(sessions + 1);
    handles.push(start(0).await);
    let before = resident_kib();
    let started = Instant::now();
    for n in 1..=sessions {
        handles.push(start(n).await);
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = resident_kib();
    let per_session = (after.saturating_sub(before)) as f64 / sessions as f64;
    println!("sessions: {sessions} built and spawned in {:.2} s (no connection)", elapsed.as_secs_f64());
    println!("resident: {:.1} MiB before, {:.1} MiB after", before as f64 / 1024.0, after as f64 / 1024.0);
    println!("per session: {per_session:.0} KiB ({:.2} MiB)", per_session / 1024.0);
    for handle in handles {
        handle.abort();
    }
}

async fn start(n: usize) -> whatsapp_rust::bot::BotHandle {
    let phone = format!("2547{:08}", n);
    let creds = trekker_testkit::creds::creds_json(&phone, 1);
    let device = trekker_whatsapp::session::device_from_creds(&creds).unwrap();
    let backend = InMemoryBackend::new();
    backend.save(&device).await.unwrap();
    let bot = Bot::builder().with_backend(backend).with_transport_factory(NeverDials).build().await.unwrap();
    bot.spawn()
}
