//! A fleet that heals itself (invariant 11): admin moves and power actions,
//! evacuations, failover of lost nodes, and the optional balancer.
//!
//! Every node runs the same [`run`] loop; the node holding the
//! `fleet_moves` duty (a lease row, taken over three heartbeats after its
//! holder stops) does the passes, so a quiet fleet reads the fleet once
//! per pass, not once per node. Correctness does not rest on the duty:
//! each move is one store transaction that checks its own conditions (the
//! bot is still where the plan saw it, the target has room and pace left,
//! the lost node's lease is still gone), so however many nodes plan the
//! same move from their snapshots (a duty changing hands), it happens once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trekker_domain::access::Actor;
use trekker_domain::{ApprovalStatus, BotId, GuestMessage, ServerName, ServerStatus};
use trekker_placement::{Balance, Candidate, Liveness, MostFreeSlots};
use trekker_store::{
    AuditMark, BotFilter, BotRecord, MoveReason, MoveRequest, MovedBot, NewActivity, PowerAction, ServerSnapshot,
    SideEffects, StoreError,
};

use crate::admin::parse_bot_id;
use crate::{AppError, Trekker};

/// How the fleet heals itself (FAILOVER_AFTER_SECS, MOVES_PER_MIN,
/// REBALANCE, BOT_MEMORY_MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSettings {
    /// A server whose node lease has been gone this long loses its approved
    /// bots to other servers; 0: never.
    pub failover_after_ms: i64,
    /// Moves into one server per minute by evacuation and balancing.
    pub moves_per_min: i64,
    /// Whether the balancer runs.
    pub rebalance: bool,
    pub balance: Balance,
    /// One bot's memory limit: placement skips machines with less left.
    pub bot_memory_bytes: i64,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            failover_after_ms: 120_000,
            moves_per_min: 30,
            rebalance: false,
            balance: Balance::default(),
            bot_memory_bytes: 0,
        }
    }
}

/// The duty of running fleet passes: one node at a time reads the fleet
/// for failover, evacuation and balancing (issue 22: N nodes each reading
/// every server every pass would cost the database N squared).
pub const FLEET_MOVES_DUTY: &str = "fleet_moves";

/// Bots one pass looks at per source server: a pass stays short, the next
/// one goes on.
const PASS_BATCH: i64 = 500;

/// What one pass of the fleet loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetPass {
    pub failed_over: usize,
    pub evacuated: usize,
    pub rebalanced: usize,
    /// Bots that fit on no other server (they stay where they are).
    pub stuck: usize,
}

/// A server as placement sees it.
pub(crate) fn candidate(server: &ServerSnapshot) -> Candidate {
    Candidate {
        name: server.name.clone(),
        max_bot_count: server.max_bot_count,
        current_bot_count: server.current_bot_count,
        status: server.status,
        last_heartbeat: server.last_heartbeat,
        memory_available_bytes: server.load.map(|l| l.memory_available_bytes),
        cpu_percent: server.load.map(|l| l.cpu_percent),
    }
}

/// How a planned move ended.
enum Outcome {
    Moved(Box<MovedBot>),
    /// This target cannot take it now (full, not active): try the next.
    TargetRefused,
    /// This target took its MOVES_PER_MIN: try the next.
    Paced(ServerName),
    /// The plan is stale (moved by another node, a move under way, the lost
    /// node is back): leave the bot alone.
    Stale,
}

impl Trekker {
    fn liveness(&self) -> Liveness {
        Liveness { now_ms: self.now(), heartbeat_interval_ms: self.heartbeat_interval_ms }
    }

    /// Moves a bot to `server`, or where placement chooses (never its
    /// current host), in one transaction (invariant 11); its old host stops
    /// it and saves its session, its new host restores and starts it. The
    /// guest is told in the same transaction.
    pub async fn move_bot(&self, actor: &Actor, id: &str, server: Option<&str>) -> Result<MovedBot, AppError> {
        let bot = self.bot(id).await?;
        let servers = self.store.servers.list_servers().await?;
        let target = match server.map(str::trim).filter(|s| !s.is_empty()) {
            Some(name) => {
                let name = ServerName::parse(name).map_err(|_| AppError::UnknownServer(name.to_owned()))?;
                let target =
                    servers.iter().find(|s| s.name == name).ok_or(AppError::UnknownServer(name.to_string()))?;
                if target.name == bot.server {
                    return Err(AppError::Conflict(format!("The bot is already on {}.", bot.server)));
                }
                let online = self.is_server_online(target);
                if target.status != ServerStatus::Active || !online {
                    let liveness = if online { "online" } else { "offline" };
                    let status = target.status.as_str();
                    return Err(AppError::Conflict(format!(
                        "{} does not take bots now ({status}, {liveness}).",
                        target.name
                    )));
                }
                target.name.clone()
            }
            None => {
                let candidates: Vec<Candidate> =
                    servers.iter().filter(|s| s.name != bot.server).map(candidate).collect();
                self.placement.rank(&candidates, self.liveness()).into_iter().next().ok_or_else(|| {
                    AppError::Conflict("No other server is active, online and has a free slot.".into())
                })?
            }
        };
        let request = MoveRequest::admin(bot.id.clone(), target);
        let moved = self.store.bots.move_bot(&request, &self.move_effects(actor, &bot, &request), self.now()).await?;
        self.bots_changed();
        self.capacity_touched(&moved.from);
        self.capacity_touched(&moved.bot.server);
        tracing::info!(bot = %moved.bot.id, from = %moved.from, to = %moved.bot.server, "🚚 Bot moved");
        Ok(moved)
    }

    /// The activity and guest message written with a move: an admin's move
    /// is `actor`'s; evacuation, rebalancing and failover are the system's.
    fn move_effects(&self, actor: &Actor, bot: &BotRecord, request: &MoveRequest) -> SideEffects {
        let (action, by) = match request.reason {
            MoveReason::Admin => ("bot_moved", "moved by an admin"),
            MoveReason::Evacuation => ("bot_moved", "moved by the evacuation"),
            MoveReason::Rebalance => ("bot_moved", "moved by the balancer"),
            MoveReason::Failover => ("bot_failed_over", "failed over: its node's lease is gone"),
        };
        let details = format!("{by}, from {} to {}", bot.server, request.to);
        let actor = if request.reason == MoveReason::Admin { actor.clone() } else { Actor::system() };
        let activity = NewActivity::new(&self.node, action, details)
            .for_bot(&bot.id, &bot.phone)
            .with_remote(&request.to, None)
            .by(&actor, AuditMark::bot(&bot.id));
        let message =
            GuestMessage::Moved { bot_name: bot.name.clone(), from: bot.server.clone(), to: request.to.clone() };
        SideEffects::activity(activity).notify(&bot.phone, message)
    }

    /// Restarts an approved bot (or starts a stopped or `failed` one, its
    /// crash count cleared), on its host, and keeps it running.
    pub async fn restart_bot(&self, actor: &Actor, id: &str) -> Result<BotRecord, AppError> {
        self.power(actor, id, PowerAction::Restart, "bot_restarted", "restarted by an admin").await
    }

    /// Stops a bot and keeps it stopped (across node restarts and moves)
    /// until a restart.
    pub async fn stop_bot(&self, actor: &Actor, id: &str) -> Result<BotRecord, AppError> {
        self.power(actor, id, PowerAction::Stop, "bot_stopped", "stopped by an admin").await
    }

    async fn power(
        &self,
        actor: &Actor,
        id: &str,
        action: PowerAction,
        what: &str,
        details: &str,
    ) -> Result<BotRecord, AppError> {
        let id: BotId = parse_bot_id(id)?;
        let activity = NewActivity::new(&self.node, what, details).by(actor, AuditMark::bot(&id));
        let effects = SideEffects::activity(NewActivity { bot_id: Some(id.clone()), ..activity });
        let bot = self.store.bots.set_power(&id, action, &effects, self.now()).await.map_err(|err| match err {
            StoreError::BotNotFound => AppError::NotFound("Bot not found.".into()),
            other => other.into(),
        })?;
        self.bots_changed();
        tracing::info!(bot = %bot.id, server = %bot.server, "🔌 {details}");
        Ok(bot)
    }

    /// Starts evacuating `name`: it becomes `draining` and the fleet loop
    /// moves its bots away at MOVES_PER_MIN per target. Returns the server
    /// and how many bots will move.
    pub async fn evacuate_server(&self, actor: &Actor, name: &str) -> Result<(ServerSnapshot, i64), AppError> {
        let not_found = || AppError::NotFound(format!("Server {name} not found."));
        let server = ServerName::parse(name).map_err(|_| not_found())?;
        let audit = NewActivity::new(&self.node, "server_evacuation", "evacuation started")
            .with_remote(&server, None)
            .by(actor, AuditMark::server(&server));
        let snapshot =
            self.store.servers.start_evacuation(&server, &audit, self.now()).await.map_err(|err| match err {
                StoreError::UnknownServer(_) => not_found(),
                other => other.into(),
            })?;
        self.fleet_changed.notify_one();
        tracing::info!(server = %server, bots = snapshot.current_bot_count, "🚚 evacuation started");
        let bots = snapshot.current_bot_count;
        Ok((snapshot, bots))
    }

    /// One pass of the fleet loop: failover of lost servers, evacuations,
    /// then (REBALANCE=on) the balancer.
    pub async fn fleet_pass(&self) -> Result<FleetPass, AppError> {
        let mut pass = FleetPass::default();
        let ttl_ms = self.heartbeat_interval_ms.saturating_mul(3);
        if !self.store.capacity.hold_duty(FLEET_MOVES_DUTY, &self.node, self.now(), ttl_ms).await? {
            return Ok(pass);
        }
        let mut servers = self.store.servers.list_servers().await?;
        if self.fleet.failover_after_ms > 0 {
            for lost in self.store.servers.lost_servers(self.fleet.failover_after_ms).await? {
                let (moved, stuck) = self.drain(&lost, MoveReason::Failover, &mut servers).await?;
                pass.failed_over += moved;
                pass.stuck += stuck;
            }
        }
        let evacuating: Vec<ServerName> = servers
            .iter()
            .filter(|s| s.evacuation.is_some() && s.status == ServerStatus::Draining)
            .map(|s| s.name.clone())
            .collect();
        for source in evacuating {
            let (moved, stuck) = self.drain(&source, MoveReason::Evacuation, &mut servers).await?;
            pass.evacuated += moved;
            pass.stuck += stuck;
            let left = self.store.servers.get_server(&source).await?.map_or(0, |s| s.current_bot_count);
            self.store.servers.record_evacuation(&source, stuck as i64, left == 0).await?;
            if left == 0 {
                tracing::info!(server = %source, "🚚 evacuation finished");
            }
        }
        if self.fleet.rebalance {
            pass.rebalanced = self.rebalance(&mut servers).await?;
        }
        if pass != FleetPass::default() {
            self.bots_changed();
        }
        Ok(pass)
    }

    /// Moves the bots of `source` to where placement chooses: approved ones
    /// on failover (only they run), every slot-holding one on evacuation.
    /// Returns (moved, stuck).
    async fn drain(
        &self,
        source: &ServerName,
        reason: MoveReason,
        servers: &mut [ServerSnapshot],
    ) -> Result<(usize, usize), AppError> {
        let approval = (reason == MoveReason::Failover).then_some(ApprovalStatus::Approved);
        let filter =
            BotFilter { server: Some(source.clone()), approval, status: None, after: None, limit: Some(PASS_BATCH) };
        let page = self.store.bots.list_bots(&filter).await?;
        let (mut moved, mut stuck) = (0, 0);
        // Targets that took their MOVES_PER_MIN: skipped for the rest of the pass.
        let mut paced: Vec<ServerName> = Vec::new();
        for bot in page.bots.iter().filter(|b| b.approval.occupies_slot()) {
            let candidates: Vec<Candidate> = servers.iter().filter(|s| &s.name != source).map(candidate).collect();
            let ranked = self.placement.rank(&candidates, self.liveness());
            if ranked.is_empty() {
                stuck += 1;
                continue;
            }
            let open: Vec<ServerName> = ranked.into_iter().filter(|t| !paced.contains(t)).collect();
            if open.is_empty() {
                // Room elsewhere, but no pace left this minute: the next pass goes on.
                break;
            }
            for target in open {
                let request = MoveRequest {
                    bot: bot.id.clone(),
                    from: Some(source.clone()),
                    to: target.clone(),
                    reason,
                    // A failover starts bots that are down already: the new
                    // hosts pace their starts; other moves are paced here.
                    pace_per_min: (reason != MoveReason::Failover).then_some(self.fleet.moves_per_min),
                    lost_for_ms: (reason == MoveReason::Failover).then_some(self.fleet.failover_after_ms),
                };
                match self.try_move(bot, &request).await? {
                    Outcome::Moved(done) => {
                        moved += 1;
                        count_move(servers, &done.from, &target, bot.approval);
                        let why = reason.as_str();
                        tracing::info!(bot = %bot.id, from = %done.from, to = %target, why, "🚚 Bot moved");
                        break;
                    }
                    Outcome::TargetRefused => continue,
                    Outcome::Paced(target) => paced.push(target),
                    Outcome::Stale => break,
                }
            }
        }
        Ok((moved, stuck))
    }

    async fn try_move(&self, bot: &BotRecord, request: &MoveRequest) -> Result<Outcome, AppError> {
        match self.store.bots.move_bot(request, &self.move_effects(&Actor::system(), bot, request), self.now()).await {
            Ok(moved) => Ok(Outcome::Moved(Box::new(moved))),
            Err(StoreError::Paced(target)) => Ok(Outcome::Paced(target)),
            Err(StoreError::ServerFull(_) | StoreError::ServerNotAccepting { .. }) => Ok(Outcome::TargetRefused),
            Err(StoreError::Conflict(_) | StoreError::BotNotFound | StoreError::UnknownServer(_)) => Ok(Outcome::Stale),
            Err(err) => Err(err.into()),
        }
    }

    /// The balancer: a few bots from servers far above the fleet's mean use
    /// to servers below it. Moves only approved bots that are not held by an
    /// earlier move.
    async fn rebalance(&self, servers: &mut [ServerSnapshot]) -> Result<usize, AppError> {
        let candidates: Vec<Candidate> = servers.iter().map(candidate).collect();
        let policy = MostFreeSlots { bot_memory_bytes: self.fleet.bot_memory_bytes };
        let plan = trekker_placement::rebalance(&candidates, self.liveness(), &policy, self.fleet.balance);
        let mut moved = 0;
        for (from, to) in plan {
            let filter = BotFilter {
                server: Some(from.clone()),
                approval: Some(ApprovalStatus::Approved),
                status: None,
                after: None,
                limit: Some(1),
            };
            let Some(bot) = self.store.bots.list_bots(&filter).await?.bots.into_iter().next() else { continue };
            let request = MoveRequest {
                bot: bot.id.clone(),
                from: Some(from.clone()),
                to: to.clone(),
                reason: MoveReason::Rebalance,
                pace_per_min: Some(self.fleet.moves_per_min),
                lost_for_ms: None,
            };
            if let Outcome::Moved(_) = self.try_move(&bot, &request).await? {
                moved += 1;
                count_move(servers, &from, &to, bot.approval);
                tracing::info!(bot = %bot.id, %from, %to, "⚖️ Bot moved by the balancer");
            }
        }
        Ok(moved)
    }
}

/// Keeps the pass's snapshot true after a move, so the next placement
/// spreads bots rather than piling them on the first choice.
fn count_move(servers: &mut [ServerSnapshot], from: &ServerName, to: &ServerName, approval: ApprovalStatus) {
    if !approval.occupies_slot() {
        return;
    }
    for server in servers.iter_mut() {
        if &server.name == from {
            server.current_bot_count -= 1;
        } else if &server.name == to {
            server.current_bot_count += 1;
        }
    }
}

/// Runs fleet passes every `every` (and at once when woken) until `shutdown`.
pub async fn run(trekker: Arc<Trekker>, every: Duration, shutdown: CancellationToken) {
    let woken = trekker.fleet_changed.clone();
    loop {
        match trekker.fleet_pass().await {
            Ok(pass) if pass != FleetPass::default() => {
                tracing::info!(
                    failed_over = pass.failed_over,
                    evacuated = pass.evacuated,
                    rebalanced = pass.rebalanced,
                    stuck = pass.stuck,
                    "fleet pass"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = ?err, "fleet pass failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = woken.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::test_support::{Mocks, NOW, bot_record, server_snapshot, trekker};

    /// A move as the store was asked for it: bot, target, pace, lost-for.
    type Asked = (String, String, Option<i64>, Option<i64>);

    fn bot_on(server: &str, n: u32, approval: ApprovalStatus) -> BotRecord {
        BotRecord { id: BotId::parse(&format!("bot-{n}")).unwrap(), ..bot_record(server, approval) }
    }

    /// The store answers every move with `answer(target)`, and records it.
    fn moves_answered(
        store: &mut Mocks,
        answer: impl Fn(&str) -> Result<(), StoreError> + Send + 'static,
    ) -> Arc<Mutex<Vec<Asked>>> {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        store.bots.expect_move_bot().returning(move |request, effects, _| {
            assert_eq!(effects.activity.bot_id.as_ref(), Some(&request.bot), "the move is recorded against its bot");
            let to = request.to.as_str().to_owned();
            seen.lock().unwrap().push((
                request.bot.as_str().to_owned(),
                to.clone(),
                request.pace_per_min,
                request.lost_for_ms,
            ));
            answer(&to)?;
            let from = request.from.clone().unwrap_or_else(|| ServerName::parse("HOME").unwrap());
            Ok(MovedBot {
                bot: BotRecord { server: request.to.clone(), ..bot_on(from.as_str(), 0, ApprovalStatus::Approved) },
                from,
            })
        });
        asked
    }

    fn holds_the_duty(store: &mut Mocks) {
        store.capacity.expect_hold_duty().returning(|_, _, _, _| Ok(true));
    }

    #[test]
    fn a_move_counts_a_slot_out_of_its_source_and_into_its_target() {
        let mut servers = vec![server_snapshot("A", 5, 2), server_snapshot("B", 5, 2), server_snapshot("C", 5, 2)];
        let (a, b) = (ServerName::parse("A").unwrap(), ServerName::parse("B").unwrap());
        count_move(&mut servers, &a, &b, ApprovalStatus::Pending);
        let counts: Vec<i64> = servers.iter().map(|s| s.current_bot_count).collect();
        assert_eq!(counts, [1, 3, 2]);
        count_move(&mut servers, &a, &b, ApprovalStatus::Rejected);
        assert_eq!(servers.iter().map(|s| s.current_bot_count).collect::<Vec<_>>(), [1, 3, 2], "holds no slot");
    }

    /// A lost server's approved bots go where placement puts them, one at a
    /// time: the pass counts each move, so two bots spread over two equal
    /// servers instead of piling onto the first.
    #[tokio::test]
    async fn a_failover_spreads_a_lost_servers_approved_bots() {
        let mut store = Mocks::default();
        holds_the_duty(&mut store);
        let mut lost = server_snapshot("LOST", 10, 2);
        lost.last_heartbeat = Some(NOW - 600_000);
        let servers = vec![lost, server_snapshot("A", 10, 8), server_snapshot("B", 10, 8)];
        store.servers.expect_list_servers().times(1).returning(move || Ok(servers.clone()));
        store
            .servers
            .expect_lost_servers()
            .withf(|after| *after == FleetSettings::default().failover_after_ms)
            .returning(|_| Ok(vec![ServerName::parse("LOST").unwrap()]));
        store
            .bots
            .expect_list_bots()
            .withf(|filter| {
                filter.server.as_ref().map(ServerName::as_str) == Some("LOST")
                    && filter.approval == Some(ApprovalStatus::Approved)
                    && filter.limit == Some(PASS_BATCH)
            })
            .returning(|_| {
                let bots =
                    vec![bot_on("LOST", 1, ApprovalStatus::Approved), bot_on("LOST", 2, ApprovalStatus::Approved)];
                Ok(trekker_store::BotPage { bots, next: None })
            });
        let asked = moves_answered(&mut store, |_| Ok(()));
        let pass = trekker(store).fleet_pass().await.unwrap();
        assert_eq!(pass, FleetPass { failed_over: 2, ..FleetPass::default() });
        let lost_for = Some(FleetSettings::default().failover_after_ms);
        assert_eq!(
            *asked.lock().unwrap(),
            [("bot-1".into(), "A".into(), None, lost_for), ("bot-2".into(), "B".into(), None, lost_for)]
        );
    }

    /// An evacuation tries the next target when one is full, skips a target
    /// that took its moves for the minute, and stops when no target is left
    /// this minute; what it could not move is recorded on the server.
    #[tokio::test]
    async fn an_evacuation_tries_the_next_target_and_respects_the_pace() {
        let mut store = Mocks::default();
        holds_the_duty(&mut store);
        let mut source = server_snapshot("SRC", 10, 3);
        source.status = ServerStatus::Draining;
        source.evacuation = Some(trekker_store::Evacuation { started_at: NOW, stuck: 0 });
        let servers = vec![source, server_snapshot("A", 10, 5), server_snapshot("B", 10, 9)];
        store.servers.expect_list_servers().times(1).returning(move || Ok(servers.clone()));
        store.servers.expect_lost_servers().returning(|_| Ok(vec![]));
        store
            .bots
            .expect_list_bots()
            .withf(|filter| filter.server.as_ref().map(ServerName::as_str) == Some("SRC") && filter.approval.is_none())
            .returning(|_| {
                let bots = vec![
                    bot_on("SRC", 1, ApprovalStatus::Rejected),
                    bot_on("SRC", 2, ApprovalStatus::Pending),
                    bot_on("SRC", 3, ApprovalStatus::Approved),
                    bot_on("SRC", 4, ApprovalStatus::Approved),
                ];
                Ok(trekker_store::BotPage { bots, next: None })
            });
        // A is full after all (its count was stale), then out of pace.
        let refusals = Arc::new(Mutex::new(0));
        let asked = moves_answered(&mut store, move |to| {
            let mut seen = refusals.lock().unwrap();
            *seen += 1;
            match (to, *seen) {
                ("A", 1) => Err(StoreError::ServerFull(ServerName::parse("A").unwrap())),
                ("A", _) => Err(StoreError::Paced(ServerName::parse("A").unwrap())),
                _ => Ok(()),
            }
        });
        store.servers.expect_get_server().returning(|_| Ok(Some(server_snapshot("SRC", 10, 2))));
        store
            .servers
            .expect_record_evacuation()
            .withf(|server, stuck, done| server.as_str() == "SRC" && *stuck == 0 && !*done)
            .times(1)
            .returning(|_, _, _| Ok(()));
        let pass = trekker(store).fleet_pass().await.unwrap();
        assert_eq!(pass, FleetPass { evacuated: 1, ..FleetPass::default() });
        let pace = Some(FleetSettings::default().moves_per_min);
        assert_eq!(
            *asked.lock().unwrap(),
            [
                ("bot-2".into(), "A".into(), pace, None),
                ("bot-2".into(), "B".into(), pace, None),
                ("bot-3".into(), "A".into(), pace, None),
            ],
            "the rejected bot holds no slot; bot-4 waits: B is full now and A is out of pace"
        );
    }

    /// Bots that fit nowhere stay and are counted; an emptied server's
    /// evacuation is recorded as done.
    #[tokio::test]
    async fn an_evacuation_counts_what_fits_nowhere_and_finishes_when_empty() {
        for (left, done) in [(2, false), (0, true)] {
            let mut store = Mocks::default();
            holds_the_duty(&mut store);
            let mut source = server_snapshot("SRC", 10, 2);
            source.status = ServerStatus::Draining;
            source.evacuation = Some(trekker_store::Evacuation { started_at: NOW, stuck: 0 });
            let servers = vec![source, server_snapshot("FULL", 3, 3)];
            store.servers.expect_list_servers().returning(move || Ok(servers.clone()));
            store.servers.expect_lost_servers().returning(|_| Ok(vec![]));
            store.bots.expect_list_bots().returning(|_| {
                let bots = vec![bot_on("SRC", 1, ApprovalStatus::Approved), bot_on("SRC", 2, ApprovalStatus::Pending)];
                Ok(trekker_store::BotPage { bots, next: None })
            });
            store.servers.expect_get_server().returning(move |_| Ok(Some(server_snapshot("SRC", 10, left))));
            store
                .servers
                .expect_record_evacuation()
                .withf(move |_, stuck, finished| *stuck == 2 && *finished == done)
                .times(1)
                .returning(|_, _, _| Ok(()));
            let pass = trekker(store).fleet_pass().await.unwrap();
            assert_eq!(pass, FleetPass { stuck: 2, ..FleetPass::default() });
        }
    }

    #[tokio::test]
    async fn an_admin_move_goes_only_where_a_bot_can_run() {
        let mut offline = server_snapshot("GONE", 10, 0);
        offline.last_heartbeat = Some(NOW - 600_000);
        let mut draining = server_snapshot("DRAIN", 10, 0);
        draining.status = ServerStatus::Draining;
        let servers = vec![server_snapshot("HOME", 10, 1), offline, draining, server_snapshot("OPEN", 10, 9)];
        for (target, refused) in [
            (Some("home"), "already on HOME"),
            (Some("gone"), "(active, offline)"),
            (Some("drain"), "(draining, online)"),
            (Some("nowhere"), ""),
        ] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_on("HOME", 1, ApprovalStatus::Approved))));
            let listed = servers.clone();
            store.servers.expect_list_servers().returning(move || Ok(listed.clone()));
            let err = trekker(store).move_bot(&crate::test_support::operator(), "bot-1", target).await.unwrap_err();
            match err {
                AppError::Conflict(text) => assert!(text.contains(refused), "{target:?}: {text}"),
                AppError::UnknownServer(_) => assert_eq!(target, Some("nowhere")),
                other => panic!("{target:?}: {other:?}"),
            }
        }
        // Named or chosen by placement (never the current host): OPEN.
        for target in [Some(" open "), None, Some("")] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_on("HOME", 1, ApprovalStatus::Approved))));
            let listed = servers.clone();
            store.servers.expect_list_servers().returning(move || Ok(listed.clone()));
            let asked = moves_answered(&mut store, |_| Ok(()));
            let moved = trekker(store).move_bot(&crate::test_support::operator(), "bot-1", target).await.unwrap();
            assert_eq!(moved.bot.server.as_str(), "OPEN");
            assert_eq!(asked.lock().unwrap()[0].1, "OPEN", "{target:?}");
        }
        // Nowhere else to go.
        let mut store = Mocks::default();
        store.bots.expect_get_bot().returning(|_| Ok(Some(bot_on("HOME", 1, ApprovalStatus::Approved))));
        store.servers.expect_list_servers().returning(|| Ok(vec![server_snapshot("HOME", 10, 1)]));
        assert!(matches!(
            trekker(store).move_bot(&crate::test_support::operator(), "bot-1", None).await,
            Err(AppError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn power_actions_are_recorded_against_their_bot() {
        let mut store = Mocks::default();
        store
            .bots
            .expect_set_power()
            .withf(|id, action, effects, _| {
                id.as_str() == "bot-1"
                    && *action == PowerAction::Stop
                    && effects.activity.bot_id.as_ref().map(BotId::as_str) == Some("bot-1")
            })
            .times(1)
            .returning(|_, _, _, _| Ok(bot_on("HOME", 1, ApprovalStatus::Approved)));
        store.bots.expect_set_power().returning(|_, _, _, _| Err(StoreError::BotNotFound));
        let t = trekker(store);
        t.stop_bot(&crate::test_support::operator(), "bot-1").await.unwrap();
        assert!(matches!(t.restart_bot(&crate::test_support::operator(), "bot-2").await, Err(AppError::NotFound(_))));
    }

    /// Only the duty holder reads the fleet: the mocks have no listing, so
    /// a pass that read it would fail here.
    #[tokio::test]
    async fn a_node_without_the_duty_reads_nothing_of_the_fleet() {
        let mut store = Mocks::default();
        store
            .capacity
            .expect_hold_duty()
            .withf(|duty, _, _, _| duty == FLEET_MOVES_DUTY)
            .returning(|_, _, _, _| Ok(false));
        assert_eq!(trekker(store).fleet_pass().await.unwrap(), FleetPass::default());
    }

    /// FAILOVER_AFTER_SECS=0 turns failover off: lost servers are not even
    /// looked for. A lost server's bots that fit nowhere are counted stuck.
    #[tokio::test]
    async fn failover_can_be_turned_off_and_counts_what_fits_nowhere() {
        let mut store = Mocks::default();
        holds_the_duty(&mut store);
        store.servers.expect_list_servers().returning(|| Ok(vec![server_snapshot("LOST", 10, 1)]));
        let mut off = trekker(store);
        off.fleet.failover_after_ms = 0;
        assert_eq!(off.fleet_pass().await.unwrap(), FleetPass::default(), "no lost server was looked for");

        let mut store = Mocks::default();
        holds_the_duty(&mut store);
        store.servers.expect_list_servers().returning(|| Ok(vec![server_snapshot("LOST", 10, 1)]));
        store.servers.expect_lost_servers().returning(|_| Ok(vec![ServerName::parse("LOST").unwrap()]));
        store.bots.expect_list_bots().returning(|_| {
            Ok(trekker_store::BotPage { bots: vec![bot_on("LOST", 1, ApprovalStatus::Approved)], next: None })
        });
        let t = trekker(store);
        assert_eq!(t.fleet_pass().await.unwrap(), FleetPass { stuck: 1, ..FleetPass::default() });
        let woken = tokio::time::timeout(Duration::from_millis(1), t.runtime_changed.notified()).await;
        assert!(woken.is_ok(), "a pass that did something wakes the node");
    }

    /// A server that was evacuated and then made active again is no longer
    /// drained, and a pass that did nothing wakes nobody.
    #[tokio::test]
    async fn only_a_draining_server_is_evacuated() {
        let mut store = Mocks::default();
        holds_the_duty(&mut store);
        let mut reopened = server_snapshot("SRC", 10, 3);
        reopened.evacuation = Some(trekker_store::Evacuation { started_at: NOW, stuck: 0 });
        store.servers.expect_list_servers().returning(move || Ok(vec![reopened.clone()]));
        store.servers.expect_lost_servers().returning(|_| Ok(vec![]));
        let t = trekker(store);
        assert_eq!(t.fleet_pass().await.unwrap(), FleetPass::default());
        let woken = tokio::time::timeout(Duration::from_millis(1), t.runtime_changed.notified()).await;
        assert!(woken.is_err(), "nothing moved, nobody woken");
    }

    /// REBALANCE=on: a bot moves from a crowded server to an empty one, and
    /// the pass counts it.
    #[tokio::test]
    async fn the_balancer_moves_an_approved_bot_off_a_crowded_server() {
        let mut store = Mocks::default();
        holds_the_duty(&mut store);
        store
            .servers
            .expect_list_servers()
            .returning(|| Ok(vec![server_snapshot("FULL", 10, 10), server_snapshot("EMPTY", 10, 0)]));
        store.servers.expect_lost_servers().returning(|_| Ok(vec![]));
        store
            .bots
            .expect_list_bots()
            .withf(|filter| {
                filter.server.as_ref().map(ServerName::as_str) == Some("FULL")
                    && filter.approval == Some(ApprovalStatus::Approved)
            })
            .returning(|_| {
                Ok(trekker_store::BotPage { bots: vec![bot_on("FULL", 1, ApprovalStatus::Approved)], next: None })
            });
        let asked = moves_answered(&mut store, |_| Ok(()));
        let mut t = trekker(store);
        t.fleet.rebalance = true;
        let pass = t.fleet_pass().await.unwrap();
        assert!(pass.rebalanced >= 1, "{pass:?}");
        assert_eq!(pass.rebalanced, asked.lock().unwrap().len());
        assert!(asked.lock().unwrap().iter().all(|(_, to, _, _)| to == "EMPTY"));
    }

    /// The loop runs a pass on its interval until shut down.
    #[tokio::test(start_paused = true)]
    async fn the_fleet_loop_runs_a_pass_every_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = passes.clone();
        let mut store = Mocks::default();
        store.capacity.expect_hold_duty().returning(move |_, _, _, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(false)
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::new(trekker(store)), Duration::from_secs(10), shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(35)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(passes.load(Ordering::SeqCst), 4, "at 0, 10, 20 and 30 s");
    }
}
