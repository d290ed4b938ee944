//! A server's administrative status and liveness rule.

use std::fmt;
use std::str::FromStr;

use crate::UnknownVariant;

/// Whether a server takes new bots. Set by the node at start and by admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerStatus {
    /// Takes new bots and runs its bots.
    Active,
    /// Runs its bots but takes no new ones (e.g. before maintenance).
    Draining,
    /// Takes nothing; shown as offline.
    Inactive,
}

impl ServerStatus {
    /// Every status.
    pub const ALL: [ServerStatus; 3] = [Self::Active, Self::Draining, Self::Inactive];

    /// The status as stored and sent (`active`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Inactive => "inactive",
        }
    }
}

impl fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServerStatus {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownVariant { kind: "server status", value: s.to_owned() })
    }
}

/// How many heartbeats a server may miss before it counts as offline.
pub const MISSED_BEATS_BEFORE_OFFLINE: i64 = 3;

/// Whether a server whose last heartbeat was at `last_heartbeat_ms` is online
/// at `now_ms`, given the cluster's heartbeat interval (invariant 7).
///
/// ```
/// use trekker_domain::server::is_online;
///
/// let (interval, now) = (10_000, 1_700_000_000_000);
/// assert!(is_online(Some(now - 30_000), now, interval), "three missed beats: still online");
/// assert!(!is_online(Some(now - 30_001), now, interval));
/// assert!(!is_online(None, now, interval), "never seen");
/// ```
pub fn is_online(last_heartbeat_ms: Option<i64>, now_ms: i64, heartbeat_interval_ms: i64) -> bool {
    match last_heartbeat_ms {
        Some(beat) => now_ms.saturating_sub(beat) <= heartbeat_interval_ms * MISSED_BEATS_BEFORE_OFFLINE,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn displays_as_its_wire_name() {
        assert_eq!(super::ServerStatus::Draining.to_string(), "draining");
    }

    use super::*;

    #[test]
    fn liveness_after_three_missed_beats() {
        assert!(is_online(Some(1_000), 31_000, 10_000));
        assert!(!is_online(Some(1_000), 31_001, 10_000));
        assert!(!is_online(None, 0, 10_000));
        // A clock slightly behind another node's still counts as fresh.
        assert!(is_online(Some(5_000), 4_000, 10_000));
    }

    #[test]
    fn text_round_trip() {
        for status in ServerStatus::ALL {
            assert_eq!(status.as_str().parse::<ServerStatus>(), Ok(status));
        }
    }
}
