//! This node's heartbeat: keeps its `server_registry` row fresh so other
//! nodes place bots on it and see it online (invariant 7).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trekker_store::StoreError;

use crate::{AppState, now_millis};

pub(crate) fn spawn(tasks: &TaskTracker, state: AppState, shutdown: CancellationToken) {
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(state.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => beat(&state).await,
            }
        }
    });
}

async fn beat(state: &AppState) {
    let server = &state.config.server_name;
    match state.store.heartbeat(server, now_millis()).await {
        Ok(()) => {}
        // An admin deleted the row by hand: write it again rather than
        // silently dropping out of the cluster.
        Err(StoreError::UnknownServer(_)) => {
            tracing::warn!(%server, "registry row missing; registering this server again");
            let registration = trekker_store::ServerRegistration {
                name: server.clone(),
                max_bot_count: state.config.max_bot_count,
                base_url: Some(state.base_url.clone()),
                description: None,
            };
            if let Err(err) = state.store.upsert_server(&registration, now_millis()).await {
                tracing::error!(error = ?err, "re-registering this server failed");
            }
        }
        Err(err) => tracing::warn!(error = ?err, "heartbeat failed; will retry"),
    }
}
