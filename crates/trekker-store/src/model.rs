//! The records the store reads and writes. No credentials in any of them:
//! those go in as [`Credentials`] and are sealed before they touch a row.

use trekker_domain::{
    ApprovalStatus, BotId, DesiredState, GuestMessage, PhoneNumber, RuntimeStatus, ServerName, ServerStatus,
};

/// Epoch milliseconds, the one time unit of the store (same SQL on both backends).
pub type Millis = i64;

/// What a node writes about itself at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRegistration {
    pub name: ServerName,
    pub max_bot_count: i64,
    pub base_url: Option<String>,
    pub description: Option<String>,
}

/// A server's row in `server_registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSnapshot {
    pub name: ServerName,
    pub max_bot_count: i64,
    /// Slot-occupying bots on it (all approval states but rejected).
    pub current_bot_count: i64,
    pub status: ServerStatus,
    pub base_url: Option<String>,
    pub last_heartbeat: Option<Millis>,
    pub description: Option<String>,
    /// The node's load as of its last heartbeat; none before the first.
    pub load: Option<ServerLoad>,
    /// The evacuation under way; none when there is none.
    pub evacuation: Option<Evacuation>,
}

/// A node's load, reported with its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerLoad {
    /// The machine's CPU use since the last beat, 0..=100.
    pub cpu_percent: i64,
    /// Memory the machine can still give (MemAvailable).
    pub memory_available_bytes: i64,
    /// Bots running on the node.
    pub bots_running: i64,
}

/// An evacuation under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evacuation {
    pub started_at: Millis,
    /// Bots the last pass could place nowhere (they stay, counted).
    pub stuck: i64,
}

impl ServerSnapshot {
    /// Slots left; never negative, even if an admin lowered the capacity
    /// below the bots already there.
    pub fn free_slots(&self) -> i64 {
        (self.max_bot_count - self.current_bot_count).max(0)
    }
}

/// An admin's change to a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPatch {
    pub max_bot_count: Option<i64>,
    pub status: Option<ServerStatus>,
}

/// A row of `god_register`: which server hosts a phone's bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    pub phone: PhoneNumber,
    pub server: ServerName,
    pub bot_id: BotId,
    pub registered_at: Millis,
}

/// A bot as admins and use cases see it: everything but the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotRecord {
    pub id: BotId,
    pub name: String,
    pub phone: PhoneNumber,
    pub server: ServerName,
    pub approval: ApprovalStatus,
    pub status: RuntimeStatus,
    pub credentials_version: i64,
    pub credentials_updated_at: Millis,
    pub approval_date: Option<Millis>,
    pub expires_at: Option<Millis>,
    pub invalid_reason: Option<String>,
    pub restarts: i64,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The WhatsApp account that signed its credentials (invariant 8);
    /// `None` for a bot registered before ownership was recorded.
    pub account_key: Option<[u8; 32]>,
    /// When WhatsApp signed that device identity (seconds).
    pub adv_timestamp: Option<i64>,
    /// Whether an admin wants it running or stopped.
    pub desired_state: DesiredState,
    /// Bumped by each admin restart: the host restarts it once per bump.
    pub power_seq: i64,
    /// When it last arrived on its host by a move (the host paces such starts).
    pub moved_at: Option<Millis>,
}

/// A new bot to place on `server`.
#[derive(Debug, Clone)]
pub struct NewBot {
    pub id: BotId,
    pub name: String,
    pub phone: PhoneNumber,
    pub server: ServerName,
    pub credentials: trekker_domain::Credentials,
    /// At most this share (percent) of the server's slots may hold bots
    /// waiting for approval (PENDING_MAX_PERCENT); 100 = no cap.
    pub pending_share_percent: i64,
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub bot: BotRecord,
    /// Free slots on the bot's server right after this registration.
    pub free_slots_after: i64,
}

/// Which credentials version an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRule {
    /// The stored version + 1 (a local update).
    Next,
    /// Exactly this version, and only if it is newer than the stored one
    /// (a forwarded update: an older version never overwrites a newer one).
    Exactly(i64),
}

/// Filters and page of the admin bot list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotFilter {
    pub server: Option<ServerName>,
    pub approval: Option<ApprovalStatus>,
    pub status: Option<RuntimeStatus>,
    /// Continue after this bot (keyset paging: newest first, then by id).
    pub after: Option<BotCursor>,
    /// Page size; 100 when not given, at most [`MAX_PAGE`].
    pub limit: Option<i64>,
}

/// The largest page of any list.
pub const MAX_PAGE: i64 = 1000;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 100;

/// Where a page of bots ends: the last bot's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotCursor {
    pub created_at: Millis,
    pub id: BotId,
}

/// One page of bots, and where the next one starts (none on the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotPage {
    pub bots: Vec<BotRecord>,
    pub next: Option<BotCursor>,
}

/// One page of activities, newest first; `next` (an activity id)
/// continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityPage {
    pub activities: Vec<Activity>,
    pub next: Option<i64>,
}

/// An audit record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    /// The node that did it.
    pub server: ServerName,
    pub bot_id: Option<BotId>,
    pub phone: Option<PhoneNumber>,
    /// A short stable verb, e.g. `registered`, `auto_assigned`, `approved`.
    pub action: String,
    /// Free text for people; never a credential.
    pub details: String,
    /// The other node, for cross-server work.
    pub remote_tenancy: Option<ServerName>,
    pub remote_bot_id: Option<String>,
}

impl NewActivity {
    pub fn new(server: &ServerName, action: &str, details: impl Into<String>) -> Self {
        Self {
            server: server.clone(),
            bot_id: None,
            phone: None,
            action: action.to_owned(),
            details: details.into(),
            remote_tenancy: None,
            remote_bot_id: None,
        }
    }

    pub fn for_bot(mut self, bot_id: &BotId, phone: &PhoneNumber) -> Self {
        self.bot_id = Some(bot_id.clone());
        self.phone = Some(phone.clone());
        self
    }

    pub fn with_remote(mut self, tenancy: &ServerName, bot_id: Option<&BotId>) -> Self {
        self.remote_tenancy = Some(tenancy.clone());
        self.remote_bot_id = bot_id.map(|id| id.as_str().to_owned());
        self
    }
}

/// A stored activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub id: i64,
    pub occurred_at: Millis,
    pub server: String,
    pub bot_id: Option<String>,
    pub phone: Option<String>,
    pub action: String,
    pub details: String,
    pub remote_tenancy: Option<String>,
    pub remote_bot_id: Option<String>,
}

/// A message to a guest, queued with the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub phone: PhoneNumber,
    pub message: GuestMessage,
}

/// What a state change writes beside itself, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideEffects {
    pub activity: NewActivity,
    pub notification: Option<NewNotification>,
}

impl SideEffects {
    pub fn activity(activity: NewActivity) -> Self {
        Self { activity, notification: None }
    }

    pub fn notify(mut self, phone: &PhoneNumber, message: impl Into<GuestMessage>) -> Self {
        self.notification = Some(NewNotification { phone: phone.clone(), message: message.into() });
        self
    }
}

/// A notification claimed by a dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub phone: String,
    pub text: String,
    /// Attempts including the current one.
    pub attempts: i64,
    pub created_at: Millis,
}

/// How a notification attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationOutcome {
    Sent,
    /// Try again at `retry_at`.
    Retry {
        retry_at: Millis,
        error: String,
    },
    /// Give up for good.
    Failed {
        error: String,
    },
}

/// The state of a pairing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingStatus {
    Pending,
    Paired,
    Expired,
    Failed,
}

impl PairingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paired => "paired",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Paired, Self::Expired, Self::Failed].into_iter().find(|status| status.as_str() == text)
    }
}

/// A new pairing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPairing {
    pub id: String,
    pub phone: PhoneNumber,
    pub code: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// A stored pairing request. `credentials` is set once paired.
#[derive(Debug, Clone)]
pub struct PairingRecord {
    pub id: String,
    pub phone: PhoneNumber,
    pub code: String,
    pub status: PairingStatus,
    pub credentials: Option<trekker_domain::Credentials>,
    pub message: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// A disagreement between `god_register`, `bot_instances` and the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inconsistency {
    /// A registry row whose bot row is missing (the phone is locked out).
    RegistryWithoutBot { phone: String, server: String, bot_id: String },
    /// A slot-occupying bot row with no registry row.
    BotWithoutRegistry { bot_id: String, phone: String, server: String },
    /// Registry and bot row name different servers.
    ServerMismatch { phone: String, bot_id: String, registry_server: String, bot_server: String },
    /// `current_bot_count` differs from the bots actually there.
    CountDrift { server: String, recorded: i64, actual: i64 },
}

impl Inconsistency {
    /// Every kind, as [`Inconsistency::kind`] names it.
    pub const KINDS: [&'static str; 4] =
        ["registry_without_bot", "bot_without_registry", "server_mismatch", "count_drift"];

    /// A stable name for the kind, used in the API and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RegistryWithoutBot { .. } => Self::KINDS[0],
            Self::BotWithoutRegistry { .. } => Self::KINDS[1],
            Self::ServerMismatch { .. } => Self::KINDS[2],
            Self::CountDrift { .. } => Self::KINDS[3],
        }
    }
}

/// A cross-server credential update to queue for delivery to `target`.
#[derive(Debug, Clone)]
pub struct NewCredentialUpdate {
    pub id: String,
    pub bot_id: BotId,
    pub phone: PhoneNumber,
    /// The node the guest used.
    pub source: ServerName,
    /// The node hosting the bot.
    pub target: ServerName,
    pub credentials: trekker_domain::Credentials,
    /// The outbox leaves it alone this long: the asking request delivers it
    /// itself first (0: the outbox may try it at once).
    pub held_for_ms: i64,
}

/// Where a queued credential update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    Pending,
    Delivered,
    Failed,
    Expired,
    /// A newer update for the same bot replaced it before delivery.
    Superseded,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed, Self::Expired, Self::Superseded]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// A queued credential update (without its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUpdate {
    pub id: String,
    pub bot_id: BotId,
    pub phone: PhoneNumber,
    pub source: ServerName,
    pub target: ServerName,
    /// The version the host stores these credentials under.
    pub version: i64,
    pub status: OutboxStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// One page of the cross-server outbox, newest first; `next` continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePage {
    pub updates: Vec<CredentialUpdate>,
    /// The last update's creation time and id, when more follow.
    pub next: Option<(Millis, String)>,
}

/// One page of credential reviews, newest first; `next` continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewPage {
    pub reviews: Vec<CredentialReview>,
    /// The last review's creation time and id, when more follow.
    pub next: Option<(Millis, String)>,
}

/// A claimed update, with its decrypted credentials, ready to send.
#[derive(Debug, Clone)]
pub struct ClaimedUpdate {
    pub update: CredentialUpdate,
    pub credentials: trekker_domain::Credentials,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Retry {
        retry_at: Millis,
        error: String,
    },
    /// The host refused for good.
    Failed {
        error: String,
    },
    /// Too old to deliver.
    Expired,
}

/// The state of an idempotency key when a command arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First time (or taken over from a holder that died): run the command.
    Started,
    /// Another attempt of the same command is running.
    InProgress,
    /// The key was used with another body.
    Mismatch,
    /// Already done: answer what was answered then.
    Done { status: u16, body: String },
}

/// What the hosting node reports about a bot it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeReport {
    pub bot_id: BotId,
    /// The reporting node and its lease; ignored unless the node hosts the
    /// bot and no other run of it (another node, or an earlier start of
    /// this one) holds it.
    pub runner: NodeLease,
    /// The credentials version the report is about; ignored if outdated.
    pub version: i64,
    pub status: RuntimeStatus,
    /// Added to the restart count.
    pub restarts: i64,
    /// Replaces `last_error` when set.
    pub last_error: Option<String>,
    /// Replaces `invalid_reason` when set.
    pub invalid_reason: Option<String>,
}

/// Why a bot moves; recorded with each move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    Admin,
    Evacuation,
    Failover,
    Rebalance,
}

impl MoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Evacuation => "evacuation",
            Self::Failover => "failover",
            Self::Rebalance => "rebalance",
        }
    }
}

/// One move to make (invariant 11). The conditions are checked inside the
/// move's transaction, so a move planned from a stale snapshot is refused
/// rather than made twice.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    pub bot: BotId,
    /// Move only if the bot is still here (a compare-and-set): however many
    /// nodes plan the same move, it happens once.
    pub from: Option<ServerName>,
    pub to: ServerName,
    pub reason: MoveReason,
    /// At most this many moves into `to` within a minute (MOVES_PER_MIN).
    pub pace_per_min: Option<i64>,
    /// Move only if `from`'s node lease has been gone this long, by the
    /// database's clock (failover).
    pub lost_for_ms: Option<i64>,
}

impl MoveRequest {
    /// An admin's move: no pace, no condition on the source.
    pub fn admin(bot: BotId, to: ServerName) -> Self {
        Self { bot, from: None, to, reason: MoveReason::Admin, pace_per_min: None, lost_for_ms: None }
    }
}

/// An admin's power action on a bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Run it (again): restarts a running bot, starts a stopped or failed one.
    Restart,
    /// Stop it and keep it stopped until a restart.
    Stop,
}

/// A bot after a move (invariant 11), and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedBot {
    pub bot: BotRecord,
    pub from: ServerName,
}

/// How a bot's run ended (`lastExit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotExit {
    pub at: Millis,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Escaped and cut by the runtime (a bot's words may be in it).
    pub reason: String,
    /// The run was killed for passing its memory limit.
    pub out_of_memory: bool,
}

/// What is recorded about a bot's exits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotExits {
    pub last: Option<BotExit>,
    /// Runs killed for passing their memory limit, ever.
    pub oom_kills: i64,
}

/// Credentials for a registered phone signed by another WhatsApp account,
/// waiting for an admin (API.md, ACCOUNT_MISMATCH and credential reviews).
#[derive(Debug, Clone)]
pub struct NewReview {
    pub id: String,
    pub bot_id: BotId,
    pub phone: PhoneNumber,
    pub credentials: trekker_domain::Credentials,
}

/// Where a credential review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewStatus {
    Open,
    Approved,
    Rejected,
    /// A newer change of the same bot replaced it before a decision.
    Superseded,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Superseded => "superseded",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Open, Self::Approved, Self::Rejected, Self::Superseded].into_iter().find(|s| s.as_str() == text)
    }
}

/// A credential review (without its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialReview {
    pub id: String,
    pub bot_id: BotId,
    pub phone: PhoneNumber,
    /// The account that signed the waiting credentials.
    pub account_key: [u8; 32],
    pub adv_timestamp: i64,
    pub status: ReviewStatus,
    pub created_at: Millis,
    pub decided_at: Option<Millis>,
}

/// A node's run lease: its name and the epoch it took at start. A bot's
/// runner is a `NodeLease`; renewing the node's lease renews every bot it
/// runs (invariant 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeLease {
    pub node: ServerName,
    pub epoch: i64,
}

/// Where a reader of the change feed stands: the writes it has not seen
/// yet are those of transactions numbered `from` or above, or listed in
/// `pending` (still running when it last looked: PostgreSQL commits out of
/// order). Exact: a quiet reader reads nothing, a late commit is not missed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeCursor {
    pub from: i64,
    pub pending: Vec<i64>,
}

impl ChangeCursor {
    /// Reads the database's own form, `from:to:pending,...` (PostgreSQL's
    /// `pg_current_snapshot()`; SQLite's cursor query writes the same).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let (_oldest, next, running) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let pending = running
            .split(',')
            .filter(|xid| !xid.is_empty())
            .map(|xid| xid.parse().ok())
            .collect::<Option<Vec<i64>>>()?;
        Some(Self { from: next.parse().ok()?, pending })
    }
}

/// A node's bots read in full, with the change cursor to read on from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BotSnapshot {
    /// Pass to [`crate::RuntimeStore::bot_changes`] next.
    pub cursor: ChangeCursor,
    /// The approved bots the node hosts (expiry is the caller's to check).
    pub bots: Vec<BotRecord>,
}

/// What changed on a node's bots since a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BotChanges {
    /// Pass to [`crate::RuntimeStore::bot_changes`] next.
    pub cursor: ChangeCursor,
    /// Bots hosted on the node written since (any approval status): the
    /// caller keeps the approved ones and drops the rest.
    pub changed: Vec<BotRecord>,
    /// Bots that left the node since (moved elsewhere or deleted). Apply
    /// before `changed`: a bot that left and came back is in both.
    pub departed: Vec<BotId>,
}

/// A snapshot of a bot's session folder to save (an archive the runtime
/// builds and restores; the store only seals and fences it).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Above every generation saved before for these credentials.
    pub generation: i64,
    pub archive: Vec<u8>,
    /// Of the folder, before archiving.
    pub size_bytes: i64,
    pub file_count: i64,
}

impl std::fmt::Debug for SessionSnapshot {
    // The archive is the session: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSnapshot")
            .field("generation", &self.generation)
            .field("size_bytes", &self.size_bytes)
            .field("file_count", &self.file_count)
            .finish_non_exhaustive()
    }
}

/// What admins see of a bot's saved session state (never its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStateInfo {
    pub credentials_version: i64,
    pub generation: i64,
    pub size_bytes: i64,
    pub file_count: i64,
    pub synced_at: Millis,
}

/// The scope of the whole cluster's capacity level (server names are
/// upper-case letters and digits, so it is never one of them).
pub const CLUSTER_SCOPE: &str = "*";

/// How much keyed device state a bot keeps for its current credentials,
/// for admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStateInfo {
    pub keys: i64,
    /// Sealed, as stored.
    pub bytes: i64,
}

/// One change to a bot's keyed device state ([`crate::DeviceStateStore`]).
/// Values are secrets: `Debug` shows only where they go.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceWrite {
    /// Sets `key` in `space` to `value`.
    Put { space: String, key: String, value: Vec<u8> },
    /// Removes `key` from `space` (nothing if absent).
    Delete { space: String, key: String },
    /// Removes every key of `space`.
    Clear { space: String },
    /// Removes everything the bot keeps, of every credentials version (an
    /// import of new credentials starts from nothing).
    Reset,
}

impl std::fmt::Debug for DeviceWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put { space, value, .. } => write!(f, "Put({space}, {} bytes)", value.len()),
            Self::Delete { space, .. } => write!(f, "Delete({space})"),
            Self::Clear { space } => write!(f, "Clear({space})"),
            Self::Reset => f.write_str("Reset"),
        }
    }
}
