//! Cross-server analytics (issue 24): the credential updates one node
//! forwarded to another, per hour and hosting server: how many ended in
//! each status, how long delivered ones took (p50 / p95), and why the
//! others failed. Read with one bounded, indexed query over the outbox
//! ([`trekker_store::CredentialOutbox::credential_updates_since`]) and
//! summed here.

use std::collections::BTreeMap;

use trekker_store::{CredentialUpdate, OutboxStatus};

use crate::{AppError, Trekker};

/// The longest window, in hours (30 days).
pub const MAX_HOURS: u32 = 720;
/// The most updates one answer reads; past it the oldest hours are left
/// out and the answer says so.
pub const MAX_UPDATES: i64 = 100_000;
/// A failure reason is grouped by its first characters.
const REASON_CHARS: usize = 120;

const HOUR_MS: i64 = 3_600_000;

/// One hour of updates to one hosting server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HourOfServer {
    /// The hour's start (unix ms).
    pub hour: i64,
    /// The hosting server the updates went to.
    pub server: String,
    /// How many updates are in each status (`pending`, `delivered`, ...).
    pub counts: BTreeMap<&'static str, u64>,
    /// Delivery latency of the delivered ones, ms: (p50, p95).
    pub latency_ms: Option<(i64, i64)>,
    /// Why the failed and expired ones failed, with how many each.
    pub failures: BTreeMap<String, u64>,
}

/// The statistics of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossServerStats {
    /// The window's start (unix ms).
    pub since: i64,
    /// Hours and servers, oldest hour first, servers by name.
    pub hours: Vec<HourOfServer>,
    /// Whether [`MAX_UPDATES`] cut the window (its oldest hours incomplete).
    pub truncated: bool,
}

/// The nearest-rank percentile `p` (0 to 100) of sorted `values`.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Sums `updates` into hours and servers (pure: the window's rows given).
pub fn summarise(updates: &[CredentialUpdate], since: i64, truncated: bool) -> CrossServerStats {
    let mut buckets: BTreeMap<(i64, String), (HourOfServer, Vec<i64>)> = BTreeMap::new();
    for update in updates {
        let hour = update.created_at.div_euclid(HOUR_MS) * HOUR_MS;
        let server = update.target.as_str().to_owned();
        let (bucket, latencies) = buckets
            .entry((hour, server.clone()))
            .or_insert_with(|| (HourOfServer { hour, server, ..HourOfServer::default() }, Vec::new()));
        *bucket.counts.entry(update.status.as_str()).or_default() += 1;
        match update.status {
            OutboxStatus::Delivered => {
                if let Some(at) = update.delivered_at {
                    latencies.push(at.saturating_sub(update.created_at).max(0));
                }
            }
            OutboxStatus::Failed | OutboxStatus::Expired => {
                let reason = update.last_error.as_deref().unwrap_or("no reason recorded");
                let reason: String = reason.chars().take(REASON_CHARS).collect();
                *bucket.failures.entry(reason).or_default() += 1;
            }
            OutboxStatus::Pending | OutboxStatus::Superseded => {}
        }
    }
    let hours = buckets
        .into_values()
        .map(|(mut bucket, mut latencies)| {
            latencies.sort_unstable();
            if !latencies.is_empty() {
                bucket.latency_ms = Some((percentile(&latencies, 50), percentile(&latencies, 95)));
            }
            bucket
        })
        .collect();
    CrossServerStats { since, hours, truncated }
}

impl Trekker {
    /// The cross-server statistics of the last `hours` (1 to [`MAX_HOURS`]).
    pub async fn cross_server_stats(&self, hours: u32) -> Result<CrossServerStats, AppError> {
        if !(1..=MAX_HOURS).contains(&hours) {
            return Err(AppError::InvalidInput(format!("hours must be between 1 and {MAX_HOURS}")));
        }
        let since = self.now().saturating_sub(i64::from(hours) * HOUR_MS);
        let updates = self.store.credential_outbox.credential_updates_since(since, MAX_UPDATES + 1).await?;
        let truncated = updates.len() > usize::try_from(MAX_UPDATES).unwrap_or(usize::MAX);
        let kept = &updates[..updates.len().min(usize::try_from(MAX_UPDATES).unwrap_or(usize::MAX))];
        Ok(summarise(kept, since, truncated))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use trekker_domain::{BotId, PhoneNumber, ServerName};

    fn update(
        target: &str,
        created_at: i64,
        status: OutboxStatus,
        delivered_after: Option<i64>,
        error: &str,
    ) -> CredentialUpdate {
        CredentialUpdate {
            id: format!("u{created_at}"),
            bot_id: BotId::from_random_bits(1),
            phone: PhoneNumber::parse("254700000001").unwrap(),
            source: ServerName::parse("SERVER0").unwrap(),
            target: ServerName::parse(target).unwrap(),
            version: 2,
            status,
            attempts: 1,
            last_error: (!error.is_empty()).then(|| error.to_owned()),
            created_at,
            delivered_at: delivered_after.map(|after| created_at + after),
        }
    }

    #[test]
    fn updates_sum_per_hour_and_host_with_latency_percentiles_and_reasons() {
        let h = 10 * HOUR_MS;
        let mut rows: Vec<CredentialUpdate> =
            (1..=20).map(|n| update("SERVER1", h + n, OutboxStatus::Delivered, Some(n * 100), "")).collect();
        rows.push(update("SERVER1", h + 50, OutboxStatus::Failed, None, "SERVER1 answered 503"));
        rows.push(update("SERVER1", h + 60, OutboxStatus::Expired, None, "SERVER1 answered 503"));
        rows.push(update("SERVER1", h + 70, OutboxStatus::Pending, None, ""));
        rows.push(update("SERVER2", h + 80, OutboxStatus::Failed, None, &"x".repeat(500)));
        rows.push(update("SERVER1", h + HOUR_MS, OutboxStatus::Superseded, None, ""));
        let stats = summarise(&rows, h, false);
        assert_eq!(stats.hours.len(), 3, "{stats:?}");
        let first = &stats.hours[0];
        assert_eq!((first.hour, first.server.as_str()), (h, "SERVER1"));
        assert_eq!(first.counts["delivered"], 20);
        assert_eq!((first.counts["failed"], first.counts["expired"], first.counts["pending"]), (1, 1, 1));
        assert_eq!(first.latency_ms, Some((1_000, 1_900)), "nearest rank: the 10th and the 19th of 20");
        assert_eq!(first.failures["SERVER1 answered 503"], 2);
        let other = &stats.hours[1];
        assert_eq!((other.server.as_str(), other.latency_ms), ("SERVER2", None));
        assert_eq!(other.failures.keys().next().unwrap().len(), REASON_CHARS, "reasons are cut");
        assert_eq!((stats.hours[2].hour, stats.hours[2].counts["superseded"]), (h + HOUR_MS, 1));
    }

    #[test]
    fn percentiles_of_one_and_of_two() {
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[7], 95), 7);
        assert_eq!((percentile(&[1, 9], 50), percentile(&[1, 9], 95)), (1, 9));
    }
}
