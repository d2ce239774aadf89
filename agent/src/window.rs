//! Measurement windows: aligned to wall-clock multiples of the window length, and the
//! assembly of each window's probe results into one `Report`.
//!
//! Pure: times are passed in as milliseconds since the Unix epoch; the run loop reads
//! the clock and sleeps.

use std::collections::BTreeMap;

use faultline_shared::report::REPORT_VERSION;
use faultline_shared::{HostHealth, Id, ProbeResult, Report};

/// What a report says for a target whose probe gave no result in time.
pub const MISSED: &str = "no result in window";

/// The first window boundary strictly after `now_ms`.
pub fn next_boundary(now_ms: u64, window_ms: u64) -> u64 {
    (now_ms / window_ms + 1) * window_ms
}

/// How long before the window's end a probe must stop, so its result is in before the
/// next window starts: 1/20 of the window, at most 250 ms.
pub fn guard_ms(window_ms: u64) -> u64 {
    (window_ms / 20).min(250)
}

/// Where a probe task goes after measuring the window that started at `start_ms`:
/// the next window, or — when it overran or the clock jumped — the next boundary
/// after `now_ms`.
pub fn following_start(start_ms: u64, now_ms: u64, window_ms: u64) -> u64 {
    let next = start_ms + window_ms;
    let late = now_ms > next + guard_ms(window_ms);
    let clock_went_back = now_ms + window_ms < start_ms;
    if late || clock_went_back {
        next_boundary(now_ms, window_ms)
    } else {
        next
    }
}

/// Collects probe results per window and turns each window into a `Report` with the
/// next `seq`, filling in targets that gave nothing.
#[derive(Debug)]
pub struct Assembler {
    site: Id,
    boot: u32,
    window_ms: u64,
    /// Each target's result with nothing measured, in config order.
    blanks: Vec<ProbeResult>,
    pending: BTreeMap<u64, Vec<Option<ProbeResult>>>,
    next_seq: u64,
}

impl Assembler {
    pub fn new(site: Id, boot: u32, window_ms: u64, blanks: Vec<ProbeResult>) -> Self {
        Self {
            site,
            boot,
            window_ms,
            blanks,
            pending: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Records target `index`'s result for the window starting at `start_ms`.
    pub fn add(&mut self, start_ms: u64, index: usize, result: ProbeResult) {
        let n = self.blanks.len();
        if index >= n {
            return;
        }
        self.pending
            .entry(start_ms)
            .or_insert_with(|| vec![None; n])[index] = Some(result);
    }

    /// True when every target has reported for the window starting at `start_ms`.
    pub fn is_complete(&self, start_ms: u64) -> bool {
        match self.pending.get(&start_ms) {
            Some(slots) => slots.iter().all(Option::is_some),
            None => self.blanks.is_empty(),
        }
    }

    /// Switches to a new target set and window length (a central config applied
    /// between windows): pending results are dropped, `seq` goes on.
    pub fn reconfigure(&mut self, window_ms: u64, blanks: Vec<ProbeResult>) {
        self.window_ms = window_ms;
        self.blanks = blanks;
        self.pending.clear();
    }

    /// Forgets results for windows before `start_ms` (they came too late).
    pub fn discard_before(&mut self, start_ms: u64) -> usize {
        let keep = self.pending.split_off(&start_ms);
        let late = std::mem::replace(&mut self.pending, keep);
        late.len()
    }

    /// The report for the window starting at `start_ms`, with the next `seq`; targets
    /// without a result carry [`MISSED`] as their error.
    pub fn finish(&mut self, start_ms: u64, host: Option<HostHealth>) -> Report {
        let slots = self.pending.remove(&start_ms).unwrap_or_default();
        let probes = self
            .blanks
            .iter()
            .enumerate()
            .map(|(i, blank)| match slots.get(i).cloned().flatten() {
                Some(r) => r,
                None => {
                    let mut r = blank.clone();
                    r.error = Some(MISSED.to_owned());
                    r
                }
            })
            .collect();
        let seq = self.next_seq;
        self.next_seq += 1;
        Report {
            v: REPORT_VERSION,
            site: self.site.clone(),
            boot: self.boot,
            seq,
            start_ms,
            window_ms: u32::try_from(self.window_ms).unwrap_or(u32::MAX),
            host,
            probes,
        }
        .on_wire_grid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{Kind, Layer};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn blank(name: &str) -> ProbeResult {
        ProbeResult::new(id(name), Layer::Lan, None, Kind::Tcp)
    }

    #[test]
    fn reconfiguring_keeps_seq_and_takes_the_new_targets() {
        let mut asm = Assembler::new(id("s"), 1, 10_000, vec![blank("a")]);
        asm.add(0, 0, blank("a"));
        assert_eq!(asm.finish(0, None).seq, 0);
        asm.add(10_000, 0, blank("a"));
        asm.reconfigure(2_000, vec![blank("b"), blank("c")]);
        assert!(!asm.is_complete(12_000));
        let r = asm.finish(12_000, None);
        assert_eq!((r.seq, r.window_ms, r.probes.len()), (1, 2_000, 2));
        assert_eq!(r.probes[0].target, "b");
    }

    #[test]
    fn boundaries_are_wall_clock_multiples() {
        assert_eq!(next_boundary(1_764_201_603_456, 10_000), 1_764_201_610_000);
        assert_eq!(next_boundary(1_764_201_610_000, 10_000), 1_764_201_620_000);
        assert_eq!(next_boundary(999, 1_000), 1_000);
    }

    #[test]
    fn guard_is_a_twentieth_capped_at_250ms() {
        assert_eq!(guard_ms(1_000), 50);
        assert_eq!(guard_ms(10_000), 250);
        assert_eq!(guard_ms(60_000), 250);
    }

    #[test]
    fn a_probe_goes_to_the_next_window_unless_it_overran() {
        let w = 10_000;
        assert_eq!(following_start(20_000, 29_760, w), 30_000);
        assert_eq!(
            following_start(20_000, 30_200, w),
            30_000,
            "within the guard"
        );
        assert_eq!(following_start(20_000, 30_300, w), 40_000, "overran");
        assert_eq!(following_start(20_000, 95_000, w), 100_000, "clock jumped");
        assert_eq!(following_start(20_000, 5_000, w), 10_000, "clock went back");
    }

    #[test]
    fn reports_number_windows_and_fill_missing_targets() {
        let mut a = Assembler::new(id("s"), 7, 1_000, vec![blank("a"), blank("b")]);
        let mut ra = blank("a");
        ra.sent = 3;
        ra.received = 3;
        a.add(5_000, 0, ra.clone());
        assert!(!a.is_complete(5_000));
        a.add(5_000, 1, blank("b"));
        assert!(a.is_complete(5_000));
        let r = a.finish(5_000, None);
        assert_eq!(
            (r.boot, r.seq, r.start_ms, r.window_ms),
            (7, 0, 5_000, 1_000)
        );
        assert_eq!(r.probes[0], ra);

        a.add(6_000, 1, blank("b"));
        let r = a.finish(6_000, None);
        assert_eq!(r.seq, 1);
        assert_eq!(r.probes[0].error.as_deref(), Some(MISSED));
        assert_eq!(r.probes[1].error, None);
    }

    #[test]
    fn with_no_targets_every_window_is_complete() {
        let mut a = Assembler::new(id("s"), 1, 1_000, vec![]);
        assert!(a.is_complete(1_000));
        assert!(a.finish(1_000, None).probes.is_empty());
    }

    #[test]
    fn late_results_are_discarded() {
        let mut a = Assembler::new(id("s"), 1, 1_000, vec![blank("a")]);
        a.add(1_000, 0, blank("a"));
        a.add(3_000, 0, blank("a"));
        assert_eq!(a.discard_before(2_000), 1);
        assert!(a.is_complete(3_000));
        a.add(9_000, 5, blank("a")); // unknown index: ignored
        assert!(!a.is_complete(9_000));
    }
}
