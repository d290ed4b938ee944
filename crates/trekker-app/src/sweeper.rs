//! The expiry sweeper: every node moves approved bots whose approval ran
//! out to `expired` (the store's single UPDATE makes each bot expire once,
//! whichever node gets there first). Nothing else is freed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_store::NewActivity;

use crate::{Trekker, telemetry};

impl Trekker {
    /// One sweep; returns how many bots expired.
    pub async fn expire_due_bots(&self) -> Result<usize, crate::AppError> {
        let expired = self.store.expire_due_bots(self.now()).await?;
        for bot in &expired {
            tracing::info!(bot = %bot.id, server = %bot.server, "⏰ Bot approval expired");
            self.record(NewActivity::new(&self.node, "expired", "approval expired").for_bot(&bot.id, &bot.phone)).await;
        }
        metrics::counter!(telemetry::EXPIRED_BOTS).increment(expired.len() as u64);
        Ok(expired.len())
    }
}

/// Runs sweeps every `every` until `shutdown`.
pub async fn run(trekker: Arc<Trekker>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                if let Err(err) = trekker.expire_due_bots().await {
                    tracing::warn!(error = ?err, "expiry sweep failed; will retry");
                }
                // Replay and idempotency records past their expiry.
                if let Err(err) = trekker.store.purge_expired(trekker.now()).await {
                    tracing::warn!(error = ?err, "purging expired records failed; will retry");
                }
            }
        }
    }
}
