//! A fixed-memory latency summary: min / p50 / avg / p95 / max.
//!
//! Samples are kept in a log-linear histogram over microseconds (HDR style, 8
//! significant bits): exact below 256 µs, and above that each bucket spans at most
//! 1/128 of its lower bound. Percentiles report the bucket's midpoint clamped to the
//! observed min and max, so **a reported percentile is within 0.4 % (and 0.5 µs) of the
//! true nearest-rank order statistic**. Min, max and avg are exact. Memory is fixed:
//! 2,560 counters (10 KiB), samples up to 60 s; longer ones land in the top bucket.

use crate::report::RttStats;

const LINEAR: u32 = 256; // exact buckets, 1 µs each
const HALF: u32 = LINEAR / 2; // sub-buckets per power of two above LINEAR
const MAGNITUDES: u32 = 18; // 256 µs · 2^18 ≈ 67 s
const BUCKETS: usize = (LINEAR + MAGNITUDES * HALF) as usize;

fn bucket_of(us: u32) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    // us in [128·2^m, 256·2^m) for m ≥ 1.
    let m = (31 - us.leading_zeros()) - 7;
    if m > MAGNITUDES {
        return BUCKETS - 1;
    }
    let sub = (us >> m) - HALF; // 0..128
    (LINEAR + (m - 1) * HALF + sub) as usize
}

/// The midpoint of a bucket, in µs.
fn midpoint_of(bucket: usize) -> f64 {
    let b = bucket as u32;
    if b < LINEAR {
        return f64::from(b);
    }
    let m = (b - LINEAR) / HALF + 1;
    let sub = (b - LINEAR) % HALF + HALF;
    let lo = f64::from(sub) * f64::from(1u32 << m);
    lo + f64::from(1u32 << m) / 2.0 - 0.5
}

/// Latency samples of one window, in fixed memory.
#[derive(Debug, Clone)]
pub struct LatencySummary {
    counts: Box<[u32]>,
    count: u32,
    sum_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl Default for LatencySummary {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencySummary {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_ms: 0.0,
            min_ms: f64::INFINITY,
            max_ms: f64::NEG_INFINITY,
        }
    }

    /// Adds one sample in ms. Negative or non-finite samples are ignored.
    pub fn record_ms(&mut self, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        let us = (ms * 1000.0).round() as u32; // saturates for absurd values
        self.counts[bucket_of(us)] = self.counts[bucket_of(us)].saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum_ms += ms;
        self.min_ms = self.min_ms.min(ms);
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The nearest-rank `q` quantile (0 < q ≤ 1) in ms, within the stated bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * f64::from(self.count)).ceil() as u32).max(1);
        let mut seen = 0u32;
        for (bucket, &c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                let ms = midpoint_of(bucket) / 1000.0;
                return Some(ms.clamp(self.min_ms, self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    /// The summary, or `None` with no samples.
    pub fn stats(&self) -> Option<RttStats> {
        Some(RttStats {
            min: self.min_ms.is_finite().then_some(self.min_ms)?,
            p50: self.quantile_ms(0.50)?,
            avg: self.sum_ms / f64::from(self.count),
            p95: self.quantile_ms(0.95)?,
            max: self.max_ms,
        })
    }

    /// Empties the summary for the next window, keeping its memory.
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.sum_ms = 0.0;
        self.min_ms = f64::INFINITY;
        self.max_ms = f64::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_the_range() {
        let mut last = 0;
        for us in (0..70_000_000u32).step_by(997) {
            let b = bucket_of(us);
            assert!(b >= last && b < BUCKETS);
            last = b;
        }
        assert_eq!(bucket_of(u32::MAX), BUCKETS - 1);
    }

    #[test]
    fn midpoints_are_within_the_stated_bound() {
        for us in (0..60_000_000u32).step_by(331) {
            let mid = midpoint_of(bucket_of(us));
            let err = (mid - f64::from(us)).abs();
            assert!(
                err <= f64::from(us) * 0.004 + 0.5,
                "{us} µs → {mid} (err {err})"
            );
        }
    }

    #[test]
    fn exact_stats_for_a_small_set() {
        let mut s = LatencySummary::new();
        assert!(s.stats().is_none());
        for ms in [0.1, 0.2, 0.2, 0.25] {
            s.record_ms(ms);
        }
        let st = s.stats().unwrap();
        assert_eq!(st.min, 0.1);
        assert_eq!(st.max, 0.25);
        assert!((st.avg - 0.1875).abs() < 1e-12);
        assert!((st.p50 - 0.2).abs() < 1e-9);
        assert!((st.p95 - 0.25).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_1_to_1000_ms() {
        let mut s = LatencySummary::new();
        for i in 1..=1000 {
            s.record_ms(f64::from(i));
        }
        let st = s.stats().unwrap();
        assert!((st.p50 - 500.0).abs() <= 500.0 * 0.004 + 0.001, "{st:?}");
        assert!((st.p95 - 950.0).abs() <= 950.0 * 0.004 + 0.001, "{st:?}");
        assert_eq!((st.min, st.max), (1.0, 1000.0));
        assert!((st.avg - 500.5).abs() < 1e-9);
        s.reset();
        assert_eq!(s.count(), 0);
        assert!(s.stats().is_none());
    }

    #[test]
    fn ignores_garbage_samples() {
        let mut s = LatencySummary::new();
        s.record_ms(f64::NAN);
        s.record_ms(-1.0);
        s.record_ms(f64::INFINITY);
        assert_eq!(s.count(), 0);
    }
}
