//! `/readyz` answers from a background probe, within a second whatever the
//! database does: it pings every second with a one-second budget, and the
//! route only reads the last result (a load balancer polling a node whose
//! database hangs must not pile up waiting requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_store::Store;

/// How often, and how long at most, the probe asks the database.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

const UNKNOWN: u8 = 0;
const READY: u8 = 1;
const UNREACHABLE: u8 = 2;

/// The last probe's result.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

impl Readiness {
    /// Ready as of the last probe; before the first one, asks once now
    /// (within the probe's budget).
    pub async fn is_ready(&self, store: &dyn Store) -> bool {
        match self.0.load(Ordering::Relaxed) {
            READY => true,
            UNREACHABLE => false,
            _ => self.probe(store).await,
        }
    }

    async fn probe(&self, store: &dyn Store) -> bool {
        let ready = matches!(tokio::time::timeout(PROBE_EVERY, store.ping()).await, Ok(Ok(())));
        let before = self.0.swap(if ready { READY } else { UNREACHABLE }, Ordering::Relaxed);
        if before != UNKNOWN && (before == READY) != ready {
            if ready {
                tracing::info!("database reachable again: ready");
            } else {
                tracing::warn!("database unreachable (or slower than 1 s): not ready");
            }
        }
        ready
    }
}

/// Probes until `shutdown`.
pub async fn run_probe(store: Arc<dyn Store>, readiness: Arc<Readiness>, shutdown: CancellationToken) {
    loop {
        readiness.probe(store.as_ref()).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
