//! How long an idle background loop waits before it looks again: from
//! `min`, doubled after each pass that found nothing, up to `max`; back to
//! `min` after a pass that found work or a wake-up from this node. A quiet
//! fleet then costs the database a few statements per node per `max`
//! instead of one per `min` (issue 22); work another node queued is seen
//! within `max`.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl IdleBackoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The wait after a pass that found nothing; the next one is longer.
    pub(crate) fn idle(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// Work was found (or announced): look again soon.
    pub(crate) fn busy(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_work_resets_them() {
        let mut backoff = IdleBackoff::new(Duration::from_secs(1), Duration::from_secs(15));
        let waits: Vec<u64> = (0..7).map(|_| backoff.idle().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 15, 15, 15]);
        backoff.busy();
        assert_eq!(backoff.idle(), Duration::from_secs(1));
        // A cap below the start is the start.
        let mut flat = IdleBackoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!((flat.idle(), flat.idle()), (Duration::from_secs(2), Duration::from_secs(2)));
    }
}
