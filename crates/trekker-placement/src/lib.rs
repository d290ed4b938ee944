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

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            "[A-E][0-9]",
            0i64..20,
            0i64..25,
            prop_oneof![Just(ServerStatus::Active), Just(ServerStatus::Draining), Just(ServerStatus::Inactive)],
            prop::option::of(0i64..120_000),
        )
            .prop_map(|(name, max, used, status, beat)| Candidate {
                name: ServerName::parse(&name).unwrap(),
                max_bot_count: max,
                current_bot_count: used,
                status,
                last_heartbeat: beat,
            })
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_server_and_first_is_best(
            servers in prop::collection::vec(arb_candidate(), 0..12)
        ) {
            let ranked = MostFreeSlots.rank(&servers, LIVE);
            let eligible = |c: &Candidate| c.status == ServerStatus::Active && c.free_slots() > 0 && LIVE.is_online(c);
            for name in &ranked {
                // Names may repeat in the generated input; every match must be eligible.
                prop_assert!(servers.iter().filter(|c| &c.name == name).any(eligible));
            }
            let best = servers.iter().filter(|c| eligible(c)).map(Candidate::free_slots).max();
            match (ranked.first(), best) {
                (Some(first), Some(best)) => {
                    let first_free =
                        servers.iter().filter(|c| &c.name == first && eligible(c)).map(Candidate::free_slots).max();
                    prop_assert_eq!(first_free, Some(best));
                }
                (None, None) => {}
                (first, best) => prop_assert!(false, "ranked {:?} but best eligible {:?}", first, best),
            }
        }
    }
}
