//! What a bot is doing right now on its hosting node.

use std::fmt;
use std::str::FromStr;

use crate::UnknownVariant;

/// What a bot is doing on its host, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeStatus {
    /// Not running (not approved yet, stopped, or its node is down).
    Offline,
    /// Asked to (re)start, e.g. after approval or new credentials.
    Loading,
    /// Connected to WhatsApp.
    Online,
    /// Stopped for a reason a person must fix (e.g. logged out).
    Error,
    /// Crashed too often; waits for new credentials or an admin.
    Failed,
}

impl RuntimeStatus {
    /// Every status, in the order the console lists them.
    pub const ALL: [RuntimeStatus; 5] = [Self::Offline, Self::Loading, Self::Online, Self::Error, Self::Failed];

    /// The status as stored and sent (`online`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Loading => "loading",
            Self::Online => "online",
            Self::Error => "error",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuntimeStatus {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownVariant { kind: "runtime status", value: s.to_owned() })
    }
}

/// What an admin wants of a bot (its power state), kept across node
/// restarts and moves until changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DesiredState {
    /// Run it whenever it is approved (the default).
    #[default]
    Running,
    /// Keep it stopped until an admin restarts it.
    Stopped,
}

impl DesiredState {
    /// Both states.
    pub const ALL: [DesiredState; 2] = [Self::Running, Self::Stopped];

    /// The state as stored and sent (`running`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DesiredState {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownVariant { kind: "desired state", value: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn displays_as_its_wire_name() {
        assert_eq!(super::RuntimeStatus::Online.to_string(), "online");
        assert_eq!(super::RuntimeStatus::Failed.to_string(), "failed");
    }

    use super::*;

    #[test]
    fn text_round_trip() {
        for status in RuntimeStatus::ALL {
            assert_eq!(status.as_str().parse::<RuntimeStatus>(), Ok(status));
        }
        assert!("running".parse::<RuntimeStatus>().is_err());
        for state in DesiredState::ALL {
            assert_eq!(state.as_str().parse::<DesiredState>(), Ok(state));
        }
        assert!("online".parse::<DesiredState>().is_err());
    }
}
