//! The ban-risk governor on an in-process bot's sends
//! ([`trekker_domain::governor`] holds the rules): every send through the
//! admin endpoint or the notifier asks it first, who counts as a new
//! contact is remembered here, and WhatsApp's limit codes on a nack of a
//! sent message put the bot on hold. (A 429 stream error is whatsapp-rust's
//! own to handle: it stops sending and reconnects with a longer backoff,
//! and dispatches no event; the fake-server suite shows it.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use trekker_app::messaging::MessengerError;
use trekker_domain::PhoneNumber;
use trekker_domain::governor::{Governor, SendPolicy, Throttle};
use trekker_domain::time::Clock;
use whatsapp_rust::types::events::Event;

/// Contacts remembered per bot, at most; past it everyone not remembered
/// counts as new (the safe side).
const MAX_KNOWN_CONTACTS: usize = 50_000;

/// One bot's governor and the contacts it knows.
pub(crate) struct SendGuard {
    governor: Mutex<Governor>,
    /// Users (the part of a JID before `@`) the bot wrote to or heard from.
    known: Mutex<HashSet<String>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SendGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendGuard").finish_non_exhaustive()
    }
}

impl SendGuard {
    /// A bot's guard; `hold` (until, reason) is the one its last run was
    /// left under, taken up again.
    pub(crate) fn new(policy: SendPolicy, paired_at: i64, clock: Arc<dyn Clock>, hold: Option<(i64, String)>) -> Self {
        let mut governor = Governor::new(policy, paired_at, clock.now_ms());
        if let Some((until, reason)) = hold {
            governor.resume_hold(until, &reason);
        }
        Self { governor: Mutex::new(governor), known: Mutex::new(HashSet::new()), clock }
    }

    /// Whether a message to `to` (`None`: the bot's own chat, never new)
    /// may go now; what it uses is taken.
    pub(crate) fn admit(&self, to: Option<&PhoneNumber>) -> Result<(), MessengerError> {
        let new_contact = to.is_some_and(|phone| !self.knows(phone.as_str()));
        let now = self.clock.now_ms();
        let admitted = self.governor.lock().unwrap_or_else(PoisonError::into_inner).admit(now, new_contact);
        admitted.map_err(|throttle| throttled(&throttle, now))
    }

    /// `user` wrote to the bot or was written to: no longer new.
    pub(crate) fn know(&self, user: &str) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() < MAX_KNOWN_CONTACTS {
            known.insert(user.to_owned());
        }
    }

    fn knows(&self, user: &str) -> bool {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).contains(user)
    }

    /// WhatsApp answered `code`: the new hold when the code is a limit that
    /// starts or lengthens one (every message nacked under one hold says it
    /// only once).
    pub(crate) fn limited(&self, code: &str) -> Option<NewHold> {
        let now = self.clock.now_ms();
        let mut governor = self.governor.lock().unwrap_or_else(PoisonError::into_inner);
        let before = governor.held(now);
        let held = governor.hold(code, now)?;
        if before.as_ref() == Some(&held) {
            return None;
        }
        let Throttle::Held { until, reason } = &held else { return None };
        let minutes = ceil_div(held.retry_after_ms(now), 60_000);
        Some(NewHold { until: *until, reason: reason.clone(), said: format!("{held}; no sends for {minutes} min") })
    }
}

/// A hold that began or grew: kept with the bot's state, said in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewHold {
    /// When sends may go again (epoch ms).
    pub until: i64,
    /// WhatsApp's code and what it means.
    pub reason: String,
    /// For the bot's status: the reason and how long.
    pub said: String,
}

/// What an event of the bot's client means for its governor: senders of
/// incoming messages become known; a limit code on a nacked message holds
/// the bot (the new hold, to keep and to say).
pub(crate) fn governed_event(guard: &SendGuard, event: &Event) -> Option<NewHold> {
    match event {
        Event::Messages(batch) => {
            for inbound in batch.messages.iter().filter(|inbound| !inbound.info.source.is_from_me) {
                let source = &inbound.info.source;
                guard.know(&source.sender.user);
                if let Some(phone) = &source.sender_alt {
                    guard.know(&phone.user);
                }
            }
            None
        }
        // A nacked message (its send already answered success).
        Event::ServerAck(ack) if ack.class.as_deref().is_none_or(|class| class == "message") => {
            guard.limited(ack.error.as_deref()?)
        }
        _ => None,
    }
}

/// `ms / unit`, rounded up (`ms` is never negative here).
fn ceil_div(ms: i64, unit: i64) -> i64 {
    ms / unit + i64::from(ms % unit > 0)
}

fn throttled(throttle: &Throttle, now: i64) -> MessengerError {
    let retry_after_secs = u64::try_from(ceil_div(throttle.retry_after_ms(now), 1000)).unwrap_or(u64::MAX).max(1);
    MessengerError::Throttled { reason: throttle.to_string(), retry_after_secs }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use trekker_domain::time::ManualClock;

    fn guard(policy: SendPolicy) -> (SendGuard, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        (SendGuard::new(policy, 0, clock.clone(), None), clock)
    }

    fn phone(n: u32) -> PhoneNumber {
        PhoneNumber::parse(&format!("2547000{n:05}")).unwrap()
    }

    #[test]
    fn known_contacts_and_the_own_chat_spend_no_new_contact() {
        let policy = SendPolicy { sends_per_min: 0, new_contacts_per_day: 1, ..SendPolicy::default() };
        let (guard, _) = guard(policy);
        assert!(guard.admit(Some(&phone(1))).is_ok(), "the day's one new contact");
        let Err(MessengerError::Throttled { reason, retry_after_secs }) = guard.admit(Some(&phone(2))) else {
            panic!("a second new contact waits")
        };
        assert!(reason.contains("new contacts for today"), "{reason}");
        assert_eq!(retry_after_secs, 86_400);
        guard.know(phone(2).as_str());
        assert!(guard.admit(Some(&phone(2))).is_ok(), "someone who wrote to the bot is not new");
        assert!(guard.admit(None).is_ok(), "the bot's own chat is not new");
    }

    #[test]
    fn a_limit_code_holds_every_send_and_says_until_when() {
        let (guard, clock) = guard(SendPolicy::default());
        assert_eq!(guard.limited("500"), None);
        let hold = guard.limited("475").unwrap();
        assert!(hold.said.contains("475") && hold.said.ends_with("no sends for 1440 min"), "{hold:?}");
        assert_eq!(hold.until, clock.now_ms() + 86_400_000);
        let Err(MessengerError::Throttled { retry_after_secs, .. }) = guard.admit(None) else { panic!("held") };
        assert_eq!(retry_after_secs, 86_400);
        // The next run of the bot takes the saved hold up again.
        clock.advance(3_600_000);
        let next_run = SendGuard::new(SendPolicy::default(), 0, clock.clone(), Some((hold.until, hold.reason)));
        let Err(MessengerError::Throttled { retry_after_secs, reason }) = next_run.admit(None) else {
            panic!("a restart lifted the hold")
        };
        assert_eq!((retry_after_secs, reason.contains("475")), (82_800, true));
        clock.advance(82_800_000);
        assert!(guard.admit(None).is_ok() && next_run.admit(None).is_ok(), "the hold ends");
    }

    #[test]
    fn the_clients_events_teach_contacts_and_hold_on_limit_codes() {
        use whatsapp_rust::types::events::{BatchOrigin, MessageBatch, ServerAck};
        use whatsapp_rust::wacore::types::events::InboundMessage;
        use whatsapp_rust::wacore::types::message::{MessageInfo, MessageSource};

        let policy = SendPolicy { sends_per_min: 0, new_contacts_per_day: 1, ..SendPolicy::default() };
        let (guard, clock) = guard(policy);
        let inbound = |user: &str, from_me: bool| {
            let source = MessageSource {
                chat: whatsapp_rust::Jid::pn(user),
                sender: whatsapp_rust::Jid::pn(user),
                is_from_me: from_me,
                ..Default::default()
            };
            let info = MessageInfo { source, id: "3EB0".into(), ..Default::default() };
            let message = whatsapp_rust::waproto::whatsapp::Message::default();
            InboundMessage::builder().message(Arc::new(message)).info(Arc::new(info)).build()
        };
        let batch = MessageBatch::builder()
            .messages(Arc::from(vec![inbound(phone(7).as_str(), false), inbound(phone(8).as_str(), true)]))
            .origin(BatchOrigin::Live)
            .build();
        assert_eq!(governed_event(&guard, &Event::Messages(batch)), None);
        assert!(guard.knows(phone(7).as_str()), "someone who wrote to the bot");
        assert!(!guard.knows(phone(8).as_str()), "the bot's own echo teaches nothing");

        let ack = |class: &str, error: Option<&str>| {
            Event::ServerAck(
                ServerAck::builder()
                    .id("3EB0".into())
                    .class(class.into())
                    .maybe_error(error.map(str::to_owned))
                    .build(),
            )
        };
        assert_eq!(governed_event(&guard, &ack("message", None)), None, "a plain ack");
        assert_eq!(governed_event(&guard, &ack("receipt", Some("463"))), None, "not a message's nack");
        let held = governed_event(&guard, &ack("message", Some("463"))).expect("a 463 nack holds the bot");
        assert!(held.said.contains("463"), "{held:?}");
        clock.advance(1);
        assert_eq!(governed_event(&guard, &ack("message", Some("429"))), None, "a shorter hold changes nothing");
        assert!(guard.admit(None).is_err());
        clock.advance(86_400_000);
        assert!(guard.admit(None).is_ok());
        assert!(governed_event(&guard, &ack("message", Some("429"))).is_some_and(|hold| hold.said.contains("429")));
        assert!(guard.admit(None).is_err(), "a 429 nack holds the bot too");
    }

    #[test]
    fn the_known_list_is_bounded() {
        let (guard, _) = guard(SendPolicy::default());
        for n in 0..MAX_KNOWN_CONTACTS + 10 {
            guard.know(&n.to_string());
        }
        assert_eq!(guard.known.lock().unwrap().len(), MAX_KNOWN_CONTACTS);
        assert!(!guard.knows(&(MAX_KNOWN_CONTACTS + 5).to_string()), "past the bound, everyone else is new");
    }
}
