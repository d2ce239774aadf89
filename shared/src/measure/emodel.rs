//! The ITU-T G.107 E-model, reduced to the terms a network probe can see:
//!
//! ```text
//! R       = 93.2 − Id − Ie,eff
//! Id      = 0.024·Ta + 0.11·(Ta − 177.3)·H(Ta − 177.3)
//! Ie,eff  = Ie + (95 − Ie) · Ppl / (Ppl / BurstR + Bpl)
//! MOS     = 1                                         R < 0
//!         = 1 + 0.035·R + R·(R − 60)·(100 − R)·7·10⁻⁶ 0 ≤ R ≤ 100
//!         = 4.5                                       R > 100
//! ```
//!
//! `Ta` is the one-way mouth-to-ear delay in ms. A probe measures round trips, so
//! [`mouth_to_ear_ms`] builds Ta as: half the RTT (a symmetric path), plus one
//! packetisation interval (20 ms frames), plus a de-jitter buffer of twice the measured
//! jitter but at least 20 ms (what a typical adaptive phone buffer settles at), plus the
//! codec's look-ahead (G.729A: 5 ms). `Ppl` is the packet loss in percent; `BurstR` is
//! 1 for random loss and grows as losses cluster (see `SeqStats::burst_r`).
//!
//! The cubic dips just under 1 for R below about 6.5; MOS is clamped to [1, 4.5] so
//! that every MOS this crate reports lies in the scale.

use std::fmt;

/// Packetisation interval assumed for voice streams (one RTP frame), in ms.
pub const FRAME_MS: f64 = 20.0;
/// Smallest de-jitter buffer assumed, in ms.
pub const JITTER_BUFFER_MIN_MS: f64 = 20.0;

/// Voice codecs the E-model knows, with their G.113 impairment factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// G.711 with packet-loss concealment (Bpl 25.1): what phones ship with.
    #[default]
    G711,
    /// G.711 without packet-loss concealment (Bpl 4.3).
    G711NoPlc,
    /// G.729A with its built-in concealment (Ie 11, Bpl 19).
    G729a,
}

impl Codec {
    pub const ALL: &'static [Codec] = &[Codec::G711, Codec::G711NoPlc, Codec::G729a];

    /// Equipment impairment factor Ie.
    pub fn ie(self) -> f64 {
        match self {
            Codec::G711 | Codec::G711NoPlc => 0.0,
            Codec::G729a => 11.0,
        }
    }

    /// Packet-loss robustness factor Bpl.
    pub fn bpl(self) -> f64 {
        match self {
            Codec::G711 => 25.1,
            Codec::G711NoPlc => 4.3,
            Codec::G729a => 19.0,
        }
    }

    /// Codec look-ahead added to the mouth-to-ear delay, ms.
    pub fn lookahead_ms(self) -> f64 {
        match self {
            Codec::G711 | Codec::G711NoPlc => 0.0,
            Codec::G729a => 5.0,
        }
    }

    /// Voice payload bytes in one 20 ms frame (what a STAMP voice stream pads to).
    pub fn frame_bytes(self) -> usize {
        match self {
            Codec::G711 | Codec::G711NoPlc => 160,
            Codec::G729a => 20,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::G711 => "g711",
            Codec::G711NoPlc => "g711-noplc",
            Codec::G729a => "g729a",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Codec::ALL.iter().copied().find(|c| c.name() == s)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Mouth-to-ear delay Ta in ms from what a probe measures (see the module docs).
pub fn mouth_to_ear_ms(rtt_ms: f64, jitter_ms: f64, codec: Codec) -> f64 {
    rtt_ms.max(0.0) / 2.0
        + FRAME_MS
        + (2.0 * jitter_ms.max(0.0)).max(JITTER_BUFFER_MIN_MS)
        + codec.lookahead_ms()
}

/// Delay impairment Id for a mouth-to-ear delay `ta_ms`.
pub fn delay_impairment(ta_ms: f64) -> f64 {
    let ta = ta_ms.max(0.0);
    0.024 * ta + if ta > 177.3 { 0.11 * (ta - 177.3) } else { 0.0 }
}

/// Effective equipment impairment Ie,eff for `loss_pct` (0–100) and `burst_r`.
pub fn effective_equipment_impairment(codec: Codec, loss_pct: f64, burst_r: f64) -> f64 {
    let ppl = loss_pct.clamp(0.0, 100.0);
    let burst_r = if burst_r.is_finite() && burst_r > 0.0 {
        burst_r
    } else {
        1.0
    };
    let ie = codec.ie();
    ie + (95.0 - ie) * ppl / (ppl / burst_r + codec.bpl())
}

/// The transmission rating R.
pub fn r_factor(ta_ms: f64, loss_pct: f64, burst_r: f64, codec: Codec) -> f64 {
    93.2 - delay_impairment(ta_ms) - effective_equipment_impairment(codec, loss_pct, burst_r)
}

/// MOS from R by the G.107 conversion, clamped to [1, 4.5].
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r < 0.0 {
        1.0
    } else if r > 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).clamp(1.0, 4.5)
    }
}

/// A voice stream's quality by the E-model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceQuality {
    pub ta_ms: f64,
    pub r: f64,
    pub mos: f64,
}

impl VoiceQuality {
    /// Rates a stream from its round-trip time, jitter, loss ratio (0–1) and burst ratio.
    pub fn assess(rtt_ms: f64, jitter_ms: f64, loss: f64, burst_r: f64, codec: Codec) -> Self {
        let ta_ms = mouth_to_ear_ms(rtt_ms, jitter_ms, codec);
        let r = r_factor(ta_ms, loss * 100.0, burst_r, codec);
        Self {
            ta_ms,
            r,
            mos: mos_from_r(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn best_case_r_is_93_2_and_mos_4_41() {
        // Ta 0, no loss: R = 93.2.
        // MOS = 1 + 0.035·93.2 + 93.2·33.2·6.8·7e-6 = 1 + 3.262 + 0.14729 = 4.40929.
        let r = r_factor(0.0, 0.0, 1.0, Codec::G711NoPlc);
        close(r, 93.2, 1e-12);
        close(mos_from_r(r), 4.409_29, 1e-5);
    }

    #[test]
    fn long_delay_only() {
        // Ta 200: Id = 0.024·200 + 0.11·22.7 = 4.8 + 2.497 = 7.297; R = 85.903.
        // MOS = 1 + 3.006605 + 85.903·25.903·14.097·7e-6 = 4.22618.
        let r = r_factor(200.0, 0.0, 1.0, Codec::G711);
        close(r, 85.903, 1e-9);
        close(mos_from_r(r), 4.226_18, 1e-5);
    }

    #[test]
    fn g711_without_plc_one_percent_random_loss() {
        // Ta 100: Id = 2.4. Ie,eff = 95·1/(1/1 + 4.3) = 17.92453; R = 72.87547.
        // MOS = 1 + 2.550642 + 72.87547·12.87547·27.12453·7e-6 = 3.72880.
        let r = r_factor(100.0, 1.0, 1.0, Codec::G711NoPlc);
        close(r, 72.875_47, 1e-5);
        close(mos_from_r(r), 3.728_80, 1e-5);
    }

    #[test]
    fn g729a_two_percent_random_loss() {
        // Ta 50: Id = 1.2. Ie,eff = 11 + 84·2/(2 + 19) = 19; R = 73.0.
        // MOS = 1 + 2.555 + 73·13·27·7e-6 = 3.734361.
        let r = r_factor(50.0, 2.0, 1.0, Codec::G729a);
        close(r, 73.0, 1e-9);
        close(mos_from_r(r), 3.734_361, 1e-6);
    }

    #[test]
    fn bursty_loss_hurts_more_than_random() {
        // G.711+PLC, 5 % loss, BurstR 2: Ie,eff = 95·5/(2.5 + 25.1) = 17.21014; R = 75.98986.
        let bursty = r_factor(0.0, 5.0, 2.0, Codec::G711);
        close(bursty, 75.989_86, 1e-5);
        close(mos_from_r(bursty), 3.863_86, 1e-5);
        assert!(bursty < r_factor(0.0, 5.0, 1.0, Codec::G711));
    }

    #[test]
    fn mos_clamps_at_both_ends() {
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        // R = 6.07 gives 0.9972 by the raw cubic: clamped to 1.
        assert_eq!(mos_from_r(6.07), 1.0);
    }

    #[test]
    fn mouth_to_ear_adds_frame_buffer_and_lookahead() {
        close(
            mouth_to_ear_ms(40.0, 2.0, Codec::G711),
            20.0 + 20.0 + 20.0,
            1e-12,
        );
        close(
            mouth_to_ear_ms(40.0, 15.0, Codec::G729a),
            20.0 + 20.0 + 30.0 + 5.0,
            1e-12,
        );
        let clean = VoiceQuality::assess(20.0, 1.0, 0.0, 1.0, Codec::G711);
        assert!(clean.mos > 4.3 && clean.mos < 4.41, "{clean:?}");
    }
}
