//! The supervisor: runs exactly the bots this node should run.
//!
//! Desired = bots hosted here (`server_name`), approved, not expired. The
//! supervisor learns them in full at start (and on a long, jittered resync
//! interval), then reads only what changed since (the store's change feed),
//! on every change signal from this node and on a short poll for changes
//! made by other nodes. A quiet node's poll reads no bot row. It:
//! - holds a node lease (one registry row, a new epoch per start) that
//!   covers every bot it runs; it renews that one row, and stops everything
//!   when the lease is lost (another node may have taken its bots), or when
//!   it cannot renew for half a lease;
//! - starts what is missing, staggered by a start rate, never more than
//!   this node's capacity, each only after making its lease the bot's
//!   runner, which checks ownership and the credentials version in the same
//!   statement;
//! - stops what is no longer wanted (rejected, expired, deleted, moved, or
//!   stopped by an admin: `desiredState`);
//! - restarts a bot whose credentials version changed, or that an admin
//!   restarted (`power_seq`; this also lifts a `failed` hold);
//! - paces the starts of bots that arrived by a move (MOVES_PER_MIN), so a
//!   failover or evacuation is no login storm at WhatsApp;
//! - restarts crashes with capped exponential backoff and jitter, and marks
//!   a bot `failed` after repeated crashes in a window; a logged-out bot goes
//!   to `error` and is not restarted. Either waits for new credentials or an
//!   admin action (both set the bot `loading`).
//!
//! Only the hosting node writes a bot's runtime status, only under the lease
//! that runs it, and only about its current credentials version (the store
//! checks all three).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{Notify, mpsc};
// Tokio's clock, so tests can pause and advance time instead of sleeping.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trekker_domain::time::Clock;
use trekker_domain::{ApprovalStatus, BotId, DesiredState, PhoneNumber, RuntimeStatus, ServerName, messages};
use trekker_store::{
    AuditMark, BotExit, BotRecord, ChangeCursor, NewActivity, NodeLease, RuntimeReport, RuntimeStore, SessionSnapshot,
    SessionStateStore, SideEffects,
};

use crate::driver::{BotDriver, BotEvent, BotSpec, DriverEvent, OUT_OF_MEMORY, RunningBot, SessionSync, StateSink};
use crate::state::{Snapshot, StateError};

/// How long a bot whose credentials cannot be opened waits before they are
/// read again.
const UNREADABLE_CREDENTIALS_RETRY: Duration = Duration::from_secs(30);

/// Counter: session folders saved, by `server`.
pub const STATE_SYNCS: &str = "trekker_bot_state_syncs_total";
/// Counter: bytes of session folders saved, by `server`.
pub const STATE_BYTES: &str = "trekker_bot_state_bytes_total";
/// Counter: session folders not saved, by `server` and `reason` (too large,
/// a link... or `fenced`: this node no longer runs the bot).
pub const STATE_REFUSALS: &str = "trekker_bot_state_refusals_total";

/// Gauge: bots this node runs now, by `server`.
pub const BOTS_RUNNING: &str = "trekker_bots_running";
/// Counter: bot crashes (restarts with backoff or failures), by `server`.
pub const BOT_CRASHES: &str = "trekker_bot_crashes_total";
/// Counter: bot runs killed for passing their memory limit, by `server`.
pub const BOT_OOM_KILLS: &str = "trekker_bot_oom_kills_total";

/// Timings of the supervisor; the defaults suit production.
#[derive(Debug, Clone)]
pub struct SupervisorTuning {
    /// How often the database is polled for changes made elsewhere.
    pub poll_every: Duration,
    /// How long the node lease holds without renewal (renewed every third).
    pub lease: Duration,
    /// How often the node's bots are read in full (jittered by up to a
    /// fifth), to heal anything the change feed could not say.
    pub resync_every: Duration,
    /// Bot starts per second (boot is staggered, never all at once).
    pub start_rate_per_sec: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Crashes within `crash_window` that mark a bot failed.
    pub crash_limit: usize,
    pub crash_window: Duration,
    /// Starts per minute of bots that arrived here by a move (MOVES_PER_MIN).
    pub arrivals_per_min: u32,
}

impl Default for SupervisorTuning {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_secs(2),
            lease: Duration::from_secs(30),
            resync_every: Duration::from_secs(600),
            start_rate_per_sec: 20,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            crash_limit: 5,
            crash_window: Duration::from_secs(300),
            arrivals_per_min: 30,
        }
    }
}

/// Where and how bots' session folders are kept (invariant 9).
#[derive(Clone)]
pub struct SessionConfig {
    pub store: Arc<dyn SessionStateStore>,
    /// How often a running bot's folder is checked and, if it changed, saved.
    pub every: Duration,
    /// Largest folder kept, in bytes.
    pub limit: u64,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig").field("every", &self.every).field("limit", &self.limit).finish_non_exhaustive()
    }
}

/// Saves one run's session folder: under the lease that runs it, for its
/// credentials version, each save one generation above the last.
struct StoreSink {
    store: Arc<dyn SessionStateStore>,
    clock: Arc<dyn Clock>,
    bot_id: BotId,
    lease: NodeLease,
    version: i64,
    generation: std::sync::atomic::AtomicI64,
}

#[async_trait::async_trait]
impl StateSink for StoreSink {
    async fn save(&self, snapshot: &Snapshot) -> bool {
        use std::sync::atomic::Ordering;
        let server = self.lease.node.to_string();
        let next = SessionSnapshot {
            generation: self.generation.load(Ordering::SeqCst) + 1,
            archive: snapshot.archive.clone(),
            size_bytes: i64::try_from(snapshot.bytes).unwrap_or(i64::MAX),
            file_count: i64::try_from(snapshot.files).unwrap_or(i64::MAX),
        };
        let now = self.clock.now_ms();
        match self.store.save_session_state(&self.bot_id, &self.lease, self.version, &next, now).await {
            Ok(true) => {
                self.generation.store(next.generation, Ordering::SeqCst);
                metrics::counter!(STATE_SYNCS, "server" => server.clone()).increment(1);
                metrics::counter!(STATE_BYTES, "server" => server).increment(snapshot.bytes);
                let (generation, bytes) = (next.generation, snapshot.bytes);
                tracing::debug!(bot = %self.bot_id, generation, bytes, "session saved");
                true
            }
            Ok(false) => {
                tracing::info!(bot = %self.bot_id, "session not saved: this node no longer runs the bot");
                metrics::counter!(STATE_REFUSALS, "server" => server, "reason" => "fenced").increment(1);
                false
            }
            Err(err) => {
                tracing::warn!(bot = %self.bot_id, error = ?err, "cannot save the session; will try again");
                false
            }
        }
    }

    async fn refuse(&self, error: &StateError) {
        tracing::warn!(bot = %self.bot_id, %error, "session folder not saved; the last good state is kept");
        let server = self.lease.node.to_string();
        metrics::counter!(STATE_REFUSALS, "server" => server, "reason" => error.kind()).increment(1);
        let now = self.clock.now_ms();
        if let Err(err) = self.store.refuse_session_state(&self.bot_id, &self.lease, &error.to_string(), now).await {
            tracing::warn!(bot = %self.bot_id, error = ?err, "cannot record the refused session");
        }
    }
}

/// Why a bot is not (re)started although it is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Failed,
    LoggedOut,
    /// It exited with code 0 by itself.
    Stopped,
}

/// What follows once a bot's stop has finished (its processes are gone
/// and its session folder saved): only then may another node take it.
#[derive(Debug)]
enum AfterStop {
    /// Nothing is written: the lease that ran it is gone or in doubt.
    Nothing,
    /// Give the bot up and, if set, record this status.
    Release(Option<(RuntimeStatus, Option<String>, Option<String>)>),
    /// It crashed: back off and restart, or mark it failed.
    Crash(String),
}

/// What the supervisor knows about one bot.
struct Managed {
    /// The credentials version running (or last started).
    version: i64,
    generation: u64,
    running: Option<Box<dyn RunningBot>>,
    crashes: VecDeque<Instant>,
    consecutive_crashes: u32,
    restart_at: Option<Instant>,
    hold: Option<Hold>,
    /// A stop of this bot is under way (not started again until it ends).
    stopping: bool,
    /// The next start is a restart (new credentials): it counts as one.
    restarting: bool,
    /// The admin restarts (`power_seq`) this run has seen.
    power_seq: i64,
    /// The arrival (`moved_at`) this node has started the bot since.
    arrival: Option<i64>,
    /// The bot's name and phone when last started: whom to tell, and how.
    owner: Option<(String, PhoneNumber)>,
}

impl Managed {
    fn new() -> Self {
        Self {
            version: 0,
            generation: 0,
            running: None,
            crashes: VecDeque::new(),
            consecutive_crashes: 0,
            restart_at: None,
            hold: None,
            stopping: false,
            restarting: false,
            power_seq: 0,
            arrival: None,
            owner: None,
        }
    }
}

pub struct Supervisor {
    store: Arc<dyn RuntimeStore>,
    /// Wall-clock time for leases and reports (epoch milliseconds).
    clock: Arc<dyn Clock>,
    driver: Arc<dyn BotDriver>,
    node: ServerName,
    /// This node's own capacity: it never runs more, whatever the database says.
    max_bots: usize,
    tuning: SupervisorTuning,
    bots: HashMap<BotId, Managed>,
    /// Desired bots as of the last poll.
    desired: HashMap<BotId, BotRecord>,
    events_tx: mpsc::UnboundedSender<DriverEvent>,
    events_rx: mpsc::UnboundedReceiver<DriverEvent>,
    next_generation: u64,
    /// This node's lease; none before the first poll and after losing it.
    lease: Option<NodeLease>,
    last_renewed: Option<Instant>,
    /// Where the change feed reads on from; none: read in full next.
    cursor: Option<ChangeCursor>,
    next_resync: Instant,
    start_tokens: f64,
    tokens_at: Instant,
    at_capacity_logged: bool,
    /// Bots with a running handle (kept here: counting the map is O(n)).
    running: usize,
    /// The same count, shared with the node's load report.
    running_shared: Arc<AtomicUsize>,
    /// Where the time of the last lease renewal goes (the node's heartbeat).
    renewal_stamp: Option<Arc<AtomicI64>>,
    /// Start tokens for bots that arrived by a move, and when they were counted.
    arrival_tokens: f64,
    arrivals_at: Instant,
    /// Whether a start pass may find work (cleared after a pass that
    /// started everything it could; set by polls, stops and crashes).
    starts_pending: bool,
    /// Session folders are kept when set.
    session: Option<SessionConfig>,
    /// Stops under way. A stop waits for the bot (its grace period, its last
    /// save) and so never runs inside the loop: the lease is renewed and
    /// other bots are looked after whatever one bot does.
    stops: tokio::task::JoinSet<(BotId, AfterStop)>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("node", &self.node).field("driver", &self.driver).finish_non_exhaustive()
    }
}

fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut bytes);
    let millis = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from_le_bytes(bytes) % millis)
}

impl Supervisor {
    pub fn new(
        store: Arc<dyn RuntimeStore>,
        clock: Arc<dyn Clock>,
        driver: Arc<dyn BotDriver>,
        node: ServerName,
        max_bots: usize,
        tuning: SupervisorTuning,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let burst = f64::from(tuning.start_rate_per_sec.max(1));
        Self {
            store,
            clock,
            driver,
            node,
            max_bots,
            tuning,
            bots: HashMap::new(),
            desired: HashMap::new(),
            events_tx,
            events_rx,
            next_generation: 0,
            lease: None,
            last_renewed: None,
            cursor: None,
            next_resync: Instant::now(),
            start_tokens: burst,
            tokens_at: Instant::now(),
            at_capacity_logged: false,
            running: 0,
            running_shared: Arc::new(AtomicUsize::new(0)),
            renewal_stamp: None,
            arrival_tokens: 1.0,
            arrivals_at: Instant::now(),
            starts_pending: true,
            session: None,
            stops: tokio::task::JoinSet::new(),
        }
    }

    /// Writes the time (epoch ms) of each lease renewal to `stamp`: a
    /// renewal is also the node's heartbeat, so the heartbeat loop need not
    /// write again (see `trekker_app::liveness`).
    pub fn with_renewal_stamp(mut self, stamp: Arc<AtomicI64>) -> Self {
        self.renewal_stamp = Some(stamp);
        self
    }

    /// Keeps the count of running bots in `counter` too (the node's load report).
    pub fn with_running_counter(mut self, counter: Arc<AtomicUsize>) -> Self {
        self.running_shared = counter;
        self
    }

    /// Keeps bots' session folders in `config.store` (invariant 9).
    pub fn with_session_state(mut self, config: SessionConfig) -> Self {
        self.session = Some(config);
        self
    }

    /// Runs until `shutdown`, then stops every bot and leaves it `offline`.
    /// `changed` is signalled by this node's use cases after a change.
    pub async fn run(mut self, changed: Arc<Notify>, shutdown: CancellationToken) {
        tracing::info!(driver = self.driver.name(), node = %self.node, max = self.max_bots, "bot supervisor started");
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = changed.notified() => last_poll = None,
                Some(event) = self.events_rx.recv() => self.on_event(event).await,
                Some(Ok((id, after))) = self.stops.join_next(), if !self.stops.is_empty() => {
                    self.on_stopped(id, after).await;
                }
                // Starts happen on ticks, not per event: a start pass scans
                // every wanted bot, and boot brings one event per bot.
                _ = tick.tick() => {
                    if last_poll.is_none_or(|at| at.elapsed() >= self.tuning.poll_every) {
                        // A database call that never answers (a partition
                        // dropping packets) must not keep the loop from the
                        // lease check below: the poll gets a quarter lease.
                        if tokio::time::timeout(self.db_budget(), self.poll()).await.is_err() {
                            tracing::warn!("the database did not answer the supervisor's poll in time");
                        }
                        last_poll = Some(Instant::now());
                    }
                    self.stop_if_lease_in_doubt().await;
                    self.start_due().await;
                }
            }
        }
        self.stop_all().await;
    }

    /// Holds the node lease, learns what changed, stops what must stop and
    /// restarts what has new credentials.
    async fn poll(&mut self) {
        if !self.hold_lease().await {
            return;
        }
        if !self.refresh_desired().await {
            return;
        }
        self.reconcile().await;
    }

    /// Takes or renews the node lease; false when the node must not run
    /// bots now (every bot is stopped then).
    async fn hold_lease(&mut self) -> bool {
        let now = self.clock.now_ms();
        let lease_ms = self.tuning.lease.as_millis() as i64;
        let Some(lease) = self.lease.clone() else {
            return match self.store.start_node_lease(&self.node, now, lease_ms).await {
                Ok(lease) => {
                    tracing::info!(node = %lease.node, epoch = lease.epoch, "node lease taken");
                    self.lease = Some(lease);
                    self.last_renewed = Some(Instant::now());
                    // A new epoch: learn everything again.
                    self.cursor = None;
                    true
                }
                Err(err) => {
                    tracing::warn!(error = ?err, "cannot take the node lease; will retry");
                    false
                }
            };
        };
        if self.last_renewed.is_some_and(|at| at.elapsed() < self.tuning.lease / 3) {
            return true;
        }
        match self.store.renew_node_lease(&lease, now, lease_ms).await {
            Ok(true) => {
                self.last_renewed = Some(Instant::now());
                if let Some(stamp) = &self.renewal_stamp {
                    stamp.store(now, Ordering::Relaxed);
                }
                true
            }
            Ok(false) => {
                // Another node may run our bots now: stop them all without
                // touching their rows, then start over under a new epoch.
                tracing::warn!(epoch = lease.epoch, "node lease lost (stalled past it, or restarted elsewhere)");
                self.stop_everything().await;
                self.lease = None;
                false
            }
            Err(err) => {
                tracing::warn!(error = ?err, "node lease renewal failed");
                // Past half the lease without renewal we can no longer be
                // sure no other node takes our bots: stop them.
                if self.last_renewed.is_none_or(|at| at.elapsed() > self.tuning.lease / 2) {
                    self.stop_everything().await;
                }
                false
            }
        }
    }

    /// Updates the desired set: in full when due, else from the change feed.
    async fn refresh_desired(&mut self) -> bool {
        let full = self.cursor.is_none() || Instant::now() >= self.next_resync;
        if full {
            match self.store.bots_to_run(&self.node).await {
                Ok(snapshot) => {
                    self.desired = snapshot.bots.into_iter().map(|b| (b.id.clone(), b)).collect();
                    self.cursor = Some(snapshot.cursor);
                    let every = self.tuning.resync_every;
                    self.next_resync = Instant::now() + every - jitter(every / 5);
                }
                Err(err) => {
                    tracing::warn!(error = ?err, "listing this node's bots failed; will retry");
                    return false;
                }
            }
        } else {
            let cursor = self.cursor.clone().unwrap_or_default();
            match self.store.bot_changes(&self.node, &cursor).await {
                Ok(changes) => {
                    for id in &changes.departed {
                        self.desired.remove(id);
                    }
                    for bot in changes.changed {
                        if bot.approval == ApprovalStatus::Approved
                            && bot.server == self.node
                            && bot.desired_state == DesiredState::Running
                        {
                            self.desired.insert(bot.id.clone(), bot);
                        } else {
                            self.desired.remove(&bot.id);
                        }
                    }
                    self.cursor = Some(changes.cursor);
                }
                Err(err) => {
                    tracing::warn!(error = ?err, "reading this node's bot changes failed; will retry");
                    return false;
                }
            }
        }
        // Approval runs out with time, not with a write: checked here.
        let now = self.clock.now_ms();
        self.desired.retain(|_, bot| bot.expires_at.is_none_or(|at| at > now));
        true
    }

    /// Stops what is no longer wanted, restarts what has new credentials,
    /// and lifts holds after new credentials or an admin action.
    async fn reconcile(&mut self) {
        for id in self.running_ids() {
            let Some(bot) = self.desired.get(&id).cloned() else {
                tracing::info!(bot = %id, "bot no longer wanted here (expired, rejected, deleted, moved, stopped)");
                self.begin_stop(&id, AfterStop::Release(Some((RuntimeStatus::Offline, None, None))));
                continue;
            };
            let running_version = self.bots.get(&id).map_or(0, |m| m.version);
            let running_power = self.bots.get(&id).map_or(0, |m| m.power_seq);
            if bot.power_seq > running_power && bot.credentials_version <= running_version {
                tracing::info!(bot = %id, "restart asked by an admin: restarting");
                self.begin_stop(&id, AfterStop::Release(None));
                if let Some(m) = self.bots.get_mut(&id) {
                    m.restarting = true;
                    m.power_seq = bot.power_seq;
                }
            }
            if bot.credentials_version > running_version {
                let (from, to) = (running_version, bot.credentials_version);
                tracing::info!(bot = %id, from, to, "new credentials: restarting");
                // Started again by the start pass once the stop is over.
                self.begin_stop(&id, AfterStop::Release(None));
                if let Some(m) = self.bots.get_mut(&id) {
                    m.restarting = true;
                }
            }
        }
        // New credentials or an admin action (status `loading`, a restart)
        // lift a hold; a restart also ends a crash backoff.
        for (id, managed) in &mut self.bots {
            let Some(bot) = self.desired.get(id) else { continue };
            let restarted = bot.power_seq > managed.power_seq;
            if restarted && managed.running.is_none() && !managed.stopping {
                managed.power_seq = bot.power_seq;
                managed.restart_at = None;
                managed.crashes.clear();
                managed.consecutive_crashes = 0;
            }
            if let Some(hold) = managed.hold
                && (restarted || bot.status == RuntimeStatus::Loading || bot.credentials_version > managed.version)
            {
                tracing::info!(bot = %id, ?hold, "fresh start after new credentials or an admin action");
                managed.hold = None;
                managed.crashes.clear();
                managed.consecutive_crashes = 0;
            }
        }
        let desired = &self.desired;
        self.bots.retain(|id, m| m.running.is_some() || m.stopping || desired.contains_key(id));
        self.starts_pending = true;
    }

    /// Past half the lease without a renewal, whatever the database does,
    /// no other node may be kept from the bots much longer: stop them all.
    async fn stop_if_lease_in_doubt(&mut self) {
        if self.lease.is_some() && self.last_renewed.is_some_and(|at| at.elapsed() > self.tuning.lease / 2) {
            tracing::warn!("no lease renewal for half a lease: stopping every bot");
            self.stop_everything().await;
            // Taken again (a new epoch) once the database answers.
            self.lease = None;
        }
    }

    /// Stops every running bot without writing anything (the lease that ran
    /// them is gone or in doubt).
    async fn stop_everything(&mut self) {
        for id in self.running_ids() {
            tracing::warn!(bot = %id, "⏹️ stopping bot: no node lease");
            self.begin_stop(&id, AfterStop::Nothing);
        }
    }

    fn publish_running(&self) {
        metrics::gauge!(BOTS_RUNNING, "server" => self.node.to_string()).set(self.running as f64);
        self.running_shared.store(self.running, Ordering::Relaxed);
    }

    fn running_ids(&self) -> Vec<BotId> {
        self.bots.iter().filter(|(_, m)| m.running.is_some()).map(|(id, _)| id.clone()).collect()
    }

    fn take_start_token(&mut self) -> bool {
        let rate = f64::from(self.tuning.start_rate_per_sec.max(1));
        let elapsed = self.tokens_at.elapsed().as_secs_f64();
        self.tokens_at = Instant::now();
        self.start_tokens = (self.start_tokens + elapsed * rate).min(rate);
        if self.start_tokens >= 1.0 {
            self.start_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `bot` arrived here by a move it has not been started since
    /// (its start is paced by MOVES_PER_MIN). Arrivals older than ten
    /// minutes are history: a node restart does not pace its own bots.
    fn is_arrival(&self, bot: &BotRecord) -> bool {
        let Some(moved_at) = bot.moved_at else { return false };
        let recent = self.clock.now_ms().saturating_sub(moved_at) < 600_000;
        recent && self.bots.get(&bot.id).is_none_or(|m| m.arrival != Some(moved_at))
    }

    /// Takes a start token for an arrival (burst of one: at most
    /// `arrivals_per_min` a minute, evenly spaced).
    fn take_arrival_token(&mut self) -> bool {
        let rate = f64::from(self.tuning.arrivals_per_min.max(1)) / 60.0;
        let elapsed = self.arrivals_at.elapsed().as_secs_f64();
        self.arrivals_at = Instant::now();
        self.arrival_tokens = (self.arrival_tokens + elapsed * rate).min(1.0);
        if self.arrival_tokens >= 1.0 {
            self.arrival_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Starts wanted bots that are not running, within capacity and rate.
    async fn start_due(&mut self) {
        if !self.starts_pending {
            return;
        }
        let now = Instant::now();
        let mut waiting = false;
        let mut candidates: Vec<&BotRecord> = self
            .desired
            .values()
            .filter(|bot| match self.bots.get(&bot.id) {
                Some(m) if m.running.is_some() || m.hold.is_some() || m.stopping => false,
                Some(m) => match m.restart_at {
                    Some(at) if at > now => {
                        waiting = true;
                        false
                    }
                    _ => true,
                },
                // A failure recorded before this process started still holds.
                None => !matches!(bot.status, RuntimeStatus::Failed | RuntimeStatus::Error),
            })
            .collect();
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let candidates: Vec<BotRecord> = candidates.into_iter().cloned().collect();
        // Stays set while a backoff timer runs or the pass stops early.
        self.starts_pending = waiting;
        for bot in candidates {
            if self.running >= self.max_bots {
                self.starts_pending = true;
                if !self.at_capacity_logged {
                    tracing::warn!(max = self.max_bots, "node at capacity: not starting more bots");
                    self.at_capacity_logged = true;
                }
                return;
            }
            let arrival = self.is_arrival(&bot);
            if arrival && !self.take_arrival_token() {
                // Not yet: other bots may start meanwhile; asked again next tick.
                self.starts_pending = true;
                continue;
            }
            if !self.take_start_token() {
                self.starts_pending = true;
                return;
            }
            let restart = self.bots.get(&bot.id).is_some_and(|m| m.restarting);
            self.start_bot(&bot, restart).await;
        }
        self.at_capacity_logged = false;
    }

    async fn start_bot(&mut self, bot: &BotRecord, restart: bool) {
        // Each database call within the loop's budget (see `db_budget`).
        let budget = self.db_budget();
        let loaded = tokio::time::timeout(budget, self.store.load_credentials(&bot.id)).await;
        let (credentials, version) = match loaded {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                // Unreadable credentials (another key, corrupt) stay so until an
                // operator acts: asked again at every tick, a thousand such bots
                // cost the database thousands of reads a second (issue 22).
                tracing::warn!(bot = %bot.id, error = ?err, "cannot load credentials; trying again later");
                let retry_at = Instant::now() + UNREADABLE_CREDENTIALS_RETRY;
                self.bots.entry(bot.id.clone()).or_insert_with(Managed::new).restart_at = Some(retry_at);
                return;
            }
            Err(_) => {
                tracing::warn!(bot = %bot.id, "credentials not read in time");
                let retry_at = Instant::now() + self.tuning.poll_every;
                self.bots.entry(bot.id.clone()).or_insert_with(Managed::new).restart_at = Some(retry_at);
                return;
            }
        };
        let Some(lease) = self.lease.clone() else { return };
        let acquired =
            tokio::time::timeout(budget, self.store.acquire_bot(&bot.id, &lease, version, self.clock.now_ms()))
                .await
                .unwrap_or_else(|_| Err(trekker_store::StoreError::Config("acquire not answered in time".into())));
        match acquired {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(bot = %bot.id, "bot not available (moved, changed, or still run by a live lease)");
                // Ask again at the next poll rather than at every tick.
                let retry_at = Instant::now() + self.tuning.poll_every;
                self.bots.entry(bot.id.clone()).or_insert_with(Managed::new).restart_at = Some(retry_at);
                return;
            }
            Err(err) => {
                tracing::warn!(bot = %bot.id, error = ?err, "cannot become the bot's runner");
                return;
            }
        }
        let session = match tokio::time::timeout(budget, self.session_for(&bot.id, &lease, version)).await {
            Ok(Ok(session)) => session,
            Ok(Err(())) | Err(_) => {
                // Starting without the saved state would lose it (the run
                // would save over it): give the bot up and try again later.
                self.release(&bot.id).await;
                let retry_at = Instant::now() + self.tuning.poll_every;
                self.bots.entry(bot.id.clone()).or_insert_with(Managed::new).restart_at = Some(retry_at);
                return;
            }
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        let managed = self.bots.entry(bot.id.clone()).or_insert_with(Managed::new);
        managed.generation = generation;
        managed.version = version;
        managed.restart_at = None;
        managed.restarting = false;
        managed.power_seq = managed.power_seq.max(bot.power_seq);
        managed.arrival = bot.moved_at;
        managed.owner = Some((bot.name.clone(), bot.phone.clone()));
        self.report(&bot.id, version, RuntimeStatus::Loading, i64::from(restart), None, None).await;
        let spec = BotSpec {
            bot_id: bot.id.clone(),
            runner: lease.clone(),
            phone: bot.phone.clone(),
            server: self.node.clone(),
            credentials,
            version,
            generation,
            session,
            // The device's own pairing time (ADV, seconds) says best how new
            // the number is here.
            paired_at: bot.adv_timestamp.and_then(|secs| secs.checked_mul(1000)).unwrap_or(bot.created_at),
        };
        match self.driver.start(spec, self.events_tx.clone()).await {
            Ok(handle) => {
                tracing::info!(bot = %bot.id, version, "▶️ bot started");
                if let Some(m) = self.bots.get_mut(&bot.id) {
                    m.running = Some(handle);
                    self.running += 1;
                }
                self.publish_running();
            }
            Err(err) => self.on_crash(&bot.id, err.to_string()).await,
        }
    }

    /// The session folder of a run about to start: the saved state to
    /// restore and where to save it. `Err` when the state cannot be read.
    async fn session_for(&self, id: &BotId, lease: &NodeLease, version: i64) -> Result<Option<SessionSync>, ()> {
        let Some(config) = &self.session else { return Ok(None) };
        let saved = config.store.load_session_state(id, version).await.map_err(|err| {
            tracing::warn!(bot = %id, error = ?err, "cannot read the saved session; not starting the bot yet");
        })?;
        let sink = StoreSink {
            store: config.store.clone(),
            clock: self.clock.clone(),
            bot_id: id.clone(),
            lease: lease.clone(),
            version,
            generation: std::sync::atomic::AtomicI64::new(saved.as_ref().map_or(0, |s| s.generation)),
        };
        Ok(Some(SessionSync {
            restore: saved.map(|s| Arc::new(s.archive)),
            sink: Arc::new(sink),
            every: config.every,
            limit: config.limit,
        }))
    }

    /// Stops the bot and keeps it stopped until something changes (new
    /// credentials, an admin); `report` is recorded once it has stopped.
    fn hold(&mut self, id: &BotId, hold: Hold, report: Option<(RuntimeStatus, Option<String>, Option<String>)>) {
        self.begin_stop(id, AfterStop::Release(report));
        if let Some(m) = self.bots.get_mut(id) {
            m.hold = Some(hold);
        }
    }

    /// Starts stopping a running bot, outside the loop; `after` runs when
    /// it is over. Events of the stopped run are ignored from now on.
    fn begin_stop(&mut self, id: &BotId, after: AfterStop) {
        let Some(managed) = self.bots.get_mut(id) else { return };
        managed.generation = 0;
        let Some(handle) = managed.running.take() else {
            // Nothing runs (a failed start): what follows a stop follows now.
            if !managed.stopping {
                let id = id.clone();
                self.stops.spawn(async move { (id, after) });
                managed.stopping = true;
            }
            return;
        };
        managed.stopping = true;
        self.running -= 1;
        self.publish_running();
        let id = id.clone();
        self.stops.spawn(async move {
            handle.stop().await;
            (id, after)
        });
    }

    /// A stop is over: the bot may be given up, reported, or restarted.
    async fn on_stopped(&mut self, id: BotId, after: AfterStop) {
        tracing::info!(bot = %id, "⏹️ bot stopped");
        let version = match self.bots.get_mut(&id) {
            Some(managed) => {
                managed.stopping = false;
                managed.version
            }
            None => 0,
        };
        self.starts_pending = true;
        match after {
            AfterStop::Nothing => {}
            AfterStop::Release(report) => {
                self.release(&id).await;
                if let Some((status, error, reason)) = report {
                    self.report(&id, version, status, 0, error, reason).await;
                }
            }
            AfterStop::Crash(error) => self.on_crash(&id, error).await,
        }
        let desired = &self.desired;
        self.bots.retain(|id, m| m.running.is_some() || m.stopping || desired.contains_key(id));
    }

    /// Gives the bot up in the database, so another node may run it at once
    /// (else it waits for this node's lease to run out).
    async fn release(&self, id: &BotId) {
        let Some(lease) = &self.lease else { return };
        match tokio::time::timeout(self.db_budget(), self.store.release_bot(id, lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(bot = %id, error = ?err, "cannot release the bot; the node lease covers it");
            }
            Err(_) => tracing::warn!(bot = %id, "release not answered in time; the node lease covers the bot"),
        }
    }

    /// How long one of the loop's database calls may take: the loop must
    /// come back to its lease check well within half a lease, whatever the
    /// network does.
    fn db_budget(&self) -> Duration {
        self.tuning.lease / 4
    }

    async fn on_event(&mut self, event: DriverEvent) {
        let Some(managed) = self.bots.get(&event.bot_id) else { return };
        if managed.generation != event.generation || managed.generation == 0 {
            return;
        }
        let (id, version) = (event.bot_id.clone(), managed.version);
        if let BotEvent::Exited { code, signal, error } = &event.event {
            self.record_exit(&id, *code, *signal, error.as_deref()).await;
        }
        match event.event {
            BotEvent::Connected => {
                if let Some(m) = self.bots.get_mut(&id) {
                    m.consecutive_crashes = 0;
                }
                self.report(&id, version, RuntimeStatus::Online, 0, None, None).await;
            }
            BotEvent::Disconnected { reason } => {
                self.report(&id, version, RuntimeStatus::Loading, 0, Some(reason), None).await;
            }
            BotEvent::LoggedOut { reason } => {
                tracing::warn!(bot = %id, "bot logged out of WhatsApp: not restarting");
                let said = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                let reason = format!("logged out of WhatsApp{said}; pair the phone again");
                // Said once, with the report that takes the run's status:
                // the owner is the one who can pair again.
                if let Some((name, phone)) = self.bots.get(&id).and_then(|m| m.owner.clone()) {
                    let activity = NewActivity::new(&self.node, "logged_out", reason.clone())
                        .for_bot(&id, &phone)
                        .by_system(AuditMark::bot(&id));
                    let effects = SideEffects::activity(activity).notify(&phone, messages::logged_out(&name));
                    let status = (RuntimeStatus::Error, Some("logged out".into()), Some(reason.clone()));
                    self.report_with(&id, version, status, Some(effects)).await;
                }
                let report = (RuntimeStatus::Error, Some("logged out".into()), Some(reason));
                self.hold(&id, Hold::LoggedOut, Some(report));
            }
            BotEvent::Replaced => {
                tracing::warn!(bot = %id, "another client took over the bot's WhatsApp connection: stopped");
                let error = "another client took over this WhatsApp session (stream replaced); stopped".to_owned();
                // An activity for the operators, nobody messaged: any
                // connection of this session would take the stream back.
                let status = (RuntimeStatus::Offline, Some(error.clone()), None);
                self.report_with(&id, version, status, Some(self.alert(&id, "replaced", &error))).await;
                self.hold(&id, Hold::Stopped, Some((RuntimeStatus::Offline, Some(error), None)));
            }
            BotEvent::Held { reason } => {
                // Still connected: nothing to restart, and a restart or a
                // re-pair would not lift WhatsApp's limit. Only said.
                tracing::warn!(bot = %id, %reason, "WhatsApp limited the bot's sends: holding them");
                let effects = self.alert(&id, "held", &reason);
                let status = (RuntimeStatus::Online, Some(reason), None);
                self.report_with(&id, version, status, Some(effects)).await;
            }
            BotEvent::Banned { reason } => {
                tracing::warn!(bot = %id, %reason, "WhatsApp banned the bot's account: not restarting");
                let error = format!("banned by WhatsApp: {reason}");
                let status = (RuntimeStatus::Failed, Some(error.clone()), None);
                self.report_with(&id, version, status, Some(self.alert(&id, "banned", &error))).await;
                self.hold(&id, Hold::Failed, Some((RuntimeStatus::Failed, Some(error), None)));
            }
            BotEvent::Exited { code: Some(0), .. } => {
                tracing::info!(bot = %id, "bot stopped by itself (exit 0)");
                self.hold(&id, Hold::Stopped, Some((RuntimeStatus::Offline, None, None)));
            }
            BotEvent::Exited { error, .. } => {
                // Clean up what is left of the run (its last save included)
                // before the crash is counted; the lease stays for the restart.
                self.begin_stop(&id, AfterStop::Crash(error.unwrap_or_else(|| "crashed".into())));
            }
        }
    }

    /// An activity `action` about bot `id` (with its phone when known),
    /// written with the report that says it: what operators are alerted by.
    fn alert(&self, id: &BotId, action: &str, details: &str) -> SideEffects {
        let activity = NewActivity::new(&self.node, action, details.to_owned()).by_system(AuditMark::bot(id));
        let activity = match self.bots.get(id).and_then(|m| m.owner.clone()) {
            Some((_, phone)) => activity.for_bot(id, &phone),
            None => activity,
        };
        SideEffects::activity(activity)
    }

    async fn on_crash(&mut self, id: &BotId, error: String) {
        let (limit, window) = (self.tuning.crash_limit, self.tuning.crash_window);
        let (backoff_min, backoff_max) = (self.tuning.backoff_min, self.tuning.backoff_max);
        let Some(managed) = self.bots.get_mut(id) else { return };
        let now = Instant::now();
        managed.crashes.push_back(now);
        while managed.crashes.front().is_some_and(|at| now.duration_since(*at) > window) {
            managed.crashes.pop_front();
        }
        let version = managed.version;
        if managed.crashes.len() >= limit {
            managed.hold = Some(Hold::Failed);
            managed.generation = 0;
            let message =
                format!("crashed {} times within {} s; last: {error}", managed.crashes.len(), window.as_secs());
            tracing::error!(bot = %id, "{message}: marked failed");
            self.release(id).await;
            let effects = self.alert(id, "bot_failed", &message);
            self.report_with(id, version, (RuntimeStatus::Failed, Some(message), None), Some(effects)).await;
            return;
        }
        managed.consecutive_crashes += 1;
        let exponent = managed.consecutive_crashes.saturating_sub(1).min(16);
        let base = backoff_min.saturating_mul(1 << exponent).min(backoff_max);
        // Full jitter over the upper half keeps restarts spread out.
        let delay = base / 2 + jitter(base / 2);
        managed.restart_at = Some(now + delay);
        self.starts_pending = true;
        tracing::warn!(bot = %id, %error, delay_ms = delay.as_millis() as u64, "bot crashed: restarting after backoff");
        metrics::counter!(BOT_CRASHES, "server" => self.node.to_string()).increment(1);
        self.report(id, version, RuntimeStatus::Loading, 1, Some(error), None).await;
    }

    /// Records how a run ended (`lastExit`); a memory kill is counted.
    async fn record_exit(&self, id: &BotId, code: Option<i32>, signal: Option<i32>, error: Option<&str>) {
        let Some(runner) = self.lease.clone() else { return };
        let reason = error.unwrap_or("exited with code 0").to_owned();
        let out_of_memory = reason.starts_with(OUT_OF_MEMORY);
        if out_of_memory {
            tracing::warn!(bot = %id, "bot killed: out of memory");
            metrics::counter!(BOT_OOM_KILLS, "server" => self.node.to_string()).increment(1);
        }
        let exit = BotExit { at: self.clock.now_ms(), code, signal, reason, out_of_memory };
        match tokio::time::timeout(self.db_budget(), self.store.record_exit(id, &runner, &exit)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(bot = %id, error = ?err, "cannot record how the bot ended"),
            Err(_) => tracing::warn!(bot = %id, "how the bot ended was not recorded in time"),
        }
    }

    async fn report(
        &self,
        id: &BotId,
        version: i64,
        status: RuntimeStatus,
        restarts: i64,
        last_error: Option<String>,
        invalid_reason: Option<String>,
    ) {
        self.write_report(id, version, (status, restarts, last_error, invalid_reason), None).await;
    }

    /// A report with what it says to people (see [`RuntimeReport::effects`]).
    async fn report_with(
        &self,
        id: &BotId,
        version: i64,
        (status, last_error, invalid_reason): (RuntimeStatus, Option<String>, Option<String>),
        effects: Option<SideEffects>,
    ) {
        self.write_report(id, version, (status, 0, last_error, invalid_reason), effects).await;
    }

    async fn write_report(
        &self,
        id: &BotId,
        version: i64,
        (status, restarts, last_error, invalid_reason): (RuntimeStatus, i64, Option<String>, Option<String>),
        effects: Option<SideEffects>,
    ) {
        // Without a lease nothing is written: another node may run the bot.
        let Some(runner) = self.lease.clone() else { return };
        let report = RuntimeReport {
            bot_id: id.clone(),
            runner,
            version,
            status,
            restarts,
            last_error,
            invalid_reason,
            effects,
        };
        match tokio::time::timeout(self.db_budget(), self.store.report_runtime(&report, self.clock.now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(bot = %id, error = ?err, "cannot record the bot's status"),
            Err(_) => tracing::warn!(bot = %id, "the bot's status was not recorded in time"),
        }
    }

    /// Graceful shutdown: every bot stops, its lease is released and it is
    /// left `offline`; stops already under way are waited for too.
    async fn stop_all(&mut self) {
        let running = self.running_ids();
        for id in &running {
            self.begin_stop(id, AfterStop::Release(Some((RuntimeStatus::Offline, None, None))));
        }
        while let Some(done) = self.stops.join_next().await {
            if let Ok((id, after)) = done {
                // A crash being cleaned up is not restarted now: it is left offline.
                let after = match after {
                    AfterStop::Crash(_) => AfterStop::Release(Some((RuntimeStatus::Offline, None, None))),
                    other => other,
                };
                self.on_stopped(id, after).await;
            }
        }
        tracing::info!(count = running.len(), "all bots stopped");
    }
}
