//! Time: the one clock every layer reads "now" from (epoch milliseconds),
//! and calendar helpers for user-facing texts (no time zone database
//! needed: all dates shown are UTC).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in epoch milliseconds. Everything that
/// needs "now" gets one, so tests drive time instead of sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `now_ms` (epoch milliseconds).
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by `ms` (saturating).
    pub fn advance(&self, ms: i64) {
        let _ = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| Some(now.saturating_add(ms)));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The UTC calendar date of `epoch_ms` as `YYYY-MM-DD`.
pub fn iso_date(epoch_ms: i64) -> String {
    let (year, month, day) = civil_from_days(epoch_ms.div_euclid(86_400_000));
    format!("{year:04}-{month:02}-{day:02}")
}

/// `epoch_ms` as an RFC 3339 UTC timestamp, e.g. `2026-11-26T08:30:00.000Z`.
pub fn iso_datetime(epoch_ms: i64) -> String {
    let ms_of_day = epoch_ms.rem_euclid(86_400_000);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{}T{h:02}:{m:02}:{s:02}.{ms:03}Z", iso_date(epoch_ms))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(250);
        assert_eq!(clock.now_ms(), 1_250);
        clock.advance(i64::MAX);
        assert_eq!(clock.now_ms(), i64::MAX);
        clock.set(5);
        assert_eq!(clock.now_ms(), 5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }

    #[test]
    fn known_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(951_782_400_000), "2000-02-29");
        assert_eq!(iso_date(1_795_651_200_000), "2026-11-26");
        assert_eq!(iso_date(1_795_651_200_000 - 1), "2026-11-25");
        assert_eq!(iso_date(-1), "1969-12-31");
        // Century and leap-year edges of the civil calendar.
        for (ms, date) in [
            (4_102_444_800_000, "2100-01-01"),
            (4_107_542_400_000, "2100-03-01"),
            (-2_203_891_200_000, "1900-03-01"),
            (951_868_800_000, "2000-03-01"),
            (-11_670_998_400_000, "1600-02-29"),
            (13_574_563_200_000, "2400-02-29"),
            (5_097_600_000, "1970-03-01"),
        ] {
            assert_eq!(iso_date(ms), date);
        }
        assert_eq!(iso_datetime(1_795_681_800_123), "2026-11-26T08:30:00.123Z");
        assert_eq!(iso_datetime(-1), "1969-12-31T23:59:59.999Z");
    }
}
