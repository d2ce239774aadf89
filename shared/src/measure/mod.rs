//! Measurement math, as small structs fed with samples and times passed in.
//!
//! - [`Jitter`]: RFC 3550 interarrival jitter.
//! - [`SeqTracker`]: loss, duplicates, reordering and loss bursts from sequence numbers.
//! - [`LatencySummary`]: min / p50 / avg / p95 / max in fixed memory.
//! - [`emodel`]: the ITU-T G.107 E-model, R-factor and MOS.

pub mod emodel;
mod jitter;
mod seq;
mod summary;

pub use emodel::{Codec, VoiceQuality};
pub use jitter::Jitter;
pub use seq::{Arrival, SeqStats, SeqTracker};
pub use summary::LatencySummary;

/// Share of `sent` that was not `received`, in [0, 1]; 0 when nothing was sent.
/// Duplicates that push `received` above `sent` count as no loss.
pub fn loss_ratio(sent: u32, received: u32) -> f64 {
    if sent == 0 {
        0.0
    } else {
        f64::from(sent.saturating_sub(received)) / f64::from(sent)
    }
}
