//! Capacity warnings: every node compares each server's fill, and the
//! cluster's, with the level last recorded for it
//! ([`trekker_domain::capacity`]), and moves the levels that crossed a line.
//! The move is a compare-and-set that carries its warning (activity, and a
//! notification to ADMIN_PHONE when set) in the same transaction, so each
//! crossing warns exactly once however many nodes see it.
//!
//! What a check reads is bounded (issue 22). Right after a node changed
//! counts (at most one check per [`CHANGE_CHECK_GAP`], so a burst of
//! registrations costs one), it reads the row and level of each server it
//! changed: its own, or the one it placed a bot on or moved one from. Every
//! heartbeat the one node holding the `fleet_capacity` duty (a lease row,
//! taken over when its holder stops renewing) reads every server and level,
//! for the cluster and for whatever a change check missed. A quiet node
//! reads nothing for capacity (it knows the duty's holder and until when);
//! the fleet reads N rows per interval, not N squared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_domain::capacity::CapacityLevel;
use trekker_domain::{ServerName, ServerStatus};
use trekker_store::{CLUSTER_SCOPE, NewActivity, SideEffects};

use crate::{AppError, Trekker};

/// The duty of checking every server and the cluster.
pub const FLEET_CAPACITY_DUTY: &str = "fleet_capacity";

/// The least time between two checks that a change asked for: later
/// changes of a burst wait for it and are checked together.
pub const CHANGE_CHECK_GAP: Duration = Duration::from_millis(500);

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
    ///
    /// The heartbeat's check, on the `fleet_capacity` duty holder only:
    /// every server and the cluster. Other nodes check nothing here: a
    /// server's count changes only by a change some node checks right after
    /// (see [`check_changed_capacity`](Self::check_changed_capacity)), and
    /// this sweep catches whatever that missed (a node that died between
    /// the two) within an interval.
    pub async fn check_capacity(&self) -> Result<Vec<CapacityCrossing>, AppError> {
        let ttl_ms = self.heartbeat_interval_ms.saturating_mul(3);
        if !self.store.capacity.hold_duty(FLEET_CAPACITY_DUTY, &self.node, self.now(), ttl_ms).await? {
            return Ok(Vec::new());
        }
        let (scopes, recorded) = self.fleet_scopes().await?;
        self.record_crossings(scopes, &recorded).await
    }

    /// The check after a change: the servers whose counts this node changed
    /// since the last one (one row and one level each, no duty, no scan).
    pub async fn check_changed_capacity(&self) -> Result<Vec<CapacityCrossing>, AppError> {
        let touched = std::mem::take(&mut *self.capacity_touched.lock().unwrap_or_else(|e| e.into_inner()));
        if touched.is_empty() {
            return Ok(Vec::new());
        }
        let checked = match self.server_scopes(&touched).await {
            Ok((scopes, recorded)) => self.record_crossings(scopes, &recorded).await,
            Err(err) => Err(err),
        };
        if checked.is_err() {
            // Checked again after the next change (or by the holder's sweep).
            self.capacity_touched.lock().unwrap_or_else(|e| e.into_inner()).extend(touched);
        }
        checked
    }

    /// Notes that this node changed `server`'s count, for the watch's next
    /// change check.
    pub(crate) fn capacity_touched(&self, server: &ServerName) {
        self.capacity_touched.lock().unwrap_or_else(|e| e.into_inner()).insert(server.clone());
        self.capacity_changed.notify_one();
    }

    /// Moves the level of every scope of `scopes` that crossed a line.
    async fn record_crossings(
        &self,
        scopes: Vec<(String, i64, i64)>,
        recorded: &HashMap<String, CapacityLevel>,
    ) -> Result<Vec<CapacityCrossing>, AppError> {
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

    /// The given servers: one row and its level each (inactive or unknown
    /// servers are skipped).
    async fn server_scopes<'a>(&self, servers: impl IntoIterator<Item = &'a ServerName>) -> Result<Scopes, AppError> {
        let (mut scopes, mut recorded) = (Vec::new(), HashMap::new());
        for name in servers {
            let Some(server) = self.store.servers.get_server(name).await? else { continue };
            if server.status == ServerStatus::Inactive {
                continue;
            }
            let scope = server.name.to_string();
            recorded.insert(scope.clone(), self.store.capacity.capacity_level(&scope).await?);
            scopes.push((scope, server.current_bot_count, server.max_bot_count));
        }
        Ok((scopes, recorded))
    }
}

impl Trekker {
    /// The scopes above normal now (the console's warning banner).
    pub async fn capacity_alerts(&self) -> Result<Vec<(String, CapacityLevel)>, AppError> {
        let levels = self.store.capacity.capacity_levels().await?;
        Ok(levels.into_iter().filter(|(_, level)| *level != CapacityLevel::Normal).collect())
    }
}

/// Checks capacity every `every`, and the servers this node changed soon
/// after it changed them (at most once per [`CHANGE_CHECK_GAP`]).
pub async fn run_capacity_watch(trekker: Arc<Trekker>, every: Duration, shutdown: CancellationToken) {
    let mut next_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next_tick) => {
                next_tick = tokio::time::Instant::now() + every;
                if let Err(err) = trekker.check_capacity().await {
                    tracing::warn!(error = ?err, "capacity check failed; will retry");
                }
            }
            () = trekker.capacity_changed.notified() => {
                if let Err(err) = trekker.check_changed_capacity().await {
                    tracing::warn!(error = ?err, "capacity check failed; will retry");
                }
                // A burst's later changes wait here and are checked together.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(CHANGE_CHECK_GAP) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mockall::predicate::eq;

    use super::*;
    use crate::test_support::{Mocks, server_snapshot as server, trekker};

    /// A node without the fleet duty reads nothing on its interval: the
    /// mocks have no listing, no server row and no level.
    #[tokio::test]
    async fn a_node_without_the_duty_reads_nothing_on_its_interval() {
        let mut store = Mocks::default();
        store
            .capacity
            .expect_hold_duty()
            .withf(|duty, _, _, ttl| duty == FLEET_CAPACITY_DUTY && *ttl == 30_000)
            .times(1)
            .returning(|_, _, _, _| Ok(false));
        assert!(trekker(store).check_capacity().await.unwrap().is_empty());
    }

    /// After a change, a node checks the servers it changed, and only
    /// those: no duty, no listing (the mocks have neither), each server
    /// once however many changes, nothing when nothing changed.
    #[tokio::test]
    async fn a_change_check_reads_only_the_servers_this_node_changed() {
        let mut store = Mocks::default();
        let name = |n: &str| trekker_domain::ServerName::parse(n).unwrap();
        store
            .servers
            .expect_get_server()
            .withf(|server| server.as_str() == "SERVER1")
            .times(1)
            .returning(|_| Ok(Some(server("SERVER1", 10, 10))));
        store.capacity.expect_capacity_level().with(eq("SERVER1")).times(1).returning(|_| Ok(CapacityLevel::Normal));
        store
            .capacity
            .expect_move_capacity_level()
            .withf(|scope, _, to, _, _| scope == "SERVER1" && *to == CapacityLevel::Full)
            .times(1)
            .returning(|_, _, _, _, _| Ok(true));
        let trekker = trekker(store);
        trekker.capacity_touched(&name("SERVER1"));
        trekker.capacity_touched(&name("SERVER1"));
        let crossings = trekker.check_changed_capacity().await.unwrap();
        assert_eq!(crossings.iter().map(|c| c.scope.as_str()).collect::<Vec<_>>(), ["SERVER1"]);
        assert!(trekker.check_changed_capacity().await.unwrap().is_empty(), "nothing changed since");
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

    /// The cluster's share counts the servers that offer slots: an inactive
    /// server's slots and bots are left out (8 of 10 is a warning; counted,
    /// 8 of 30 would not be), and admins read the share and the slots.
    #[tokio::test]
    async fn the_cluster_warning_counts_only_servers_that_offer_slots() {
        let mut store = Mocks::default();
        store.capacity.expect_hold_duty().returning(|_, _, _, _| Ok(true));
        store.servers.expect_list_servers().returning(|| {
            let mut off = server("SERVER1", 20, 0);
            off.status = ServerStatus::Inactive;
            Ok(vec![server("SERVER0", 10, 7), off, server("SERVER2", 0, 1)])
        });
        store.capacity.expect_capacity_levels().returning(|| Ok(Vec::new()));
        store
            .capacity
            .expect_move_capacity_level()
            .withf(|scope, from, to, effects, _| {
                scope == CLUSTER_SCOPE
                    && *from == CapacityLevel::Normal
                    && *to == CapacityLevel::Warning
                    && effects.as_ref().is_some_and(|e| e.activity.details.contains("The cluster is 80 % full"))
            })
            .times(1)
            .returning(|_, _, _, _, _| Ok(true));
        // SERVER2 has no slots: nothing to warn about on its own.
        let crossings = trekker(store).check_capacity().await.unwrap();
        assert_eq!(crossings.len(), 1, "{crossings:?}");
        assert_eq!(crossings[0].message(), "⚠️ The cluster is 80 % full (8 of 10 slots).");
    }

    /// A level falling back below its line is a recovery: recorded, with
    /// its own text, and no admin is paged for it.
    #[tokio::test]
    async fn a_fall_below_the_line_is_recorded_as_a_recovery() {
        let mut store = Mocks::default();
        store.capacity.expect_hold_duty().returning(|_, _, _, _| Ok(true));
        store.servers.expect_list_servers().returning(|| Ok(vec![server("SERVER0", 10, 2)]));
        store.capacity.expect_capacity_levels().returning(|| {
            Ok(vec![("SERVER0".into(), CapacityLevel::Warning), (CLUSTER_SCOPE.into(), CapacityLevel::Warning)])
        });
        store
            .capacity
            .expect_move_capacity_level()
            .withf(|_, from, to, effects, _| {
                *from == CapacityLevel::Warning
                    && *to == CapacityLevel::Normal
                    && effects.as_ref().is_some_and(|e| e.activity.action == "capacity_recovered")
            })
            .times(2)
            .returning(|_, _, _, _, _| Ok(true));
        let crossings = trekker(store).check_capacity().await.unwrap();
        assert!(crossings.iter().all(|c| !c.is_warning()), "{crossings:?}");
        assert_eq!(crossings[0].message(), "Server SERVER0 is back to 20 % (2 of 10 slots).");
    }

    /// The console's banner: the scopes above normal, and only those.
    #[tokio::test]
    async fn alerts_are_the_scopes_above_normal() {
        let mut store = Mocks::default();
        store.capacity.expect_capacity_levels().returning(|| {
            Ok(vec![
                ("SERVER0".into(), CapacityLevel::Warning),
                ("SERVER1".into(), CapacityLevel::Normal),
                (CLUSTER_SCOPE.into(), CapacityLevel::Full),
            ])
        });
        let alerts = trekker(store).capacity_alerts().await.unwrap();
        assert_eq!(alerts, [("SERVER0".into(), CapacityLevel::Warning), (CLUSTER_SCOPE.into(), CapacityLevel::Full)]);
    }

    /// The watch checks on its interval, whatever else happens.
    #[tokio::test(start_paused = true)]
    async fn the_watch_checks_every_interval() {
        let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut store = Mocks::default();
        let counted = checks.clone();
        store.capacity.expect_hold_duty().returning(move |_, _, _, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(false)
        });
        let shutdown = CancellationToken::new();
        let watch =
            tokio::spawn(run_capacity_watch(Arc::new(trekker(store)), Duration::from_secs(10), shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(35)).await;
        shutdown.cancel();
        watch.await.unwrap();
        assert_eq!(checks.load(std::sync::atomic::Ordering::SeqCst), 4, "at 0, 10, 20 and 30 s");
    }

    /// A warned server whose slots an admin set to 0 recovers without a
    /// division by zero in its text.
    #[tokio::test]
    async fn a_warned_server_set_to_no_slots_recovers() {
        let mut store = Mocks::default();
        store.capacity.expect_hold_duty().returning(|_, _, _, _| Ok(true));
        store.servers.expect_list_servers().returning(|| Ok(vec![server("SERVER0", 0, 3)]));
        store.capacity.expect_capacity_levels().returning(|| Ok(vec![("SERVER0".into(), CapacityLevel::Warning)]));
        store.capacity.expect_move_capacity_level().times(1).returning(|_, _, _, _, _| Ok(true));
        let crossings = trekker(store).check_capacity().await.unwrap();
        assert_eq!(crossings[0].message(), "Server SERVER0 is back to 0 % (3 of 0 slots).");
    }

    /// A change check the database failed keeps its servers for the next.
    #[tokio::test]
    async fn a_failed_change_check_keeps_its_servers() {
        let mut store = Mocks::default();
        let mut answers = vec![Ok(Some(server("SERVER0", 10, 1))), Err(trekker_store::StoreError::Decrypt)];
        store.servers.expect_get_server().times(2).returning(move |_| answers.pop().unwrap());
        store.capacity.expect_capacity_level().times(1).returning(|_| Ok(CapacityLevel::Normal));
        let trekker = trekker(store);
        trekker.capacity_touched(&trekker_domain::ServerName::parse("SERVER0").unwrap());
        assert!(trekker.check_changed_capacity().await.is_err());
        assert!(trekker.check_changed_capacity().await.unwrap().is_empty(), "checked again, nothing crossed");
    }
}
