//! The ban-risk governor of one bot: how fast it may send, how many people
//! it has never written to it may reach in a day, how both grow while its
//! number is new, and the hold that WhatsApp's own limits put on it.
//!
//! WhatsApp bans numbers that send like machines. Operators report 429s
//! from about 3 messages a second, and WhatsApp answers 463 (reach-out
//! timelock: no messages to new contacts for a while) and 475 (message
//! capping: the new-contact quota is spent). WhatsApp's published limit for
//! a business number starts at 250 people reached first in 24 hours; new
//! numbers are told to grow slowly. So each bot has two token buckets, for
//! sends and for new contacts, both scaled by a warm-up factor that grows
//! from 10 % to 100 % over the first `warmup_days` after the number was
//! registered; and a nack of a sent message with one of those codes holds
//! every send until the hold ends. Time is given, never read: the same
//! input always gives the same answer.

use std::fmt;

/// Unix milliseconds (what [`crate::time::Clock::now_ms`] gives).
type Millis = i64;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// The least share of its limits a brand-new number gets.
const WARMUP_FLOOR: f64 = 0.1;

/// The limits of every bot of a node (`BOT_SENDS_PER_MIN`,
/// `BOT_SEND_BURST`, `BOT_NEW_CONTACTS_PER_DAY`, `BOT_WARMUP_DAYS`); `0`
/// turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPolicy {
    /// Messages a minute, on average, once warmed up.
    pub sends_per_min: u32,
    /// Messages that may leave at once after a quiet while.
    pub send_burst: u32,
    /// People the bot never wrote to and who never wrote to it, per 24 h.
    pub new_contacts_per_day: u32,
    /// Days until a newly registered number gets its whole limits.
    pub warmup_days: u32,
}

impl Default for SendPolicy {
    /// One message every 3 s (a fifth of where 429s begin), 250 new
    /// contacts a day (WhatsApp's first business tier), two weeks of warm-up.
    fn default() -> Self {
        Self { sends_per_min: 20, send_burst: 5, new_contacts_per_day: 250, warmup_days: 14 }
    }
}

impl SendPolicy {
    /// The share of its limits a number registered at `registered_at` has
    /// at `now`: 10 % on its first day, growing evenly to 100 %.
    pub fn warmup(&self, registered_at: Millis, now: Millis) -> f64 {
        if self.warmup_days == 0 {
            return 1.0;
        }
        let days = now.saturating_sub(registered_at).max(0) as f64 / DAY_MS as f64;
        ((days + 1.0) / f64::from(self.warmup_days)).clamp(WARMUP_FLOOR, 1.0)
    }
}

/// Why a send may not go now.
#[derive(Debug, Clone, PartialEq)]
pub enum Throttle {
    /// Faster than the bot's send rate.
    TooFast {
        /// When a send is allowed again.
        retry_after_ms: i64,
    },
    /// The day's new contacts are spent.
    NewContactQuota {
        /// When one is back.
        retry_after_ms: i64,
    },
    /// WhatsApp's own limit holds the bot.
    Held {
        /// When the hold ends (unix ms).
        until: Millis,
        /// Which code of WhatsApp's put it on hold.
        reason: String,
    },
}

impl Throttle {
    /// When a send may be tried again, from `now`.
    pub fn retry_after_ms(&self, now: Millis) -> i64 {
        match self {
            Self::TooFast { retry_after_ms } | Self::NewContactQuota { retry_after_ms } => *retry_after_ms,
            Self::Held { until, .. } => until.saturating_sub(now).max(0),
        }
    }
}

impl fmt::Display for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFast { .. } => f.write_str("the bot is sending faster than its send rate allows"),
            Self::NewContactQuota { .. } => f.write_str("the bot has reached its new contacts for today"),
            Self::Held { reason, .. } => write!(f, "sending is on hold: {reason}"),
        }
    }
}

/// What WhatsApp meant by a nack's error code, and how long the
/// bot then holds: `None` for codes that say nothing of rates.
pub fn hold_for(code: &str) -> Option<(i64, &'static str)> {
    match code {
        "429" => Some((15 * MINUTE_MS, "WhatsApp answered 429 (rate over limit)")),
        "463" => Some((DAY_MS, "WhatsApp answered 463 (reach-out timelock: no messages to new contacts for now)")),
        "475" => Some((DAY_MS, "WhatsApp answered 475 (message capping: the new-contact quota is spent)")),
        _ => None,
    }
}

/// A token bucket: `capacity` tokens, refilled evenly at `per_ms`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Millis,
}

impl Bucket {
    /// The tokens at `now` (never more than `capacity`).
    fn refill(&mut self, capacity: f64, per_ms: f64, now: Millis) {
        let elapsed = now.saturating_sub(self.at).max(0) as f64;
        self.tokens = (self.tokens + elapsed * per_ms).min(capacity);
        self.at = self.at.max(now);
    }

    /// Whether a whole token is there (float noise forgiven).
    fn has_token(&self) -> bool {
        self.tokens + 1e-9 >= 1.0
    }

    /// Takes a token, or says in how many ms one is back.
    fn take(&mut self, per_ms: f64) -> Result<(), i64> {
        if self.has_token() {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        let exact = (1.0 - self.tokens) / per_ms;
        // Float noise must not turn a 2,000 ms wait into 2,001.
        let wait = if (exact - exact.round()).abs() < 1e-6 { exact.round() } else { exact.ceil() };
        Err(if wait.is_finite() { wait as i64 } else { i64::MAX }.max(1))
    }
}

/// One bot's governor (see the module header).
#[derive(Debug, Clone)]
pub struct Governor {
    policy: SendPolicy,
    registered_at: Millis,
    sends: Bucket,
    new_contacts: Bucket,
    hold: Option<(Millis, String)>,
}

impl Governor {
    /// Full buckets (at the warm-up share) for a number registered at
    /// `registered_at`.
    pub fn new(policy: SendPolicy, registered_at: Millis, now: Millis) -> Self {
        let mut governor = Self {
            policy,
            registered_at,
            sends: Bucket { tokens: 0.0, at: now },
            new_contacts: Bucket { tokens: 0.0, at: now },
            hold: None,
        };
        let (sends, _, contacts, _) = governor.limits(now);
        governor.sends.tokens = sends;
        governor.new_contacts.tokens = contacts;
        governor
    }

    /// (send capacity, sends per ms, new-contact capacity, new contacts per ms) at `now`.
    fn limits(&self, now: Millis) -> (f64, f64, f64, f64) {
        let share = self.policy.warmup(self.registered_at, now);
        let rate = f64::from(self.policy.sends_per_min) * share / MINUTE_MS as f64;
        let burst = (f64::from(self.policy.send_burst) * share).max(1.0);
        let contacts = (f64::from(self.policy.new_contacts_per_day) * share).max(1.0).floor();
        (burst, rate, contacts, contacts / DAY_MS as f64)
    }

    /// Whether a message may go now (to someone new: `new_contact`); takes
    /// what it uses only when it may.
    pub fn admit(&mut self, now: Millis, new_contact: bool) -> Result<(), Throttle> {
        if let Some((until, reason)) = &self.hold {
            if now < *until {
                return Err(Throttle::Held { until: *until, reason: reason.clone() });
            }
            self.hold = None;
        }
        let (burst, rate, contacts, contacts_rate) = self.limits(now);
        let limit_sends = self.policy.sends_per_min > 0;
        let limit_contacts = new_contact && self.policy.new_contacts_per_day > 0;
        self.sends.refill(burst, rate, now);
        self.new_contacts.refill(contacts, contacts_rate, now);
        if limit_sends && !self.sends.has_token() {
            return Err(Throttle::TooFast { retry_after_ms: self.sends.take(rate).err().unwrap_or(1) });
        }
        if limit_contacts && !self.new_contacts.has_token() {
            let retry_after_ms = self.new_contacts.take(contacts_rate).err().unwrap_or(1);
            return Err(Throttle::NewContactQuota { retry_after_ms });
        }
        if limit_sends {
            let _ = self.sends.take(rate);
        }
        if limit_contacts {
            let _ = self.new_contacts.take(contacts_rate);
        }
        Ok(())
    }

    /// Holds every send after WhatsApp answered `code` at `now`; a hold
    /// only ever grows. The hold that now applies, if `code` is one.
    pub fn hold(&mut self, code: &str, now: Millis) -> Option<Throttle> {
        let (length, reason) = hold_for(code)?;
        let until = now.saturating_add(length);
        match &mut self.hold {
            Some((held_until, held_reason)) if *held_until >= until => {
                return Some(Throttle::Held { until: *held_until, reason: held_reason.clone() });
            }
            slot => *slot = Some((until, reason.to_owned())),
        }
        Some(Throttle::Held { until, reason: reason.to_owned() })
    }

    /// Takes up a hold a previous run of the bot was under (kept with its
    /// state: a restart must not lift a day's timelock). Like [`Self::hold`]
    /// it only ever grows the hold.
    pub fn resume_hold(&mut self, until: Millis, reason: &str) {
        if self.hold.as_ref().is_none_or(|(held_until, _)| *held_until < until) {
            self.hold = Some((until, reason.to_owned()));
        }
    }

    /// The hold in force at `now`, if any.
    pub fn held(&self, now: Millis) -> Option<Throttle> {
        let (until, reason) = self.hold.as_ref().filter(|(until, _)| now < *until)?;
        Some(Throttle::Held { until: *until, reason: reason.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_800_000_000_000;

    fn policy() -> SendPolicy {
        SendPolicy { sends_per_min: 20, send_burst: 5, new_contacts_per_day: 250, warmup_days: 14 }
    }

    /// A number registered long ago: its whole limits.
    fn seasoned() -> Governor {
        Governor::new(policy(), T0 - 30 * DAY_MS, T0)
    }

    #[test]
    fn the_warmup_grows_from_a_tenth_to_everything() {
        let p = policy();
        assert_eq!(p.warmup(T0, T0), 0.1, "day one: the floor (1/14 is below it)");
        assert!((p.warmup(T0 - 6 * DAY_MS, T0) - 0.5).abs() < 1e-9, "day seven of fourteen");
        assert_eq!(p.warmup(T0 - 13 * DAY_MS, T0), 1.0);
        assert_eq!(p.warmup(T0 - 400 * DAY_MS, T0), 1.0);
        assert_eq!(p.warmup(T0 + DAY_MS, T0), 0.1, "a registration in the future is brand new");
        assert_eq!(SendPolicy { warmup_days: 0, ..p }.warmup(T0, T0), 1.0, "no warm-up");
    }

    #[test]
    fn a_burst_goes_then_sends_follow_the_rate() {
        let mut g = seasoned();
        for _ in 0..5 {
            assert_eq!(g.admit(T0, false), Ok(()));
        }
        // 20 a minute: a token every 3 s.
        assert_eq!(g.admit(T0, false), Err(Throttle::TooFast { retry_after_ms: 3_000 }));
        assert_eq!(g.admit(T0 + 1_000, false), Err(Throttle::TooFast { retry_after_ms: 2_000 }));
        assert_eq!(g.admit(T0 + 3_000, false), Ok(()));
        assert!(g.admit(T0 + 3_000, false).is_err());
        // A quiet hour refills the burst, never more.
        for _ in 0..5 {
            assert_eq!(g.admit(T0 + 3_600_000, false), Ok(()));
        }
        assert!(g.admit(T0 + 3_600_000, false).is_err());
    }

    #[test]
    fn new_contacts_have_a_daily_quota_and_known_ones_do_not() {
        let p = SendPolicy { sends_per_min: 0, new_contacts_per_day: 3, ..policy() };
        let mut g = Governor::new(p, T0 - 30 * DAY_MS, T0);
        for _ in 0..3 {
            assert_eq!(g.admit(T0, true), Ok(()));
        }
        let Err(Throttle::NewContactQuota { retry_after_ms }) = g.admit(T0, true) else { panic!("quota") };
        assert_eq!(retry_after_ms, DAY_MS / 3, "a third of a day brings one back");
        assert_eq!(g.admit(T0, false), Ok(()), "someone known may still be answered");
        assert_eq!(g.admit(T0 + DAY_MS / 3, true), Ok(()));
    }

    #[test]
    fn a_new_number_gets_a_share_of_its_limits() {
        let mut g = Governor::new(policy(), T0, T0);
        // 10 %: a burst of 1 (5 * 0.1 rounds up to the one message any bot
        // may send), 2 a minute, 25 new contacts.
        assert_eq!(g.admit(T0, true), Ok(()));
        assert_eq!(g.admit(T0, true), Err(Throttle::TooFast { retry_after_ms: 30_000 }));
        let mut contacts = 1;
        let mut now = T0 + 30_000;
        while g.admit(now, true).is_ok() {
            contacts += 1;
            now += 30_000;
        }
        assert_eq!(contacts, 25);
    }

    #[test]
    fn whatsapps_codes_hold_every_send_until_the_hold_ends() {
        let mut g = seasoned();
        assert_eq!(g.hold("479", T0), None, "a malformed stanza says nothing of rates");
        assert_eq!(g.held(T0), None);
        let Some(Throttle::Held { until, reason }) = g.hold("463", T0) else { panic!("held") };
        assert_eq!(until, T0 + DAY_MS);
        assert!(reason.contains("463"), "{reason}");
        let refused = g.admit(T0 + 1_000, false).unwrap_err();
        assert_eq!(refused.retry_after_ms(T0 + 1_000), DAY_MS - 1_000);
        assert!(refused.to_string().starts_with("sending is on hold: WhatsApp answered 463"), "{refused}");
        // A shorter hold never shortens a longer one.
        let Some(Throttle::Held { until: kept, .. }) = g.hold("429", T0 + 1_000) else { panic!() };
        assert_eq!(kept, T0 + DAY_MS);
        assert_eq!(g.admit(T0 + DAY_MS, false), Ok(()), "the hold ends on time");
        assert_eq!(g.held(T0 + DAY_MS), None);
        // A later, longer one replaces it.
        g.hold("429", T0 + DAY_MS);
        let Some(Throttle::Held { until, .. }) = g.hold("475", T0 + DAY_MS + 1) else { panic!() };
        assert_eq!(until, T0 + 2 * DAY_MS + 1);
    }

    #[test]
    fn limits_set_to_zero_are_off() {
        let off = SendPolicy { sends_per_min: 0, send_burst: 0, new_contacts_per_day: 0, warmup_days: 0 };
        let mut g = Governor::new(off, T0, T0);
        for i in 0..10_000 {
            assert_eq!(g.admit(T0 + i, i % 2 == 0), Ok(()));
        }
    }

    #[test]
    fn extreme_times_neither_panic_nor_wrap() {
        let mut g = Governor::new(policy(), Millis::MIN, Millis::MAX);
        assert_eq!(g.admit(Millis::MAX, true), Ok(()));
        let mut g = Governor::new(policy(), Millis::MAX, Millis::MIN);
        assert_eq!(g.admit(Millis::MIN, true), Ok(()));
        assert!(g.admit(Millis::MIN, true).is_err());
        let Some(Throttle::Held { until, .. }) = g.hold("429", Millis::MAX - 1) else { panic!() };
        assert_eq!(until, Millis::MAX);
        assert_eq!(g.held(Millis::MAX - 1).map(|t| t.retry_after_ms(Millis::MAX - 1)), Some(1));
    }

    #[test]
    fn a_429_holds_a_quarter_of_an_hour_and_463_or_475_a_day() {
        assert_eq!(hold_for("429").map(|(ms, _)| ms), Some(15 * 60_000));
        assert_eq!(hold_for("463").map(|(ms, _)| ms), Some(86_400_000));
        assert_eq!(hold_for("475").map(|(ms, _)| ms), Some(86_400_000));
        assert_eq!(hold_for("500"), None);
    }

    #[test]
    fn a_hold_taken_up_by_a_new_run_holds_until_its_end_and_only_grows() {
        let mut governor = Governor::new(SendPolicy::default(), 0, 100 * DAY_MS);
        let now = 100 * DAY_MS;
        governor.resume_hold(now + DAY_MS, "WhatsApp answered 463");
        assert!(matches!(governor.admit(now, false), Err(Throttle::Held { until, .. }) if until == now + DAY_MS));
        governor.resume_hold(now + MINUTE_MS, "shorter");
        assert!(governor.held(now + 2 * MINUTE_MS).is_some(), "a shorter hold never shortens it");
        assert!(governor.held(now + DAY_MS).is_none(), "it ends when it ends");
        assert!(governor.admit(now + DAY_MS, false).is_ok());
        // Under a quarter hour's 429, a day's saved hold still lengthens it.
        let mut governor = Governor::new(SendPolicy::default(), 0, now);
        governor.hold("429", now);
        governor.resume_hold(now + DAY_MS, "WhatsApp answered 475");
        let in_an_hour = governor.held(now + 60 * MINUTE_MS);
        assert!(matches!(&in_an_hour, Some(Throttle::Held { reason, .. }) if reason.contains("475")), "{in_an_hour:?}");
    }
}
