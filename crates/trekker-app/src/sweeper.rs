//! The expiry sweeper: moves approved bots whose approval ran out to
//! `expired` (the store's single UPDATE makes each bot expire once, and
//! writes each bot's activity in the same transaction; nothing else is
//! freed), rejects bots nobody approved in time, and purges records past
//! their time. Every statement of a sweep is fleet-wide, so only the node
//! holding the `fleet_sweep` duty sweeps (issue 22); the others ask for the
//! duty and do nothing else. Each step stays safe if two nodes sweep at
//! once (a duty changing hands).

use std::sync::Arc;
use std::time::Duration;

use crate::{Trekker, telemetry};
use tokio_util::sync::CancellationToken;
use trekker_domain::messages;
use trekker_store::{AuditMark, NewActivity, SideEffects, StoreError};

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

    /// Rejects bots nobody approved within the pending TTL: their phone and
    /// slot are freed and the guest is told (each in its own transaction;
    /// a bot another node rejected first is skipped). Returns how many.
    pub async fn reject_stale_pending(&self) -> Result<usize, crate::AppError> {
        let cutoff = self.now().saturating_sub(self.pending_ttl_ms);
        let hours = self.pending_ttl_ms / 3_600_000;
        let mut rejected = 0;
        for bot in self.store.bots.stale_pending_bots(cutoff, 100).await? {
            let activity = NewActivity::new(&self.node, "pending_expired", format!("not approved within {hours} h"))
                .for_bot(&bot.id, &bot.phone)
                .by_system(AuditMark::bot(&bot.id));
            let effects =
                SideEffects::activity(activity).notify(&bot.phone, messages::pending_expired(&bot.name, hours));
            match self.store.bots.reject_bot(&bot.id, &effects, self.now()).await {
                Ok(_) => rejected += 1,
                Err(StoreError::Transition(_) | StoreError::BotNotFound) => {}
                Err(err) => return Err(err.into()),
            }
        }
        if rejected > 0 {
            tracing::info!(count = rejected, "⏰ Bots not approved in time were rejected");
            self.bots_changed();
        }
        Ok(rejected)
    }

    /// Deletes replay records, idempotency keys, ended pairing requests and
    /// bot departure records past their time; returns how many.
    pub async fn purge_expired_records(&self) -> Result<u64, crate::AppError> {
        let now = self.now();
        let replay = self.store.replay.purge_replay_records(now).await?;
        let keys = self.store.idempotency.purge_idempotency_keys(now).await?;
        // Ended pairing requests are kept a TTL past their expiry, then go.
        let pairings = self.store.pairings.purge_pairings(now - crate::pairing::PAIRING_TTL_SECS * 1000).await?;
        let departures = self.store.runtime.purge_departures(now - DEPARTURES_KEPT_MS).await?;
        Ok(replay + keys + pairings + departures)
    }
}

/// How long a bot's departure from a node stays in the change feed. A node
/// that has not read its changes for longer resyncs in full (it does so
/// every few minutes anyway).
pub const DEPARTURES_KEPT_MS: i64 = 24 * 3600 * 1000;

/// The duty of sweeping for the whole fleet.
pub const FLEET_SWEEP_DUTY: &str = "fleet_sweep";

impl Trekker {
    /// Whether this node sweeps now (it holds, or just took, the duty; a
    /// lapsed holder is replaced three heartbeats or sweep intervals later).
    pub async fn holds_sweep_duty(&self, every: Duration) -> Result<bool, crate::AppError> {
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let ttl_ms = self.heartbeat_interval_ms.max(every_ms).saturating_mul(3);
        Ok(self.store.capacity.hold_duty(FLEET_SWEEP_DUTY, &self.node, self.now(), ttl_ms).await?)
    }
}

/// Runs sweeps every `every` until `shutdown`, on the duty holder only.
pub async fn run(trekker: Arc<Trekker>, every: Duration, shutdown: CancellationToken) {
    crate::run_every(every, shutdown, || async {
        match trekker.holds_sweep_duty(every).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(error = ?err, "cannot ask for the sweep duty; will retry");
                return;
            }
        }
        if let Err(err) = trekker.expire_due_bots().await {
            tracing::warn!(error = ?err, "expiry sweep failed; will retry");
        }
        if let Err(err) = trekker.reject_stale_pending().await {
            tracing::warn!(error = ?err, "pending sweep failed; will retry");
        }
        if let Err(err) = trekker.purge_expired_records().await {
            tracing::warn!(error = ?err, "purging expired records failed; will retry");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use trekker_domain::{ApprovalStatus, ApprovalTransitionError};

    use super::*;
    use crate::test_support::{Mocks, NOW, bot_record, trekker};

    /// A node without the duty asks for it and reads nothing else (the
    /// mocks have nothing more to offer).
    #[tokio::test]
    async fn only_the_duty_holder_sweeps() {
        let mut store = Mocks::default();
        store
            .capacity
            .expect_hold_duty()
            .withf(|duty, _, _, ttl| duty == FLEET_SWEEP_DUTY && *ttl >= 30_000)
            .returning(|_, _, _, _| Ok(false));
        let trekker = Arc::new(trekker(store));
        assert!(!trekker.holds_sweep_duty(Duration::from_secs(30)).await.unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(trekker, Duration::from_millis(10), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bots_nobody_approved_in_time_are_rejected_and_their_guests_told() {
        let mut store = Mocks::default();
        let cutoff = NOW - 72 * 3_600_000;
        store.bots.expect_stale_pending_bots().withf(move |before, _| *before == cutoff).times(1).returning(|_, _| {
            let mut other = bot_record("SERVER1", ApprovalStatus::Pending);
            other.id = trekker_domain::BotId::parse("bot-2").unwrap();
            Ok(vec![bot_record("SERVER0", ApprovalStatus::Pending), other])
        });
        store.bots.expect_reject_bot().times(2).returning(|id, effects, _| {
            let text = effects.notification.as_ref().unwrap().message.render(None);
            assert!(text.contains("not approved within 72 hours"), "{text}");
            assert_eq!(effects.activity.action, "pending_expired");
            match id.as_str() {
                // Another node got to this one first.
                "bot-2" => Err(StoreError::Transition(ApprovalTransitionError {
                    from: ApprovalStatus::Rejected,
                    action: "reject",
                })),
                _ => Ok(bot_record("SERVER0", ApprovalStatus::Rejected)),
            }
        });
        assert_eq!(trekker(store).reject_stale_pending().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_sweep_counts_what_expired() {
        let mut store = Mocks::default();
        store
            .bots
            .expect_expire_due_bots()
            .withf(|node, now| node.as_str() == "SERVER0" && *now == NOW)
            .returning(|_, _| Ok(vec![bot_record("SERVER0", ApprovalStatus::Expired); 2]));
        assert_eq!(trekker(store).expire_due_bots().await.unwrap(), 2);
    }

    /// Replay records and idempotency keys go at their own expiry, ended
    /// pairings a minute after theirs, departures after a day.
    #[tokio::test]
    async fn each_kind_of_record_is_purged_at_its_own_age() {
        let mut store = Mocks::default();
        store.replay.expect_purge_replay_records().withf(|now| *now == NOW).returning(|_| Ok(1));
        store.idempotency.expect_purge_idempotency_keys().withf(|now| *now == NOW).returning(|_| Ok(20));
        store.pairings.expect_purge_pairings().withf(|before| *before == NOW - 60_000).returning(|_| Ok(300));
        store.runtime.expect_purge_departures().withf(|before| *before == NOW - 86_400_000).returning(|_| Ok(4_000));
        assert_eq!(trekker(store).purge_expired_records().await.unwrap(), 4_321);
    }

    /// The duty outlives three of the longer of the heartbeat and the sweep
    /// interval, so a live holder keeps it between its sweeps.
    #[tokio::test]
    async fn the_sweep_duty_outlives_three_intervals() {
        for (every_secs, ttl_ms) in [(1, 30_000), (60, 180_000)] {
            let mut store = Mocks::default();
            store
                .capacity
                .expect_hold_duty()
                .withf(move |_, node, now, ttl| node.as_str() == "SERVER0" && *now == NOW && *ttl == ttl_ms)
                .returning(|_, _, _, _| Ok(true));
            assert!(trekker(store).holds_sweep_duty(Duration::from_secs(every_secs)).await.unwrap());
        }
    }

    /// The holder sweeps on its interval: expiry, stale pending, purges.
    #[tokio::test(start_paused = true)]
    async fn the_duty_holder_sweeps_every_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let sweeps = Arc::new(AtomicUsize::new(0));
        let mut store = Mocks::default();
        store.capacity.expect_hold_duty().returning(|_, _, _, _| Ok(true));
        let counted = sweeps.clone();
        store.bots.expect_expire_due_bots().returning(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(vec![])
        });
        store.bots.expect_stale_pending_bots().returning(|_, _| Ok(vec![]));
        store.replay.expect_purge_replay_records().returning(|_| Ok(0));
        store.idempotency.expect_purge_idempotency_keys().returning(|_| Ok(0));
        store.pairings.expect_purge_pairings().returning(|_| Ok(0));
        store.runtime.expect_purge_departures().returning(|_| Ok(0));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::new(trekker(store)), Duration::from_secs(10), shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(35)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert!((3..=4).contains(&sweeps.load(Ordering::SeqCst)), "{}", sweeps.load(Ordering::SeqCst));
    }

    /// Rejections wake what follows bots (the supervisor, the notifier, the
    /// live feed); a sweep that rejected nothing wakes nobody.
    #[tokio::test]
    async fn only_a_sweep_that_rejected_something_wakes_the_node() {
        for stale in [0, 1] {
            let mut store = Mocks::default();
            store
                .bots
                .expect_stale_pending_bots()
                .returning(move |_, _| Ok(vec![bot_record("SERVER0", ApprovalStatus::Pending); stale]));
            store.bots.expect_reject_bot().returning(|_, _, _| Ok(bot_record("SERVER0", ApprovalStatus::Rejected)));
            let trekker = trekker(store);
            assert_eq!(trekker.reject_stale_pending().await.unwrap(), stale);
            let woken = tokio::time::timeout(Duration::from_millis(1), trekker.runtime_changed.notified()).await;
            assert_eq!(woken.is_ok(), stale > 0, "{stale} rejected");
        }
    }
}
