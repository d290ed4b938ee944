//! `GET /api/admin/bots/{id}/logs/stream`: a bot's log, live, from any
//! node, like a panel's server console.
//!
//! The stream opens with the bot's last lines (as `GET .../logs`), then
//! sends each new line as it is kept, numbered (`id` is the host's line
//! number). On the host it waits on the ring itself; another node asks the
//! host for the lines after the last it passed on, every [`REMOTE_POLL`],
//! over the signed protocol. When the bot moves the stream says `moved`
//! and follows it to its new host (whose lines start afresh); when the bot
//! is deleted it says `end` and closes. Streams count against the node's
//! admin stream slots.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use serde_json::json;
use trekker_domain::ServerName;
use trekker_store::BotRecord;
use trekker_tenancy::wire::BotLogsAnswer;

use super::extract::{ApiQuery, Viewer};
use super::logs::{LOG_LINES_DEFAULT, LogsQuery, checked_limit, local_logs, remote_logs};
use super::{ApiError, ErrorBody, ErrorCode, peers};
use crate::AppState;

/// How often a node that does not host the bot asks the host for more.
const REMOTE_POLL: Duration = Duration::from_secs(1);
/// How often a stream checks that the bot is still where it follows it.
const HOST_CHECK: Duration = Duration::from_secs(5);
/// How long a woken stream waits for more lines before it reads.
const COALESCE: Duration = Duration::from_millis(100);
/// Lines one read passes on at most (a chatty bot is caught up in order).
const BATCH: u32 = 500;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/admin/bots/{id}/logs/stream", get(bot_log_stream))
}

/// A bot's output live: `log` events (`{seq, at, stream, text}`), `moved`
/// (`{server}`), `warning` (`{message}`: its host does not answer),
/// `resumed` (it answers again) and `end` (the bot is gone).
#[utoipa::path(get, path = "/api/admin/bots/{id}/logs/stream", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<u32>, Query, description = "lines of the opening snapshot: 1 to 2000, default 200")),
    responses((status = 200, description = "text/event-stream: `log` events; `moved`, `warning`, `resumed`, `end`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn bot_log_stream(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let limit = checked_limit(query.limit.unwrap_or(LOG_LINES_DEFAULT))?;
    let bot = state.trekker.bot(&id).await?;
    let permit = state.event_streams.admins.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(ErrorCode::RateLimited, "Too many live streams on this node; try again shortly.")
            .with_retry_after(5)
    })?;
    let closed = state.trekker.events.closed();
    let follower = Follower {
        state,
        bot,
        after: None,
        limit,
        checked_at: Instant::now(),
        warned: false,
        host_url: None,
        done: false,
    };
    let events = futures::stream::unfold((follower, permit, closed), |(mut follower, permit, closed)| async move {
        let events: Vec<Event> = tokio::select! {
            () = closed.cancelled() => None,
            events = follower.next() => events,
        }?;
        Some((futures::stream::iter(events.into_iter().map(Ok)), (follower, permit, closed)))
    });
    Ok(Sse::new(futures::StreamExt::flatten(events)).keep_alive(KeepAlive::default()))
}

/// The host answers again after a `warning`.
fn resumed() -> Event {
    Event::default().event("resumed").data("{}")
}

/// Where a stream is in a bot's log.
struct Follower {
    state: AppState,
    bot: BotRecord,
    /// The host's number of the last line passed on; none before the first
    /// read (which sends the last `limit` lines).
    after: Option<u64>,
    limit: u32,
    checked_at: Instant,
    /// Whether the host's silence has been said (once per outage).
    warned: bool,
    /// The followed host's base URL, as last read.
    host_url: Option<(ServerName, String)>,
    done: bool,
}

impl Follower {
    /// The next events to send; `None` once the stream has ended.
    async fn next(&mut self) -> Option<Vec<Event>> {
        if self.done {
            return None;
        }
        loop {
            let hosted_here = self.bot.server == self.state.config.server_name;
            let ring = self.state.process_bots.as_ref().filter(|_| hosted_here).map(|driver| driver.logs());
            // Made ready before the read: a line kept after it wakes us.
            let mut changed = std::pin::pin!(ring.as_ref().map(|ring| ring.changed()));
            if let Some(changed) = changed.as_mut().as_pin_mut() {
                changed.enable();
            }
            let limit = if self.after.is_some() { BATCH } else { self.limit };
            let read = if hosted_here {
                Ok(local_logs(&self.state, &self.bot, limit, self.after))
            } else {
                self.remote_read(limit).await
            };
            let failed = match read {
                Ok(answer) => {
                    let warned = std::mem::take(&mut self.warned);
                    if let Some(events) = self.lines(answer, warned) {
                        return Some(events);
                    }
                    None
                }
                Err(error) => {
                    // The host may have come back at another address.
                    self.host_url = None;
                    Some(error)
                }
            };
            // Gone or moved (the host said so), or time to look: where the
            // bot is now says which.
            let host_said_so =
                failed.as_ref().is_some_and(|e| matches!(e.code, ErrorCode::NotFound | ErrorCode::Conflict));
            if host_said_so || self.checked_at.elapsed() >= HOST_CHECK {
                self.checked_at = Instant::now();
                if let Some(events) = self.recheck_host().await {
                    return Some(events);
                }
            }
            if let Some(error) = failed.filter(|_| !self.warned) {
                self.warned = true;
                let warning = json!({"message": error.message}).to_string();
                return Some(vec![Event::default().event("warning").data(warning)]);
            }
            let wait = if hosted_here { HOST_CHECK.saturating_sub(self.checked_at.elapsed()) } else { REMOTE_POLL };
            let line_kept = async {
                match changed.as_mut().as_pin_mut() {
                    Some(changed) => changed.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Any bot's line wakes every stream: gather a burst first,
                // so a chatty bot costs each stream ten reads a second.
                () = line_kept => tokio::time::sleep(COALESCE).await,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Asks the bot's host for its lines; the host's address is read once
    /// per host followed, not at every poll.
    async fn remote_read(&mut self, limit: u32) -> Result<BotLogsAnswer, ApiError> {
        let host = self.bot.server.clone();
        let base_url = match &self.host_url {
            Some((known, url)) if *known == host => url.clone(),
            _ => {
                let url = peers::base_url(&self.state, &host).await?;
                self.host_url = Some((host.clone(), url.clone()));
                url
            }
        };
        remote_logs(&self.state, &self.bot, (&host, &base_url), limit, self.after).await
    }

    /// The `log` events of `answer`'s lines (none when it has none).
    fn lines(&mut self, answer: BotLogsAnswer, recovered: bool) -> Option<Vec<Event>> {
        let Some(last) = answer.lines.last() else {
            // Nothing kept yet: every line from now on is after 0.
            self.after.get_or_insert(0);
            return recovered.then(|| vec![resumed()]);
        };
        self.after = Some(last.seq);
        let lines = answer.lines.iter();
        let logs =
            lines.map(|line| Event::default().event("log").id(line.seq.to_string()).data(json!(line).to_string()));
        Some(recovered.then(resumed).into_iter().chain(logs).collect())
    }

    /// Reads where the bot is: `moved` when its host changed (the new host's
    /// lines follow from its last ones), `end` when it is gone.
    async fn recheck_host(&mut self) -> Option<Vec<Event>> {
        match self.state.trekker.bot(self.bot.id.as_str()).await {
            Ok(bot) if bot.server != self.bot.server => {
                let moved = Event::default().event("moved").data(json!({"server": bot.server.as_str()}).to_string());
                self.bot = bot;
                self.after = None;
                Some(vec![moved])
            }
            Ok(_) => None,
            Err(trekker_app::AppError::NotFound(_)) => {
                self.done = true;
                Some(vec![Event::default().event("end").data(json!({"reason": "the bot is gone"}).to_string())])
            }
            // The database is busy: try again at the next check.
            Err(_) => None,
        }
    }
}
