//! Capacity levels and their crossings: when a server, or the whole
//! cluster, fills past `CAPACITY_WARN_PERCENT` and again at 100 %, admins
//! are warned once per crossing.
//!
//! A level is left only when the share falls [`HYSTERESIS_POINTS`] below
//! the line that raised it, so a server hovering at the line (one bot
//! registered, one rejected, again and again) does not warn at every step.

use std::fmt;

/// Percentage points below a line that a share must fall to leave its level.
pub const HYSTERESIS_POINTS: i64 = 5;

/// How full a server (or the cluster) is, as far as warnings go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CapacityLevel {
    /// Below the warning line.
    Normal,
    /// At or past the warning line.
    Warning,
    /// At or past 100 %.
    Full,
}

impl CapacityLevel {
    /// The level as shown (`normal`, `warning`, `full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Warning => "warning",
            Self::Full => "full",
        }
    }

    /// The stored form (a small integer, ordered like the levels).
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Normal => 0,
            Self::Warning => 1,
            Self::Full => 2,
        }
    }

    /// The level stored as `value`, if it is one.
    pub fn from_i64(value: i64) -> Option<Self> {
        match value {
            0 => Some(Self::Normal),
            1 => Some(Self::Warning),
            2 => Some(Self::Full),
            _ => None,
        }
    }

    /// The level of `used` of `capacity` slots for a scope now at `self`,
    /// with the warning line at `warn_percent`. No slots: nothing to warn
    /// about.
    ///
    /// A level moves up at its line and back down only 5 points below it,
    /// so a server hovering at the line does not warn at every bot:
    ///
    /// ```
    /// use trekker_domain::capacity::CapacityLevel;
    ///
    /// let level = CapacityLevel::Normal.next(80, 100, 80);
    /// assert_eq!(level, CapacityLevel::Warning);
    /// assert_eq!(level.next(77, 100, 80), CapacityLevel::Warning, "within the hysteresis");
    /// assert_eq!(level.next(74, 100, 80), CapacityLevel::Normal);
    /// assert_eq!(level.next(100, 100, 80), CapacityLevel::Full);
    /// ```
    pub fn next(self, used: i64, capacity: i64, warn_percent: u8) -> Self {
        if capacity <= 0 {
            return Self::Normal;
        }
        // In hundredths of a slot, in i128: no overflow whatever the counts.
        let share = i128::from(used.max(0)) * 100;
        let at = |percent: i64| share >= i128::from(percent) * i128::from(capacity);
        let warn = i64::from(warn_percent.min(100));
        if at(100) || (self == Self::Full && at(100 - HYSTERESIS_POINTS)) {
            Self::Full
        } else if at(warn) || (self >= Self::Warning && at(warn - HYSTERESIS_POINTS)) {
            Self::Warning
        } else {
            Self::Normal
        }
    }
}

impl fmt::Display for CapacityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::CapacityLevel::{self, Full, Normal, Warning};

    /// The levels a scope goes through as its count follows `counts`.
    fn walk(counts: &[i64], capacity: i64) -> Vec<CapacityLevel> {
        let mut level = Normal;
        counts
            .iter()
            .map(|&used| {
                level = level.next(used, capacity, 80);
                level
            })
            .collect()
    }

    #[test]
    fn crossings_up_are_immediate() {
        assert_eq!(walk(&[79, 80, 99, 100, 120], 100), vec![Normal, Warning, Warning, Full, Full]);
        assert_eq!(Normal.next(10, 10, 80), Full, "straight to full");
        assert_eq!(Normal.next(8, 10, 80), Warning);
    }

    #[test]
    fn a_scope_hovering_at_a_line_does_not_flap() {
        // 80 % then 79 % back and forth: one warning, no recovery until 74 %.
        assert_eq!(
            walk(&[80, 79, 80, 79, 76, 75, 74, 80], 100),
            vec![Warning, Warning, Warning, Warning, Warning, Warning, Normal, Warning]
        );
        assert_eq!(walk(&[100, 99, 100, 96, 95, 94], 100), vec![Full, Full, Full, Full, Full, Warning]);
    }

    #[test]
    fn odd_inputs_stay_sane() {
        assert_eq!(Normal.next(5, 0, 80), Normal, "no slots: nothing to warn about");
        assert_eq!(Full.next(-3, 10, 80), Normal, "a negative count is none");
        assert_eq!(Normal.next(i64::MAX, i64::MAX, 80), Full, "no overflow");
        assert_eq!(Normal.next(1, 10, 0), Warning, "a 0 % line warns at once");
        assert_eq!(Normal.next(99, 100, 255), Normal, "the line is at most 100 %");
        for level in [Normal, Warning, Full] {
            assert_eq!(CapacityLevel::from_i64(level.as_i64()), Some(level));
        }
        assert_eq!(CapacityLevel::from_i64(7), None);
    }
}
