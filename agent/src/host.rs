//! The measuring box's own health (CPU, memory, load) for each report, so the collector
//! can tell "the gateway is overloaded" from "the network is bad".
//!
//! Only CPU usage and RAM are refreshed (no processes, disks or networks), once a window;
//! CPU usage is the share busy since the previous sample.

use faultline_shared::HostHealth;
use sysinfo::{MemoryRefreshKind, System};

/// Samples host health; the first sample's CPU figure covers the time since `new`.
#[derive(Debug)]
pub struct HostSampler {
    sys: System,
}

impl HostSampler {
    pub fn new() -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        Self { sys }
    }

    /// CPU % busy since the last sample, RAM % used, 1-minute load average.
    pub fn sample(&mut self) -> HostHealth {
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = self.sys.total_memory();
        let mem_pct = if total == 0 {
            0.0
        } else {
            self.sys.used_memory() as f64 * 100.0 / total as f64
        };
        HostHealth {
            cpu_pct: finite_pct(f64::from(self.sys.global_cpu_usage())),
            mem_pct: finite_pct(mem_pct),
            load1: {
                let l = System::load_average().one;
                if l.is_finite() { l.max(0.0) } else { 0.0 }
            },
        }
    }
}

fn finite_pct(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_within_range() {
        let mut h = HostSampler::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = h.sample();
        assert!((0.0..=100.0).contains(&s.cpu_pct), "{s:?}");
        assert!(s.mem_pct > 0.0 && s.mem_pct <= 100.0, "{s:?}");
        assert!(s.load1 >= 0.0, "{s:?}");
    }

    #[test]
    fn non_finite_figures_become_zero() {
        assert_eq!(finite_pct(f64::NAN), 0.0);
        assert_eq!(finite_pct(120.0), 100.0);
    }
}
