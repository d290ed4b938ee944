//! This node's heartbeat: keeps its `server_registry` row fresh so other
//! nodes place bots on it and see it online (invariant 7).
//!
//! The supervisor's lease renewal stamps the row's heartbeat too, and
//! tells [`Trekker::lease_renewed_at`]: a beat that finds a renewal within
//! the interval and a load much as last written writes nothing (a quiet
//! node's two writes per interval become one; issue 22).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_store::{ServerLoad, ServerRegistration, StoreError};

use crate::{AppError, Trekker};

impl Trekker {
    /// One beat. If this node's row is gone (an admin deleted it by hand),
    /// writes `registration` again rather than silently dropping out of the
    /// cluster.
    pub async fn heartbeat(&self, registration: &ServerRegistration) -> Result<(), AppError> {
        let load = self.load.as_ref().and_then(|meter| meter.sample());
        let now = self.now();
        let renewed_at = self.lease_renewed_at.load(std::sync::atomic::Ordering::Relaxed);
        let stamped = renewed_at > 0 && now.saturating_sub(renewed_at) < self.heartbeat_interval_ms;
        let written = *self.load_written.lock().unwrap_or_else(|e| e.into_inner());
        if stamped && !load_moved(written.as_ref(), load.as_ref()) {
            return Ok(());
        }
        match self.store.servers.heartbeat(&self.node, now, load).await {
            Ok(()) => {
                // Only a load that reached the row counts as written: after a
                // failed write the next beat tries again.
                *self.load_written.lock().unwrap_or_else(|e| e.into_inner()) = load;
                Ok(())
            }
            Err(StoreError::UnknownServer(_)) => {
                tracing::warn!(server = %self.node, "registry row missing; registering this server again");
                self.store.servers.upsert_server(registration, self.now()).await?;
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}

/// Whether `now` differs from the load last written enough for placement
/// to care: bots running, 10 points of CPU, a twentieth of free memory.
fn load_moved(written: Option<&ServerLoad>, now: Option<&ServerLoad>) -> bool {
    match (written, now) {
        (None, None) => false,
        (Some(then), Some(now)) => {
            now.bots_running != then.bots_running
                || (now.cpu_percent - then.cpu_percent).abs() >= 10
                || (now.memory_available_bytes - then.memory_available_bytes).abs()
                    >= then.memory_available_bytes.max(now.memory_available_bytes) / 20
        }
        _ => true,
    }
}

/// Beats every `every` until `shutdown`.
pub async fn run(
    trekker: Arc<Trekker>,
    registration: ServerRegistration,
    every: Duration,
    shutdown: CancellationToken,
) {
    crate::run_every(every, shutdown, || async {
        if let Err(err) = trekker.heartbeat(&registration).await {
            tracing::warn!(error = ?err, "heartbeat failed; will retry");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mockall::predicate::{always, eq};
    use trekker_domain::ServerName;

    use super::*;
    use crate::test_support::{Mocks, NOW, trekker};

    fn registration() -> ServerRegistration {
        ServerRegistration {
            name: ServerName::parse("SERVER0").unwrap(),
            max_bot_count: 7,
            base_url: Some("http://127.0.0.1:1".into()),
            description: None,
        }
    }

    #[tokio::test]
    async fn a_beat_stamps_this_node_with_the_clock() {
        let mut store = Mocks::default();
        let node = ServerName::parse("SERVER0").unwrap();
        store.servers.expect_heartbeat().with(eq(node), eq(NOW), eq(None)).times(1).returning(|_, _, _| Ok(()));
        store.servers.expect_upsert_server().never();
        trekker(store).heartbeat(&registration()).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_row_is_written_again() {
        let mut store = Mocks::default();
        store.servers.expect_heartbeat().returning(|name, _, _| Err(StoreError::UnknownServer(name.clone())));
        store.servers.expect_upsert_server().with(eq(registration()), eq(NOW)).times(1).returning(|r, now| {
            Ok(trekker_store::ServerSnapshot {
                name: r.name.clone(),
                max_bot_count: r.max_bot_count,
                current_bot_count: 0,
                status: trekker_domain::ServerStatus::Active,
                base_url: r.base_url.clone(),
                last_heartbeat: Some(now),
                description: None,
                load: None,
                evacuation: None,
            })
        });
        trekker(store).heartbeat(&registration()).await.unwrap();
    }

    #[tokio::test]
    async fn a_database_error_is_reported_not_papered_over() {
        let mut store = Mocks::default();
        store.servers.expect_heartbeat().returning(|_, _, _| Err(StoreError::Corrupt("x".into())));
        store.servers.expect_upsert_server().never();
        assert!(matches!(trekker(store).heartbeat(&registration()).await, Err(AppError::Store(_))));
    }

    /// A lease renewal within the interval stamped the row already: the
    /// beat writes nothing (the mock fails on any write).
    #[tokio::test]
    async fn a_beat_after_a_recent_renewal_writes_nothing() {
        let mut store = Mocks::default();
        store.servers.expect_heartbeat().never();
        let trekker = trekker(store);
        trekker.lease_renewed_at.store(NOW - trekker.heartbeat_interval_ms + 1, std::sync::atomic::Ordering::Relaxed);
        trekker.heartbeat(&registration()).await.unwrap();
    }

    /// A renewal a whole interval old no longer keeps the node online:
    /// the beat writes.
    #[tokio::test]
    async fn a_beat_long_after_the_last_renewal_writes() {
        let mut store = Mocks::default();
        store.servers.expect_heartbeat().with(always(), eq(NOW), eq(None)).times(1).returning(|_, _, _| Ok(()));
        let trekker = trekker(store);
        trekker.lease_renewed_at.store(NOW - trekker.heartbeat_interval_ms, std::sync::atomic::Ordering::Relaxed);
        trekker.heartbeat(&registration()).await.unwrap();
    }

    #[test]
    fn the_load_is_written_again_when_placement_would_care() {
        let load =
            |bots, cpu, memory| ServerLoad { cpu_percent: cpu, memory_available_bytes: memory, bots_running: bots };
        let then = load(10, 20, 1_000_000);
        assert!(!load_moved(Some(&then), Some(&load(10, 29, 951_000))), "small moves are not written");
        assert!(load_moved(Some(&then), Some(&load(11, 20, 1_000_000))), "a bot more");
        assert!(load_moved(Some(&then), Some(&load(10, 30, 1_000_000))), "ten points of CPU");
        assert!(load_moved(Some(&then), Some(&load(10, 20, 950_000))), "a twentieth of memory");
        assert!(load_moved(None, Some(&then)), "a first load");
        assert!(!load_moved(None, None));
    }

    /// The loop beats once per interval, the first at once.
    #[tokio::test(start_paused = true)]
    async fn the_loop_beats_every_interval() {
        let beats = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut store = Mocks::default();
        let counted = beats.clone();
        store.servers.expect_heartbeat().returning(move |_, _, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let shutdown = CancellationToken::new();
        let every = Duration::from_secs(10);
        let task = tokio::spawn(run(Arc::new(trekker(store)), registration(), every, shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(25)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(beats.load(std::sync::atomic::Ordering::SeqCst), 3, "at 0, 10 and 20 s");
    }
}
