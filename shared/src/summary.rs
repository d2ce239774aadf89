//! The site stage's message to the fleet stage (DESIGN.md "Deployment modes"): one
//! [`SiteSummary`] per site window, and one when a site goes offline or announces
//! itself. The fleet stage (ISP, provider and route correlation, hysteresis,
//! incidents) reads nothing else about a site, so the two stages can run in one
//! process (wired directly) or in different ones (this message on a bus).
//!
//! Two forms of the same fields: postcard behind a version byte ([`encode`] /
//! [`decode`], the bus form) and JSON (serde, for people and tools). Version 1:
//!
//! | field | meaning |
//! |---|---|
//! | `site`, `isp`, `customer` | who; `isp` as the agent's status last gave it |
//! | `at_ms` | collector time the site stage emitted it |
//! | `window_ms` | the site's own window length (hysteresis and silence count these) |
//! | `kind` | `window` (one live window judged: counts as one of the site's windows), `offline` (last will, clean stop or silence), `announce` (identity only: counts as nothing) or `online` (heard again without a window: a last will taken back) |
//!
//! A `window` carries the site's health by layer: `host_busy` (CPU at or above the
//! threshold), `lan`, `net` (ISP and internet layers together) and each provider
//! probed with the worst health among its targets — each `ok`, `degraded` or `down`.

use serde::{Deserialize, Serialize};

use crate::Id;

/// The version byte in front of a postcard summary.
pub const SUMMARY_VERSION: u8 = 1;
/// A summary larger than this is refused (a site probes at most
/// [`crate::wire::MAX_PROBES`] targets; a summary holds one entry per provider).
pub const MAX_SUMMARY_BYTES: usize = 16 * 1024;

/// Health of a layer or a provider at one site in one window (worst last).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Ok,
    Degraded,
    Down,
}

impl Health {
    pub fn is_bad(self) -> bool {
        self != Health::Ok
    }
}

/// Why a site is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineWhy {
    /// The last will: the agent vanished.
    Lost,
    /// The agent said it was stopping.
    Shutdown,
    /// No report for the configured number of the site's own windows.
    Silence,
}

impl From<crate::OfflineReason> for OfflineWhy {
    fn from(r: crate::OfflineReason) -> Self {
        match r {
            crate::OfflineReason::Lost => OfflineWhy::Lost,
            crate::OfflineReason::Shutdown => OfflineWhy::Shutdown,
        }
    }
}

/// One provider's health at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderHealth {
    pub provider: Id,
    pub health: Health,
}

/// A site's health by layer in one live window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteHealth {
    /// Host CPU at or above the threshold.
    pub host_busy: bool,
    pub lan: Health,
    /// ISP and internet layers together.
    pub net: Health,
    /// Each provider probed, sorted by id.
    pub providers: Vec<ProviderHealth>,
}

impl SiteHealth {
    pub fn provider(&self, p: &Id) -> Option<Health> {
        self.providers
            .iter()
            .find(|h| &h.provider == p)
            .map(|h| h.health)
    }

    /// Whether anything at the site was bad in this window.
    pub fn any_bad(&self) -> bool {
        self.lan.is_bad() || self.net.is_bad() || self.providers.iter().any(|p| p.health.is_bad())
    }

    /// The worst health of any layer or provider.
    pub fn worst(&self) -> Health {
        self.providers
            .iter()
            .map(|p| p.health)
            .fold(self.lan.max(self.net), Health::max)
    }
}

/// What a summary says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SummaryKind {
    /// One live window of `(boot, seq)` judged.
    Window {
        boot: u32,
        seq: u64,
        health: SiteHealth,
    },
    /// Offline since `since_ms` (collector time; 0 = an old departure, no evidence).
    Offline { since_ms: u64, why: OfflineWhy },
    /// The site's identity (ISP, customer) changed or it appeared: no window.
    Announce,
    /// Heard again without a new window (a last will taken back: it was the broker
    /// going away, not the site).
    Online,
}

/// The site stage's summary of one site (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSummary {
    pub site: Id,
    pub at_ms: u64,
    pub window_ms: u32,
    pub isp: Option<Id>,
    pub customer: Option<String>,
    pub kind: SummaryKind,
}

/// Why bytes are not a summary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("empty summary")]
    Empty,
    #[error("summary of {0} bytes over the {MAX_SUMMARY_BYTES}-byte cap")]
    Oversized(usize),
    #[error("unknown summary version {0}")]
    Version(u8),
    #[error("malformed summary: {0}")]
    Malformed(String),
}

/// The bus form: the version byte, then postcard.
pub fn encode(s: &SiteSummary) -> Vec<u8> {
    let mut out = vec![SUMMARY_VERSION];
    // Serializing these plain types into a Vec cannot fail.
    out.extend(postcard::to_allocvec(s).expect("postcard encodes a summary"));
    out
}

/// Decodes [`encode`]'s bytes.
pub fn decode(bytes: &[u8]) -> Result<SiteSummary, SummaryError> {
    if bytes.len() > MAX_SUMMARY_BYTES {
        return Err(SummaryError::Oversized(bytes.len()));
    }
    let (&v, rest) = bytes.split_first().ok_or(SummaryError::Empty)?;
    if v != SUMMARY_VERSION {
        return Err(SummaryError::Version(v));
    }
    postcard::from_bytes(rest).map_err(|e| SummaryError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn window() -> SiteSummary {
        SiteSummary {
            site: id("s1"),
            at_ms: 1_764_201_606_000,
            window_ms: 30_000,
            isp: Some(id("IspA")),
            customer: None,
            kind: SummaryKind::Window {
                boot: 7,
                seq: 3,
                health: SiteHealth {
                    host_busy: false,
                    lan: Health::Ok,
                    net: Health::Degraded,
                    providers: vec![ProviderHealth {
                        provider: id("vo"),
                        health: Health::Down,
                    }],
                },
            },
        }
    }

    /// The bus form, byte for byte: a newer collector must still read these.
    const WINDOW_BYTES: &[u8] = &[
        1, // version
        2, b's', b'1', // site
        0xf0, 0xd6, 0xf0, 0x94, 0xac, 0x33, // at_ms (varint)
        0xb0, 0xea, 0x01, // window_ms 30000
        1, 4, b'I', b's', b'p', b'A', // isp
        0,    // customer: none
        0,    // kind: window
        7, 3, // boot, seq
        0, 0, 1, // host_busy, lan ok, net degraded
        1, 2, b'v', b'o', 2, // one provider: vo down
    ];

    #[test]
    fn encodes_to_the_fixture_and_back() {
        assert_eq!(encode(&window()), WINDOW_BYTES);
        assert_eq!(decode(WINDOW_BYTES).unwrap(), window());
    }

    #[test]
    fn json_form_names_every_field() {
        let offline = SiteSummary {
            kind: SummaryKind::Offline {
                since_ms: 5,
                why: OfflineWhy::Silence,
            },
            ..window()
        };
        let j = serde_json::to_value(&offline).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"site": "s1", "at_ms": 1_764_201_606_000u64, "window_ms": 30000,
                "isp": "IspA", "customer": null,
                "kind": {"offline": {"since_ms": 5, "why": "silence"}}})
        );
        let w = serde_json::to_value(window()).unwrap();
        assert_eq!(
            w["kind"]["window"]["health"]["providers"][0],
            serde_json::json!({"provider": "vo", "health": "down"})
        );
        let back: SiteSummary = serde_json::from_value(w).unwrap();
        assert_eq!(back, window());
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        assert_eq!(decode(&[]), Err(SummaryError::Empty));
        assert_eq!(decode(&[2, 0]), Err(SummaryError::Version(2)));
        assert!(matches!(
            decode(&[1, 0xff]),
            Err(SummaryError::Malformed(_))
        ));
        let big = vec![1u8; MAX_SUMMARY_BYTES + 1];
        assert_eq!(decode(&big), Err(SummaryError::Oversized(big.len())));
    }
}
