//! The JSON shapes of API answers (camelCase, API.md). Never a credential.

use serde::Serialize;
use trekker_app::admin::ServerView;
use trekker_domain::time::iso_datetime;
use trekker_store::BotRecord;
use utoipa::ToSchema;

/// A bot as guests see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotSummary {
    pub id: String,
    pub name: String,
    pub phone_number: String,
    pub server: String,
    /// pending | approved | rejected | expired
    pub approval_status: &'static str,
    /// offline | loading | online | error | failed
    pub status: &'static str,
}

impl From<&BotRecord> for BotSummary {
    fn from(bot: &BotRecord) -> Self {
        Self {
            id: bot.id.to_string(),
            name: bot.name.clone(),
            phone_number: bot.phone.to_string(),
            server: bot.server.to_string(),
            approval_status: bot.approval.as_str(),
            status: bot.status.as_str(),
        }
    }
}

/// A bot as admins see it: the guest view plus runtime and approval
/// details. Times are RFC 3339 UTC.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotDetail {
    #[serde(flatten)]
    pub summary: BotSummary,
    pub credentials_version: i64,
    pub credentials_updated_at: String,
    pub restarts: i64,
    pub expires_at: Option<String>,
    pub approval_date: Option<String>,
    pub invalid_reason: Option<String>,
    pub last_error: Option<String>,
    /// running | stopped: what an admin wants (POST .../restart, .../stop).
    pub desired_state: &'static str,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&BotRecord> for BotDetail {
    fn from(bot: &BotRecord) -> Self {
        Self {
            summary: bot.into(),
            credentials_version: bot.credentials_version,
            credentials_updated_at: iso_datetime(bot.credentials_updated_at),
            restarts: bot.restarts,
            expires_at: bot.expires_at.map(iso_datetime),
            approval_date: bot.approval_date.map(iso_datetime),
            invalid_reason: bot.invalid_reason.clone(),
            last_error: bot.last_error.clone(),
            desired_state: bot.desired_state.as_str(),
            created_at: iso_datetime(bot.created_at),
            updated_at: iso_datetime(bot.updated_at),
        }
    }
}

/// What an admin sees of a bot's saved session state (never its content).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStateView {
    /// Of the folder as saved, before sealing.
    pub size_bytes: i64,
    pub files: i64,
    /// Saves so far for these credentials.
    pub generation: i64,
    pub synced_at: String,
}

impl From<&trekker_store::SessionStateInfo> for SessionStateView {
    fn from(info: &trekker_store::SessionStateInfo) -> Self {
        Self {
            size_bytes: info.size_bytes,
            files: info.file_count,
            generation: info.generation,
            synced_at: iso_datetime(info.synced_at),
        }
    }
}

/// `GET /api/admin/bots/{id}`: the bot and its saved session state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotWithState {
    #[serde(flatten)]
    pub detail: BotDetail,
    /// Null until the bot's session was first saved (for its current
    /// credentials).
    pub session_state: Option<SessionStateView>,
    /// Null unless the bot runs in process (`BOT_DRIVER=whatsapp`) and has
    /// stored state for its current credentials.
    pub device_state: Option<DeviceStateView>,
    /// How the bot's last run ended; null before any.
    pub last_exit: Option<LastExitView>,
    /// What the bot uses now; null while it does not run (on the node that
    /// answers: ask its host).
    pub resources: Option<ResourcesView>,
}

/// `lastExit` of a bot.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastExitView {
    pub at: String,
    /// The exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Why (escaped, cut; e.g. `out of memory`).
    pub reason: String,
}

impl From<&trekker_store::BotExit> for LastExitView {
    fn from(exit: &trekker_store::BotExit) -> Self {
        Self { at: iso_datetime(exit.at), code: exit.code, signal: exit.signal, reason: exit.reason.clone() }
    }
}

/// `resources` of a running bot (its whole process tree).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesView {
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub pids: Option<u64>,
    /// Its AUTH_DIR, as allocated on disk.
    pub disk_bytes: u64,
    /// Runs (and processes of this run) killed for memory, ever.
    pub oom_kills: u64,
}

/// The keyed WhatsApp state of an in-process bot.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStateView {
    pub keys: i64,
    /// Sealed, as stored.
    pub size_bytes: i64,
}

/// A server in `/api/servers/available`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerPublic {
    pub name: String,
    pub current_bots: i64,
    pub max_bots: i64,
    pub available_slots: i64,
    /// active | draining | inactive
    pub status: &'static str,
    /// Heartbeat fresh (at most 3 intervals old) and not inactive.
    pub online: bool,
}

impl From<&ServerView> for ServerPublic {
    fn from(view: &ServerView) -> Self {
        let s = &view.server;
        Self {
            name: s.name.to_string(),
            current_bots: s.current_bot_count,
            max_bots: s.max_bot_count,
            available_slots: s.free_slots(),
            status: s.status.as_str(),
            online: view.online,
        }
    }
}

/// A server in `/api/admin/servers`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerAdmin {
    #[serde(flatten)]
    pub public: ServerPublic,
    pub last_heartbeat: Option<String>,
    pub base_url: Option<String>,
    pub description: Option<String>,
    /// As reported with the node's last heartbeat; null before the first.
    pub load: Option<LoadView>,
    /// The evacuation under way; null when none.
    pub evacuation: Option<EvacuationView>,
}

/// A node's load (`load` of a server).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadView {
    pub cpu_percent: i64,
    pub memory_available_bytes: i64,
    pub bots_running: i64,
}

/// An evacuation's progress (`evacuation` of a server).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvacuationView {
    /// Bots still on the server.
    pub left: i64,
    /// Of those, bots that fit on no other server (they stay).
    pub stuck: i64,
}

impl From<&ServerView> for ServerAdmin {
    fn from(view: &ServerView) -> Self {
        let server = &view.server;
        Self {
            public: view.into(),
            last_heartbeat: server.last_heartbeat.map(iso_datetime),
            base_url: server.base_url.clone(),
            description: server.description.clone(),
            load: server.load.map(|l| LoadView {
                cpu_percent: l.cpu_percent,
                memory_available_bytes: l.memory_available_bytes,
                bots_running: l.bots_running,
            }),
            evacuation: server.evacuation.map(|e| EvacuationView {
                left: server.current_bot_count,
                stuck: e.stuck.min(server.current_bot_count),
            }),
        }
    }
}
