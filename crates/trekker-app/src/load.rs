//! This node's load, sent with each heartbeat: the machine's CPU use since
//! the last sample, the memory it can still give, and the bots it runs.
//! Placement skips machines without memory for one more bot and prefers
//! the least busy; the balancer reads the same figures.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use trekker_store::ServerLoad;

/// Reads `/proc/stat` and `/proc/meminfo` (Linux); elsewhere it reports
/// nothing and placement treats the machine as unknown.
#[derive(Debug, Default)]
pub struct LoadMeter {
    /// The last CPU sample: (busy, total) jiffies.
    last_cpu: Mutex<Option<(u64, u64)>>,
    /// Bots running on this node, kept by its supervisor.
    pub bots_running: Arc<AtomicUsize>,
}

impl LoadMeter {
    pub fn new(bots_running: Arc<AtomicUsize>) -> Self {
        Self { last_cpu: Mutex::new(None), bots_running }
    }

    /// The load now; `None` when the machine's figures cannot be read.
    pub fn sample(&self) -> Option<ServerLoad> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let cpu = cpu_jiffies(&stat)?;
        let memory_available_bytes = memory_available(&meminfo)?;
        let previous = self.last_cpu.lock().map(|mut last| last.replace(cpu)).ok().flatten();
        Some(ServerLoad {
            cpu_percent: previous.map_or(0, |before| cpu_percent(before, cpu)),
            memory_available_bytes,
            bots_running: i64::try_from(self.bots_running.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        })
    }
}

/// (busy, total) jiffies of the machine from the `cpu` line of `/proc/stat`.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = fields.iter().take(8).fold(0u64, |sum, f| sum.saturating_add(*f));
    let idle = fields[3].saturating_add(fields.get(4).copied().unwrap_or(0));
    Some((total.saturating_sub(idle), total))
}

/// Busy share between two samples, 0..=100.
fn cpu_percent(before: (u64, u64), after: (u64, u64)) -> i64 {
    let busy = after.0.saturating_sub(before.0);
    let total = after.1.saturating_sub(before.1);
    busy.saturating_mul(100).checked_div(total).map_or(0, |percent| i64::try_from(percent.min(100)).unwrap_or(100))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn memory_available(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_figures_the_kernel_writes() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_jiffies(stat), Some((150, 1000)));
        assert_eq!(cpu_percent((150, 1000), (250, 1200)), 50);
        assert_eq!(cpu_percent((150, 1000), (150, 1000)), 0);
        // A counter that went backwards (a reset) reads as idle, not as a panic.
        assert_eq!(cpu_percent((500, 2000), (100, 1000)), 0);
        assert_eq!(cpu_jiffies("cpu  1 2\n"), None);
        // Kernels before 2.5.41 write only user, nice, system and idle.
        assert_eq!(cpu_jiffies("cpu  10 0 5 85\n"), Some((15, 100)));
        assert_eq!(memory_available("MemTotal: 10 kB\nMemAvailable:   2048 kB\n"), Some(2 << 20));
        assert_eq!(memory_available("MemTotal: 10 kB\n"), None);
    }

    #[test]
    fn a_sample_on_linux_counts_the_running_bots() {
        let running = Arc::new(AtomicUsize::new(3));
        let meter = LoadMeter::new(running.clone());
        let first = meter.sample().expect("this machine has /proc");
        assert_eq!(first.bots_running, 3);
        assert!(first.memory_available_bytes > 0);
        running.store(5, Ordering::Relaxed);
        assert_eq!(meter.sample().map(|l| l.bots_running), Some(5));
    }
}
