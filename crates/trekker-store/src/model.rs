//! The records the store reads and writes. No credentials in any of them:
//! those go in as [`Credentials`] and are sealed before they touch a row.

use trekker_domain::access::Actor;
use trekker_domain::{
    ApprovalStatus, BotId, DesiredState, GuestMessage, PhoneNumber, RuntimeStatus, ServerName, ServerStatus,
};

/// Epoch milliseconds, the one time unit of the store (same SQL on both backends).
pub type Millis = i64;

/// What a node writes about itself at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRegistration {
    /// The server (SERVER_NAME).
    pub name: ServerName,
    /// Its slots (MAX_BOT_COUNT).
    pub max_bot_count: i64,
    /// Where other nodes reach it (PUBLIC_URL); none: not reachable.
    pub base_url: Option<String>,
    /// Shown in the console.
    pub description: Option<String>,
}

/// A server's row in `server_registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSnapshot {
    /// The server.
    pub name: ServerName,
    /// Its slots.
    pub max_bot_count: i64,
    /// Slot-occupying bots on it (all approval states but rejected).
    pub current_bot_count: i64,
    /// Whether it takes new bots.
    pub status: ServerStatus,
    /// Where other nodes reach it.
    pub base_url: Option<String>,
    /// Its node's last heartbeat; none: never seen.
    pub last_heartbeat: Option<Millis>,
    /// Shown in the console.
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
    /// When it was asked for.
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
    /// New slots; none: unchanged.
    pub max_bot_count: Option<i64>,
    /// New status; none: unchanged.
    pub status: Option<ServerStatus>,
}

/// A row of `god_register`: which server hosts a phone's bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The phone.
    pub phone: PhoneNumber,
    /// The server hosting its bot.
    pub server: ServerName,
    /// Its bot.
    pub bot_id: BotId,
    /// When the phone was registered.
    pub registered_at: Millis,
}

/// A bot as admins and use cases see it: everything but the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotRecord {
    /// The bot.
    pub id: BotId,
    /// Its display name.
    pub name: String,
    /// Its WhatsApp phone.
    pub phone: PhoneNumber,
    /// The server hosting it.
    pub server: ServerName,
    /// Where it stands with the admins.
    pub approval: ApprovalStatus,
    /// What it is doing, as its host last reported.
    pub status: RuntimeStatus,
    /// Its credentials' version (1, then one more per update).
    pub credentials_version: i64,
    /// When its credentials were last written.
    pub credentials_updated_at: Millis,
    /// When it was approved.
    pub approval_date: Option<Millis>,
    /// When its approval ends.
    pub expires_at: Option<Millis>,
    /// Why its credentials stopped working, if they did.
    pub invalid_reason: Option<String>,
    /// Restarts after crashes since its last good run.
    pub restarts: i64,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// When it was registered.
    pub created_at: Millis,
    /// When its row last changed.
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
    /// The new bot's id.
    pub id: BotId,
    /// Its display name.
    pub name: String,
    /// Its phone (the credentials' own).
    pub phone: PhoneNumber,
    /// The server to reserve a slot on.
    pub server: ServerName,
    /// Its checked credentials (sealed before they are written).
    pub credentials: trekker_domain::Credentials,
    /// At most this share (percent) of the server's slots may hold bots
    /// waiting for approval (PENDING_MAX_PERCENT); 100 = no cap.
    pub pending_share_percent: i64,
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The bot as written.
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
    /// Only bots of this server.
    pub server: Option<ServerName>,
    /// Only bots in this approval status.
    pub approval: Option<ApprovalStatus>,
    /// Only bots in this runtime status.
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
    /// The last bot shown's registration time.
    pub created_at: Millis,
    /// The last bot shown (ties on time).
    pub id: BotId,
}

/// One page of bots, and where the next one starts (none on the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotPage {
    /// The bots of this page, newest first.
    pub bots: Vec<BotRecord>,
    /// Where the next page starts; none: this is the last.
    pub next: Option<BotCursor>,
}

/// One page of activities, newest first; `next` (an activity id)
/// continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityPage {
    /// The activities of this page, newest first.
    pub activities: Vec<Activity>,
    /// The id the next page starts below; none: this is the last.
    pub next: Option<i64>,
}

/// Which entries of the audit trail to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this actor's (a key's name, `bootstrap` or `system`).
    pub actor: Option<String>,
    /// Only this action (`approved`, `bot_failed_over`, ...).
    pub action: Option<String>,
}

/// An audit record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    /// The node that did it.
    pub server: ServerName,
    /// The bot it concerns, if any.
    pub bot_id: Option<BotId>,
    /// The phone it concerns, if any.
    pub phone: Option<PhoneNumber>,
    /// A short stable verb, e.g. `registered`, `auto_assigned`, `approved`.
    pub action: String,
    /// Free text for people; never a credential.
    pub details: String,
    /// The other node, for cross-server work.
    pub remote_tenancy: Option<ServerName>,
    /// The bot on the other server, for cross-server steps.
    pub remote_bot_id: Option<String>,
    /// Who did it, to what, and how it ended: set on every admin write and
    /// every system action (the audit trail); none for a guest's steps.
    pub audit: Option<AuditMark>,
}

/// What makes an activity an entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMark {
    /// The key, `bootstrap` or `system`.
    pub actor: Actor,
    /// What it was done to: `bot/<id>`, `server/<name>`, `key/<id>`,
    /// `review/<id>` or `registry`.
    pub target: String,
    /// [`AuditMark::OK`], or the error code that refused it.
    pub result: String,
}

impl AuditMark {
    /// The result of a write that was made.
    pub const OK: &'static str = "ok";
    /// The target of the registry's repairs.
    pub const REGISTRY: &'static str = "registry";

    /// The target naming bot `id`.
    pub fn bot(id: &BotId) -> String {
        format!("bot/{id}")
    }

    /// The target naming server `name`.
    pub fn server(name: &ServerName) -> String {
        format!("server/{name}")
    }
}

impl NewActivity {
    /// An activity `action` recorded by `server`, with `details` for people.
    pub fn new(server: &ServerName, action: &str, details: impl Into<String>) -> Self {
        Self {
            server: server.clone(),
            bot_id: None,
            phone: None,
            action: action.to_owned(),
            details: details.into(),
            remote_tenancy: None,
            remote_bot_id: None,
            audit: None,
        }
    }

    /// Done by `actor` to `target` (an entry of the audit trail), and done.
    pub fn by(mut self, actor: &Actor, target: impl Into<String>) -> Self {
        let result = AuditMark::OK.to_owned();
        self.audit = Some(AuditMark { actor: actor.clone(), target: target.into(), result });
        self
    }

    /// Done by the cluster itself to `target` (expiry, failover, crashes).
    pub fn by_system(self, target: impl Into<String>) -> Self {
        self.by(&Actor::system(), target)
    }

    /// Refused with error `code` (a write attempted and not made).
    pub fn refused(mut self, code: &str) -> Self {
        if let Some(audit) = self.audit.as_mut() {
            audit.result = code.to_owned();
        }
        self
    }

    /// About bot `bot_id` of `phone`.
    pub fn for_bot(mut self, bot_id: &BotId, phone: &PhoneNumber) -> Self {
        self.bot_id = Some(bot_id.clone());
        self.phone = Some(phone.clone());
        self
    }

    /// A step of a cross-server update with `tenancy` (and its bot).
    pub fn with_remote(mut self, tenancy: &ServerName, bot_id: Option<&BotId>) -> Self {
        self.remote_tenancy = Some(tenancy.clone());
        self.remote_bot_id = bot_id.map(|id| id.as_str().to_owned());
        self
    }
}

/// A stored activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// Its number (increasing).
    pub id: i64,
    /// When it happened.
    pub occurred_at: Millis,
    /// The node that recorded it.
    pub server: String,
    /// The bot it concerns, if any.
    pub bot_id: Option<String>,
    /// The phone it concerns, if any.
    pub phone: Option<String>,
    /// What happened (`registered`, `approved`, ...).
    pub action: String,
    /// A sentence for people.
    pub details: String,
    /// The other server of a cross-server step.
    pub remote_tenancy: Option<String>,
    /// The bot on that server.
    pub remote_bot_id: Option<String>,
    /// Who did it, to what, with what result: entries of the audit trail.
    pub audit: Option<AuditMark>,
}

/// A message to a guest, queued with the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// Who is told.
    pub phone: PhoneNumber,
    /// What they are told.
    pub message: GuestMessage,
}

/// What a state change writes beside itself, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideEffects {
    /// The activity recorded with the change.
    pub activity: NewActivity,
    /// The guest message queued with it, if any.
    pub notification: Option<NewNotification>,
}

impl SideEffects {
    /// The change records `activity`, and tells no guest.
    pub fn activity(activity: NewActivity) -> Self {
        Self { activity, notification: None }
    }

    /// And queues `message` for `phone`, in the same transaction.
    pub fn notify(mut self, phone: &PhoneNumber, message: impl Into<GuestMessage>) -> Self {
        self.notification = Some(NewNotification { phone: phone.clone(), message: message.into() });
        self
    }
}

/// A notification claimed by a dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Its number in the outbox.
    pub id: i64,
    /// Who is told.
    pub phone: String,
    /// What they are told.
    pub text: String,
    /// Attempts including the current one.
    pub attempts: i64,
    /// When it was queued.
    pub created_at: Millis,
}

/// How a notification attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// Delivered.
    Sent,
    /// Try again at `retry_at`.
    Retry {
        /// When to try again.
        retry_at: Millis,
        /// Why this attempt failed.
        error: String,
    },
    /// Give up for good.
    Failed {
        /// Why the last attempt failed.
        error: String,
    },
}

/// The state of a pairing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingStatus {
    /// Waiting for the guest to enter the code.
    Pending,
    /// Paired: the session is ready.
    Paired,
    /// The code ran out unused.
    Expired,
    /// Pairing failed (see its message).
    Failed,
}

impl PairingStatus {
    /// The status as stored (`pending`, ...).
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
    /// The pairing request's id.
    pub id: String,
    /// The phone being paired.
    pub phone: PhoneNumber,
    /// The code the guest types on the phone.
    pub code: String,
    /// When it was asked for.
    pub created_at: Millis,
    /// When the code stops working.
    pub expires_at: Millis,
}

/// A stored pairing request. `credentials` is set once paired.
#[derive(Debug, Clone)]
pub struct PairingRecord {
    /// The pairing request.
    pub id: String,
    /// The phone being paired.
    pub phone: PhoneNumber,
    /// The code the guest types on the phone.
    pub code: String,
    /// Where it stands.
    pub status: PairingStatus,
    /// The credentials once paired (opened from their sealed form).
    pub credentials: Option<trekker_domain::Credentials>,
    /// Why it failed, if it did.
    pub message: Option<String>,
    /// When it was asked for.
    pub created_at: Millis,
    /// When the code stops working.
    pub expires_at: Millis,
}

/// A disagreement between `god_register`, `bot_instances` and the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inconsistency {
    /// A registry row whose bot row is missing (the phone is locked out).
    RegistryWithoutBot {
        /// The registered phone.
        phone: String,
        /// The server the registry names.
        server: String,
        /// The bot the registry names, which does not exist.
        bot_id: String,
    },
    /// A slot-occupying bot row with no registry row.
    BotWithoutRegistry {
        /// The bot.
        bot_id: String,
        /// Its phone, which the registry does not hold.
        phone: String,
        /// The server hosting it.
        server: String,
    },
    /// Registry and bot row name different servers.
    ServerMismatch {
        /// The phone.
        phone: String,
        /// Its bot.
        bot_id: String,
        /// Where the registry says the bot is.
        registry_server: String,
        /// Where the bot row says it is.
        bot_server: String,
    },
    /// `current_bot_count` differs from the bots actually there.
    CountDrift {
        /// The server.
        server: String,
        /// The count its row holds.
        recorded: i64,
        /// The bots that occupy its slots.
        actual: i64,
    },
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
    /// The update's id (its idempotency key).
    pub id: String,
    /// The bot on the other server.
    pub bot_id: BotId,
    /// The bot's phone.
    pub phone: PhoneNumber,
    /// The node the guest used.
    pub source: ServerName,
    /// The node hosting the bot.
    pub target: ServerName,
    /// The new credentials (sealed before they are written).
    pub credentials: trekker_domain::Credentials,
    /// The outbox leaves it alone this long: the asking request delivers it
    /// itself first (0: the outbox may try it at once).
    pub held_for_ms: i64,
}

/// Where a queued credential update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    /// Not delivered yet.
    Pending,
    /// Applied by the target.
    Delivered,
    /// Given up after its attempts.
    Failed,
    /// Older than a day: given up.
    Expired,
    /// A newer update for the same bot replaced it before delivery.
    Superseded,
}

impl OutboxStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
        }
    }

    /// The status stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed, Self::Expired, Self::Superseded]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// A queued credential update (without its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUpdate {
    /// The update (its idempotency key).
    pub id: String,
    /// The bot on the target server.
    pub bot_id: BotId,
    /// The bot's phone.
    pub phone: PhoneNumber,
    /// The node the guest re-paired on.
    pub source: ServerName,
    /// The node hosting the bot.
    pub target: ServerName,
    /// The version the host stores these credentials under.
    pub version: i64,
    /// Where its delivery stands.
    pub status: OutboxStatus,
    /// Deliveries tried.
    pub attempts: i64,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Millis,
    /// When the target applied it.
    pub delivered_at: Option<Millis>,
}

/// One page of the cross-server outbox, newest first; `next` continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePage {
    /// The updates of this page.
    pub updates: Vec<CredentialUpdate>,
    /// The last update's creation time and id, when more follow.
    pub next: Option<(Millis, String)>,
}

/// One page of credential reviews, newest first; `next` continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewPage {
    /// The reviews of this page.
    pub reviews: Vec<CredentialReview>,
    /// The last review's creation time and id, when more follow.
    pub next: Option<(Millis, String)>,
}

/// A claimed update, with its decrypted credentials, ready to send.
#[derive(Debug, Clone)]
pub struct ClaimedUpdate {
    /// The update claimed for delivery.
    pub update: CredentialUpdate,
    /// Its credentials, opened.
    pub credentials: trekker_domain::Credentials,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The target applied it.
    Delivered,
    /// Try again at `retry_at`; `error` says why not now.
    Retry {
        /// When to try again.
        retry_at: Millis,
        /// Why this attempt failed.
        error: String,
    },
    /// The host refused for good.
    Failed {
        /// Why the last attempt failed.
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
    Done {
        /// The HTTP status answered the first time.
        status: u16,
        /// The body answered the first time.
        body: String,
    },
}

/// What the hosting node reports about a bot it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeReport {
    /// The bot reported on.
    pub bot_id: BotId,
    /// The reporting node and its lease; ignored unless the node hosts the
    /// bot and no other run of it (another node, or an earlier start of
    /// this one) holds it.
    pub runner: NodeLease,
    /// The credentials version the report is about; ignored if outdated.
    pub version: i64,
    /// What it is doing now.
    pub status: RuntimeStatus,
    /// Added to the restart count.
    pub restarts: i64,
    /// Replaces `last_error` when set.
    pub last_error: Option<String>,
    /// Replaces `invalid_reason` when set.
    pub invalid_reason: Option<String>,
    /// Recorded with the report, in its transaction, only when the report
    /// is taken (an activity, and a message to the bot's owner).
    pub effects: Option<SideEffects>,
}

/// Why a bot moves; recorded with each move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// An admin asked.
    Admin,
    /// Its server is being emptied.
    Evacuation,
    /// Its server was lost.
    Failover,
    /// The balancer evened the fleet out.
    Rebalance,
}

impl MoveReason {
    /// The reason as recorded (`admin`, `evacuation`, ...).
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
    /// The bot to move.
    pub bot: BotId,
    /// Move only if the bot is still here (a compare-and-set): however many
    /// nodes plan the same move, it happens once.
    pub from: Option<ServerName>,
    /// The server to move it to.
    pub to: ServerName,
    /// Why (recorded with the move).
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
    /// The bot as it is now, on its new server.
    pub bot: BotRecord,
    /// The server it left.
    pub from: ServerName,
}

/// How a bot's run ended (`lastExit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotExit {
    /// When it ended.
    pub at: Millis,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Escaped and cut by the runtime (a bot's words may be in it).
    pub reason: String,
    /// The run was killed for passing its memory limit.
    pub out_of_memory: bool,
}

/// What is recorded about a bot's exits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotExits {
    /// The last exit, if any.
    pub last: Option<BotExit>,
    /// Runs killed for passing their memory limit, ever.
    pub oom_kills: i64,
}

/// Credentials for a registered phone signed by another WhatsApp account,
/// waiting for an admin (API.md, ACCOUNT_MISMATCH and credential reviews).
#[derive(Debug, Clone)]
pub struct NewReview {
    /// The review's id.
    pub id: String,
    /// The bot whose phone was re-paired.
    pub bot_id: BotId,
    /// Its phone.
    pub phone: PhoneNumber,
    /// The credentials held for review (sealed before they are written).
    pub credentials: trekker_domain::Credentials,
}

/// Where a credential review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewStatus {
    /// Waiting for an admin.
    Open,
    /// The held credentials were applied.
    Approved,
    /// The held credentials were discarded.
    Rejected,
    /// A newer change of the same bot replaced it before a decision.
    Superseded,
}

impl ReviewStatus {
    /// The status as stored.
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
    /// The review.
    pub id: String,
    /// The bot concerned.
    pub bot_id: BotId,
    /// Its phone.
    pub phone: PhoneNumber,
    /// The account that signed the waiting credentials.
    pub account_key: [u8; 32],
    /// When WhatsApp signed the held credentials' device (seconds).
    pub adv_timestamp: i64,
    /// Where the review stands.
    pub status: ReviewStatus,
    /// When it was opened.
    pub created_at: Millis,
    /// When an admin decided.
    pub decided_at: Option<Millis>,
}

/// A node's run lease: its name and the epoch it took at start. A bot's
/// runner is a `NodeLease`; renewing the node's lease renews every bot it
/// runs (invariant 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeLease {
    /// The node holding it.
    pub node: ServerName,
    /// Its epoch: a restart or a lost lease starts a new one.
    pub epoch: i64,
}

/// Where a reader of the change feed stands: the writes it has not seen
/// yet are those of transactions numbered `from` or above, or listed in
/// `pending` (still running when it last looked: PostgreSQL commits out of
/// order). Exact: a quiet reader reads nothing, a late commit is not missed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeCursor {
    /// Writes numbered at or above this are new.
    pub from: i64,
    /// Writes of transactions still running when the cursor was taken: read again.
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
    /// The folder as one tar archive.
    pub archive: Vec<u8>,
    /// Of the folder, before archiving.
    pub size_bytes: i64,
    /// Files in it.
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
    /// The credentials version it was saved under.
    pub credentials_version: i64,
    /// Its save number (one more per save).
    pub generation: i64,
    /// Its size.
    pub size_bytes: i64,
    /// Files in it.
    pub file_count: i64,
    /// When it was last saved.
    pub synced_at: Millis,
}

/// The scope of the whole cluster's capacity level (server names are
/// upper-case letters and digits, so it is never one of them).
pub const CLUSTER_SCOPE: &str = "*";

/// How much keyed device state a bot keeps for its current credentials,
/// for admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStateInfo {
    /// Keys stored for the bot's device.
    pub keys: i64,
    /// Sealed, as stored.
    pub bytes: i64,
}

/// One change to a bot's keyed device state ([`crate::DeviceStateStore`]).
/// Values are secrets: `Debug` shows only where they go.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceWrite {
    /// Sets `key` in `space` to `value`.
    Put {
        /// The key space (`session`, `pre-key`, ...).
        space: String,
        /// The key within it.
        key: String,
        /// The value (sealed before it is written).
        value: Vec<u8>,
    },
    /// Removes `key` from `space` (nothing if absent).
    Delete {
        /// The key space.
        space: String,
        /// The key removed.
        key: String,
    },
    /// Removes every key of `space`.
    Clear {
        /// The key space emptied.
        space: String,
    },
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

/// An API key of the admin API as stored: its secret only as a hash
/// (`trekker_domain::access`). `Debug` leaves the hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The id the key's token names.
    pub id: String,
    /// What its holder called it (shown in lists and the audit).
    pub name: String,
    /// What it may do.
    pub role: trekker_domain::access::Role,
    /// SHA-256 of the token's secret.
    pub secret_hash: Vec<u8>,
    /// Who made it: a key's name, or `bootstrap`.
    pub created_by: String,
    /// When it was made.
    pub created_at: Millis,
    /// When it stops working; `None`: never.
    pub expires_at: Option<Millis>,
    /// When it was revoked; `None`: it was not.
    pub revoked_at: Option<Millis>,
    /// When a node last saw it used (recorded in batches, so a little late).
    pub last_used_at: Option<Millis>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// Whether the key opens the API at `now`: not revoked, not expired.
    pub fn usable_at(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| now < expires)
    }
}

/// One page of API keys, newest first, and the id the next page starts
/// after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyPage {
    /// This page's keys, newest first.
    pub keys: Vec<ApiKey>,
    /// The id the next page starts after; none: this is the last.
    pub next: Option<String>,
}
