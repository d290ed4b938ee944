//! The expiry sweeper: every node moves approved bots whose approval ran
//! out to `expired` (the store's single UPDATE makes each bot expire once,
//! whichever node gets there first, and writes each bot's activity in the
//! same transaction). Nothing else is freed.

use std::sync::Arc;
use std::time::Duration;

use crate::{Trekker, telemetry};
use tokio_util::sync::CancellationToken;

impl Trekker {
    /// One sweep; returns how many bots expired.
    pub async fn expire_due_bots(&self) -> Result<usize, crate::AppError> {
        let expired = self.store.bots.expire_due_bots(&self.node, self.now()).await?;
        for bot in &expired {
            tracing::info!(bot = %bot.id, server = %bot.server, "⏰ Bot approval expired");
        }
        metrics::counter!(telemetry::EXPIRED_BOTS).increment(expired.len() as u64);
        Ok(expired.len())
    }

    /// Deletes replay records, idempotency keys and ended pairing requests
    /// past their time; returns how many.
    pub async fn purge_expired_records(&self) -> Result<u64, crate::AppError> {
        let now = self.now();
        let replay = self.store.replay.purge_replay_records(now).await?;
        let keys = self.store.idempotency.purge_idempotency_keys(now).await?;
        // Ended pairing requests are kept a TTL past their expiry, then go.
        let pairings = self.store.pairings.purge_pairings(now - crate::pairing::PAIRING_TTL_SECS * 1000).await?;
        Ok(replay + keys + pairings)
    }
}

/// Runs sweeps every `every` until `shutdown`.
pub async fn run(trekker: Arc<Trekker>, every: Duration, shutdown: CancellationToken) {
    crate::run_every(every, shutdown, || async {
        if let Err(err) = trekker.expire_due_bots().await {
            tracing::warn!(error = ?err, "expiry sweep failed; will retry");
        }
        if let Err(err) = trekker.purge_expired_records().await {
            tracing::warn!(error = ?err, "purging expired records failed; will retry");
        }
    })
    .await;
}
