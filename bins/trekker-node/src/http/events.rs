//! Server-Sent Events: `GET /api/events` (public: `capacity`) and
//! `GET /api/admin/events` (admins: `server`, `bot`, `botDeleted`,
//! `warning`, `review`), fed by the node's live event feed
//! (`trekker_app::events`).
//!
//! Every stream opens with a `snapshot` of the servers, so a client that
//! reconnects after a drop catches up by replacing what it shows. A stream
//! that falls more than the hub's backlog behind gets `resync` (reload
//! everything) instead of a gap. The admin stream is read with the
//! Authorization header (fetch, not EventSource), never a token in the
//! URL. Streams per node are capped, guests' and admins' apart: past a
//! cap, 429 with Retry-After.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use serde_json::json;
use tokio::sync::{Semaphore, broadcast};
use trekker_app::events::{EventHub, LiveEvent, Numbered};

use super::extract::Viewer;
use super::views::{BotDetail, ServerAdmin, ServerPublic};
use super::{ApiError, ErrorCode};
use crate::AppState;
use crate::per_address::{GUEST_STREAMS_PER_ADDRESS, PerAddress, Slot};

/// Open guest event streams per node, at most.
pub const MAX_GUEST_STREAMS: usize = 1024;
/// Open admin event streams per node, at most: apart from the guests', so a
/// flood of anonymous streams cannot take the operators' live view.
pub const MAX_ADMIN_STREAMS: usize = 64;
/// How long a client waits before reconnecting (the SSE `retry` field).
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// The streams this node serves at once, guests' and admins' apart.
#[derive(Debug, Clone)]
pub struct StreamSlots {
    pub guests: Arc<Semaphore>,
    pub admins: Arc<Semaphore>,
    /// Guest streams per client address: one address cannot take them all.
    pub guests_per_address: PerAddress,
}

impl StreamSlots {
    /// `per_address`: whether one client address is capped too (off behind
    /// a reverse proxy, where every client has the proxy's address).
    pub fn new(per_address: bool) -> Self {
        Self {
            guests: Arc::new(Semaphore::new(MAX_GUEST_STREAMS)),
            admins: Arc::new(Semaphore::new(MAX_ADMIN_STREAMS)),
            guests_per_address: PerAddress::new(if per_address { GUEST_STREAMS_PER_ADDRESS } else { 0 }),
        }
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/events", get(public_events)).route("/api/admin/events", get(admin_events))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    Guests,
    Admins,
}

/// Live capacity for guests.
#[utoipa::path(get, path = "/api/events", tag = "guest",
    responses((status = 200, description = "text/event-stream: `snapshot`, then `capacity` events"),
        (status = 429, body = super::ErrorBody)))]
pub(crate) async fn public_events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.event_streams.guests_per_address.try_take(peer.ip()).ok_or_else(|| {
        ApiError::new(ErrorCode::RateLimited, "Too many live streams from your address; close some first.")
            .with_retry_after(5)
    })?;
    open(state, Audience::Guests, Some(slot)).await
}

/// Live cluster state for admins.
#[utoipa::path(get, path = "/api/admin/events", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "text/event-stream: `snapshot`, then `server`, `bot`, `botDeleted`, \
        `warning`, `review` events"), (status = 401, body = super::ErrorBody),
        (status = 429, body = super::ErrorBody)))]
pub(crate) async fn admin_events(
    _: Viewer,
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    open(state, Audience::Admins, None).await
}

async fn open(
    state: AppState,
    audience: Audience,
    address_slot: Option<Slot>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slots = match audience {
        Audience::Guests => &state.event_streams.guests,
        Audience::Admins => &state.event_streams.admins,
    };
    let permit = slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(ErrorCode::RateLimited, "Too many live streams on this node; try again shortly.")
            .with_retry_after(5)
    })?;
    // Both slots are held for as long as the stream lives.
    let permit = (permit, address_slot);
    let (events, servers) = subscribe_then_read(&state.trekker.events, state.trekker.servers()).await?;
    let snapshot = match audience {
        Audience::Guests => json!({"servers": servers.iter().map(ServerPublic::from).collect::<Vec<_>>()}),
        Audience::Admins => json!({"servers": servers.iter().map(ServerAdmin::from).collect::<Vec<_>>()}),
    };
    let first = Event::default().event("snapshot").retry(RECONNECT_AFTER).data(snapshot.to_string());
    let closed = state.trekker.events.closed();
    let rest = futures::stream::unfold((events, permit, closed), move |(mut events, permit, closed)| async move {
        // The node shutting down ends the stream (and frees the drain).
        let event = tokio::select! {
            () = closed.cancelled() => None,
            event = next_event(&mut events, audience) => event,
        }?;
        Some((Ok(event), (events, permit, closed)))
    });
    let stream = futures::StreamExt::chain(futures::stream::once(async move { Ok(first) }), rest);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Subscribes (and waits for the feed to follow), then reads the snapshot:
/// a change committed while the snapshot is read arrives after it, shown
/// twice at worst, never lost.
async fn subscribe_then_read<T, E>(
    hub: &EventHub,
    read_snapshot: impl Future<Output = Result<T, E>>,
) -> Result<(broadcast::Receiver<Numbered>, T), E> {
    let events = hub.subscribe().await;
    let snapshot = read_snapshot.await?;
    Ok((events, snapshot))
}

/// The next event this audience sees; `None` when the node shuts down.
async fn next_event(events: &mut broadcast::Receiver<Numbered>, audience: Audience) -> Option<Event> {
    loop {
        match events.recv().await {
            Ok(numbered) => {
                if let Some(event) = render(&numbered, audience) {
                    return Some(event);
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                return Some(Event::default().event("resync").data(json!({"missed": missed}).to_string()));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn render(numbered: &Numbered, audience: Audience) -> Option<Event> {
    if audience == Audience::Guests && !numbered.event.is_public() {
        return None;
    }
    let (kind, data) = match &numbered.event {
        LiveEvent::Server(view) if audience == Audience::Guests => ("capacity", json!(ServerPublic::from(view))),
        LiveEvent::Server(view) => ("server", json!(ServerAdmin::from(view))),
        LiveEvent::Bot(bot) => ("bot", json!(BotDetail::from(&**bot))),
        LiveEvent::BotGone(id) => ("botDeleted", json!({"id": id.as_str()})),
        LiveEvent::Warning(activity) | LiveEvent::Review(activity) => {
            let kind = if matches!(numbered.event, LiveEvent::Warning(_)) { "warning" } else { "review" };
            (kind, json!({"action": activity.action, "details": activity.details, "id": activity.id}))
        }
    };
    Some(Event::default().event(kind).id(numbered.id.to_string()).data(data.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use trekker_domain::BotId;

    use super::*;

    fn gone(id: u64) -> Numbered {
        Numbered { id, event: LiveEvent::BotGone(BotId::parse(&format!("bot-{id}")).unwrap()) }
    }

    /// A stream that fell behind the backlog (a node booting thousands of
    /// bots emits more than it holds) is told to resync, with how many it
    /// missed, then goes on with what is still held; never silently skips.
    #[tokio::test]
    async fn a_stream_that_falls_behind_is_told_to_resync() {
        let (sender, mut receiver) = broadcast::channel(4);
        for id in 0..10 {
            sender.send(gone(id)).unwrap();
        }
        let first = format!("{:?}", next_event(&mut receiver, Audience::Admins).await.unwrap());
        assert!(first.contains("event: resync") && first.contains(r#"{\"missed\":6}"#), "{first}");
        let next = format!("{:?}", next_event(&mut receiver, Audience::Admins).await.unwrap());
        assert!(next.contains("event: botDeleted") && next.contains("bot-6"), "{next}");
    }

    /// A change published while the snapshot is being read (a console
    /// opening as a bot is approved) still reaches the new stream.
    #[tokio::test(start_paused = true)]
    async fn a_change_made_while_the_snapshot_is_read_is_not_lost() {
        let hub = EventHub::default();
        let read_snapshot = async {
            hub.publish(LiveEvent::BotGone(BotId::parse("bot-made-meanwhile").unwrap()));
            Ok::<_, ()>("snapshot")
        };
        let (mut events, snapshot) = subscribe_then_read(&hub, read_snapshot).await.unwrap();
        assert_eq!(snapshot, "snapshot");
        let next = tokio::time::timeout(Duration::from_secs(1), next_event(&mut events, Audience::Admins))
            .await
            .expect("the change made meanwhile arrives");
        let next = format!("{:?}", next.unwrap());
        assert!(next.contains("event: botDeleted") && next.contains("bot-made-meanwhile"), "{next}");
    }

    /// Guests are never sent what only admins see.
    #[tokio::test]
    async fn guests_skip_admin_events() {
        let (sender, mut receiver) = broadcast::channel(4);
        sender.send(gone(1)).unwrap();
        drop(sender);
        assert!(next_event(&mut receiver, Audience::Guests).await.is_none(), "the admin event was skipped");
    }
}
