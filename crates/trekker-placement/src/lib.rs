//! The placement policy: given server snapshots, which servers may take a
//! new bot, best first. Pure (no IO), so it is unit- and property-tested
//! and embedders can swap it.
//!
//! The policy only proposes; the store's atomic reservation decides. When
//! the first choice filled up in the meantime, the caller tries the next.

use trekker_domain::server::is_online;
use trekker_domain::{ServerName, ServerStatus};

/// What placement needs to know about a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: ServerName,
    pub max_bot_count: i64,
    pub current_bot_count: i64,
    pub status: ServerStatus,
    pub last_heartbeat: Option<i64>,
}

impl Candidate {
    pub fn free_slots(&self) -> i64 {
        (self.max_bot_count - self.current_bot_count).max(0)
    }
}

/// When the ranking is made, and how fresh a heartbeat must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub now_ms: i64,
    pub heartbeat_interval_ms: i64,
}

impl Liveness {
    pub fn is_online(&self, candidate: &Candidate) -> bool {
        is_online(candidate.last_heartbeat, self.now_ms, self.heartbeat_interval_ms)
    }
}

/// Orders the servers that may take a new bot, best first.
pub trait PlacementPolicy: Send + Sync + std::fmt::Debug {
    fn rank(&self, servers: &[Candidate], liveness: Liveness) -> Vec<ServerName>;
}

/// The default: only servers that are `active`, online and below capacity;
/// the most free slots first; ties broken by name (so every node ranks the
/// same snapshot the same way).
#[derive(Debug, Clone, Copy, Default)]
pub struct MostFreeSlots;

impl PlacementPolicy for MostFreeSlots {
    fn rank(&self, servers: &[Candidate], liveness: Liveness) -> Vec<ServerName> {
        let mut eligible: Vec<&Candidate> = servers
            .iter()
            .filter(|s| s.status == ServerStatus::Active && s.free_slots() > 0 && liveness.is_online(s))
            .collect();
        eligible.sort_by(|a, b| b.free_slots().cmp(&a.free_slots()).then_with(|| a.name.cmp(&b.name)));
        eligible.into_iter().map(|s| s.name.clone()).collect()
    }
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
        }
    }

    fn names(ranked: Vec<ServerName>) -> Vec<String> {
        ranked.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn most_free_slots_first_ties_by_name() {
        let servers = [server("B", 10, 5), server("A", 10, 5), server("C", 10, 2), server("D", 3, 3)];
        assert_eq!(names(MostFreeSlots.rank(&servers, LIVE)), ["C", "A", "B"]);
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
        assert_eq!(names(MostFreeSlots.rank(&servers, LIVE)), ["OK"]);
    }

    #[test]
    fn over_capacity_server_counts_as_full() {
        assert!(MostFreeSlots.rank(&[server("A", 2, 5)], LIVE).is_empty());
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
            let ranked = MostFreeSlots.rank(&servers, LIVE);
            for name in &ranked {
                prop_assert!(free_of(&servers, name) > 0, "{name} has no room");
            }
            for pair in ranked.windows(2) {
                let (a, b) = (free_of(&servers, &pair[0]), free_of(&servers, &pair[1]));
                prop_assert!(a > b || (a == b && pair[0] < pair[1]), "{:?} before {:?}", pair[0], pair[1]);
            }
        }

        #[test]
        fn input_order_does_not_matter(servers in arb_servers()) {
            let mut reversed = servers.clone();
            reversed.reverse();
            prop_assert_eq!(MostFreeSlots.rank(&servers, LIVE), MostFreeSlots.rank(&reversed, LIVE));
        }

        #[test]
        fn a_server_that_goes_away_leaves_the_rest_in_order(servers in arb_servers(), which in 0usize..12) {
            let ranked = MostFreeSlots.rank(&servers, LIVE);
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
                prop_assert_eq!(MostFreeSlots.rank(&changed, LIVE), expected.clone(), "change {}", change);
            }
        }
    }
}
