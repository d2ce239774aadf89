//! Exponential backoff with jitter, for every retry loop on both sides: the agent's
//! reconnects to the broker, the collector's reconnects and history writes.
//!
//! A caller sleeps on [`Backoff::next_delay`] after every failed attempt, so a fleet of
//! agents does not reconnect in step. Pure: the caller passes the random draw (e.g.
//! `fastrand::f64()`) and does the sleeping, so the bounds are property-tested without
//! clocks or randomness here.

use std::time::Duration;

/// First delay after a failure (the agent's reconnects).
pub const DEFAULT_MIN: Duration = Duration::from_secs(1);
/// Share of each delay that is randomised (0.5: between half and the full delay).
pub const DEFAULT_JITTER: f64 = 0.5;

/// Why a backoff cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff minimum must be above zero")]
    ZeroMin,
    #[error("backoff maximum {max:?} is below the minimum {min:?}")]
    MaxBelowMin { min: Duration, max: Duration },
    #[error("backoff jitter {0} must lie in [0, 1]")]
    BadJitter(f64),
}

/// Exponential backoff: `min`, `2·min`, `4·min`… capped at `max`, each delay shortened
/// by a random share of up to `jitter` of itself, but never below `min`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// Validates the range: `0 < min <= max`, `jitter` in [0, 1].
    pub fn try_new(min: Duration, max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if max < min {
            return Err(BackoffError::MaxBelowMin { min, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::BadJitter(jitter));
        }
        Ok(Self {
            min,
            max,
            jitter,
            attempt: 0,
        })
    }

    /// The delay before the next attempt; `unit` is a uniform draw from [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let cut = base.mul_f64(self.jitter * unit.clamp(0.0, 1.0));
        base.saturating_sub(cut).max(self.min)
    }

    /// Back to the shortest delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_doubling_up_to_the_cap_without_jitter() {
        let mut b = Backoff::try_new(Duration::from_secs(1), Duration::from_secs(10), 0.0).unwrap();
        let got: Vec<u64> = (0..6).map(|_| b.next_delay(0.9).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
    }

    #[test]
    fn rejects_bad_ranges() {
        let s = Duration::from_secs;
        assert_eq!(
            Backoff::try_new(Duration::ZERO, s(1), 0.5).unwrap_err(),
            BackoffError::ZeroMin
        );
        assert!(matches!(
            Backoff::try_new(s(2), s(1), 0.5),
            Err(BackoffError::MaxBelowMin { .. })
        ));
        assert!(Backoff::try_new(s(1), s(2), 1.5).is_err());
        assert!(Backoff::try_new(s(1), s(2), f64::NAN).is_err());
    }

    proptest! {
        #[test]
        fn delay_stays_in_bounds(
            min_ms in 1u64..5_000,
            extra_ms in 0u64..600_000,
            jitter in 0.0f64..=1.0,
            draws in proptest::collection::vec(0.0f64..1.0, 1..80),
        ) {
            let min = Duration::from_millis(min_ms);
            let max = min + Duration::from_millis(extra_ms);
            let mut b = Backoff::try_new(min, max, jitter).unwrap();
            for u in draws {
                let d = b.next_delay(u);
                prop_assert!(d >= min, "{d:?} below {min:?}");
                prop_assert!(d <= max, "{d:?} above {max:?}");
            }
        }

        #[test]
        fn without_jitter_delays_never_shrink(
            min_ms in 1u64..5_000,
            extra_ms in 0u64..600_000,
            n in 1usize..60,
        ) {
            let min = Duration::from_millis(min_ms);
            let max = min + Duration::from_millis(extra_ms);
            let mut b = Backoff::try_new(min, max, 0.0).unwrap();
            let mut last = Duration::ZERO;
            for _ in 0..n {
                let d = b.next_delay(0.5);
                prop_assert!(d >= last);
                last = d;
            }
        }
    }
}
