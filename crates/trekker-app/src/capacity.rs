//! Capacity warnings: every node compares each server's fill, and the
//! cluster's, with the level last recorded for it
//! ([`trekker_domain::capacity`]), and moves the levels that crossed a line.
//! The move is a compare-and-set that carries its warning (activity, and a
//! notification to ADMIN_PHONE when set) in the same transaction, so each
//! crossing warns exactly once however many nodes see it.
//!
//! What a check reads is bounded (issue 22): a node reads its own server's
//! row and level (after each of its changes, and every heartbeat); the one
//! node holding the `fleet_capacity` duty (a lease row, taken over when
//! its holder stops renewing) also reads every server and level, for the
//! other servers and the cluster. A quiet fleet of N nodes reads about 3N
//! rows per interval, not N squared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_domain::ServerStatus;
use trekker_domain::capacity::CapacityLevel;
use trekker_store::{CLUSTER_SCOPE, NewActivity, SideEffects};

use crate::{AppError, Trekker};

/// The duty of checking every server and the cluster.
pub const FLEET_CAPACITY_DUTY: &str = "fleet_capacity";

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
        let ttl_ms = self.heartbeat_interval_ms.saturating_mul(3);
        let whole_fleet = self.store.capacity.hold_duty(FLEET_CAPACITY_DUTY, &self.node, self.now(), ttl_ms).await?;
        let (scopes, recorded) = if whole_fleet { self.fleet_scopes().await? } else { self.own_scope().await? };
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

/// Scopes with their (used, capacity), and the levels recorded for them.
type Scopes = (Vec<(String, i64, i64)>, HashMap<String, CapacityLevel>);

impl Trekker {
    /// Every server and the cluster (the duty holder's check).
    async fn fleet_scopes(&self) -> Result<Scopes, AppError> {
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
        Ok((scopes, recorded))
    }

    /// This node's own server: one row and its level.
    async fn own_scope(&self) -> Result<Scopes, AppError> {
        let Some(server) = self.store.servers.get_server(&self.node).await? else {
            return Ok((Vec::new(), HashMap::new()));
        };
        if server.status == ServerStatus::Inactive {
            return Ok((Vec::new(), HashMap::new()));
        }
        let scope = server.name.to_string();
        let level = self.store.capacity.capacity_level(&scope).await?;
        let recorded = HashMap::from([(scope.clone(), level)]);
        Ok((vec![(scope, server.current_bot_count, server.max_bot_count)], recorded))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mockall::predicate::eq;

    use super::*;
    use crate::test_support::{Mocks, server_snapshot as server, trekker};

    /// A node without the fleet duty reads its own row and level only: the
    /// mocks have no fleet listing, so a scan would fail the test.
    #[tokio::test]
    async fn a_node_without_the_duty_reads_only_its_own_server() {
        let mut store = Mocks::default();
        store
            .capacity
            .expect_hold_duty()
            .withf(|duty, _, _, ttl| duty == FLEET_CAPACITY_DUTY && *ttl == 30_000)
            .returning(|_, _, _, _| Ok(false));
        store.servers.expect_get_server().times(1).returning(|_| Ok(Some(server("SERVER0", 10, 9))));
        store.capacity.expect_capacity_level().with(eq("SERVER0")).times(1).returning(|_| Ok(CapacityLevel::Normal));
        store
            .capacity
            .expect_move_capacity_level()
            .withf(|scope, from, to, _, _| {
                scope == "SERVER0" && *from == CapacityLevel::Normal && *to != CapacityLevel::Normal
            })
            .times(1)
            .returning(|_, _, _, _, _| Ok(true));
        let crossings = trekker(store).check_capacity().await.unwrap();
        assert_eq!(crossings.len(), 1);
        assert_eq!(crossings[0].scope, "SERVER0");
    }

    /// The duty holder checks every server and the cluster.
    #[tokio::test]
    async fn the_duty_holder_checks_every_server_and_the_cluster() {
        let mut store = Mocks::default();
        store.capacity.expect_hold_duty().returning(|_, _, _, _| Ok(true));
        store
            .servers
            .expect_list_servers()
            .times(1)
            .returning(|| Ok(vec![server("SERVER0", 10, 10), server("SERVER1", 10, 9), server("SERVER2", 10, 8)]));
        store
            .capacity
            .expect_capacity_levels()
            .times(1)
            .returning(|| Ok(vec![("SERVER0".into(), CapacityLevel::Full)]));
        store.capacity.expect_move_capacity_level().times(3).returning(|_, _, _, _, _| Ok(true));
        let crossings = trekker(store).check_capacity().await.unwrap();
        let scopes: Vec<&str> = crossings.iter().map(|c| c.scope.as_str()).collect();
        assert_eq!(scopes, ["SERVER1", "SERVER2", CLUSTER_SCOPE], "SERVER0 was full already");
    }
}
