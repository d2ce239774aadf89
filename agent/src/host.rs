//! The measuring box's own health (CPU, memory, load) for each report, so the collector
//! can tell "the gateway is overloaded" from "the network is bad".
//!
//! Read through sysinfo, refreshing only what a report carries (CPU times and RAM; no
//! processes, disks or networks), once a window. CPU usage is the busy share between
//! two refreshes: `new` takes the first, so each `sample` covers the time since the one
//! before (a window, as the run loop calls it).

use std::fmt;

use faultline_shared::HostHealth;
use sysinfo::{MemoryRefreshKind, System};

/// Samples host health; the first sample's CPU figure covers the time since `new`.
pub struct HostSampler {
    sys: System,
}

impl HostSampler {
    pub fn new() -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        Self { sys }
    }

    /// CPU % busy since the last sample, RAM % used (not available), 1-minute load
    /// average.
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
        let load1 = System::load_average().one;
        HostHealth {
            cpu_pct: finite_pct(f64::from(self.sys.global_cpu_usage())),
            mem_pct: finite_pct(mem_pct),
            load1: if load1.is_finite() {
                load1.max(0.0)
            } else {
                0.0
            },
        }
    }
}

impl fmt::Debug for HostSampler {
    // Not sysinfo's `Debug` for `System`, which reads everything it knows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSampler").finish_non_exhaustive()
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
    use std::time::Instant;

    use super::*;

    // The oracle: the kernel's own counters, read before and after each sample, so the
    // sampled figure must lie between (or very near) what they give.

    /// The numbers after `key` on its line of a `/proc` file.
    fn proc_line(path: &str, key: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(path).unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in {path}"));
        line.split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect()
    }

    /// (busy, total) clock ticks of all CPUs; idle and iowait are the idle part.
    fn cpu_ticks() -> (f64, f64) {
        let t = proc_line("/proc/stat", "cpu");
        // user, nice, system, idle, iowait, irq, softirq, steal (guest is inside user).
        let total: f64 = t.iter().take(8).sum();
        (total - t[3] - t[4], total)
    }

    /// The first number of a one-line `/proc` file.
    fn first_field(path: &str) -> f64 {
        let text = std::fs::read_to_string(path).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn mem_used_pct() -> f64 {
        let total = proc_line("/proc/meminfo", "MemTotal:")[0];
        let avail = proc_line("/proc/meminfo", "MemAvailable:")[0];
        100.0 * (total - avail) / total
    }

    fn between(x: f64, a: f64, b: f64, slack: f64) -> bool {
        a.min(b) - slack <= x && x <= a.max(b) + slack
    }

    #[test]
    fn cpu_is_the_busy_share_since_the_last_sample() {
        let before = cpu_ticks();
        let mut h = HostSampler::new();
        // Some work to see, for longer than sysinfo's minimum interval between CPU
        // refreshes (it keeps the old figure within that interval).
        let until = Instant::now() + sysinfo::MINIMUM_CPU_UPDATE_INTERVAL * 2;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        let s = h.sample();
        let after = cpu_ticks();
        let want = 100.0 * (after.0 - before.0) / (after.1 - before.1);
        // The oracle's readings are microseconds outside the sampler's; a clock tick
        // or two of difference is a few percent over this short window.
        assert!(
            (s.cpu_pct - want).abs() < 10.0,
            "sampled {:.1} %, the kernel counted {want:.1} % busy",
            s.cpu_pct
        );
        assert!(s.cpu_pct > 0.0, "a core was busy: {s:?}");
    }

    #[test]
    fn memory_is_the_share_not_available() {
        let mut h = HostSampler::new();
        let before = mem_used_pct();
        let s = h.sample();
        let after = mem_used_pct();
        assert!(
            between(s.mem_pct, before, after, 1.0),
            "{s:?}, {before:.2}..{after:.2}"
        );
        assert!(s.mem_pct > 0.0 && s.mem_pct <= 100.0, "{s:?}");
    }

    #[test]
    fn load_is_the_one_minute_average() {
        let mut h = HostSampler::new();
        let before = first_field("/proc/loadavg");
        let s = h.sample();
        let after = first_field("/proc/loadavg");
        // /proc/loadavg has two decimals and changes every 5 s: the sample is one of
        // the two readings.
        assert!(
            between(s.load1, before, after, 0.005),
            "{s:?}, {before}..{after}"
        );
    }

    #[test]
    fn non_finite_figures_become_zero() {
        assert_eq!(finite_pct(f64::NAN), 0.0);
        assert_eq!(finite_pct(f64::INFINITY), 0.0);
        assert_eq!(finite_pct(120.0), 100.0);
        assert_eq!(finite_pct(-1.0), 0.0);
        assert_eq!(finite_pct(42.5), 42.5);
    }
}
