//! Capacity warnings: every node compares each server's fill, and the
//! cluster's, with the level last recorded for it
//! ([`trekker_domain::capacity`]), and moves the levels that crossed a line.
//! The move is a compare-and-set that carries its warning (activity, and a
//! notification to ADMIN_PHONE when set) in the same transaction, so each
//! crossing warns exactly once however many nodes see it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_domain::ServerStatus;
use trekker_domain::capacity::CapacityLevel;
use trekker_store::{CLUSTER_SCOPE, NewActivity, SideEffects};

use crate::{AppError, Trekker};

/// Capacity warnings this node recorded, by scope kind and level.
pub const CAPACITY_WARNINGS: &str = "trekker_capacity_warnings_total";

/// A level this node moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityCrossing {
    /// A server's name, or [`CLUSTER_SCOPE`].
    pub scope: String,
    pub from: CapacityLevel,
    pub to: CapacityLevel,
    pub used: i64,
    pub capacity: i64,
}

impl CapacityCrossing {
    /// Up: a warning; down: a recovery.
    pub fn is_warning(&self) -> bool {
        self.to > self.from
    }

    /// What admins read.
    pub fn message(&self) -> String {
        let what =
            if self.scope == CLUSTER_SCOPE { "The cluster".to_owned() } else { format!("Server {}", self.scope) };
        let percent = if self.capacity > 0 { self.used.saturating_mul(100) / self.capacity } else { 0 };
        let slots = format!("{} of {} slots", self.used, self.capacity);
        match (self.is_warning(), self.to) {
            (true, CapacityLevel::Full) => format!("🚫 {what} is full ({slots}); new bots are refused there."),
            (true, _) => format!("⚠️ {what} is {percent} % full ({slots})."),
            (false, _) => format!("{what} is back to {percent} % ({slots})."),
        }
    }
}

impl Trekker {
    /// Moves the capacity level of every scope that crossed a line since it
    /// was last recorded; the crossings this call recorded (another node may
    /// have recorded the others).
    pub async fn check_capacity(&self) -> Result<Vec<CapacityCrossing>, AppError> {
        let servers = self.store.servers.list_servers().await?;
        let recorded: HashMap<String, CapacityLevel> =
            self.store.capacity.capacity_levels().await?.into_iter().collect();
        // Inactive servers offer no slots: they count for nothing.
        let counted: Vec<_> = servers.iter().filter(|s| s.status != ServerStatus::Inactive).collect();
        let mut scopes: Vec<(String, i64, i64)> =
            counted.iter().map(|s| (s.name.to_string(), s.current_bot_count, s.max_bot_count)).collect();
        let used = counted.iter().map(|s| s.current_bot_count).fold(0i64, i64::saturating_add);
        let slots = counted.iter().map(|s| s.max_bot_count).fold(0i64, i64::saturating_add);
        scopes.push((CLUSTER_SCOPE.to_owned(), used, slots));
        let mut crossings = Vec::new();
        for (scope, used, capacity) in scopes {
            let from = recorded.get(&scope).copied().unwrap_or(CapacityLevel::Normal);
            let to = from.next(used, capacity, self.capacity_warn_percent);
            if to == from {
                continue;
            }
            let crossing = CapacityCrossing { scope, from, to, used, capacity };
            let action = if crossing.is_warning() { "capacity_warning" } else { "capacity_recovered" };
            let details = format!("{}: {} -> {}. {}", crossing.scope, from, to, crossing.message());
            let mut effects = SideEffects::activity(NewActivity::new(&self.node, action, details));
            if crossing.is_warning()
                && let Some(admin) = &self.admin_phone
            {
                effects = effects.notify(admin, crossing.message());
            }
            let moved =
                self.store.capacity.move_capacity_level(&crossing.scope, from, to, Some(effects), self.now()).await?;
            if moved {
                if crossing.is_warning() {
                    let kind = if crossing.scope == CLUSTER_SCOPE { "cluster" } else { "server" };
                    metrics::counter!(CAPACITY_WARNINGS, "scope" => kind, "level" => to.as_str()).increment(1);
                    tracing::warn!(scope = %crossing.scope, level = %to, used, capacity, "capacity warning");
                    self.notifications_queued.notify_one();
                }
                crossings.push(crossing);
            }
        }
        Ok(crossings)
    }
}

impl Trekker {
    /// The scopes above normal now (the console's warning banner).
    pub async fn capacity_alerts(&self) -> Result<Vec<(String, CapacityLevel)>, AppError> {
        let levels = self.store.capacity.capacity_levels().await?;
        Ok(levels.into_iter().filter(|(_, level)| *level != CapacityLevel::Normal).collect())
    }
}

/// Checks capacity every `every`, and soon after a bot changes on this node.
pub async fn run_capacity_watch(trekker: Arc<Trekker>, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(err) = trekker.check_capacity().await {
            tracing::warn!(error = ?err, "capacity check failed; will retry");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = trekker.capacity_changed.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}
