//! Trekker's use cases: validate credentials, register bots (with capacity
//! placement), approve/reject/delete, pair phones, and deliver guest
//! notifications. Everything here works over the [`Store`],
//! [`PlacementPolicy`], [`PairingProvider`] and [`Notifier`] traits, so it is
//! unit-tested with mocks; the HTTP layer only translates.

pub mod admin;
pub mod capacity;
pub mod crossserver;
mod error;
pub mod events;
pub mod fleet;
pub mod idempotency;
mod idle;
pub mod liveness;
pub mod load;
pub mod messaging;
pub mod notify;
pub mod ownership;
pub mod pairing;
pub mod register;
pub mod stats;
pub mod sweeper;
pub mod telemetry;
pub mod validate;

use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;
use trekker_domain::{BotId, ServerName};
use trekker_placement::PlacementPolicy;
use trekker_store::{
    ActivityLog, BotStore, CapacityLevelStore, ConsistencyStore, CredentialOutbox, DeviceStateStore, IdempotencyStore,
    NotificationOutbox, PairingStore, ReplayGuard, ReviewStore, RuntimeStore, ServerStore, SessionStateStore, Store,
};

pub use error::AppError;
pub use trekker_domain::time::{Clock, SystemClock};

/// The parts of the store the use cases work with, one narrow handle per
/// aggregate (so a unit test mocks only what its use case touches).
#[derive(Clone)]
pub struct Stores {
    pub servers: Arc<dyn ServerStore>,
    pub bots: Arc<dyn BotStore>,
    pub activities: Arc<dyn ActivityLog>,
    pub consistency: Arc<dyn ConsistencyStore>,
    pub pairings: Arc<dyn PairingStore>,
    pub notifications: Arc<dyn NotificationOutbox>,
    pub credential_outbox: Arc<dyn CredentialOutbox>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub replay: Arc<dyn ReplayGuard>,
    pub reviews: Arc<dyn ReviewStore>,
    /// Read here only to recognise a forwarded update already applied.
    pub runtime: Arc<dyn RuntimeStore>,
    /// Read here only for the size and freshness admins see.
    pub session_state: Arc<dyn SessionStateStore>,
    /// Read here only for the size admins see.
    pub device_state: Arc<dyn DeviceStateStore>,
    pub capacity: Arc<dyn CapacityLevelStore>,
}

impl Stores {
    /// Every handle backed by one store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            servers: store.clone(),
            bots: store.clone(),
            activities: store.clone(),
            consistency: store.clone(),
            pairings: store.clone(),
            notifications: store.clone(),
            credential_outbox: store.clone(),
            idempotency: store.clone(),
            replay: store.clone(),
            reviews: store.clone(),
            runtime: store.clone(),
            session_state: store.clone(),
            device_state: store.clone(),
            capacity: store,
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// The use cases of one node, and what they need.
pub struct Trekker {
    pub store: Stores,
    /// The node this runs on.
    pub node: ServerName,
    pub placement: Arc<dyn PlacementPolicy>,
    pub clock: Arc<dyn Clock>,
    /// The cluster's heartbeat interval, for the liveness rule.
    pub heartbeat_interval_ms: i64,
    /// Wakes this node's notification dispatcher when a message is queued.
    pub notifications_queued: Arc<tokio::sync::Notify>,
    /// Wakes this node's bot supervisor after a change to a bot.
    pub runtime_changed: Arc<tokio::sync::Notify>,
    /// Live events for the guest page and the console.
    pub events: Arc<events::EventHub>,
    /// Wakes this node's capacity watch after a change to a bot.
    pub capacity_changed: Arc<tokio::sync::Notify>,
    /// The servers whose counts this node changed since its capacity watch
    /// last checked them (see `capacity`).
    capacity_touched: std::sync::Mutex<std::collections::BTreeSet<ServerName>>,
    /// Admins are warned when a server or the cluster crosses this share
    /// of its slots, and again at 100 % (CAPACITY_WARN_PERCENT).
    pub capacity_warn_percent: u8,
    /// Where admin warnings are sent through the notifier (ADMIN_PHONE);
    /// none: they are recorded, counted and shown, not sent.
    pub admin_phone: Option<trekker_domain::PhoneNumber>,
    /// Calls other nodes (cross-server credential updates).
    pub remote: Arc<dyn crossserver::RemoteCredentials>,
    /// Budget for one synchronous cross-server update.
    pub cross_server_budget: std::time::Duration,
    /// A bot not approved within this time is rejected (PENDING_TTL_HOURS).
    pub pending_ttl_ms: i64,
    /// The share (percent) of a server's slots that bots waiting for
    /// approval may hold (PENDING_MAX_PERCENT).
    pub pending_share_percent: i64,
    /// The servers as last read for ranking (read at most once a heartbeat
    /// interval; see `register::ranking_snapshot`).
    server_snapshot: std::sync::Mutex<Option<(i64, Arc<Vec<trekker_store::ServerSnapshot>>)>>,
    /// Placement transactions this node runs at once (see `register`).
    placements_in_flight: tokio::sync::Semaphore,
    /// How the fleet heals itself (failover, pace of moves, balancer).
    pub fleet: fleet::FleetSettings,
    /// Wakes this node's fleet loop (an evacuation was asked for).
    pub fleet_changed: Arc<tokio::sync::Notify>,
    /// Measures this node's load for its heartbeat; none: not reported.
    pub load: Option<Arc<load::LoadMeter>>,
    /// When (epoch ms) the supervisor last renewed this node's lease, which
    /// stamps its heartbeat too; 0: never (see `liveness`).
    pub lease_renewed_at: Arc<std::sync::atomic::AtomicI64>,
    /// The load the last written heartbeat carried.
    load_written: std::sync::Mutex<Option<trekker_store::ServerLoad>>,
}

/// Placement transactions in flight per node. Measured with
/// `bench-register` (docs/benchmarks.md): past a few, registrations only
/// wait longer on the server row's lock, and throughput falls.
pub const PLACEMENTS_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for Trekker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trekker").field("node", &self.node).field("placement", &self.placement).finish_non_exhaustive()
    }
}

impl Trekker {
    pub fn new(store: Arc<dyn Store>, node: ServerName, heartbeat_interval_ms: i64) -> Self {
        Self::with_stores(Stores::new(store), node, heartbeat_interval_ms)
    }

    /// As [`Trekker::new`], with each store handle given on its own.
    pub fn with_stores(store: Stores, node: ServerName, heartbeat_interval_ms: i64) -> Self {
        Self {
            store,
            node,
            placement: Arc::new(trekker_placement::MostFreeSlots::default()),
            clock: Arc::new(SystemClock),
            heartbeat_interval_ms,
            notifications_queued: Arc::new(tokio::sync::Notify::new()),
            runtime_changed: Arc::new(tokio::sync::Notify::new()),
            capacity_changed: Arc::new(tokio::sync::Notify::new()),
            capacity_touched: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            events: Arc::new(events::EventHub::default()),
            capacity_warn_percent: 80,
            admin_phone: None,
            remote: Arc::new(crossserver::NoRemote),
            cross_server_budget: std::time::Duration::from_secs(5),
            pending_ttl_ms: 72 * 3_600_000,
            pending_share_percent: 50,
            server_snapshot: std::sync::Mutex::new(None),
            placements_in_flight: tokio::sync::Semaphore::new(PLACEMENTS_IN_FLIGHT),
            fleet: fleet::FleetSettings::default(),
            fleet_changed: Arc::new(tokio::sync::Notify::new()),
            load: None,
            lease_renewed_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            load_written: std::sync::Mutex::new(None),
        }
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether `server` counts as online now: not inactive, and its last
    /// heartbeat at most 3 intervals old (invariant 7).
    pub fn is_server_online(&self, server: &trekker_store::ServerSnapshot) -> bool {
        server.status != trekker_domain::ServerStatus::Inactive
            && trekker_domain::server::is_online(server.last_heartbeat, self.now(), self.heartbeat_interval_ms)
    }

    /// Tells this node's supervisor (and notification dispatcher) that a
    /// bot changed, so it acts now rather than at its next poll.
    pub(crate) fn bots_changed(&self) {
        self.runtime_changed.notify_one();
        self.notifications_queued.notify_one();
        self.capacity_touched(&self.node);
        self.events.wake();
    }
}

/// Calls `tick` every `every` (first at once; a late tick delays the next
/// rather than bunching) until `shutdown`.
pub(crate) async fn run_every<F, Fut>(every: std::time::Duration, shutdown: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => tick().await,
        }
    }
}

/// 128 random bits from the system's secure generator.
pub fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails when the OS has no randomness at all, where
    // nothing secure can go on.
    SystemRandom::new().fill(&mut bytes).expect("system randomness");
    u128::from_le_bytes(bytes)
}

/// Whether `id` can be an id this node gave out (pairing requests, outbox
/// updates, reviews: random hex): 1 to 64 ASCII letters and digits. Checked
/// before any store read, so a hostile id costs nothing.
pub(crate) fn is_opaque_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub(crate) fn new_bot_id() -> BotId {
    BotId::from_random_bits(random_u128())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use trekker_store::{
        MockActivityLog, MockBotStore, MockCapacityLevelStore, MockConsistencyStore, MockCredentialOutbox,
        MockDeviceStateStore, MockIdempotencyStore, MockNotificationOutbox, MockPairingStore, MockReplayGuard,
        MockReviewStore, MockRuntimeStore, MockServerStore, MockSessionStateStore,
    };

    pub use trekker_domain::time::ManualClock;

    /// One mock per store handle; a mock without expectations panics when
    /// called, so a test states every store call its use case may make.
    #[derive(Default)]
    pub struct Mocks {
        pub servers: MockServerStore,
        pub bots: MockBotStore,
        pub activities: MockActivityLog,
        pub consistency: MockConsistencyStore,
        pub pairings: MockPairingStore,
        pub notifications: MockNotificationOutbox,
        pub credential_outbox: MockCredentialOutbox,
        pub idempotency: MockIdempotencyStore,
        pub replay: MockReplayGuard,
        pub reviews: MockReviewStore,
        pub runtime: MockRuntimeStore,
        pub session_state: MockSessionStateStore,
        pub device_state: MockDeviceStateStore,
        pub capacity: MockCapacityLevelStore,
    }

    impl Mocks {
        pub fn into_stores(self) -> Stores {
            Stores {
                servers: Arc::new(self.servers),
                bots: Arc::new(self.bots),
                activities: Arc::new(self.activities),
                consistency: Arc::new(self.consistency),
                pairings: Arc::new(self.pairings),
                notifications: Arc::new(self.notifications),
                credential_outbox: Arc::new(self.credential_outbox),
                idempotency: Arc::new(self.idempotency),
                replay: Arc::new(self.replay),
                reviews: Arc::new(self.reviews),
                runtime: Arc::new(self.runtime),
                session_state: Arc::new(self.session_state),
                device_state: Arc::new(self.device_state),
                capacity: Arc::new(self.capacity),
            }
        }
    }

    pub const NOW: i64 = 1_700_000_000_000;
    /// The phone of the test bot `bot-1`.
    pub const PHONE: &str = "254712345678";

    /// Bot `bot-1` of [`PHONE`] on `server`.
    /// An active server seen now, `used` of `max` slots taken.
    /// An operator's key: the actor of the admin writes under test.
    pub fn operator() -> trekker_domain::access::Actor {
        trekker_domain::access::Actor { key_id: Some("00000000000000aa".into()), name: "ops".into() }
    }

    pub fn server_snapshot(server: &str, max: i64, used: i64) -> trekker_store::ServerSnapshot {
        trekker_store::ServerSnapshot {
            name: ServerName::parse(server).unwrap(),
            max_bot_count: max,
            current_bot_count: used,
            status: trekker_domain::ServerStatus::Active,
            base_url: None,
            last_heartbeat: Some(NOW),
            description: None,
            load: None,
            evacuation: None,
        }
    }

    pub fn bot_record(server: &str, approval: trekker_domain::ApprovalStatus) -> trekker_store::BotRecord {
        trekker_store::BotRecord {
            id: BotId::parse("bot-1").unwrap(),
            name: "My bot".into(),
            phone: trekker_domain::PhoneNumber::parse(PHONE).unwrap(),
            server: ServerName::parse(server).unwrap(),
            approval,
            status: trekker_domain::RuntimeStatus::Offline,
            credentials_version: 1,
            credentials_updated_at: NOW,
            approval_date: None,
            expires_at: None,
            invalid_reason: None,
            restarts: 0,
            last_error: None,
            created_at: NOW,
            updated_at: NOW,
            // The account that signs the test sessions of PHONE.
            account_key: Some(trekker_testkit::creds::credentials(PHONE, 1).identity().account_key),
            adv_timestamp: Some(trekker_testkit::creds::adv_timestamp(1) as i64),
            desired_state: trekker_domain::DesiredState::Running,
            power_seq: 0,
            moved_at: None,
        }
    }

    /// The registry row of `bot-1` on `server`.
    pub fn registry_entry(server: &str) -> trekker_store::RegistryEntry {
        trekker_store::RegistryEntry {
            phone: trekker_domain::PhoneNumber::parse(PHONE).unwrap(),
            server: ServerName::parse(server).unwrap(),
            bot_id: BotId::parse("bot-1").unwrap(),
            registered_at: NOW,
        }
    }

    pub fn trekker(store: Mocks) -> Trekker {
        let mut trekker = Trekker::with_stores(store.into_stores(), ServerName::parse("SERVER0").unwrap(), 10_000);
        trekker.clock = Arc::new(ManualClock::new(NOW));
        trekker
    }
}
