//! Admin use cases: approve, reject, delete, inspect, server changes, and
//! registry inconsistency checks and repair.

use trekker_domain::{ApprovalStatus, BotId, ServerName, ServerStatus, messages, time};
use trekker_store::{BotFilter, BotRecord, Inconsistency, NewActivity, ServerPatch, ServerSnapshot, SideEffects};

use crate::{AppError, Trekker, telemetry};

/// The approval length when the admin gives none.
pub const DEFAULT_EXPIRATION_MONTHS: u32 = 3;
/// The longest approval accepted.
pub const MAX_EXPIRATION_MONTHS: u32 = 120;
/// An approval month, for expiry arithmetic (30 days; documented in the API docs).
const MONTH_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// A server as the API shows it: the row plus whether it is online now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub server: ServerSnapshot,
    pub online: bool,
}

/// What a repair run found and changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub found: Vec<Inconsistency>,
    /// How many were fixed (0 on a dry run).
    pub repaired: usize,
    pub dry_run: bool,
}

fn parse_bot_id(id: &str) -> Result<BotId, AppError> {
    BotId::parse(id).map_err(|_| AppError::NotFound("Bot not found.".into()))
}

impl Trekker {
    pub async fn servers(&self) -> Result<Vec<ServerView>, AppError> {
        Ok(self
            .store
            .servers
            .list_servers()
            .await?
            .into_iter()
            .map(|server| ServerView { online: self.is_server_online(&server), server })
            .collect())
    }

    pub async fn update_server(
        &self,
        name: &str,
        max_bot_count: Option<i64>,
        status: Option<&str>,
    ) -> Result<ServerView, AppError> {
        let name = ServerName::parse(name).map_err(|_| AppError::NotFound(format!("Server {name} not found.")))?;
        if max_bot_count.is_none() && status.is_none() {
            return Err(AppError::InvalidInput("Give maxBotCount and/or status.".into()));
        }
        if max_bot_count.is_some_and(|max| !(0..=1_000_000).contains(&max)) {
            return Err(AppError::InvalidInput("maxBotCount must be between 0 and 1000000.".into()));
        }
        let status = status
            .map(|s| {
                s.parse::<ServerStatus>()
                    .map_err(|_| AppError::InvalidInput("status must be active, draining or inactive.".into()))
            })
            .transpose()?;
        let patch = ServerPatch { max_bot_count, status };
        let updated = self.store.servers.update_server(&name, &patch, self.now()).await.map_err(|err| match err {
            trekker_store::StoreError::UnknownServer(_) => AppError::NotFound(format!("Server {name} not found.")),
            other => other.into(),
        })?;
        let details = format!("max_bot_count={:?} status={:?}", patch.max_bot_count, patch.status.map(|s| s.as_str()));
        self.record(NewActivity::new(&self.node, "server_updated", details).with_remote(&name, None)).await;
        Ok(ServerView { online: self.is_server_online(&updated), server: updated })
    }

    pub async fn bots(&self, server: Option<&str>, approval: Option<&str>) -> Result<Vec<BotRecord>, AppError> {
        let server = server
            .filter(|s| !s.is_empty())
            .map(|s| {
                ServerName::parse(s).map_err(|_| AppError::InvalidInput("server is not a valid server name.".into()))
            })
            .transpose()?;
        let approval = approval
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ApprovalStatus>().map_err(|_| {
                    AppError::InvalidInput("approval must be pending, approved, rejected or expired.".into())
                })
            })
            .transpose()?;
        Ok(self.store.bots.list_bots(&BotFilter { server, approval }).await?)
    }

    pub async fn bot(&self, id: &str) -> Result<BotRecord, AppError> {
        let id = parse_bot_id(id)?;
        self.store.bots.get_bot(&id).await?.ok_or_else(|| AppError::NotFound("Bot not found.".into()))
    }

    /// Approves a bot for `expiration_months` (default 3); its hosting node
    /// starts it. The guest is notified in the same transaction.
    pub async fn approve_bot(&self, id: &str, expiration_months: Option<u32>) -> Result<BotRecord, AppError> {
        let months = expiration_months.unwrap_or(DEFAULT_EXPIRATION_MONTHS);
        if !(1..=MAX_EXPIRATION_MONTHS).contains(&months) {
            return Err(AppError::InvalidInput(format!(
                "expirationMonths must be between 1 and {MAX_EXPIRATION_MONTHS}."
            )));
        }
        let bot = self.bot(id).await?;
        let now = self.now();
        let expires_at = now + i64::from(months) * MONTH_MS;
        let activity = NewActivity::new(&self.node, "approved", format!("approved for {months} months"))
            .for_bot(&bot.id, &bot.phone)
            .with_remote(&bot.server, Some(&bot.id));
        let effects = SideEffects::activity(activity)
            .notify(&bot.phone, messages::approved(&bot.name, &time::iso_date(expires_at)));
        let approved = self.store.bots.approve_bot(&bot.id, expires_at, &effects, now).await?;
        self.bots_changed();
        let until = time::iso_date(expires_at);
        tracing::info!(bot = %approved.id, server = %approved.server, "✅ Bot approved until {until}");
        Ok(approved)
    }

    /// Rejects a bot; its phone and slot are freed in the same transaction.
    pub async fn reject_bot(&self, id: &str) -> Result<BotRecord, AppError> {
        let id = parse_bot_id(id)?;
        let activity = NewActivity::new(&self.node, "rejected", "rejected by an admin");
        let effects = SideEffects::activity(NewActivity { bot_id: Some(id.clone()), ..activity });
        let rejected = self.store.bots.reject_bot(&id, &effects, self.now()).await?;
        self.bots_changed();
        tracing::info!(bot = %rejected.id, "🚫 Bot rejected; phone and slot freed");
        Ok(rejected)
    }

    /// Deletes a bot, freeing its phone and slot.
    pub async fn delete_bot(&self, id: &str) -> Result<BotRecord, AppError> {
        let id = parse_bot_id(id)?;
        let activity = NewActivity::new(&self.node, "deleted", "deleted by an admin");
        let effects = SideEffects::activity(NewActivity { bot_id: Some(id.clone()), ..activity });
        let deleted = self.store.bots.delete_bot(&id, &effects, self.now()).await?;
        self.bots_changed();
        tracing::info!(bot = %deleted.id, "🗑️ Bot deleted; phone and slot freed");
        Ok(deleted)
    }

    pub async fn inconsistencies(&self) -> Result<Vec<Inconsistency>, AppError> {
        let found = self.store.consistency.find_inconsistencies().await?;
        for kind in Inconsistency::KINDS {
            let count = found.iter().filter(|i| i.kind() == kind).count();
            metrics::gauge!(telemetry::INCONSISTENCIES, "kind" => kind).set(count as f64);
        }
        if !found.is_empty() {
            tracing::warn!(count = found.len(), "registry inconsistencies found");
        }
        Ok(found)
    }

    /// Finds inconsistencies and, unless `dry_run`, repairs each one.
    pub async fn repair_registry(&self, dry_run: bool) -> Result<RepairReport, AppError> {
        let found = self.inconsistencies().await?;
        let mut repaired = 0;
        if !dry_run {
            for issue in &found {
                let activity = NewActivity::new(&self.node, "registry_repaired", format!("{issue:?}"));
                if self
                    .store
                    .consistency
                    .repair_inconsistency(issue, &SideEffects::activity(activity), self.now())
                    .await?
                {
                    repaired += 1;
                }
            }
        }
        Ok(RepairReport { found, repaired, dry_run })
    }

    /// Appends an activity; a failure is logged, never fatal.
    pub(crate) async fn record(&self, activity: NewActivity) {
        if let Err(err) = self.store.activities.append_activity(&activity, self.now()).await {
            tracing::warn!(error = ?err, action = %activity.action, "could not record an activity");
        }
    }
}
