//! Live events for the guest page and the operator console (Server-Sent
//! Events): what a node learns of the cluster, as it learns it.
//!
//! One feed per node ([`run_event_feed`]) reads, only while someone
//! listens: the servers (counts, capacity, liveness), the fleet-wide bot
//! change feed, and new activities (capacity warnings, credential reviews).
//! It reads once a second while it finds news, and backs off to
//! [`FEED_IDLE_MAX`] while it finds none; a change this node makes wakes it
//! at once, one made elsewhere shows within that bound (issue 22). It publishes what changed on an [`EventHub`]; each
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
use crate::idle::IdleBackoff;

/// Events a stream may fall behind by before it is told to resync.
const BACKLOG: usize = 1024;
/// Activities read per tick at most (the rest next tick).
const ACTIVITIES_PER_TICK: i64 = 200;
/// The longest a feed that finds nothing waits before it reads again.
pub const FEED_IDLE_MAX: Duration = Duration::from_secs(8);

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
    /// Wakes a backed-off feed when this node changed something.
    changed: tokio::sync::Notify,
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
            changed: tokio::sync::Notify::new(),
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

    /// Tells the feed this node changed something it shows: it reads now,
    /// not after its back-off.
    pub fn wake(&self) {
        self.changed.notify_one();
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

    /// Publishes what changed since `seen`, and moves it on; whether there
    /// was anything.
    async fn feed_tick(&self, seen: &mut Seen, hub: &EventHub) -> Result<bool, crate::AppError> {
        let mut news = false;
        for view in self.servers().await? {
            let name = view.server.name.to_string();
            // Heartbeats alone are not news: counts, capacity, status and
            // liveness are.
            let shown = |v: &ServerView| {
                (v.server.current_bot_count, v.server.max_bot_count, v.server.status, v.online, v.server.evacuation)
            };
            if seen.servers.get(&name).map(shown) != Some(shown(&view)) {
                news = true;
                hub.publish(LiveEvent::Server(view.clone()));
                seen.servers.insert(name, view);
            }
        }
        let changes = self.store.runtime.fleet_changes(&seen.cursor).await?;
        // A bot that left one server for another (a move, a failover) is
        // still there: the console updates its row rather than dropping it.
        for gone in changes.departed.into_iter().filter(|id| !changes.changed.iter().any(|b| &b.id == id)) {
            news = true;
            hub.publish(LiveEvent::BotGone(gone));
        }
        for bot in changes.changed {
            news = true;
            hub.publish(LiveEvent::Bot(Box::new(bot)));
        }
        seen.cursor = changes.cursor;
        for activity in self.store.activities.activities_after(seen.last_activity, ACTIVITIES_PER_TICK).await? {
            news = true;
            seen.last_activity = seen.last_activity.max(activity.id);
            match activity.action.as_str() {
                "capacity_warning" | "capacity_recovered" => hub.publish(LiveEvent::Warning(activity)),
                action if action.starts_with("credential_review_") => hub.publish(LiveEvent::Review(activity)),
                _ => {}
            }
        }
        Ok(news)
    }
}

/// Feeds `hub` while it has listeners, every `every` while there is news
/// and backing off to [`FEED_IDLE_MAX`] while there is none, until
/// `shutdown`.
pub async fn run_event_feed(trekker: Arc<Trekker>, hub: Arc<EventHub>, every: Duration, shutdown: CancellationToken) {
    let mut seen: Option<Seen> = None;
    let mut backoff = IdleBackoff::new(every, FEED_IDLE_MAX);
    loop {
        let mut wait = every;
        if hub.listeners() == 0 {
            // Nobody watching: read nothing; start afresh when someone comes.
            seen = None;
            hub.following.send_replace(false);
            backoff.busy();
        } else {
            let result = match &mut seen {
                None => trekker.start_feed().await.map(|start| {
                    seen = Some(start);
                    true
                }),
                Some(state) => trekker.feed_tick(state, &hub).await,
            };
            match result {
                Ok(news) => {
                    hub.following.send_replace(true);
                    if news {
                        backoff.busy();
                    }
                    wait = backoff.idle();
                }
                Err(err) => tracing::warn!(error = ?err, "live event feed failed; will retry"),
            }
        }
        let idle = seen.is_none();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = hub.arrived.notified(), if idle => {}
            () = hub.changed.notified(), if !idle => backoff.busy(),
            () = tokio::time::sleep(wait) => {}
        }
    }
    hub.closed.cancel();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;

    use trekker_store::{BotChanges, ChangeCursor};

    use super::*;
    use crate::test_support::{Mocks, trekker};

    /// A console open on a quiet cluster: the feed reads less and less
    /// often, up to its bound; a change this node makes is read at once.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_feed_backs_off_and_a_local_change_wakes_it() {
        let reads = Arc::new(AtomicUsize::new(0));
        let mut store = Mocks::default();
        store.servers.expect_list_servers().returning(|| Ok(Vec::new()));
        store.runtime.expect_fleet_cursor().returning(|| Ok(ChangeCursor::default()));
        store.activities.expect_last_activity_id().returning(|| Ok(0));
        store.activities.expect_activities_after().returning(|_, _| Ok(Vec::new()));
        let counted = reads.clone();
        store.runtime.expect_fleet_changes().returning(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok(BotChanges::default())
        });
        let trekker = Arc::new(trekker(store));
        let hub = trekker.events.clone();
        let shutdown = CancellationToken::new();
        let feed = tokio::spawn(run_event_feed(trekker, hub.clone(), Duration::from_secs(1), shutdown.clone()));
        let _listener = hub.subscribe().await;

        tokio::time::sleep(Duration::from_secs(60)).await;
        let quiet = reads.load(Ordering::Relaxed);
        // 1 + 2 + 4 + 8 s, then every 8 s: 10 reads in a minute, not 60.
        assert!((8..=12).contains(&quiet), "{quiet} reads in a quiet minute");

        hub.wake();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(reads.load(Ordering::Relaxed), quiet + 1, "a local change is read at once");
        shutdown.cancel();
        feed.await.unwrap();
    }

    fn activity(id: i64, action: &str) -> trekker_store::Activity {
        trekker_store::Activity {
            audit: None,
            id,
            occurred_at: crate::test_support::NOW,
            server: "SERVER0".into(),
            bot_id: None,
            phone: None,
            action: action.into(),
            details: String::new(),
            remote_tenancy: None,
            remote_bot_id: None,
        }
    }

    fn view(server: &str, used: i64) -> ServerView {
        ServerView { server: crate::test_support::server_snapshot(server, 10, used), online: true }
    }

    /// One tick publishes what changed and only that: a server whose counts
    /// moved (a newer heartbeat alone is no news), bots that left (not one
    /// that left and came back: it is updated), changed bots, and warnings
    /// and reviews among the new activities. A tick with nothing new
    /// publishes nothing.
    #[tokio::test]
    async fn a_tick_publishes_what_changed_and_nothing_else() {
        use crate::test_support::{NOW, bot_record};
        use trekker_domain::ApprovalStatus;

        let mut store = Mocks::default();
        let mut ticks = 0;
        store.servers.expect_list_servers().returning(move || {
            let mut beat = crate::test_support::server_snapshot("SERVER0", 10, 1);
            beat.last_heartbeat = Some(NOW - 1_000);
            Ok(vec![beat, crate::test_support::server_snapshot("SERVER1", 10, 3)])
        });
        store.runtime.expect_fleet_changes().returning(move |_| {
            ticks += 1;
            if ticks > 1 {
                return Ok(BotChanges::default());
            }
            let back = bot_record("SERVER1", ApprovalStatus::Approved);
            Ok(BotChanges {
                cursor: ChangeCursor::default(),
                changed: vec![back],
                departed: vec![BotId::parse("bot-2").unwrap(), BotId::parse("bot-1").unwrap()],
            })
        });
        store.activities.expect_activities_after().returning(|after, limit| {
            assert_eq!(limit, ACTIVITIES_PER_TICK);
            Ok(match after {
                5 => vec![
                    activity(6, "capacity_warning"),
                    activity(7, "credential_review_opened"),
                    activity(8, "registered"),
                ],
                _ => Vec::new(),
            })
        });
        let trekker = trekker(store);
        let hub = EventHub::default();
        let mut received = hub.sender.subscribe();
        let mut seen = Seen {
            servers: [view("SERVER0", 1), view("SERVER1", 2)]
                .into_iter()
                .map(|v| (v.server.name.to_string(), v))
                .collect(),
            cursor: ChangeCursor::default(),
            last_activity: 5,
        };
        assert!(trekker.feed_tick(&mut seen, &hub).await.unwrap());
        let mut shown = Vec::new();
        while let Ok(numbered) = received.try_recv() {
            shown.push(match numbered.event {
                LiveEvent::Server(v) => format!("server {} {}", v.server.name, v.server.current_bot_count),
                LiveEvent::BotGone(id) => format!("gone {id}"),
                LiveEvent::Bot(bot) => format!("bot {}", bot.id),
                LiveEvent::Warning(a) => format!("warning {}", a.id),
                LiveEvent::Review(a) => format!("review {}", a.id),
            });
        }
        assert_eq!(shown, ["server SERVER1 3", "gone bot-2", "bot bot-1", "warning 6", "review 7"]);
        assert_eq!(seen.last_activity, 8);

        assert!(!trekker.feed_tick(&mut seen, &hub).await.unwrap(), "nothing new");
        assert!(received.try_recv().is_err());
    }

    #[test]
    fn only_server_events_are_public() {
        assert!(LiveEvent::Server(view("SERVER0", 1)).is_public());
        assert!(!LiveEvent::BotGone(BotId::parse("bot-1").unwrap()).is_public());
        assert!(!LiveEvent::Warning(activity(1, "capacity_warning")).is_public());
    }

    /// Shutting the hub down ends every stream; the listener count is what
    /// keeps the feed reading.
    #[tokio::test]
    async fn the_hub_counts_its_listeners_and_closes_their_streams() {
        let hub = EventHub::default();
        assert_eq!(hub.listeners(), 0);
        let closed = hub.closed();
        let _one = hub.sender.subscribe();
        let _two = hub.sender.subscribe();
        assert_eq!(hub.listeners(), 2);
        assert!(!closed.is_cancelled());
        hub.closed.cancel();
        assert!(closed.is_cancelled(), "the token streams hold is the hub's own");
    }
}
