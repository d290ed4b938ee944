//! The driver contract: start a bot, stop it, and report what happens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use trekker_domain::{BotId, Credentials, PhoneNumber, ServerName};
use trekker_store::NodeLease;

/// What a driver needs to start one bot. Holds the decrypted credentials:
/// `Debug` never shows them.
#[derive(Clone)]
pub struct BotSpec {
    pub bot_id: BotId,
    /// The lease this run belongs to: whatever the bot writes to the
    /// database is fenced on it (invariant 9).
    pub runner: NodeLease,
    pub phone: PhoneNumber,
    pub server: ServerName,
    pub credentials: Credentials,
    pub version: i64,
    /// Increases with every start of this bot on this node; events carry it
    /// so late events of an earlier run are ignored.
    pub generation: u64,
    /// Where the bot's session folder comes from and goes to, for drivers
    /// that keep one (invariant 9); `None`: not kept.
    pub session: Option<SessionSync>,
    /// When the number's device was paired (unix ms; its registration when
    /// the credentials do not say): the send governor's warm-up counts from it.
    pub paired_at: i64,
}

/// A running bot's session folder: restored before start, saved while it
/// runs (when it changed, at most every `every`) and when it ends.
#[derive(Clone)]
pub struct SessionSync {
    /// The archive to restore (from [`crate::state::snapshot`]); `None`:
    /// the bot starts from its registered credentials alone.
    pub restore: Option<Arc<Vec<u8>>>,
    pub sink: Arc<dyn StateSink>,
    pub every: Duration,
    /// Largest folder kept, in bytes.
    pub limit: u64,
}

impl fmt::Debug for SessionSync {
    // The archive is the session: only its size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSync")
            .field("restore_bytes", &self.restore.as_ref().map(|a| a.len()))
            .field("every", &self.every)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Saves a bot's session folder for the run it was made for (the
/// supervisor makes one per start: it knows the lease, the credentials
/// version and the generation).
#[async_trait]
pub trait StateSink: Send + Sync {
    /// Saves a snapshot; false when refused (this node no longer runs the
    /// bot, or a newer state is stored).
    async fn save(&self, snapshot: &crate::state::Snapshot) -> bool;

    /// The folder cannot be saved: records why (the last good state stays).
    async fn refuse(&self, error: &crate::state::StateError);
}

impl fmt::Debug for BotSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotSpec")
            .field("bot_id", &self.bot_id)
            .field("version", &self.version)
            .field("generation", &self.generation)
            .field("session", &self.session.as_ref().map(|s| s.restore.as_ref().map(|a| a.len())))
            .finish_non_exhaustive()
    }
}

/// Bot `id` of `phone` on SERVER3, its credentials `version` (tests).
#[cfg(test)]
pub(crate) fn test_spec(id: &str, phone: &str, version: u32, session: Option<SessionSync>) -> BotSpec {
    use trekker_domain::{PhoneNumber, ServerName};
    BotSpec {
        bot_id: BotId::parse(id).expect("a bot id"),
        runner: NodeLease { node: ServerName::parse("SERVER3").expect("a name"), epoch: 1 },
        phone: PhoneNumber::parse(phone).expect("a phone"),
        server: ServerName::parse("SERVER3").expect("a name"),
        credentials: trekker_testkit::creds::credentials(phone, version),
        version: i64::from(version),
        generation: 1,
        session,
        paired_at: 1_800_000_000_000,
    }
}

/// What happened to a running bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotEvent {
    /// Connected to WhatsApp.
    Connected,
    /// Lost the connection (the bot may reconnect by itself).
    Disconnected { reason: String },
    /// WhatsApp logged the session out: the credentials are dead
    /// (`reason`, when WhatsApp gave one).
    LoggedOut { reason: Option<String> },
    /// Another client took over the session's connection (WhatsApp allows
    /// one per device): the bot stopped and is not restarted here.
    Replaced,
    /// WhatsApp banned the account for a while (`reason` says why and for
    /// how long): the bot stopped and is not restarted.
    Banned { reason: String },
    /// WhatsApp answered a send with a rate or new-contact limit (429, 463,
    /// 475): the bot stays connected and sends nothing until the hold ends
    /// (`reason` says which and until when).
    Held { reason: String },
    /// The bot ended. `code` 0: stopped on purpose; anything else (or a
    /// `signal`): a crash, `error` says why (e.g. `out of memory`).
    Exited { code: Option<i32>, signal: Option<i32>, error: Option<String> },
}

/// How an `Exited` error begins when the run was killed for passing its
/// memory limit.
pub const OUT_OF_MEMORY: &str = "out of memory";

/// An event with the run it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverEvent {
    pub bot_id: BotId,
    pub generation: u64,
    pub event: BotEvent,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// A started bot.
#[async_trait]
pub trait RunningBot: Send + Sync {
    /// Stops the bot and waits until it has stopped.
    async fn stop(self: Box<Self>);
}

/// Starts bots. Events go to `events` tagged with the spec's generation.
#[async_trait]
pub trait BotDriver: Send + Sync + fmt::Debug {
    fn name(&self) -> &'static str;
    async fn start(
        &self,
        spec: BotSpec,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Result<Box<dyn RunningBot>, DriverError>;
}
