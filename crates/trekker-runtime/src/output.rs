//! What a bot prints, kept bounded: lines cut at [`MAX_LINE_BYTES`], text
//! escaped before anyone reads it, and a ring of each bot's last lines.
//!
//! A bot is hostile (DESIGN.md, invariant 10): it may print one line of
//! 400 MB, millions of lines, terminal escapes, or lines that look like the
//! node's own log. Its output therefore never goes to the node's stderr: it
//! is read in bounded pieces, escaped, tagged with its stream, and kept in a
//! per-bot ring of at most [`RING_BYTES`], which the operators' logs API
//! reads. Reasons a bot gives for a status are cut to [`MAX_REASON_CHARS`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};
use trekker_domain::BotId;

/// Longest line kept, in bytes (the rest of a longer line is dropped).
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest reason (a status's `lastError`) kept, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// Output kept per bot, in bytes of text.
pub const RING_BYTES: usize = 128 * 1024;
/// Rings of bots that no longer run here that are still kept (oldest go first).
const RETIRED_RINGS: usize = 256;

/// One line as read: its bytes (at most [`MAX_LINE_BYTES`]) and whether
/// the line was longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Reads the next line without ever holding more than [`MAX_LINE_BYTES`] of
/// it: the rest of a longer line is read and dropped. `None` at end of
/// stream.
pub async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<RawLine>> {
    let mut line = RawLine { bytes: Vec::new(), truncated: false };
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any.then_some(line));
        }
        read_any = true;
        let (chunk, used, ended) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], at + 1, true),
            None => (available, available.len(), false),
        };
        let room = MAX_LINE_BYTES - line.bytes.len();
        if chunk.len() > room {
            line.truncated = true;
        }
        line.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if ended {
            return Ok(Some(line));
        }
    }
}

/// `text` with control characters escaped (`\n`, `\t`, `\u{1b}`...) and cut
/// to `max_chars` characters (an ellipsis says so): safe to store, log and
/// show in a console.
pub fn escape(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars + 8));
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// A reason given by a bot, ready for `lastError`.
pub fn reason(text: &str) -> String {
    escape(text.trim(), MAX_REASON_CHARS)
}

/// Where a kept line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The node's own line about the bot (start, stop, exit).
    Node,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Node => "node",
        }
    }
}

/// One kept line: escaped text, at most [`MAX_LINE_BYTES`] of the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its number on this node: increasing across every bot's lines, so a
    /// live reader asks for what came after the last it showed.
    pub seq: u64,
    /// Epoch milliseconds.
    pub at: i64,
    pub stream: LogStream,
    pub text: String,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, line: LogLine) {
        self.bytes += line.text.len();
        self.lines.push_back(line);
        while self.bytes > RING_BYTES {
            let Some(old) = self.lines.pop_front() else { break };
            self.bytes -= old.text.len();
        }
    }
}

#[derive(Debug, Default)]
struct Rings {
    by_bot: HashMap<BotId, Ring>,
    /// The last line's number.
    last_seq: u64,
    /// Bots whose run ended, oldest first: their rings go when too many.
    retired: VecDeque<BotId>,
}

/// The last output of every bot run on this node, [`RING_BYTES`] each.
/// Cheap to clone (one shared map). Live readers wait on [`Self::changed`]
/// and read [`Self::since`] their last line.
#[derive(Debug, Clone, Default)]
pub struct BotLogs {
    rings: Arc<Mutex<Rings>>,
    pushed: Arc<tokio::sync::Notify>,
}

impl BotLogs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps one line (escaped here; a truncated line says so).
    pub fn push(&self, bot: &BotId, stream: LogStream, raw: &RawLine) {
        let mut text = escape(&String::from_utf8_lossy(&raw.bytes), MAX_LINE_BYTES);
        if raw.truncated && !text.ends_with('…') {
            text.push('…');
        }
        self.push_text(bot, stream, text);
    }

    /// Keeps one of the node's own lines about the bot.
    pub fn node_line(&self, bot: &BotId, text: &str) {
        self.push_text(bot, LogStream::Node, escape(text, MAX_LINE_BYTES));
    }

    fn push_text(&self, bot: &BotId, stream: LogStream, text: String) {
        {
            let mut rings = self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rings.last_seq += 1;
            let line = LogLine { seq: rings.last_seq, at: now_ms(), stream, text };
            if let Some(at) = rings.retired.iter().position(|id| id == bot) {
                rings.retired.remove(at);
            }
            rings.by_bot.entry(bot.clone()).or_default().push(line);
        }
        self.pushed.notify_waiters();
    }

    /// Resolves at the next line kept for any bot. Create it before reading
    /// [`Self::since`] (and `enable` it) so a line kept in between wakes it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.pushed.notified()
    }

    /// The bot's lines numbered after `after`, oldest first, at most `limit`
    /// (the oldest of them: a reader catches up in order).
    pub fn since(&self, bot: &BotId, after: u64, limit: usize) -> Vec<LogLine> {
        let rings = self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(ring) = rings.by_bot.get(bot) else { return Vec::new() };
        let newer = ring.lines.iter().rev().take_while(|line| line.seq > after).count();
        ring.lines.iter().skip(ring.lines.len() - newer).take(limit).cloned().collect()
    }

    /// The bot no longer runs here: its ring is kept a while, then dropped.
    pub fn retire(&self, bot: &BotId) {
        let mut rings = self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !rings.by_bot.contains_key(bot) || rings.retired.contains(bot) {
            return;
        }
        rings.retired.push_back(bot.clone());
        while rings.retired.len() > RETIRED_RINGS {
            if let Some(old) = rings.retired.pop_front() {
                rings.by_bot.remove(&old);
            }
        }
    }

    /// The text of the bot's last line on `stream`, if still kept.
    pub fn tail_of(&self, bot: &BotId, stream: LogStream) -> Option<String> {
        let rings = self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rings.by_bot.get(bot)?.lines.iter().rev().find(|l| l.stream == stream).map(|l| l.text.clone())
    }

    /// The last `limit` lines of the bot, oldest first.
    pub fn tail(&self, bot: &BotId, limit: usize) -> Vec<LogLine> {
        let rings = self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(ring) = rings.by_bot.get(bot) else { return Vec::new() };
        let skip = ring.lines.len().saturating_sub(limit);
        ring.lines.iter().skip(skip).cloned().collect()
    }
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn lines(input: &[u8]) -> Vec<RawLine> {
        // A small buffer: lines span many reads.
        let mut reader = tokio::io::BufReader::with_capacity(64, input);
        let mut out = Vec::new();
        while let Some(line) = next_line(&mut reader).await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_next_line_is_intact() {
        let mut input = vec![b'x'; MAX_LINE_BYTES * 3];
        input.extend_from_slice(b"\nnext\nlast without newline");
        let read = lines(&input).await;
        assert_eq!(read.len(), 3);
        assert_eq!((read[0].bytes.len(), read[0].truncated), (MAX_LINE_BYTES, true));
        assert_eq!(read[1], RawLine { bytes: b"next".to_vec(), truncated: false });
        assert_eq!(read[2].bytes, b"last without newline");
        let exact = vec![b'y'; MAX_LINE_BYTES];
        assert!(!lines(&exact).await[0].truncated, "a line of exactly the limit is whole");
        assert!(lines(b"").await.is_empty());
    }

    #[test]
    fn escaping_neutralises_control_characters_and_cuts() {
        assert_eq!(escape("a\nb\tc\u{1b}[31m", 100), "a\\nb\\tc\\u{1b}[31m");
        assert_eq!(escape("2026-12-07T00:00:00Z  INFO forged\r", 100), "2026-12-07T00:00:00Z  INFO forged\\r");
        let long = "é".repeat(10_000);
        let cut = reason(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_ring_keeps_the_last_bytes_and_retired_rings_are_bounded() {
        let logs = BotLogs::new();
        let bot = BotId::parse("bot_a").unwrap();
        let line = RawLine { bytes: vec![b'z'; 1000], truncated: false };
        for _ in 0..1000 {
            logs.push(&bot, LogStream::Stdout, &line);
        }
        logs.node_line(&bot, "stopped");
        let tail = logs.tail(&bot, 10_000);
        assert!(tail.iter().map(|l| l.text.len()).sum::<usize>() <= RING_BYTES);
        assert_eq!(tail.len(), (RING_BYTES - "stopped".len()) / 1000 + 1, "the ring holds what fits, nothing more");
        assert_eq!(tail.last().unwrap().stream, LogStream::Node);
        assert_eq!(logs.tail(&bot, 2).len(), 2);

        for n in 0..(RETIRED_RINGS + 10) {
            let other = BotId::parse(&format!("bot_{n}")).unwrap();
            logs.node_line(&other, "started");
            logs.retire(&other);
        }
        assert!(logs.tail(&BotId::parse("bot_0").unwrap(), 10).is_empty(), "the oldest retired ring went");
        assert_eq!(logs.tail(&bot, 1).len(), 1, "a ring that is not retired stays");
    }

    #[tokio::test]
    async fn lines_split_at_every_newline_and_an_empty_line_is_a_line() {
        let mut reader = tokio::io::BufReader::with_capacity(4, &b"one\ntwo\n\nfour\n"[..]);
        let mut read = Vec::new();
        // Bounded: a reader that stopped consuming its newlines would loop.
        while let Some(line) = next_line(&mut reader).await.unwrap() {
            read.push(String::from_utf8(line.bytes).unwrap());
            assert!(read.len() <= 4, "{read:?}");
        }
        assert_eq!(read, ["one", "two", "", "four"]);
    }

    #[test]
    fn a_ring_holds_exactly_its_size() {
        let logs = BotLogs::new();
        let bot = BotId::parse("bot_a").unwrap();
        let kib = RawLine { bytes: vec![b'z'; 1024], truncated: false };
        for _ in 0..128 {
            logs.push(&bot, LogStream::Stdout, &kib);
        }
        assert_eq!(logs.tail(&bot, 1000).len(), 128, "128 KiB fit exactly");
        logs.push(&bot, LogStream::Stderr, &RawLine { bytes: b"!".to_vec(), truncated: false });
        let tail = logs.tail(&bot, 1000);
        assert_eq!(tail.len(), 128, "one byte more pushes the oldest line out");
        assert_eq!(tail.last().unwrap().text, "!");
    }

    #[test]
    fn a_cut_line_says_so_once() {
        let logs = BotLogs::new();
        let bot = BotId::parse("bot_a").unwrap();
        for (text, truncated) in [("cut here", true), ("already marked…", true), ("whole", false)] {
            logs.push(&bot, LogStream::Stdout, &RawLine { bytes: text.as_bytes().to_vec(), truncated });
        }
        let texts: Vec<String> = logs.tail(&bot, 10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["cut here…", "already marked…", "whole"]);
    }

    /// A crashed bot's reason is its last stderr line, not its last line.
    #[test]
    fn the_last_line_of_a_stream_is_found_among_the_others() {
        let logs = BotLogs::new();
        let bot = BotId::parse("bot_a").unwrap();
        assert_eq!(logs.tail_of(&bot, LogStream::Stderr), None);
        let line = |text: &str| RawLine { bytes: text.as_bytes().to_vec(), truncated: false };
        logs.push(&bot, LogStream::Stderr, &line("Error: bad MAC"));
        logs.push(&bot, LogStream::Stdout, &line("still printing"));
        assert_eq!(logs.tail_of(&bot, LogStream::Stderr).as_deref(), Some("Error: bad MAC"));
        let wall = || i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
        let before = wall();
        logs.node_line(&bot, "stopped");
        let last = logs.tail(&bot, 1).pop().unwrap();
        assert!(last.at >= before && last.at <= wall(), "stamped now: {}", last.at);
    }

    /// Retiring the same bot twice keeps one place in the queue; exactly
    /// RETIRED_RINGS retired rings are kept.
    #[test]
    fn retired_rings_are_counted_once_each() {
        let logs = BotLogs::new();
        let first = BotId::parse("bot_first").unwrap();
        logs.node_line(&first, "started");
        logs.retire(&first);
        logs.retire(&first);
        for n in 1..RETIRED_RINGS {
            let other = BotId::parse(&format!("bot_{n}")).unwrap();
            logs.node_line(&other, "started");
            logs.retire(&other);
        }
        assert_eq!(logs.tail(&first, 1).len(), 1, "RETIRED_RINGS retired rings, the first among them");
        let unknown = BotId::parse("bot_never_ran").unwrap();
        logs.retire(&unknown);
        assert_eq!(logs.tail(&first, 1).len(), 1, "a bot with no ring takes no place");
        let last = BotId::parse("bot_last").unwrap();
        logs.node_line(&last, "started");
        logs.retire(&last);
        assert!(logs.tail(&first, 1).is_empty(), "one more pushes the oldest out");
    }

    /// A live reader gets each bot's lines after the last it saw, in
    /// order and only its own, and is woken by a line kept after it began
    /// to wait.
    #[tokio::test]
    async fn a_reader_follows_one_bot_from_its_last_line() {
        let logs = BotLogs::new();
        let (a, b) = (BotId::parse("bot_a").unwrap(), BotId::parse("bot_b").unwrap());
        logs.node_line(&a, "a1");
        logs.node_line(&b, "b1");
        logs.node_line(&a, "a2");
        let all = logs.since(&a, 0, 10);
        assert_eq!(all.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["a1", "a2"]);
        assert!(all[0].seq < all[1].seq);
        assert_eq!(logs.since(&a, all[0].seq, 10)[0].text, "a2");
        assert!(logs.since(&a, all[1].seq, 10).is_empty());
        assert_eq!(logs.since(&a, 0, 1)[0].text, "a1", "the oldest first when capped");
        let last = all[1].seq;
        let waiting = logs.changed();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        let writer = logs.clone();
        tokio::spawn(async move { writer.node_line(&BotId::parse("bot_a").unwrap(), "a3") });
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("woken by the new line");
        assert_eq!(logs.since(&a, last, 10)[0].text, "a3");
    }
}
