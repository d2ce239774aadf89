//! RFC 3550 §6.4.1 interarrival jitter.

/// Running interarrival jitter: `J += (|D| − J) / 16`, where `D` is the change in
/// transit time (receive − send) between consecutive packets. Clock offsets between
/// sender and receiver cancel out, so the two timestamps may come from different clocks.
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    last_transit_ms: Option<f64>,
    jitter_ms: f64,
}

impl Jitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one packet, in arrival order: its send and receive times in ms.
    pub fn on_packet(&mut self, sent_ms: f64, received_ms: f64) {
        let transit = received_ms - sent_ms;
        if let Some(last) = self.last_transit_ms {
            let d = (transit - last).abs();
            if d.is_finite() {
                self.jitter_ms += (d - self.jitter_ms) / 16.0;
            }
        }
        self.last_transit_ms = Some(transit);
    }

    /// The current estimate in ms.
    pub fn value_ms(&self) -> f64 {
        self.jitter_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_delay_has_zero_jitter() {
        let mut j = Jitter::new();
        for i in 0..100 {
            let sent = f64::from(i) * 20.0;
            j.on_packet(sent, sent + 35.0 + 1000.0); // offset clocks: still zero
        }
        assert_eq!(j.value_ms(), 0.0);
    }

    #[test]
    fn follows_the_rfc_3550_recurrence() {
        // Transits 10, 14, 10: D = 4 then 4. J1 = 4/16 = 0.25; J2 = 0.25 + (4 − 0.25)/16.
        let mut j = Jitter::new();
        j.on_packet(0.0, 10.0);
        j.on_packet(20.0, 34.0);
        assert_eq!(j.value_ms(), 0.25);
        j.on_packet(40.0, 50.0);
        assert!((j.value_ms() - 0.484_375).abs() < 1e-12);
    }

    #[test]
    fn alternating_delay_converges_to_the_step() {
        // Transit alternating 0/2 ms gives |D| = 2 always; J converges to 2.
        let mut j = Jitter::new();
        for i in 0..1000 {
            let sent = f64::from(i) * 20.0;
            j.on_packet(sent, sent + f64::from(i % 2) * 2.0);
        }
        assert!((j.value_ms() - 2.0).abs() < 1e-6);
    }
}
