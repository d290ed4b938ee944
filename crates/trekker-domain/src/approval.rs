//! The admin approval state machine of a bot.
//!
//! ```text
//! pending --approve--> approved --expire--> expired --approve--> approved
//!    |                    |  ^--approve (extends the expiry)
//!    +------reject--------+--------reject----------> rejected (final)
//! ```
//! A rejected bot no longer holds its phone number nor a slot.

use std::fmt;
use std::str::FromStr;

use crate::UnknownVariant;

/// Where a bot stands with the admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalStatus {
    /// Registered, waiting for an admin.
    Pending,
    /// Approved until its expiry: it runs.
    Approved,
    /// Rejected by an admin; its phone and slot are free.
    Rejected,
    /// Its approval ran out.
    Expired,
}

/// The admin action that was refused, and the state that refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a bot that is {from} cannot be {action}")]
pub struct ApprovalTransitionError {
    /// The status the bot had.
    pub from: ApprovalStatus,
    /// What was asked (`approve`, `reject`, ...).
    pub action: &'static str,
}

impl ApprovalStatus {
    /// Every status.
    pub const ALL: [ApprovalStatus; 4] = [Self::Pending, Self::Approved, Self::Rejected, Self::Expired];

    /// The status as stored and sent (`pending`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }

    /// Whether a bot in this state holds its phone number and a server slot.
    pub fn occupies_slot(self) -> bool {
        !matches!(self, Self::Rejected)
    }

    /// Approving is allowed from pending, expired, and approved (renewal).
    ///
    /// ```
    /// use trekker_domain::ApprovalStatus;
    ///
    /// assert_eq!(ApprovalStatus::Pending.approve(), Ok(ApprovalStatus::Approved));
    /// assert_eq!(ApprovalStatus::Expired.approve(), Ok(ApprovalStatus::Approved), "a renewal");
    /// let refused = ApprovalStatus::Rejected.approve().unwrap_err();
    /// assert_eq!(refused.from, ApprovalStatus::Rejected);
    /// ```
    pub fn approve(self) -> Result<Self, ApprovalTransitionError> {
        match self {
            Self::Pending | Self::Approved | Self::Expired => Ok(Self::Approved),
            Self::Rejected => Err(ApprovalTransitionError { from: self, action: "approved" }),
        }
    }

    /// Rejecting is allowed from every state but rejected.
    pub fn reject(self) -> Result<Self, ApprovalTransitionError> {
        match self {
            Self::Rejected => Err(ApprovalTransitionError { from: self, action: "rejected" }),
            _ => Ok(Self::Rejected),
        }
    }

    /// Only an approved bot expires.
    pub fn expire(self) -> Result<Self, ApprovalTransitionError> {
        match self {
            Self::Approved => Ok(Self::Expired),
            _ => Err(ApprovalTransitionError { from: self, action: "expired" }),
        }
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalStatus {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownVariant { kind: "approval status", value: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn displays_as_its_wire_name() {
        assert_eq!(super::ApprovalStatus::Approved.to_string(), "approved");
        assert_eq!(super::ApprovalStatus::Pending.to_string(), "pending");
    }

    use super::ApprovalStatus::*;
    use super::*;

    #[test]
    fn transitions() {
        assert_eq!(Pending.approve(), Ok(Approved));
        assert_eq!(Expired.approve(), Ok(Approved));
        assert_eq!(Approved.approve(), Ok(Approved));
        assert!(Rejected.approve().is_err());
        assert_eq!(Pending.reject(), Ok(Rejected));
        assert_eq!(Approved.reject(), Ok(Rejected));
        assert!(Rejected.reject().is_err());
        assert_eq!(Approved.expire(), Ok(Expired));
        assert!(Pending.expire().is_err());
        assert!(!Rejected.occupies_slot());
        assert!(Expired.occupies_slot());
    }

    #[test]
    fn text_round_trip() {
        for status in ApprovalStatus::ALL {
            assert_eq!(status.as_str().parse::<ApprovalStatus>(), Ok(status));
        }
        assert!("approve".parse::<ApprovalStatus>().is_err());
    }
}
