//! `custom_placement`: a placement policy of your own, and its unit test
//! over the store's mocks (mockall), the way a developer embedding Trekker
//! would test it. The policy packs bots: the fullest server that still has
//! room first (fewer machines busy), where the default spreads them.
//!
//! ```text
//! cargo run -p trekker-placement --example custom_placement
//! cargo test -p trekker-placement --example custom_placement
//! ```

use trekker_domain::{ServerName, ServerStatus};
use trekker_placement::{Candidate, Liveness, PlacementPolicy};
use trekker_store::{ServerSnapshot, ServerStore, StoreError};

/// The fullest active, online server with a free slot first; ties by name.
#[derive(Debug, Clone, Copy, Default)]
pub struct PackTightly;

impl PlacementPolicy for PackTightly {
    fn rank(&self, servers: &[Candidate], liveness: Liveness) -> Vec<ServerName> {
        let mut open: Vec<&Candidate> = servers
            .iter()
            .filter(|s| s.status == ServerStatus::Active && s.free_slots() > 0 && liveness.is_online(s))
            .collect();
        open.sort_by(|a, b| a.free_slots().cmp(&b.free_slots()).then_with(|| a.name.cmp(&b.name)));
        open.into_iter().map(|s| s.name.clone()).collect()
    }
}

/// What placement knows of a server's row.
fn candidate(server: &ServerSnapshot) -> Candidate {
    Candidate {
        name: server.name.clone(),
        max_bot_count: server.max_bot_count,
        current_bot_count: server.current_bot_count,
        status: server.status,
        last_heartbeat: server.last_heartbeat,
        memory_available_bytes: server.load.map(|l| l.memory_available_bytes),
        cpu_percent: server.load.map(|l| l.cpu_percent),
    }
}

/// Where a new bot would go now: the servers as the store has them, ranked
/// by `policy`. (A node then reserves a slot on the first, atomically, and
/// tries the next if it filled up meanwhile.)
pub async fn choose_server(
    store: &dyn ServerStore,
    policy: &dyn PlacementPolicy,
    liveness: Liveness,
) -> Result<Option<ServerName>, StoreError> {
    let servers: Vec<Candidate> = store.list_servers().await?.iter().map(candidate).collect();
    Ok(policy.rank(&servers, liveness).into_iter().next())
}

fn main() {
    let now_ms = 1_700_000_000_000;
    let server = |name: &str, used: i64| Candidate {
        name: ServerName::parse(name).expect("a valid name"),
        max_bot_count: 10,
        current_bot_count: used,
        status: ServerStatus::Active,
        last_heartbeat: Some(now_ms),
        memory_available_bytes: None,
        cpu_percent: None,
    };
    let servers = [server("SERVER0", 2), server("SERVER1", 9), server("SERVER2", 10)];
    let liveness = Liveness { now_ms, heartbeat_interval_ms: 10_000 };
    let ranked: Vec<String> = PackTightly.rank(&servers, liveness).iter().map(ToString::to_string).collect();
    println!("pack tightly: {}", ranked.join(", "));
    let default: Vec<String> =
        trekker_placement::MostFreeSlots::default().rank(&servers, liveness).iter().map(ToString::to_string).collect();
    println!("most free slots (the default): {}", default.join(", "));
}

#[cfg(test)]
mod tests {
    use trekker_store::MockServerStore;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const LIVE: Liveness = Liveness { now_ms: NOW, heartbeat_interval_ms: 10_000 };

    fn snapshot(name: &str, max: i64, used: i64, last_heartbeat: i64) -> ServerSnapshot {
        ServerSnapshot {
            name: ServerName::parse(name).unwrap(),
            max_bot_count: max,
            current_bot_count: used,
            status: ServerStatus::Active,
            base_url: None,
            last_heartbeat: Some(last_heartbeat),
            description: None,
            load: None,
            evacuation: None,
        }
    }

    #[tokio::test]
    async fn the_fullest_server_with_room_is_chosen() {
        let mut store = MockServerStore::new();
        store.expect_list_servers().times(1).returning(|| {
            Ok(vec![snapshot("EMPTY", 10, 1, NOW), snapshot("BUSY", 10, 8, NOW), snapshot("FULL", 10, 10, NOW)])
        });
        let chosen = choose_server(&store, &PackTightly, LIVE).await.unwrap();
        assert_eq!(chosen.unwrap().as_str(), "BUSY");
    }

    #[tokio::test]
    async fn an_offline_server_is_never_chosen_however_full() {
        let mut store = MockServerStore::new();
        // Its last heartbeat is more than three intervals old.
        store
            .expect_list_servers()
            .returning(|| Ok(vec![snapshot("STALE", 10, 9, NOW - 30_001), snapshot("LIVE", 10, 1, NOW)]));
        let chosen = choose_server(&store, &PackTightly, LIVE).await.unwrap();
        assert_eq!(chosen.unwrap().as_str(), "LIVE");
    }

    #[tokio::test]
    async fn a_store_error_reaches_the_caller() {
        let mut store = MockServerStore::new();
        store.expect_list_servers().returning(|| Err(StoreError::Corrupt("disk".into())));
        assert!(choose_server(&store, &PackTightly, LIVE).await.is_err());
    }
}
