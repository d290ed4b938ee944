//! What a WhatsApp connection's events mean to Trekker: the bot's status
//! (for the supervisor) and what an operator's webhook receives.
//!
//! Pure functions, tested offline: the driver only wires them to a live
//! connection.

use serde_json::{Value, json};
use trekker_domain::{BotId, PhoneNumber};
use trekker_runtime::BotEvent;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::proto_helpers::MessageExt;

/// The status change an event means, if any.
///
/// - connected: online;
/// - disconnected: loading (whatsapp-rust reconnects by itself);
/// - logged out (also a connect failure that is a logout): `error` with the
///   reason, never restarted;
/// - stream replaced (another client took the session): stopped and
///   reported, not restarted here (it would take the stream back);
/// - temporary ban: `failed` with its reason and length.
pub fn status_of(event: &Event) -> Option<BotEvent> {
    match event {
        Event::Connected(_) => Some(BotEvent::Connected),
        Event::Disconnected(disconnected) => Some(BotEvent::Disconnected { reason: disconnected.reason.to_string() }),
        Event::LoggedOut(logged_out) => Some(BotEvent::LoggedOut { reason: Some(format!("{:?}", logged_out.reason)) }),
        Event::StreamReplaced(_) => Some(BotEvent::Replaced),
        Event::TemporaryBan(ban) => {
            Some(BotEvent::Banned { reason: format!("{}; for {} s", ban.code, ban.expire.num_seconds()) })
        }
        Event::ConnectFailure(failure) if failure.reason.is_logged_out() => {
            Some(BotEvent::LoggedOut { reason: Some(format!("{:?}", failure.reason)) })
        }
        Event::ConnectFailure(failure) => {
            let said = failure.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            Some(BotEvent::Disconnected { reason: format!("connect failure {:?}{said}", failure.reason) })
        }
        _ => None,
    }
}

/// The webhook payloads of an event: one per incoming message, one per
/// status change; nothing for the rest (receipts, presence, history...).
pub fn webhook_payloads(bot: &BotId, phone: &PhoneNumber, event: &Event) -> Vec<Value> {
    let envelope =
        |kind: &str, data: Value| json!({"type": kind, "botId": bot.as_str(), "phone": phone.as_str(), "data": data});
    match event {
        Event::Messages(batch) => batch
            .messages
            .iter()
            .filter(|inbound| !inbound.info.source.is_from_me)
            .map(|inbound| {
                let info = &inbound.info;
                envelope(
                    "message",
                    json!({
                        "id": info.id.to_string(),
                        "chat": info.source.chat.to_string(),
                        "sender": info.source.sender.to_string(),
                        "isGroup": info.source.is_group,
                        "pushName": info.push_name,
                        "timestamp": info.timestamp.timestamp(),
                        "text": inbound.message.text_content().or_else(|| inbound.message.get_caption()),
                    }),
                )
            })
            .collect(),
        _ => match status_of(event) {
            Some(status) => vec![envelope("status", status_payload(&status))],
            None => Vec::new(),
        },
    }
}

fn status_payload(event: &BotEvent) -> Value {
    match event {
        BotEvent::Connected => json!({"status": "online"}),
        BotEvent::Disconnected { reason } => json!({"status": "disconnected", "reason": reason}),
        BotEvent::LoggedOut { reason } => json!({"status": "logged_out", "reason": reason}),
        BotEvent::Replaced => json!({"status": "replaced"}),
        BotEvent::Banned { reason } => json!({"status": "banned", "reason": reason}),
        BotEvent::Held { reason } => json!({"status": "held", "reason": reason}),
        BotEvent::Exited { code, error, .. } => json!({"status": "exited", "code": code, "reason": error}),
    }
}
