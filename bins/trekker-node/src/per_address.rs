//! Caps per client address: one address (an IPv4 address, or an IPv6 /64,
//! what one client usually holds) cannot take every connection or every
//! live stream of a node. A slot is held as long as its guard lives.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections one address may hold at once, by default
/// (HTTP_MAX_CONNECTIONS_PER_ADDRESS; behind a reverse proxy set it to 0).
pub const CONNECTIONS_PER_ADDRESS: usize = 256;
/// Guest event streams one address may hold at once.
pub const GUEST_STREAMS_PER_ADDRESS: usize = 8;

/// Counts what each address holds, against one cap.
#[derive(Debug, Clone)]
pub struct PerAddress {
    cap: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One slot of an address; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    key: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    /// `cap` 0: no cap.
    pub fn new(cap: usize) -> Self {
        Self { cap, held: Arc::default() }
    }

    /// A slot for `address`, or `None` when it holds `cap` already.
    pub fn try_take(&self, address: IpAddr) -> Option<Slot> {
        let key = client_key(address);
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = held.entry(key).or_insert(0);
        if self.cap > 0 && *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Slot { key, held: self.held.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What counts as one client: an IPv4 address (also when mapped into
/// IPv6), or the /64 of an IPv6 address.
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_cap_and_dropping_frees() {
        let caps = PerAddress::new(2);
        let one: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let other: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let (a, _b) = (caps.try_take(one), caps.try_take(one));
        assert!(a.is_some() && caps.try_take(one).is_none(), "a third slot of one address");
        assert!(caps.try_take(other).is_some(), "another address is not held back");
        drop(a);
        assert!(caps.try_take(one).is_some(), "a freed slot is free");
        assert!(caps.held.lock().map(|h| h.len()).unwrap_or(0) <= 1, "addresses with nothing held are forgotten");
    }

    #[test]
    fn one_ipv6_client_is_its_64_and_mapped_ipv4_is_ipv4() {
        let caps = PerAddress::new(1);
        let parse = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let _held = caps.try_take(parse("2001:db8:1:2::1"));
        assert!(caps.try_take(parse("2001:db8:1:2:ffff::9")).is_none(), "same /64");
        assert!(caps.try_take(parse("2001:db8:1:3::1")).is_some(), "another /64");
        let _v4 = caps.try_take(parse("192.0.2.7"));
        assert!(caps.try_take(parse("::ffff:192.0.2.7")).is_none());
        assert!(PerAddress::new(0).try_take(parse("192.0.2.7")).is_some(), "0 is no cap");
    }
}
