//! This node's heartbeat: keeps its `server_registry` row fresh so other
//! nodes place bots on it and see it online (invariant 7).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_store::{ServerRegistration, StoreError};

use crate::{AppError, Trekker};

impl Trekker {
    /// One beat. If this node's row is gone (an admin deleted it by hand),
    /// writes `registration` again rather than silently dropping out of the
    /// cluster.
    pub async fn heartbeat(&self, registration: &ServerRegistration) -> Result<(), AppError> {
        let load = self.load.as_ref().and_then(|meter| meter.sample());
        match self.store.servers.heartbeat(&self.node, self.now(), load).await {
            Ok(()) => Ok(()),
            Err(StoreError::UnknownServer(_)) => {
                tracing::warn!(server = %self.node, "registry row missing; registering this server again");
                self.store.servers.upsert_server(registration, self.now()).await?;
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
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

    use mockall::predicate::eq;
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
}
