//! Loss, duplicates, reordering and loss bursts from 32-bit sequence numbers.

/// How many sequence numbers one window can track (2 KiB of bits): 5 minutes at
/// 50 packets/s.
pub const SEQ_CAPACITY: u32 = 16 * 1024;
const WORDS: usize = (SEQ_CAPACITY / 64) as usize;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next in order (or later, skipping a gap).
    InOrder,
    /// Arrived after a higher sequence number: counted as received and reordered.
    Reordered,
    /// Seen before in this window: counted once.
    Duplicate,
    /// Outside this window's range (e.g. a straggler from the previous window).
    OutOfWindow,
}

/// One window's tally.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqStats {
    pub sent: u32,
    /// Distinct sequence numbers received among those sent.
    pub received: u32,
    pub lost: u32,
    pub duplicates: u32,
    pub reordered: u32,
    /// The longest run of consecutive lost sequence numbers.
    pub max_burst: u32,
    /// G.107 burst ratio `1 / (p + q)` from the loss pattern (1 for random loss,
    /// more when losses cluster); 1 when there is too little loss to tell.
    pub burst_r: f64,
}

impl SeqStats {
    /// Loss in [0, 1].
    pub fn loss(&self) -> f64 {
        super::loss_ratio(self.sent, self.received)
    }
}

/// Tracks the sequence numbers received in one window, starting at `base`, in fixed
/// memory. Wraps around at 2³² transparently: offsets are taken modulo 2³².
#[derive(Debug, Clone)]
pub struct SeqTracker {
    base: u32,
    seen: [u64; WORDS],
    highest: Option<u32>,
    duplicates: u32,
    reordered: u32,
    out_of_window: u32,
}

impl SeqTracker {
    /// A tracker for a window whose first sequence number is `base`.
    pub fn new(base: u32) -> Self {
        Self {
            base,
            seen: [0; WORDS],
            highest: None,
            duplicates: 0,
            reordered: 0,
            out_of_window: 0,
        }
    }

    /// Starts a new window at `base`, forgetting the old one.
    pub fn reset(&mut self, base: u32) {
        *self = Self::new(base);
    }

    pub fn base(&self) -> u32 {
        self.base
    }

    /// Arrivals that fell outside the window so far.
    pub fn out_of_window(&self) -> u32 {
        self.out_of_window
    }

    fn is_seen(&self, off: u32) -> bool {
        self.seen[(off / 64) as usize] & (1 << (off % 64)) != 0
    }

    /// Records the arrival of `seq`.
    pub fn on_receive(&mut self, seq: u32) -> Arrival {
        let off = seq.wrapping_sub(self.base);
        if off >= SEQ_CAPACITY {
            self.out_of_window += 1;
            return Arrival::OutOfWindow;
        }
        if self.is_seen(off) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[(off / 64) as usize] |= 1 << (off % 64);
        match self.highest {
            Some(h) if off < h => {
                self.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.highest = Some(off);
                Arrival::InOrder
            }
        }
    }

    /// The tally for the first `sent` sequence numbers of the window.
    pub fn finish(&self, sent: u32) -> SeqStats {
        let sent_tracked = sent.min(SEQ_CAPACITY);
        let mut received = 0;
        let (mut burst, mut max_burst) = (0u32, 0u32);
        // Transitions for the burst ratio: found→lost (p) and lost→found (q).
        let (mut found, mut lost) = (0u32, 0u32);
        let (mut found_to_lost, mut lost_to_found) = (0u32, 0u32);
        let mut prev: Option<bool> = None;
        for off in 0..sent_tracked {
            let got = self.is_seen(off);
            if got {
                received += 1;
                burst = 0;
            } else {
                burst += 1;
                max_burst = max_burst.max(burst);
            }
            match prev {
                Some(true) => {
                    found += 1;
                    found_to_lost += u32::from(!got);
                }
                Some(false) => {
                    lost += 1;
                    lost_to_found += u32::from(got);
                }
                None => {}
            }
            prev = Some(got);
        }
        let burst_r = if found == 0 || lost == 0 || found_to_lost == 0 {
            1.0
        } else {
            let p = f64::from(found_to_lost) / f64::from(found);
            let q = f64::from(lost_to_found) / f64::from(lost);
            if p + q > 0.0 { 1.0 / (p + q) } else { 1.0 }
        };
        SeqStats {
            sent,
            received,
            lost: sent.saturating_sub(received),
            duplicates: self.duplicates,
            reordered: self.reordered,
            max_burst,
            burst_r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_bursts_duplicates_and_reordering() {
        let mut t = SeqTracker::new(100);
        // 0..10 sent; 3,4,5 lost; 7 before 6; 8 twice.
        for s in [100, 101, 102, 107, 106, 108, 108, 109] {
            t.on_receive(s);
        }
        let st = t.finish(10);
        assert_eq!(st.received, 7);
        assert_eq!(st.lost, 3);
        assert_eq!(st.max_burst, 3);
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.reordered, 1);
        assert!((st.loss() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn handles_32_bit_wraparound() {
        let base = u32::MAX - 2;
        let mut t = SeqTracker::new(base);
        for i in 0..6u32 {
            if i != 3 {
                assert_eq!(t.on_receive(base.wrapping_add(i)), Arrival::InOrder);
            }
        }
        let st = t.finish(6);
        assert_eq!((st.received, st.lost, st.max_burst), (5, 1, 1));
    }

    #[test]
    fn stragglers_from_the_last_window_are_out_of_window() {
        let mut t = SeqTracker::new(1000);
        assert_eq!(t.on_receive(999), Arrival::OutOfWindow);
        assert_eq!(t.on_receive(1000 + SEQ_CAPACITY), Arrival::OutOfWindow);
        assert_eq!(t.out_of_window(), 2);
        assert_eq!(t.finish(1).received, 0);
    }

    #[test]
    fn burst_ratio_is_one_for_isolated_losses_and_larger_for_clustered() {
        // Every 10th lost: 100 of 900 found→lost, 99 of 99 lost→found
        // → BurstR = 1/(1/9 + 1) = 0.9: isolated losses, no clustering.
        let mut t = SeqTracker::new(0);
        for s in 0..1000u32 {
            if s % 10 != 9 {
                t.on_receive(s);
            }
        }
        let random = t.finish(1000);
        assert!((random.burst_r - 0.9).abs() < 1e-9, "{random:?}");

        // Same 10 % loss in bursts of 10: 10 of 900 found→lost, 9 of 99 lost→found
        // (the last burst runs to the end) → BurstR = 1/(10/900 + 9/99) = 9.80198.
        let mut t = SeqTracker::new(0);
        for s in 0..1000u32 {
            if s % 100 < 90 {
                t.on_receive(s);
            }
        }
        let bursty = t.finish(1000);
        assert_eq!(bursty.max_burst, 10);
        assert!((bursty.burst_r - 9.801_98).abs() < 1e-5, "{bursty:?}");
    }

    #[test]
    fn no_loss_means_burst_ratio_one() {
        let mut t = SeqTracker::new(7);
        for s in 7..57 {
            t.on_receive(s);
        }
        let st = t.finish(50);
        assert_eq!((st.lost, st.max_burst, st.burst_r), (0, 0, 1.0));
    }
}
