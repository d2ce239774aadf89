//! The clock-free summary of one window of echo-style probing (ICMP echoes, STAMP
//! test packets): send times by sequence number, replies matched to them, loss,
//! duplicates, reordering, RTT and jitter. Times are passed in; no sockets.
//!
//! Also the rounding every probe uses for the report.

use std::time::{Duration, Instant};

use faultline_shared::ProbeResult;
use faultline_shared::RttStats;
use faultline_shared::measure::{Arrival, Jitter, LatencySummary, SeqStats, SeqTracker};

/// One window of echo-style probing (ICMP echoes, STAMP test packets): send times by
/// sequence number, replies matched to them. Clock-free: times are passed in.
#[derive(Debug)]
pub struct EchoTally {
    base: u32,
    sent_at: Vec<Instant>,
    seq: SeqTracker,
    rtt: LatencySummary,
    jitter: Jitter,
}

/// The summary of one [`EchoTally`] window.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoSummary {
    pub stats: SeqStats,
    pub rtt: Option<RttStats>,
    pub jitter_ms: Option<f64>,
}

impl EchoTally {
    /// A window whose first sequence number is `base`.
    pub fn new(base: u32) -> Self {
        Self {
            base,
            sent_at: Vec::new(),
            seq: SeqTracker::new(base),
            rtt: LatencySummary::new(),
            jitter: Jitter::new(),
        }
    }

    /// The next sequence number to send.
    pub fn next_seq(&self) -> u32 {
        self.base.wrapping_add(self.sent())
    }

    pub fn sent(&self) -> u32 {
        u32::try_from(self.sent_at.len()).unwrap_or(u32::MAX)
    }

    /// Records that [`Self::next_seq`] was sent at `at`; returns that sequence number.
    pub fn on_sent(&mut self, at: Instant) -> u32 {
        let seq = self.next_seq();
        self.sent_at.push(at);
        seq
    }

    /// Matches a reply to sequence number `seq` received at `at`; `remote_delay` is
    /// the time the far end held the packet (STAMP's T3 − T2; zero for ICMP).
    /// Returns what the arrival was; only first, in-window replies feed RTT and jitter.
    pub fn on_reply(&mut self, seq: u32, at: Instant, remote_delay: Duration) -> Arrival {
        let off = seq.wrapping_sub(self.base);
        let Some(&sent) = self.sent_at.get(off as usize) else {
            return Arrival::OutOfWindow;
        };
        let arrival = self.seq.on_receive(seq);
        if matches!(arrival, Arrival::InOrder | Arrival::Reordered) {
            let rtt = at.saturating_duration_since(sent);
            // A reflector claiming to have held the packet longer than the round
            // trip has a broken clock: ignore its claim rather than go negative.
            let rtt = rtt.checked_sub(remote_delay).unwrap_or(rtt);
            let rtt_ms = rtt.as_secs_f64() * 1000.0;
            self.rtt.record_ms(rtt_ms);
            self.jitter.on_packet(0.0, rtt_ms);
        }
        arrival
    }

    /// Whether every sent packet has been answered.
    pub fn complete(&self) -> bool {
        self.seq.finish(self.sent()).received >= self.sent()
    }

    pub fn finish(&self) -> EchoSummary {
        let stats = self.seq.finish(self.sent());
        EchoSummary {
            stats,
            rtt: self.rtt.stats(),
            jitter_ms: (self.rtt.count() >= 2).then(|| self.jitter.value_ms()),
        }
    }
}

impl EchoSummary {
    /// Writes counts, RTT, jitter and the longest loss burst into `r`.
    pub fn fill(&self, r: &mut ProbeResult) {
        r.sent = self.stats.sent;
        r.received = self.stats.received;
        r.rtt_ms = self.rtt.map(|t| RttStats {
            min: round3(t.min),
            p50: round3(t.p50),
            avg: round3(t.avg),
            p95: round3(t.p95),
            max: round3(t.max),
        });
        r.jitter_ms = self.jitter_ms.map(round3);
        r.max_burst = Some(self.stats.max_burst);
    }
}

/// Rounds to 3 decimals (µs in ms): keeps JSON readable without losing meaning.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `RttStats` of a single sample.
pub fn single_rtt(d: Duration) -> RttStats {
    let ms = round3(d.as_secs_f64() * 1000.0);
    RttStats {
        min: ms,
        p50: ms,
        avg: ms,
        p95: ms,
        max: ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_tally_matches_replies_and_ignores_strangers() {
        let t0 = Instant::now();
        let mut t = EchoTally::new(u32::MAX); // wraps inside the window
        let s0 = t.on_sent(t0);
        let s1 = t.on_sent(t0 + Duration::from_millis(20));
        let _s2 = t.on_sent(t0 + Duration::from_millis(40));
        assert_eq!(s1, 0);
        assert_eq!(
            t.on_reply(s1, t0 + Duration::from_millis(30), Duration::ZERO),
            Arrival::InOrder
        );
        assert_eq!(
            t.on_reply(s0, t0 + Duration::from_millis(31), Duration::from_millis(1)),
            Arrival::Reordered
        );
        assert_eq!(
            t.on_reply(s0, t0 + Duration::from_millis(32), Duration::ZERO),
            Arrival::Duplicate
        );
        assert_eq!(
            t.on_reply(7, t0, Duration::ZERO),
            Arrival::OutOfWindow,
            "never sent"
        );
        assert!(!t.complete());
        let s = t.finish();
        assert_eq!(
            (s.stats.sent, s.stats.received, s.stats.max_burst),
            (3, 2, 1)
        );
        assert_eq!((s.stats.duplicates, s.stats.reordered), (1, 1));
        let rtt = s.rtt.unwrap();
        assert!(
            (rtt.min - 10.0).abs() < 0.01 && (rtt.max - 30.0).abs() < 0.01,
            "{rtt:?}"
        );
    }
}
