//! The placement policy: given server snapshots, which servers may take a
//! new bot, best first. Pure (no IO), so it is unit- and property-tested
//! and embedders can swap it.
//!
//! The policy only proposes; the store's atomic reservation decides. When
//! the first choice filled up in the meantime, the caller tries the next.
//! [`rebalance`] is the balancer's policy (REBALANCE=on), pure in the same way.
//!
//! - [`Candidate`]: what placement knows of a server (slots, status, last
//!   heartbeat, load).
//! - [`PlacementPolicy`]: the trait a node ranks with; [`MostFreeSlots`] is
//!   the default.
//! - [`Liveness`]: when the ranking is made, so an offline server is never
//!   proposed.
//!
//! # The default policy
//!
//! ```
//! use trekker_domain::{ServerName, ServerStatus};
//! use trekker_placement::{Candidate, Liveness, MostFreeSlots, PlacementPolicy};
//!
//! let now_ms = 1_700_000_000_000;
//! let server = |name: &str, max: i64, used: i64| Candidate {
//!     name: ServerName::parse(name).unwrap(),
//!     max_bot_count: max,
//!     current_bot_count: used,
//!     status: ServerStatus::Active,
//!     last_heartbeat: Some(now_ms),
//!     memory_available_bytes: None,
//!     cpu_percent: None,
//! };
//! let mut draining = server("SERVER3", 50, 0);
//! draining.status = ServerStatus::Draining;
//! let servers = [server("SERVER1", 10, 9), server("SERVER2", 10, 2), draining, server("FULL", 5, 5)];
//! let liveness = Liveness { now_ms, heartbeat_interval_ms: 10_000 };
//! let ranked = MostFreeSlots::default().rank(&servers, liveness);
//! // Most free slots first; draining and full servers are never proposed.
//! assert_eq!(ranked, [ServerName::parse("SERVER2")?, ServerName::parse("SERVER1")?]);
//! # Ok::<(), trekker_domain::ServerNameError>(())
//! ```
//!
//! # A policy of your own
//!
//! Any `Send + Sync + Debug` type can rank; a node takes it as an
//! `Arc<dyn PlacementPolicy>`. This one keeps bots together: the fullest
//! server that still has room first (`examples/custom_placement.rs` tests
//! one against the store's mocks).
//!
//! ```
//! use trekker_domain::{ServerName, ServerStatus};
//! use trekker_placement::{Candidate, Liveness, PlacementPolicy};
//!
//! #[derive(Debug)]
//! struct Pack;
//!
//! impl PlacementPolicy for Pack {
//!     fn rank(&self, servers: &[Candidate], liveness: Liveness) -> Vec<ServerName> {
//!         let mut open: Vec<&Candidate> = servers
//!             .iter()
//!             .filter(|s| s.status == ServerStatus::Active && s.free_slots() > 0 && liveness.is_online(s))
//!             .collect();
//!         open.sort_by_key(|s| (s.free_slots(), s.name.clone()));
//!         open.into_iter().map(|s| s.name.clone()).collect()
//!     }
//! }
//!
//! let now_ms = 1_700_000_000_000;
//! let server = |name: &str, used: i64| Candidate {
//!     name: ServerName::parse(name).unwrap(),
//!     max_bot_count: 10,
//!     current_bot_count: used,
//!     status: ServerStatus::Active,
//!     last_heartbeat: Some(now_ms),
//!     memory_available_bytes: None,
//!     cpu_percent: None,
//! };
//! let liveness = Liveness { now_ms, heartbeat_interval_ms: 10_000 };
//! let ranked = Pack.rank(&[server("A", 2), server("B", 8)], liveness);
//! assert_eq!(ranked[0].as_str(), "B");
//! ```

#![warn(missing_docs)]

use trekker_domain::server::is_online;
use trekker_domain::{ServerName, ServerStatus};

/// What placement needs to know about a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The server.
    pub name: ServerName,
    /// Its slots.
    pub max_bot_count: i64,
    /// Slots in use.
    pub current_bot_count: i64,
    /// Whether it takes new bots (`active`).
    pub status: ServerStatus,
    /// Its last heartbeat (epoch ms); none: never seen.
    pub last_heartbeat: Option<i64>,
    /// Memory the server's machine can still give, as of its last beat;
    /// none before its first load report (then not held against it).
    pub memory_available_bytes: Option<i64>,
    /// The machine's CPU use as of its last beat, 0..=100.
    pub cpu_percent: Option<i64>,
}

impl Candidate {
    /// Slots left (never negative).
    pub fn free_slots(&self) -> i64 {
        (self.max_bot_count - self.current_bot_count).max(0)
    }

    /// Whether one more bot's memory limit fits in what the machine has left.
    pub fn fits_memory(&self, bot_memory_bytes: i64) -> bool {
        self.memory_available_bytes.is_none_or(|available| available >= bot_memory_bytes)
    }

    /// Share of its slots in use, in percent (a server of no slots is full).
    pub fn use_percent(&self) -> i64 {
        if self.max_bot_count <= 0 { 100 } else { self.current_bot_count.saturating_mul(100) / self.max_bot_count }
    }
}

/// When the ranking is made, and how fresh a heartbeat must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Now, epoch milliseconds.
    pub now_ms: i64,
    /// The cluster's heartbeat interval: three missed beats is offline.
    pub heartbeat_interval_ms: i64,
}

impl Liveness {
    /// Whether `candidate` beat recently enough to be online now.
    pub fn is_online(&self, candidate: &Candidate) -> bool {
        is_online(candidate.last_heartbeat, self.now_ms, self.heartbeat_interval_ms)
    }
}

/// Orders the servers that may take a new bot, best first.
pub trait PlacementPolicy: Send + Sync + std::fmt::Debug {
    /// The servers of `servers` that may take a new bot, best first.
    fn rank(&self, servers: &[Candidate], liveness: Liveness) -> Vec<ServerName>;
}

/// The default: only servers that are `active`, online, below capacity and
/// with memory for one more bot; the most free slots first, then the least
/// CPU in use; ties broken by name (so every node ranks the same snapshot
/// the same way).
#[derive(Debug, Clone, Copy, Default)]
pub struct MostFreeSlots {
    /// One bot's memory limit (BOT_MEMORY_MB): a server whose machine has
    /// less available takes no new bot. 0: not checked.
    pub bot_memory_bytes: i64,
}

impl MostFreeSlots {
    /// Whether `server` may take one more bot now.
    pub fn eligible(&self, server: &Candidate, liveness: Liveness) -> bool {
        server.status == ServerStatus::Active
            && server.free_slots() > 0
            && liveness.is_online(server)
            && server.fits_memory(self.bot_memory_bytes)
    }
}

impl PlacementPolicy for MostFreeSlots {
    fn rank(&self, servers: &[Candidate], liveness: Liveness) -> Vec<ServerName> {
        let mut eligible: Vec<&Candidate> = servers.iter().filter(|s| self.eligible(s, liveness)).collect();
        eligible.sort_by(|a, b| {
            b.free_slots()
                .cmp(&a.free_slots())
                .then_with(|| a.cpu_percent.unwrap_or(0).cmp(&b.cpu_percent.unwrap_or(0)))
                .then_with(|| a.name.cmp(&b.name))
        });
        eligible.into_iter().map(|s| s.name.clone()).collect()
    }
}

/// How far from the fleet's mean use a server may drift before the
/// balancer acts, in percentage points of its slots: a server above the
/// mean by more than `above` gives bots to servers below the mean by more
/// than `below`. The gap between the two bands is the hysteresis: a move
/// never makes the target a source, so bots do not bounce back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Points above the mean a source must be.
    pub above: i64,
    /// Points below the mean a target must be.
    pub below: i64,
    /// Moves one pass proposes at most ("a few at a time").
    pub max_moves: usize,
}

impl Default for Balance {
    fn default() -> Self {
        Self { above: 20, below: 10, max_moves: 4 }
    }
}

/// The balancer's proposal: moves of one bot each, `(from, to)`, among
/// active, online servers; the target must be eligible for placement under
/// `placement`. Empty when the fleet is within its bands.
///
/// ```
/// use trekker_domain::{ServerName, ServerStatus};
/// use trekker_placement::{rebalance, Balance, Candidate, Liveness, MostFreeSlots};
///
/// let now_ms = 1_700_000_000_000;
/// let server = |name: &str, used: i64| Candidate {
///     name: ServerName::parse(name).unwrap(),
///     max_bot_count: 100,
///     current_bot_count: used,
///     status: ServerStatus::Active,
///     last_heartbeat: Some(now_ms),
///     memory_available_bytes: None,
///     cpu_percent: None,
/// };
/// let fleet = [server("BUSY", 90), server("IDLE", 10)];
/// let liveness = Liveness { now_ms, heartbeat_interval_ms: 10_000 };
/// let moves = rebalance(&fleet, liveness, &MostFreeSlots::default(), Balance::default());
/// // A few at a time, from the fullest to the emptiest.
/// assert_eq!(moves.len(), 4);
/// assert!(moves.iter().all(|(from, to)| from.as_str() == "BUSY" && to.as_str() == "IDLE"));
/// ```
pub fn rebalance(
    servers: &[Candidate],
    liveness: Liveness,
    placement: &MostFreeSlots,
    balance: Balance,
) -> Vec<(ServerName, ServerName)> {
    let mut pool: Vec<Candidate> = servers
        .iter()
        .filter(|s| s.status == ServerStatus::Active && s.max_bot_count > 0 && liveness.is_online(s))
        .cloned()
        .collect();
    if pool.len() < 2 {
        return Vec::new();
    }
    pool.sort_by(|a, b| a.name.cmp(&b.name));
    let used: i64 = pool.iter().map(|s| s.current_bot_count.max(0)).sum();
    let slots: i64 = pool.iter().map(|s| s.max_bot_count).sum();
    let mean = used.saturating_mul(100) / slots.max(1);
    let mut moves = Vec::new();
    while moves.len() < balance.max_moves {
        // The fullest source and the emptiest target; ties by name.
        let source = pool
            .iter()
            .enumerate()
            .filter(|(_, s)| s.current_bot_count > 0 && s.use_percent() > mean + balance.above)
            .max_by(|(_, a), (_, b)| a.use_percent().cmp(&b.use_percent()).then_with(|| b.name.cmp(&a.name)))
            .map(|(i, _)| i);
        let target = pool
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                // Below its band, and still at most the mean with the bot:
                // a target never becomes a source.
                let with_one = (s.current_bot_count + 1).saturating_mul(100) / s.max_bot_count;
                s.use_percent() < mean - balance.below && with_one <= mean && placement.eligible(s, liveness)
            })
            .min_by(|(_, a), (_, b)| a.use_percent().cmp(&b.use_percent()).then_with(|| a.name.cmp(&b.name)))
            .map(|(i, _)| i);
        let (Some(from), Some(to)) = (source, target) else { break };
        pool[from].current_bot_count -= 1;
        pool[to].current_bot_count += 1;
        moves.push((pool[from].name.clone(), pool[to].name.clone()));
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIVE: Liveness = Liveness { now_ms: 100_000, heartbeat_interval_ms: 10_000 };

    fn server(name: &str, max: i64, used: i64) -> Candidate {
        Candidate {
            name: ServerName::parse(name).unwrap(),
            max_bot_count: max,
            current_bot_count: used,
            status: ServerStatus::Active,
            last_heartbeat: Some(LIVE.now_ms),
            memory_available_bytes: None,
            cpu_percent: None,
        }
    }

    fn names(ranked: Vec<ServerName>) -> Vec<String> {
        ranked.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn most_free_slots_first_ties_by_name() {
        let servers = [server("B", 10, 5), server("A", 10, 5), server("C", 10, 2), server("D", 3, 3)];
        assert_eq!(names(MostFreeSlots::default().rank(&servers, LIVE)), ["C", "A", "B"]);
    }

    #[test]
    fn skips_draining_inactive_stale_and_never_seen() {
        let mut draining = server("DRAIN", 10, 0);
        draining.status = ServerStatus::Draining;
        let mut inactive = server("OFF", 10, 0);
        inactive.status = ServerStatus::Inactive;
        let mut stale = server("STALE", 10, 0);
        stale.last_heartbeat = Some(LIVE.now_ms - 30_001);
        let mut never = server("NEVER", 10, 0);
        never.last_heartbeat = None;
        let servers = [draining, inactive, stale, never, server("OK", 10, 9)];
        assert_eq!(names(MostFreeSlots::default().rank(&servers, LIVE)), ["OK"]);
    }

    #[test]
    fn skips_a_machine_without_memory_for_one_more_bot_and_prefers_the_least_busy() {
        let policy = MostFreeSlots { bot_memory_bytes: 512 << 20 };
        let mut tight = server("TIGHT", 10, 0);
        tight.memory_available_bytes = Some((512 << 20) - 1);
        let mut busy = server("BUSY", 10, 5);
        busy.cpu_percent = Some(90);
        busy.memory_available_bytes = Some(8 << 30);
        let mut idle = server("IDLE", 10, 5);
        idle.cpu_percent = Some(10);
        idle.memory_available_bytes = Some(512 << 20);
        let unknown = server("UNKNOWN", 10, 7);
        let servers = [tight, busy, idle, unknown];
        assert_eq!(names(policy.rank(&servers, LIVE)), ["IDLE", "BUSY", "UNKNOWN"]);
        // Without a memory limit, the tight machine is the emptiest.
        assert_eq!(names(MostFreeSlots::default().rank(&servers, LIVE))[0], "TIGHT");
    }

    #[test]
    fn the_balancer_moves_from_the_fullest_to_the_emptiest_until_within_the_bands() {
        let servers = [server("A", 10, 10), server("B", 10, 5), server("C", 10, 0)];
        // Mean 50 %: A (100) is 50 above, C (0) 50 below.
        let moves =
            rebalance(&servers, LIVE, &MostFreeSlots::default(), Balance { max_moves: 10, ..Balance::default() });
        let moves: Vec<(String, String)> = moves.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        // A to 70 % is within 20 of the mean; C reaches 30 %.
        assert_eq!(moves, vec![("A".to_owned(), "C".to_owned()); 3]);
        // A balanced fleet, or one server alone, moves nothing.
        assert!(
            rebalance(&[server("A", 10, 6), server("B", 10, 4)], LIVE, &MostFreeSlots::default(), Balance::default())
                .is_empty()
        );
        assert!(rebalance(&[server("A", 10, 10)], LIVE, &MostFreeSlots::default(), Balance::default()).is_empty());
        // A few at a time.
        assert_eq!(
            rebalance(&servers, LIVE, &MostFreeSlots::default(), Balance { max_moves: 2, ..Balance::default() }).len(),
            2
        );
    }

    #[test]
    fn over_capacity_server_counts_as_full() {
        assert!(MostFreeSlots::default().rank(&[server("A", 2, 5)], LIVE).is_empty());
    }

    /// Up to 12 candidates with distinct names and any state.
    fn arb_servers() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (
                0i64..20,
                0i64..25,
                prop_oneof![
                    4 => Just(ServerStatus::Active),
                    1 => Just(ServerStatus::Draining),
                    1 => Just(ServerStatus::Inactive)
                ],
                // Around the 30 s staleness line of LIVE, and sometimes never seen.
                prop::option::weighted(0.9, 50_000i64..110_000),
            ),
            0..12,
        )
        .prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(i, (max, used, status, beat))| Candidate {
                    name: ServerName::parse(&format!("S{i:02}")).unwrap(),
                    max_bot_count: max,
                    current_bot_count: used,
                    status,
                    last_heartbeat: beat,
                    memory_available_bytes: None,
                    cpu_percent: None,
                })
                .collect()
        })
    }

    fn free_of(servers: &[Candidate], name: &ServerName) -> i64 {
        servers.iter().find(|c| &c.name == name).map(Candidate::free_slots).unwrap()
    }

    // Properties that hold whatever the eligibility rule is, checked
    // against the policy itself rather than a copy of its filter.
    proptest! {
        #[test]
        fn ranking_is_by_free_slots_then_name_and_has_room(servers in arb_servers()) {
            let ranked = MostFreeSlots::default().rank(&servers, LIVE);
            for name in &ranked {
                prop_assert!(free_of(&servers, name) > 0, "{name} has no room");
            }
            for pair in ranked.windows(2) {
                let (a, b) = (free_of(&servers, &pair[0]), free_of(&servers, &pair[1]));
                prop_assert!(a > b || (a == b && pair[0] < pair[1]), "{:?} before {:?}", pair[0], pair[1]);
            }
        }

        /// The balancer only narrows the spread: its sources end no lower
        /// than the mean plus the band, its targets take room they have and
        /// never rise above the mean (so nothing it moved would move back).
        #[test]
        fn the_balancer_never_overfills_and_never_bounces(servers in arb_servers(), max_moves in 0usize..20) {
            let balance = Balance { max_moves, ..Balance::default() };
            let policy = MostFreeSlots::default();
            let moves = rebalance(&servers, LIVE, &policy, balance);
            prop_assert!(moves.len() <= max_moves);
            let mut after = servers.clone();
            for (from, to) in &moves {
                prop_assert_ne!(from, to);
                let target = after.iter_mut().find(|c| &c.name == to).unwrap();
                prop_assert!(target.free_slots() > 0, "{to} has no room");
                target.current_bot_count += 1;
                after.iter_mut().find(|c| &c.name == from).unwrap().current_bot_count -= 1;
            }
            // Run again on the result: what was a target is never a source.
            let targets: Vec<&ServerName> = moves.iter().map(|(_, to)| to).collect();
            for (from, _) in rebalance(&after, LIVE, &policy, Balance { max_moves: 100, ..Balance::default() }) {
                prop_assert!(!targets.contains(&&from), "{from} took bots and now gives them back");
            }
        }

        #[test]
        fn input_order_does_not_matter(servers in arb_servers()) {
            let mut reversed = servers.clone();
            reversed.reverse();
            let policy = MostFreeSlots::default();
            prop_assert_eq!(policy.rank(&servers, LIVE), policy.rank(&reversed, LIVE));
        }

        #[test]
        fn a_server_that_goes_away_leaves_the_rest_in_order(servers in arb_servers(), which in 0usize..12) {
            let ranked = MostFreeSlots::default().rank(&servers, LIVE);
            prop_assume!(!ranked.is_empty());
            let gone = ranked[which % ranked.len()].clone();
            let expected: Vec<ServerName> = ranked.iter().filter(|n| **n != gone).cloned().collect();
            // Draining, inactive, stale or full: each removes it, nothing else.
            for change in 0..4 {
                let mut changed = servers.clone();
                let target = changed.iter_mut().find(|c| c.name == gone).unwrap();
                match change {
                    0 => target.status = ServerStatus::Draining,
                    1 => target.status = ServerStatus::Inactive,
                    2 => target.last_heartbeat = Some(LIVE.now_ms - 3 * LIVE.heartbeat_interval_ms - 1),
                    _ => target.current_bot_count = target.max_bot_count,
                }
                prop_assert_eq!(MostFreeSlots::default().rank(&changed, LIVE), expected.clone(), "change {}", change);
            }
        }
    }
}
