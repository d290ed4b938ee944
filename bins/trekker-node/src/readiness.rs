//! `/readyz` answers from a background probe, within a second whatever the
//! database does: while the route is being asked, the probe pings every
//! second with a one-second budget, and the route only reads the last
//! result (a load balancer polling a node whose database hangs must not
//! pile up waiting requests). Nobody asking, nothing is pinged (a quiet
//! node's database time is counted per node of a fleet; issue 22); the
//! first request after such a pause asks the database itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_store::ServerStore;

/// How often, and how long at most, the probe asks the database.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

const UNKNOWN: u8 = 0;
const READY: u8 = 1;
const UNREACHABLE: u8 = 2;

/// The last probe's result and time, and whether `/readyz` was asked
/// since the probe loop last looked.
#[derive(Debug, Default)]
pub struct Readiness {
    state: AtomicU8,
    probed_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    asked: AtomicBool,
}

impl Readiness {
    /// Ready as of the last probe; when there is none recent (before the
    /// first one, or after nobody asked for a while), asks once now (within
    /// the probe's budget).
    pub async fn is_ready(&self, store: &dyn ServerStore) -> bool {
        self.asked.store(true, Ordering::Relaxed);
        let probed_at = *self.probed_at.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = probed_at.is_some_and(|at| at.elapsed() <= PROBE_EVERY * 2);
        match self.state.load(Ordering::Relaxed) {
            READY if fresh => true,
            UNREACHABLE if fresh => false,
            _ => self.probe(store).await,
        }
    }

    async fn probe(&self, store: &dyn ServerStore) -> bool {
        let ready = matches!(tokio::time::timeout(PROBE_EVERY, store.ping()).await, Ok(Ok(())));
        *self.probed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
        let before = self.state.swap(if ready { READY } else { UNREACHABLE }, Ordering::Relaxed);
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
pub async fn run_probe(store: Arc<dyn ServerStore>, readiness: Arc<Readiness>, shutdown: CancellationToken) {
    loop {
        // Asked during the last period: keep the answer fresh for the next.
        if readiness.asked.swap(false, Ordering::Relaxed) {
            readiness.probe(store.as_ref()).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;

    use trekker_store::MockServerStore;

    use super::*;

    fn counting_store(pings: Arc<AtomicUsize>) -> Arc<dyn ServerStore> {
        let mut store = MockServerStore::new();
        store.expect_ping().returning(move || {
            pings.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        Arc::new(store)
    }

    /// Nobody asking, nothing is pinged; asked, the answer comes from the
    /// loop's probe, kept fresh while the asking goes on; after a pause the
    /// first request asks the database itself.
    #[tokio::test(start_paused = true)]
    async fn the_probe_pings_only_while_readyz_is_asked() {
        let pings = Arc::new(AtomicUsize::new(0));
        let store = counting_store(pings.clone());
        let readiness = Arc::new(Readiness::default());
        let shutdown = CancellationToken::new();
        let probe = tokio::spawn(run_probe(store.clone(), readiness.clone(), shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(pings.load(Ordering::Relaxed), 0, "nobody asked");

        assert!(readiness.is_ready(store.as_ref()).await);
        assert_eq!(pings.load(Ordering::Relaxed), 1, "no result yet: the first request asks");
        for _ in 0..10 {
            assert!(readiness.is_ready(store.as_ref()).await);
            tokio::time::sleep(PROBE_EVERY).await;
        }
        let while_asked = pings.load(Ordering::Relaxed);
        assert!((9..=12).contains(&while_asked), "about one ping a second while asked: {while_asked}");

        tokio::time::sleep(Duration::from_secs(30)).await;
        let after_pause = pings.load(Ordering::Relaxed);
        assert!(after_pause <= while_asked + 1, "asking stopped: {while_asked} -> {after_pause}");
        assert!(readiness.is_ready(store.as_ref()).await);
        assert_eq!(pings.load(Ordering::Relaxed), after_pause + 1, "a stale result is not served");
        shutdown.cancel();
        probe.await.unwrap();
    }
}
