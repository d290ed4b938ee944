//! The supervisor against a fake store and a fake driver, on tokio's paused
//! clock: start rate, capacity, crash backoff and the failed hold, logout,
//! exit 0, lease loss, renewal failures and restarts on new credentials,
//! all without a real sleep.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trekker_domain::time::ManualClock;
use trekker_domain::{ApprovalStatus, BotId, Credentials, DesiredState, PhoneNumber, RuntimeStatus, ServerName};
use trekker_runtime::{
    BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, RunningBot, Supervisor, SupervisorTuning,
};
use trekker_store::{
    BotChanges, BotExit, BotExits, BotRecord, BotSnapshot, ChangeCursor, Millis, NodeLease, RuntimeReport,
    RuntimeStore, StoreError,
};
use trekker_testkit::creds;

const NODE: &str = "SERVER0";

fn node() -> ServerName {
    ServerName::parse(NODE).unwrap()
}

fn bot_id(n: u32) -> BotId {
    BotId::parse(&format!("bot-{n:02}")).unwrap()
}

fn phone(n: u32) -> String {
    creds::phone(90, n)
}

/// The database as the supervisor sees it, with a change feed: every edit
/// bumps a change number, and reads are counted.
#[derive(Default)]
struct FakeStore {
    state: Mutex<StoreState>,
}

#[derive(Default)]
struct StoreState {
    bots: Vec<BotRecord>,
    /// The change number of each bot's last write.
    changed_at: HashMap<BotId, i64>,
    departed: Vec<(i64, BotId)>,
    seq: i64,
    /// Bots another live lease runs: not available to this node.
    taken: HashSet<BotId>,
    epoch: i64,
    /// The node's lease ran out or its epoch moved on: renewals say so.
    lease_lost: bool,
    /// The database is unreachable for leases.
    renewal_fails: bool,
    /// Renewals never answer (a partition that drops packets).
    renewal_hangs: bool,
    /// How long a status report takes to answer (a database far away).
    report_latency: Duration,
    reports: Vec<RuntimeReport>,
    /// Bot rows handed to the supervisor, in full reads and change reads.
    rows_read: usize,
    full_reads: usize,
    renewals: usize,
    exits: Vec<(BotId, BotExit)>,
    /// Bots whose runner lease this node gave up.
    released: Vec<BotId>,
    /// Bots whose credentials cannot be opened (another key), and how
    /// often any bot's credentials were read.
    unreadable: HashSet<BotId>,
    credential_reads: usize,
}

impl StoreState {
    fn touch(&mut self, id: &BotId) {
        self.seq += 1;
        self.changed_at.insert(id.clone(), self.seq);
    }
}

impl FakeStore {
    fn with_bots(count: u32) -> Arc<Self> {
        let store = Self::default();
        for n in 1..=count {
            let mut state = store.state.lock().unwrap();
            state.bots.push(record(n));
            state.touch(&bot_id(n));
        }
        Arc::new(store)
    }

    fn edit(&self, id: &BotId, change: impl FnOnce(&mut BotRecord)) {
        let mut state = self.state.lock().unwrap();
        change(state.bots.iter_mut().find(|b| &b.id == id).unwrap());
        state.touch(id);
    }

    /// The bot leaves this node (moved or deleted).
    fn remove(&self, id: &BotId) {
        let mut state = self.state.lock().unwrap();
        state.bots.retain(|b| &b.id != id);
        state.seq += 1;
        let seq = state.seq;
        state.departed.push((seq, id.clone()));
    }

    fn last_status(&self, id: &BotId) -> Option<RuntimeStatus> {
        self.state.lock().unwrap().reports.iter().rev().find(|r| &r.bot_id == id).map(|r| r.status)
    }

    /// What the reports about `id` said to people: (activity, message to whom).
    fn told(&self, id: &BotId) -> Vec<(String, Option<(String, String)>)> {
        let state = self.state.lock().unwrap();
        let effects = state.reports.iter().filter(|r| &r.bot_id == id).filter_map(|r| r.effects.clone());
        effects
            .map(|e| {
                let told = e.notification.map(|n| (n.phone.as_str().to_owned(), n.message.render(None)));
                (e.activity.action, told)
            })
            .collect()
    }

    fn last_report(&self, id: &BotId) -> RuntimeReport {
        self.state.lock().unwrap().reports.iter().rev().find(|r| &r.bot_id == id).cloned().unwrap()
    }

    fn reads(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.rows_read, state.full_reads)
    }
}

fn record(n: u32) -> BotRecord {
    BotRecord {
        id: bot_id(n),
        name: format!("bot {n}"),
        phone: PhoneNumber::parse(&phone(n)).unwrap(),
        server: node(),
        approval: ApprovalStatus::Approved,
        status: RuntimeStatus::Loading,
        credentials_version: 1,
        credentials_updated_at: 0,
        approval_date: Some(0),
        expires_at: None,
        invalid_reason: None,
        restarts: 0,
        last_error: None,
        created_at: 0,
        updated_at: 0,
        account_key: None,
        adv_timestamp: None,
        desired_state: trekker_domain::DesiredState::Running,
        power_seq: 0,
        moved_at: None,
    }
}

fn unreachable() -> StoreError {
    StoreError::Corrupt("database unreachable".into())
}

#[async_trait]
impl RuntimeStore for FakeStore {
    async fn start_node_lease(&self, node: &ServerName, _: Millis, _: i64) -> Result<NodeLease, StoreError> {
        if self.state.lock().unwrap().renewal_hangs {
            std::future::pending::<()>().await;
        }
        let mut state = self.state.lock().unwrap();
        if state.renewal_fails {
            return Err(unreachable());
        }
        state.epoch += 1;
        state.lease_lost = false;
        Ok(NodeLease { node: node.clone(), epoch: state.epoch })
    }

    async fn renew_node_lease(&self, lease: &NodeLease, _: Millis, _: i64) -> Result<bool, StoreError> {
        if self.state.lock().unwrap().renewal_hangs {
            std::future::pending::<()>().await;
        }
        let mut state = self.state.lock().unwrap();
        if state.renewal_fails {
            return Err(unreachable());
        }
        state.renewals += 1;
        Ok(!state.lease_lost && lease.epoch == state.epoch)
    }

    async fn bots_to_run(&self, _: &ServerName) -> Result<BotSnapshot, StoreError> {
        let mut state = self.state.lock().unwrap();
        state.rows_read += state.bots.len();
        state.full_reads += 1;
        let bots = state
            .bots
            .iter()
            .filter(|b| b.approval == ApprovalStatus::Approved && b.desired_state == DesiredState::Running)
            .cloned()
            .collect();
        Ok(BotSnapshot { cursor: ChangeCursor { from: state.seq + 1, pending: Vec::new() }, bots })
    }

    // The fleet-wide feed is the console's, never the supervisor's.
    async fn fleet_cursor(&self) -> Result<ChangeCursor, StoreError> {
        Err(StoreError::Config("the supervisor reads its own node's changes only".into()))
    }

    async fn fleet_changes(&self, _: &ChangeCursor) -> Result<BotChanges, StoreError> {
        Err(StoreError::Config("the supervisor reads its own node's changes only".into()))
    }

    async fn bot_changes(&self, _: &ServerName, cursor: &ChangeCursor) -> Result<BotChanges, StoreError> {
        let cursor = cursor.from;
        let mut state = self.state.lock().unwrap();
        let changed: Vec<BotRecord> = state
            .bots
            .iter()
            .filter(|b| state.changed_at.get(&b.id).is_some_and(|at| *at >= cursor))
            .cloned()
            .collect();
        let departed = state.departed.iter().filter(|(at, _)| *at >= cursor).map(|(_, id)| id.clone()).collect();
        state.rows_read += changed.len();
        Ok(BotChanges { cursor: ChangeCursor { from: state.seq + 1, pending: Vec::new() }, changed, departed })
    }

    async fn load_credentials(&self, id: &BotId) -> Result<Option<(Credentials, i64)>, StoreError> {
        let mut state = self.state.lock().unwrap();
        state.credential_reads += 1;
        if state.unreadable.contains(id) {
            return Err(StoreError::Decrypt);
        }
        Ok(state
            .bots
            .iter()
            .find(|b| &b.id == id)
            .map(|b| (creds::credentials(b.phone.as_str(), b.credentials_version as u32), b.credentials_version)))
    }

    async fn acquire_bot(&self, id: &BotId, lease: &NodeLease, _: i64, _: Millis) -> Result<bool, StoreError> {
        let state = self.state.lock().unwrap();
        if state.renewal_fails {
            return Err(unreachable());
        }
        Ok(!state.taken.contains(id) && lease.epoch == state.epoch && !state.lease_lost)
    }

    async fn release_bot(&self, id: &BotId, _: &NodeLease) -> Result<(), StoreError> {
        self.state.lock().unwrap().released.push(id.clone());
        Ok(())
    }

    async fn record_exit(&self, id: &BotId, _: &NodeLease, exit: &BotExit) -> Result<bool, StoreError> {
        self.state.lock().unwrap().exits.push((id.clone(), exit.clone()));
        Ok(true)
    }

    async fn bot_exits(&self, _: &BotId) -> Result<BotExits, StoreError> {
        Ok(BotExits::default())
    }

    async fn report_runtime(&self, report: &RuntimeReport, _: Millis) -> Result<bool, StoreError> {
        let latency = self.state.lock().unwrap().report_latency;
        tokio::time::sleep(latency).await;
        let mut state = self.state.lock().unwrap();
        if let Some(bot) =
            state.bots.iter_mut().find(|b| b.id == report.bot_id && b.credentials_version == report.version)
        {
            bot.status = report.status;
        }
        let id = report.bot_id.clone();
        state.touch(&id);
        state.reports.push(report.clone());
        Ok(true)
    }

    async fn purge_departures(&self, _: Millis) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// How a fake bot behaves once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Connects,
    Crashes,
    LogsOut,
    ExitsCleanly,
    IsReplaced,
    IsBanned,
    /// Connects, then WhatsApp limits its sends.
    IsHeld,
}

/// When, which bot, which credentials version, and "start" or "stop".
type Ledger = Arc<Mutex<Vec<(Instant, BotId, i64, &'static str)>>>;

/// Records every start and stop, on tokio's (paused) clock.
#[derive(Debug, Default)]
struct FakeDriver {
    log: Ledger,
    behaviour: Mutex<HashMap<BotId, Behaviour>>,
    /// How long stopping each bot takes (a bot that will not die).
    stop_takes: Mutex<HashMap<BotId, Duration>>,
    /// The pairing time each bot was last started with.
    paired_at: Mutex<HashMap<BotId, i64>>,
    /// Each start's event channel and generation, to send late events.
    runs: Mutex<Vec<(BotId, u64, mpsc::UnboundedSender<DriverEvent>)>>,
}

impl FakeDriver {
    fn set(&self, id: &BotId, behaviour: Behaviour) {
        self.behaviour.lock().unwrap().insert(id.clone(), behaviour);
    }

    fn starts(&self, id: &BotId) -> Vec<(Instant, i64)> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, b, _, what)| b == id && *what == "start").map(|(at, _, v, _)| (*at, *v)).collect()
    }

    fn all_starts(&self) -> usize {
        self.log.lock().unwrap().iter().filter(|(.., what)| *what == "start").count()
    }

    /// Bots started and not stopped since.
    fn running(&self) -> HashSet<BotId> {
        let mut running = HashSet::new();
        for (_, id, _, what) in self.log.lock().unwrap().iter() {
            if *what == "start" {
                running.insert(id.clone());
            } else {
                running.remove(id);
            }
        }
        running
    }
}

struct FakeRun {
    id: BotId,
    version: i64,
    log: Ledger,
    stop_takes: Duration,
}

#[async_trait]
impl RunningBot for FakeRun {
    async fn stop(self: Box<Self>) {
        tokio::time::sleep(self.stop_takes).await;
        self.log.lock().unwrap().push((Instant::now(), self.id.clone(), self.version, "stop"));
    }
}

#[async_trait]
impl BotDriver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(
        &self,
        spec: BotSpec,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Result<Box<dyn RunningBot>, DriverError> {
        self.log.lock().unwrap().push((Instant::now(), spec.bot_id.clone(), spec.version, "start"));
        self.paired_at.lock().unwrap().insert(spec.bot_id.clone(), spec.paired_at);
        self.runs.lock().unwrap().push((spec.bot_id.clone(), spec.generation, events.clone()));
        let behaviour = self.behaviour.lock().unwrap().get(&spec.bot_id).copied().unwrap_or(Behaviour::Connects);
        let event = match behaviour {
            Behaviour::Connects => BotEvent::Connected,
            Behaviour::Crashes => BotEvent::Exited { code: Some(1), signal: None, error: Some("boom".into()) },
            Behaviour::LogsOut => BotEvent::LoggedOut { reason: Some("device removed".into()) },
            Behaviour::IsReplaced => BotEvent::Replaced,
            Behaviour::IsBanned => BotEvent::Banned { reason: "sent to too many people; for 3600 s".into() },
            Behaviour::ExitsCleanly => BotEvent::Exited { code: Some(0), signal: None, error: None },
            Behaviour::IsHeld => {
                let _ = events.send(DriverEvent {
                    bot_id: spec.bot_id.clone(),
                    generation: spec.generation,
                    event: BotEvent::Connected,
                });
                BotEvent::Held { reason: "WhatsApp answered 463 (reach-out timelock)".into() }
            }
        };
        let _ = events.send(DriverEvent { bot_id: spec.bot_id.clone(), generation: spec.generation, event });
        let stop_takes = self.stop_takes.lock().unwrap().get(&spec.bot_id).copied().unwrap_or_default();
        Ok(Box::new(FakeRun { id: spec.bot_id, version: spec.version, log: self.log.clone(), stop_takes }))
    }
}

fn tuning() -> SupervisorTuning {
    SupervisorTuning {
        poll_every: Duration::from_millis(200),
        lease: Duration::from_secs(4),
        resync_every: Duration::from_secs(300),
        start_rate_per_sec: 1000,
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        crash_limit: 4,
        crash_window: Duration::from_secs(300),
        arrivals_per_min: 6000,
    }
}

struct Running {
    shutdown: CancellationToken,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(store: &Arc<FakeStore>, driver: &Arc<FakeDriver>, max_bots: usize, tuning: SupervisorTuning) -> Running {
    let supervisor =
        Supervisor::new(store.clone(), Arc::new(ManualClock::new(1_000)), driver.clone(), node(), max_bots, tuning);
    let (shutdown, changed) = (CancellationToken::new(), Arc::new(Notify::new()));
    let task = tokio::spawn(supervisor.run(changed.clone(), shutdown.clone()));
    Running { shutdown, changed, task }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// Lets the paused clock run for `span` (the runtime advances it whenever
/// every task waits on a timer).
async fn let_time_pass(span: Duration) {
    tokio::time::sleep(span).await;
}

#[tokio::test(start_paused = true)]
async fn boot_is_staggered_by_the_start_rate() {
    let store = FakeStore::with_bots(12);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 100, SupervisorTuning { start_rate_per_sec: 4, ..tuning() });
    let_time_pass(Duration::from_millis(50)).await;
    // A burst of one second's worth, then the rate.
    assert_eq!(driver.all_starts(), 4);
    let_time_pass(Duration::from_millis(1000)).await;
    let after_a_second = driver.all_starts();
    assert!((7..=9).contains(&after_a_second), "{after_a_second} starts after 1 s at 4/s");
    let_time_pass(Duration::from_secs(2)).await;
    assert_eq!(driver.all_starts(), 12);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn never_runs_more_than_its_capacity() {
    let store = FakeStore::with_bots(5);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 3, tuning());
    let_time_pass(Duration::from_secs(30)).await;
    assert_eq!(driver.running().len(), 3);
    assert_eq!(driver.all_starts(), 3, "no churn at capacity");
    supervisor.stop().await;
    assert!(driver.running().is_empty(), "shutdown stops every bot");
    for n in 1..=3 {
        assert_eq!(store.last_status(&bot_id(n)), Some(RuntimeStatus::Offline));
    }
}

#[tokio::test(start_paused = true)]
async fn crashes_back_off_exponentially_then_the_bot_is_held_failed() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    driver.set(&id, Behaviour::Crashes);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(60)).await;
    let starts = driver.starts(&id);
    assert_eq!(starts.len(), 4, "crash_limit starts, then held");
    // Waits before restart n: [base/2, base] with base = 1 s, 2 s, 4 s.
    for (n, pair) in starts.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let base = Duration::from_secs(1 << n);
        assert!(gap >= base / 2 && gap <= base + Duration::from_millis(250), "restart {n}: waited {gap:?}");
    }
    let report = store.last_report(&id);
    assert_eq!(report.status, RuntimeStatus::Failed);
    assert!(report.last_error.unwrap().starts_with("crashed 4 times"));
    let exits = store.state.lock().unwrap().exits.clone();
    assert_eq!(exits.len(), 4, "every crash is recorded as the bot's last exit");
    assert!(exits.iter().all(|(bot, exit)| bot == &id && exit.code == Some(1) && exit.reason == "boom"));
    // Held failed, the bot's runner lease is given up: after a move another
    // node may take it at once.
    assert_eq!(store.state.lock().unwrap().released, vec![id.clone()]);
    // Held: an hour later it has not been started again.
    let_time_pass(Duration::from_secs(3600)).await;
    assert_eq!(driver.starts(&id).len(), 4);
    // New credentials lift the hold.
    driver.set(&id, Behaviour::Connects);
    store.edit(&id, |bot| bot.credentials_version = 2);
    supervisor.changed.notify_one();
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.starts(&id).last().unwrap().1, 2);
    assert_eq!(store.last_status(&id), Some(RuntimeStatus::Online));
    supervisor.stop().await;
}

/// An admin restart (a `power_seq` bump) starts a `failed` bot again with
/// its crash count cleared, and restarts a running one exactly once.
#[tokio::test(start_paused = true)]
async fn an_admin_restart_revives_a_failed_bot_and_restarts_a_running_one_once() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let (failing, running) = (bot_id(1), bot_id(2));
    driver.set(&failing, Behaviour::Crashes);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(60)).await;
    assert_eq!(store.last_status(&failing), Some(RuntimeStatus::Failed));
    assert_eq!(driver.starts(&failing).len(), 4);
    assert_eq!(driver.starts(&running).len(), 1);
    // Restart both (what `POST .../restart` writes); the failing bot is fixed.
    driver.set(&failing, Behaviour::Connects);
    for id in [&failing, &running] {
        store.edit(id, |bot| bot.power_seq += 1);
    }
    supervisor.changed.notify_one();
    let_time_pass(Duration::from_secs(5)).await;
    assert_eq!(driver.starts(&failing).len(), 5, "the failed bot started again, no re-approval");
    assert_eq!(store.last_status(&failing), Some(RuntimeStatus::Online));
    assert_eq!(driver.starts(&running).len(), 2, "the running bot restarted once");
    // Nothing more happens without another restart.
    let_time_pass(Duration::from_secs(60)).await;
    assert_eq!((driver.starts(&failing).len(), driver.starts(&running).len()), (5, 2));
    supervisor.stop().await;
}

/// `desiredState: stopped` stops the bot and keeps it stopped, through a
/// full resync and a new node lease, until a restart.
#[tokio::test(start_paused = true)]
async fn a_stopped_bot_stays_stopped_until_restarted() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    store.edit(&id, |bot| bot.desired_state = DesiredState::Stopped);
    supervisor.changed.notify_one();
    let_time_pass(Duration::from_millis(500)).await;
    assert!(!driver.running().contains(&id), "stopped");
    assert_eq!(store.last_status(&id), Some(RuntimeStatus::Offline));
    // A new epoch reads everything again: still stopped.
    store.state.lock().unwrap().lease_lost = true;
    let_time_pass(Duration::from_secs(10)).await;
    store.state.lock().unwrap().lease_lost = false;
    let_time_pass(Duration::from_secs(400)).await;
    assert_eq!(driver.starts(&id).len(), 1, "never started again while stopped");
    assert!(driver.running().contains(&bot_id(2)), "the other bot runs");
    store.edit(&id, |bot| {
        bot.desired_state = DesiredState::Running;
        bot.power_seq += 1;
    });
    supervisor.changed.notify_one();
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.starts(&id).len(), 2);
    assert!(driver.running().contains(&id));
    supervisor.stop().await;
}

/// Bots that arrived by a move start at MOVES_PER_MIN, evenly spaced;
/// the node's own bots are not held back by them.
#[tokio::test(start_paused = true)]
async fn arrivals_by_a_move_start_at_the_moves_pace() {
    let store = FakeStore::with_bots(7);
    for n in 1..=6 {
        store.edit(&bot_id(n), |bot| bot.moved_at = Some(1_000));
    }
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 10, SupervisorTuning { arrivals_per_min: 6, ..tuning() });
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.starts(&bot_id(7)).len(), 1, "a bot that did not move starts at once");
    let arrived = || (1..=6).filter(|n| !driver.starts(&bot_id(*n)).is_empty()).count();
    assert_eq!(arrived(), 1, "one arrival at once");
    let_time_pass(Duration::from_secs(10)).await;
    assert_eq!(arrived(), 2, "the next after 60 / 6 s");
    let_time_pass(Duration::from_secs(40)).await;
    assert_eq!(arrived(), 6);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_logged_out_bot_is_not_restarted_until_an_admin_acts() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    driver.set(&id, Behaviour::LogsOut);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(600)).await;
    assert_eq!(driver.starts(&id).len(), 1);
    let report = store.last_report(&id);
    assert_eq!(report.status, RuntimeStatus::Error);
    let reason = report.invalid_reason.unwrap();
    assert!(reason.contains("pair the phone again") && reason.contains("device removed"), "{reason}");
    // The owner is told once, in the report's transaction, and it is recorded.
    let told = store.told(&id);
    assert_eq!(told.len(), 1, "{told:?}");
    let (action, message) = &told[0];
    assert_eq!(action, "logged_out");
    let (to, text) = message.clone().expect("the owner is told");
    assert_eq!(to, phone(1));
    assert!(text.contains("\"bot 1\" was logged out") && text.contains("Pair your phone again"), "{text}");
    // An admin action sets the bot `loading`: it starts again.
    driver.set(&id, Behaviour::Connects);
    store.edit(&id, |bot| bot.status = RuntimeStatus::Loading);
    let_time_pass(Duration::from_secs(1)).await;
    assert_eq!(driver.starts(&id).len(), 2);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_is_offline_and_not_restarted() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    driver.set(&id, Behaviour::ExitsCleanly);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(600)).await;
    assert_eq!(driver.starts(&id).len(), 1);
    assert_eq!(store.last_status(&id), Some(RuntimeStatus::Offline));
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_replaced_stream_stops_the_bot_and_says_why() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    driver.set(&id, Behaviour::IsReplaced);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(600)).await;
    assert_eq!(driver.starts(&id).len(), 1, "not restarted: it would take the stream back from the other client");
    let report = store.last_report(&id);
    assert_eq!(report.status, RuntimeStatus::Offline);
    assert!(report.last_error.unwrap().contains("stream replaced"));
    // Operators are alerted (an activity); nobody is messaged: any
    // connection of the session would fight the other client for it.
    assert_eq!(store.told(&id), vec![("replaced".to_owned(), None)]);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_held_bot_stays_online_says_why_and_is_not_restarted() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let (held, paired) = (bot_id(1), bot_id(2));
    driver.set(&held, Behaviour::IsHeld);
    // The device's pairing time (seconds) counts; without it, the registration.
    store.edit(&held, |bot| bot.created_at = 42);
    store.edit(&paired, |bot| bot.adv_timestamp = Some(1_700_000_000));
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(600)).await;
    assert_eq!(driver.starts(&held).len(), 1, "a restart would not lift WhatsApp's limit");
    let report = store.last_report(&held);
    assert_eq!(report.status, RuntimeStatus::Online, "still connected, receiving");
    assert!(report.last_error.unwrap().contains("463"));
    assert_eq!(store.told(&held), vec![("held".to_owned(), None)], "recorded as an activity, nobody messaged");
    let paired_at = driver.paired_at.lock().unwrap().clone();
    assert_eq!(paired_at.get(&held), Some(&42));
    assert_eq!(paired_at.get(&paired), Some(&1_700_000_000_000));
    supervisor.stop().await;
}

/// A database that takes a moment to answer is waited for, within the
/// loop's budget (a quarter of the lease): the status is still recorded.
#[tokio::test(start_paused = true)]
async fn a_slow_database_is_waited_for_within_the_budget() {
    let store = FakeStore::with_bots(1);
    store.state.lock().unwrap().report_latency = Duration::from_millis(200);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(5)).await;
    assert_eq!(store.last_report(&bot_id(1)).status, RuntimeStatus::Online);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_banned_account_fails_without_restarts() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    driver.set(&id, Behaviour::IsBanned);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_secs(600)).await;
    assert_eq!(driver.starts(&id).len(), 1);
    let report = store.last_report(&id);
    assert_eq!(report.status, RuntimeStatus::Failed);
    assert!(report.last_error.unwrap().contains("banned by WhatsApp: sent to too many people"));
    assert_eq!(store.told(&id), vec![("banned".to_owned(), None)], "an activity alerts the operators");
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn new_credentials_restart_the_bot_on_the_new_version() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    store.edit(&bot_id(1), |bot| bot.credentials_version = 5);
    let_time_pass(Duration::from_millis(500)).await;
    let versions: Vec<i64> = driver.starts(&bot_id(1)).iter().map(|(_, v)| *v).collect();
    assert_eq!(versions, [1, 5]);
    assert_eq!(driver.starts(&bot_id(2)).len(), 1, "the other bot is left alone");
    let restarted = store.last_report(&bot_id(1));
    assert_eq!((restarted.status, restarted.version), (RuntimeStatus::Online, 5));
    supervisor.stop().await;
}

/// An event of an earlier run (here a logout that arrives after the bot
/// was restarted on new credentials) says nothing of the run now.
#[tokio::test(start_paused = true)]
async fn a_late_event_of_an_earlier_run_is_ignored() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    store.edit(&id, |bot| bot.credentials_version = 2);
    let_time_pass(Duration::from_millis(500)).await;
    let runs = driver.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "restarted on the new credentials");
    let (_, old_generation, old_events) = &runs[0];
    let late = BotEvent::LoggedOut { reason: Some("device removed".into()) };
    old_events.send(DriverEvent { bot_id: id.clone(), generation: *old_generation, event: late }).unwrap();
    let_time_pass(Duration::from_secs(60)).await;
    let report = store.last_report(&id);
    assert_eq!((report.status, report.version), (RuntimeStatus::Online, 2));
    assert_eq!(driver.running().len(), 1, "the current run goes on");
    supervisor.stop().await;
}

/// Crashes further apart than the crash window never add up to a failed
/// bot: each one is restarted.
#[tokio::test(start_paused = true)]
async fn crashes_further_apart_than_the_window_never_fail_the_bot() {
    let store = FakeStore::with_bots(1);
    let driver = Arc::new(FakeDriver::default());
    let id = bot_id(1);
    driver.set(&id, Behaviour::Crashes);
    let tuning = SupervisorTuning {
        backoff_min: Duration::from_secs(4),
        backoff_max: Duration::from_secs(4),
        crash_window: Duration::from_secs(1),
        ..tuning()
    };
    let supervisor = spawn(&store, &driver, 10, tuning);
    let_time_pass(Duration::from_secs(60)).await;
    assert!(driver.starts(&id).len() > 8, "restarted after every crash: {}", driver.starts(&id).len());
    assert_ne!(store.last_report(&id).status, RuntimeStatus::Failed);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_bot_no_longer_wanted_is_stopped_and_one_run_elsewhere_is_not_taken() {
    let store = FakeStore::with_bots(4);
    let driver = Arc::new(FakeDriver::default());
    store.state.lock().unwrap().taken.insert(bot_id(4));
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.running().len(), 3);
    // Bot 1 moved to another node; bot 2 was rejected; bot 3 expired.
    store.remove(&bot_id(1));
    store.edit(&bot_id(2), |bot| bot.approval = ApprovalStatus::Rejected);
    store.edit(&bot_id(3), |bot| bot.expires_at = Some(500));
    let_time_pass(Duration::from_millis(500)).await;
    assert!(driver.running().is_empty(), "{:?}", driver.running());
    assert_eq!(store.last_status(&bot_id(2)), Some(RuntimeStatus::Offline));
    // A bot another live lease runs is asked for again, never taken.
    let_time_pass(Duration::from_secs(30)).await;
    assert!(driver.starts(&bot_id(4)).is_empty());
    assert_eq!(driver.starts(&bot_id(1)).len(), 1);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_bot_that_takes_long_to_stop_stalls_nothing_else() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let (slow, other) = (bot_id(1), bot_id(2));
    driver.stop_takes.lock().unwrap().insert(slow.clone(), Duration::from_secs(120));
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.running().len(), 2);
    // The slow bot is rejected: its stop takes two minutes (a child holding
    // its pipes, a grace period, a slow last save)...
    store.edit(&slow, |bot| bot.approval = ApprovalStatus::Rejected);
    let renewals = store.state.lock().unwrap().renewals;
    let_time_pass(Duration::from_millis(500)).await;
    // ...meanwhile the other bot crashes and is restarted after its backoff,
    driver.set(&other, Behaviour::Crashes);
    store.edit(&other, |bot| bot.credentials_version = 2);
    supervisor.changed.notify_one();
    let_time_pass(Duration::from_secs(10)).await;
    assert!(driver.starts(&other).len() >= 3, "crashes restarted while a stop hangs: {:?}", driver.starts(&other));
    // ...and the lease is renewed (every third of the 4 s lease) as ever.
    assert!(store.state.lock().unwrap().renewals >= renewals + 5);
    assert_eq!(store.state.lock().unwrap().epoch, 1, "the lease was never lost");
    // The rejected bot is released and reported only once it has stopped.
    assert_ne!(store.last_status(&slow), Some(RuntimeStatus::Offline));
    let_time_pass(Duration::from_secs(120)).await;
    assert_eq!(store.last_status(&slow), Some(RuntimeStatus::Offline));
    assert_eq!(driver.starts(&slow).len(), 1, "never started again while stopping");
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_quiet_node_reads_no_bot_rows_between_full_resyncs() {
    let store = FakeStore::with_bots(50);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 100, tuning());
    let_time_pass(Duration::from_secs(2)).await;
    assert_eq!(driver.running().len(), 50);
    let (before, full_before) = store.reads();
    // A minute of quiet: hundreds of polls (every 200 ms), no bot row read.
    let_time_pass(Duration::from_secs(60)).await;
    assert_eq!(store.reads(), (before, full_before), "a quiet poll read bot rows");
    // One change: that one row, once.
    store.edit(&bot_id(7), |bot| bot.credentials_version = 2);
    let_time_pass(Duration::from_secs(2)).await;
    let (after, _) = store.reads();
    // The change itself, then the restart's own status reports (written by
    // this node, read back once each).
    assert!((1..=4).contains(&(after - before)), "{} rows read for one change", after - before);
    // The periodic full resync still comes (every 300 s, jittered by a fifth).
    let_time_pass(Duration::from_secs(300)).await;
    assert_eq!(store.reads().1, full_before + 1);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_node_lease_stops_every_bot_then_a_new_epoch_starts_them() {
    let store = FakeStore::with_bots(3);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.running().len(), 3);
    let reports_before = store.state.lock().unwrap().reports.len();
    // This node stalled past its lease (or was started again elsewhere).
    store.state.lock().unwrap().lease_lost = true;
    let_time_pass(Duration::from_secs(2)).await;
    let (epoch, reports) = {
        let state = store.state.lock().unwrap();
        (state.epoch, state.reports[reports_before..].to_vec())
    };
    assert_eq!(epoch, 2, "a new lease was taken");
    // Each bot was stopped and started again, and nothing was written
    // under the lost lease.
    for n in 1..=3 {
        assert_eq!(driver.starts(&bot_id(n)).len(), 2);
    }
    assert!(reports.iter().all(|r| r.runner.epoch == 2), "{reports:?}");
    assert_eq!(driver.running().len(), 3);
    supervisor.stop().await;
}

/// A partition that drops packets: the renewal never answers. The node
/// still stops every bot once half its lease passed without a renewal
/// (another node may take them after the lease), and starts them again
/// when the database answers.
#[tokio::test(start_paused = true)]
async fn a_renewal_that_never_answers_still_stops_every_bot_within_half_a_lease() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.running().len(), 2);
    store.state.lock().unwrap().renewal_hangs = true;
    let_time_pass(Duration::from_millis(3000)).await;
    assert!(driver.running().is_empty(), "bots still running while the renewal hangs");
    store.state.lock().unwrap().renewal_hangs = false;
    let_time_pass(Duration::from_secs(3)).await;
    assert_eq!(driver.running().len(), 2);
    supervisor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_renewals_for_half_a_lease_every_bot_stops() {
    let store = FakeStore::with_bots(2);
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 10, tuning());
    let_time_pass(Duration::from_millis(500)).await;
    assert_eq!(driver.running().len(), 2);
    store.state.lock().unwrap().renewal_fails = true;
    // A short outage (under half the 4 s lease) is ridden out...
    let_time_pass(Duration::from_millis(1500)).await;
    assert_eq!(driver.running().len(), 2, "a blip does not stop bots");
    // ...a long one is not: past half the lease, another node may take over.
    let_time_pass(Duration::from_millis(1000)).await;
    assert!(driver.running().is_empty(), "bots still running without a lease");
    // The database comes back: the bots start again.
    store.state.lock().unwrap().renewal_fails = false;
    let_time_pass(Duration::from_secs(2)).await;
    assert_eq!(driver.running().len(), 2);
    supervisor.stop().await;
}

/// Credentials that cannot be opened stay so until an operator acts: the
/// bot is tried again every 30 s, not at every tick (a thousand such bots
/// once cost the database thousands of reads a second), and the others run.
#[tokio::test(start_paused = true)]
async fn unreadable_credentials_are_read_again_rarely() {
    let store = FakeStore::with_bots(2);
    store.state.lock().unwrap().unreadable.insert(bot_id(1));
    let driver = Arc::new(FakeDriver::default());
    let supervisor = spawn(&store, &driver, 100, tuning());
    let_time_pass(Duration::from_secs(60)).await;
    let reads = store.state.lock().unwrap().credential_reads;
    // Bot 2 once; bot 1 at 0, 30 and 60 s at most.
    assert!(reads <= 4, "{reads} credential reads in a minute");
    assert_eq!(driver.all_starts(), 1, "the readable bot runs");
    supervisor.stop().await;
}
