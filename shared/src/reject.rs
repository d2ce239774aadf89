//! Why the collector drops a message: one label per reason, the value of
//! `faultline_collector_rejected_total{reason=...}` and of `/api/counters`'
//! `rejected_by_reason`. Every reason is listed, so a dashboard sees each series
//! from the start (at 0).

use serde::Serialize;

/// Why a message was dropped (and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not one of our topics, or an invalid id in it.
    Topic,
    /// Over the payload cap.
    Oversized,
    /// Not a report (JSON or postcard that does not parse).
    Malformed,
    /// A postcard report cut short.
    Truncated,
    /// A report version this collector does not know.
    Version,
    /// An invalid id inside a report.
    InvalidId,
    /// The payload's site differs from the topic's.
    SiteMismatch,
    /// A window already counted.
    Duplicate,
    /// The boot's record of counted windows is full (too many gaps).
    DedupFull,
    /// `window_ms` outside 1 s ..= 1 h.
    Window,
    /// A value no probe can measure: NaN or infinite, received > sent, RTT ≥ 1 h,
    /// MOS outside 1–5, CPU or memory outside 0–100 %.
    Impossible,
    /// The site sent windows faster than its clock allows (beyond a day's backlog).
    Paced,
}

impl RejectReason {
    /// Every reason, in a stable order.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::Topic,
        RejectReason::Oversized,
        RejectReason::Malformed,
        RejectReason::Truncated,
        RejectReason::Version,
        RejectReason::InvalidId,
        RejectReason::SiteMismatch,
        RejectReason::Duplicate,
        RejectReason::DedupFull,
        RejectReason::Window,
        RejectReason::Impossible,
        RejectReason::Paced,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Topic => "topic",
            RejectReason::Oversized => "oversized",
            RejectReason::Malformed => "malformed",
            RejectReason::Truncated => "truncated",
            RejectReason::Version => "version",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::SiteMismatch => "site_mismatch",
            RejectReason::Duplicate => "duplicate",
            RejectReason::DedupFull => "dedup_full",
            RejectReason::Window => "window",
            RejectReason::Impossible => "impossible",
            RejectReason::Paced => "paced",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_their_serde_names_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for r in RejectReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert!(seen.insert(r.as_str()));
        }
    }
}
