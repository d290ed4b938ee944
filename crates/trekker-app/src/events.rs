//! Live events for the guest page and the operator console (Server-Sent
//! Events): what a node learns of the cluster, as it learns it.
//!
//! One feed per node ([`run_event_feed`]) reads, once a second and only
//! while someone listens: the servers (counts, capacity, liveness), the
//! fleet-wide bot change feed, and new activities (capacity warnings,
//! credential reviews). It publishes what changed on an [`EventHub`]; each
//! stream subscribes to it. A stream that falls behind is told to resync
//! (it reloads what it shows), and a new or reconnected stream starts from a
//! snapshot, so nothing shown stays stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use trekker_domain::BotId;
use trekker_store::{Activity, BotRecord, ChangeCursor};

use crate::Trekker;
use crate::admin::ServerView;

/// Events a stream may fall behind by before it is told to resync.
const BACKLOG: usize = 1024;
/// Activities read per tick at most (the rest next tick).
const ACTIVITIES_PER_TICK: i64 = 200;

/// What changed.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A server's counts, capacity, status or liveness (public).
    Server(ServerView),
    /// A bot was registered or changed (admins).
    Bot(Box<BotRecord>),
    /// A bot was deleted or left a server (admins).
    BotGone(BotId),
    /// A capacity warning or recovery (admins).
    Warning(Activity),
    /// A credential review opened or decided (admins).
    Review(Activity),
}

impl LiveEvent {
    /// Whether guests may see it.
    pub fn is_public(&self) -> bool {
        matches!(self, Self::Server(_))
    }
}

/// An event with its number on this node (the SSE id).
#[derive(Debug, Clone)]
pub struct Numbered {
    pub id: u64,
    pub event: LiveEvent,
}

/// Where the feed publishes and streams subscribe.
#[derive(Debug)]
pub struct EventHub {
    sender: broadcast::Sender<Numbered>,
    next_id: AtomicU64,
    /// Wakes an idle feed when a stream arrives.
    arrived: tokio::sync::Notify,
    /// Whether the feed holds a baseline (it publishes every change after).
    following: tokio::sync::watch::Sender<bool>,
    /// Cancelled when the node shuts down: every stream ends (an open
    /// stream would otherwise hold the graceful drain forever).
    closed: CancellationToken,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::Sender::new(BACKLOG),
            next_id: AtomicU64::new(1),
            arrived: tokio::sync::Notify::new(),
            following: tokio::sync::watch::Sender::new(false),
            closed: CancellationToken::new(),
        }
    }
}

impl EventHub {
    /// Subscribes, and returns once the feed follows the cluster: a
    /// snapshot read after this misses no change (at worst one shows twice).
    pub async fn subscribe(&self) -> broadcast::Receiver<Numbered> {
        let events = self.sender.subscribe();
        self.arrived.notify_one();
        let mut following = self.following.subscribe();
        // Bounded: a feed that cannot read the database must not hold the
        // stream forever (it then shows the snapshot, and changes once the
        // feed recovers).
        let _ = tokio::time::timeout(Duration::from_secs(5), following.wait_for(|on| *on)).await;
        events
    }

    /// Cancelled when the node shuts down.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Streams listening now.
    pub fn listeners(&self) -> usize {
        self.sender.receiver_count()
    }

    pub fn publish(&self, event: LiveEvent) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // No listener is fine: nobody is watching.
        let _ = self.sender.send(Numbered { id, event });
    }
}

/// What the feed has seen so far.
struct Seen {
    servers: HashMap<String, ServerView>,
    cursor: ChangeCursor,
    last_activity: i64,
}

impl Trekker {
    async fn start_feed(&self) -> Result<Seen, crate::AppError> {
        let servers = self.servers().await?.into_iter().map(|view| (view.server.name.to_string(), view)).collect();
        Ok(Seen {
            servers,
            cursor: self.store.runtime.fleet_cursor().await?,
            last_activity: self.store.activities.last_activity_id().await?,
        })
    }

    /// Publishes what changed since `seen`, and moves it on.
    async fn feed_tick(&self, seen: &mut Seen, hub: &EventHub) -> Result<(), crate::AppError> {
        for view in self.servers().await? {
            let name = view.server.name.to_string();
            // Heartbeats alone are not news: counts, capacity, status and
            // liveness are.
            let shown = |v: &ServerView| {
                (v.server.current_bot_count, v.server.max_bot_count, v.server.status, v.online, v.server.evacuation)
            };
            if seen.servers.get(&name).map(shown) != Some(shown(&view)) {
                hub.publish(LiveEvent::Server(view.clone()));
                seen.servers.insert(name, view);
            }
        }
        let changes = self.store.runtime.fleet_changes(&seen.cursor).await?;
        // A bot that left one server for another (a move, a failover) is
        // still there: the console updates its row rather than dropping it.
        for gone in changes.departed.into_iter().filter(|id| !changes.changed.iter().any(|b| &b.id == id)) {
            hub.publish(LiveEvent::BotGone(gone));
        }
        for bot in changes.changed {
            hub.publish(LiveEvent::Bot(Box::new(bot)));
        }
        seen.cursor = changes.cursor;
        for activity in self.store.activities.activities_after(seen.last_activity, ACTIVITIES_PER_TICK).await? {
            seen.last_activity = seen.last_activity.max(activity.id);
            match activity.action.as_str() {
                "capacity_warning" | "capacity_recovered" => hub.publish(LiveEvent::Warning(activity)),
                action if action.starts_with("credential_review_") => hub.publish(LiveEvent::Review(activity)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Feeds `hub` every `every` while it has listeners, until `shutdown`.
pub async fn run_event_feed(trekker: Arc<Trekker>, hub: Arc<EventHub>, every: Duration, shutdown: CancellationToken) {
    let mut seen: Option<Seen> = None;
    loop {
        if hub.listeners() == 0 {
            // Nobody watching: read nothing; start afresh when someone comes.
            seen = None;
            hub.following.send_replace(false);
        } else {
            let result = match &mut seen {
                None => trekker.start_feed().await.map(|start| seen = Some(start)),
                Some(state) => trekker.feed_tick(state, &hub).await,
            };
            match result {
                Ok(()) => {
                    hub.following.send_replace(true);
                }
                Err(err) => tracing::warn!(error = ?err, "live event feed failed; will retry"),
            }
        }
        let idle = seen.is_none();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = hub.arrived.notified(), if idle => {}
            () = tokio::time::sleep(every) => {}
        }
    }
    hub.closed.cancel();
}
