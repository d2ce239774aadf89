//! The measuring box's own health (CPU, memory, load) for each report, so the collector
//! can tell "the gateway is overloaded" from "the network is bad".
//!
//! Read straight from `/proc` (Linux, the only gateway OS): `/proc/stat` for CPU,
//! `/proc/meminfo` for RAM, `/proc/loadavg` for load, once a window. CPU usage is the
//! share busy since the previous sample. The parsers are pure and tested on fixtures.

use faultline_shared::HostHealth;

/// Samples host health; the first sample's CPU figure covers the time since `new`.
#[derive(Debug)]
pub struct HostSampler {
    last_cpu: Option<CpuTimes>,
}

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal (guest time is inside user).
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
}

impl HostSampler {
    pub fn new() -> Self {
        Self {
            last_cpu: read("/proc/stat").and_then(|s| parse_stat(&s)),
        }
    }

    /// CPU % busy since the last sample, RAM % used, 1-minute load average.
    pub fn sample(&mut self) -> HostHealth {
        let cpu = read("/proc/stat").and_then(|s| parse_stat(&s));
        let cpu_pct = match (self.last_cpu, cpu) {
            (Some(a), Some(b)) => cpu_pct(a, b),
            _ => 0.0,
        };
        if cpu.is_some() {
            self.last_cpu = cpu;
        }
        let mem_pct = read("/proc/meminfo")
            .and_then(|s| parse_meminfo(&s))
            .map_or(0.0, |(total, avail)| {
                (total - avail.min(total)) as f64 * 100.0 / total as f64
            });
        let load1 = read("/proc/loadavg")
            .and_then(|s| parse_loadavg(&s))
            .unwrap_or(0.0);
        HostHealth {
            cpu_pct: finite_pct(cpu_pct),
            mem_pct: finite_pct(mem_pct),
            load1: if load1.is_finite() {
                load1.max(0.0)
            } else {
                0.0
            },
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The aggregate CPU times from `/proc/stat` text.
pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let mut f = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>());
    let mut next = || f.next().and_then(Result::ok).unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq, steal) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    Some(CpuTimes {
        busy: user + nice + system + irq + softirq + steal,
        idle: idle + iowait,
    })
}

/// % of CPU time busy between two readings (0 when no time passed).
pub fn cpu_pct(a: CpuTimes, b: CpuTimes) -> f64 {
    let busy = b.busy.saturating_sub(a.busy);
    let total = busy + b.idle.saturating_sub(a.idle);
    if total == 0 {
        0.0
    } else {
        busy as f64 * 100.0 / total as f64
    }
}

/// (MemTotal, MemAvailable) in kB from `/proc/meminfo` text; without MemAvailable
/// (kernels before 3.14), MemFree + Buffers + Cached.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let (mut total, mut avail, mut free, mut buffers, mut cached) = (None, None, 0, 0, 0);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(kb) = rest
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        match key {
            "MemTotal" => total = Some(kb),
            "MemAvailable" => avail = Some(kb),
            "MemFree" => free = kb,
            "Buffers" => buffers = kb,
            "Cached" => cached = kb,
            _ => {}
        }
    }
    let total = total.filter(|&t| t > 0)?;
    Some((total, avail.unwrap_or(free + buffers + cached)))
}

/// The 1-minute load average from `/proc/loadavg` text.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_ascii_whitespace().next()?.parse().ok()
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

    const STAT: &str = "cpu  4705 356 584 3699 23 0 23 5 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
ctxt 1990473
btime 1062191376
";

    const MEMINFO: &str = "MemTotal:        2048000 kB
MemFree:          512000 kB
MemAvailable:    1536000 kB
Buffers:           10000 kB
Cached:           200000 kB
HugePages_Total:       0
";

    #[test]
    fn parses_proc_stat() {
        let t = parse_stat(STAT).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 4705 + 356 + 584 + 23 + 5,
                idle: 3699 + 23
            }
        );
        assert_eq!(parse_stat("intr 1 2\n"), None);
        // Old kernels print fewer columns.
        assert_eq!(
            parse_stat("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, idle: 4 })
        );
    }

    #[test]
    fn cpu_share_between_two_readings() {
        let a = CpuTimes {
            busy: 100,
            idle: 900,
        };
        assert_eq!(
            cpu_pct(
                a,
                CpuTimes {
                    busy: 130,
                    idle: 970
                }
            ),
            30.0
        );
        assert_eq!(cpu_pct(a, a), 0.0);
        // A counter going backwards (never on Linux) does not go negative.
        assert_eq!(
            cpu_pct(
                a,
                CpuTimes {
                    busy: 50,
                    idle: 1000
                }
            ),
            0.0
        );
    }

    #[test]
    fn parses_meminfo() {
        assert_eq!(parse_meminfo(MEMINFO), Some((2_048_000, 1_536_000)));
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        assert_eq!(parse_meminfo(old), Some((1000, 400)));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 0 kB\n"), None);
    }

    #[test]
    fn parses_loadavg() {
        assert_eq!(parse_loadavg("0.20 0.18 0.12 1/80 11206\n"), Some(0.2));
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn samples_are_within_range() {
        let mut h = HostSampler::new();
        std::thread::sleep(std::time::Duration::from_millis(200));
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
