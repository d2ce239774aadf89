//! The postcard envelope agents publish on `.../sites/{site}/report`.
//!
//! # Layout
//!
//! ```text
//! byte 0      WIRE_VERSION (the major version; 1 today)
//! bytes 1..   postcard(WireReport): site, boot, seq, start_ms, window_ms,
//!             host: Option<record>, probes: Vec<record>, then any trailing bytes
//! record      postcard byte string (varint length + bytes) holding postcard(WireHost)
//!             or postcard(WireProbe), then any trailing bytes
//! ```
//!
//! Measurements travel as integers: milliseconds in 10 µs units, MOS in hundredths,
//! CPU and memory in tenths of a percent, load in hundredths. A report whose values lie
//! on that grid survives `decode(encode(x)) == x` exactly; agents round onto the grid
//! with [`Report::on_wire_grid`] before publishing, so the JSON and postcard forms of
//! one report say the same thing.
//!
//! # Evolution rule
//!
//! postcard has no schema of its own, so the envelope carries one by convention:
//!
//! 1. **Compatible additions keep the version byte.** A new field is only ever
//!    appended at the end of the report or of a host/probe record. Because every
//!    record is length-prefixed, a decoder reads the fields it knows and skips the
//!    rest: an old collector reads a newer agent's reports and ignores what it does
//!    not know (tested below with a record carrying extra trailing bytes).
//! 2. **A newer decoder reads an older record** by decoding the fields it knew
//!    before from the record, then the appended fields from what remains; an empty
//!    remainder means "absent". So appended fields are always optional.
//! 3. **Incompatible changes bump the version byte.** A collector keeps the decoders
//!    of every major version it has known and counts an unknown one as
//!    [`DecodeError::UnsupportedVersion`]; upgrade collectors before agents.
//! 4. Enum codes (`layer`, `kind`) never change meaning; new codes decode as
//!    `Unknown(code)` in older collectors.
//!
//! Today's exact bytes are pinned by fixtures in this module's tests: changing them
//! breaks every deployed agent and must fail the build.

use serde::{Deserialize, Serialize};

use crate::id::{Id, IdError};
use crate::report::{HostHealth, Kind, Layer, ProbeResult, Report, RttStats};

/// The major wire version, written as the envelope's first byte.
pub const WIRE_VERSION: u8 = 1;
/// The largest envelope `encode` writes or `decode` accepts.
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024;
/// The most probes one report may carry.
pub const MAX_PROBES: usize = 128;

/// Milliseconds travel in units of 10 µs.
const MS_SCALE: f64 = 100.0;
const MOS_SCALE: f64 = 100.0;
const PCT_SCALE: f64 = 10.0;
const LOAD_SCALE: f64 = 100.0;

/// Why a byte string is not a report. `Truncated` (incomplete) is kept apart from
/// the kinds of invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported wire version {0} (this build reads version {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("payload ends early")]
    Truncated,
    #[error("malformed payload: {0}")]
    Malformed(postcard::Error),
    #[error("invalid {field}: {err}")]
    InvalidId { field: &'static str, err: IdError },
    #[error("{0} probes exceed the cap of {MAX_PROBES}")]
    TooManyProbes(usize),
}

impl DecodeError {
    /// A short stable label, for counters and metrics.
    pub fn reason(&self) -> crate::RejectReason {
        use crate::RejectReason as R;
        match self {
            DecodeError::Empty | DecodeError::Truncated => R::Truncated,
            DecodeError::TooLarge { .. } => R::Oversized,
            DecodeError::UnsupportedVersion(_) => R::Version,
            DecodeError::Malformed(_) | DecodeError::TooManyProbes(_) => R::Malformed,
            DecodeError::InvalidId { .. } => R::InvalidId,
        }
    }
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            other => DecodeError::Malformed(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("report encodes to {len} bytes, over the {max}-byte cap")]
    TooLarge { len: usize, max: usize },
    #[error("{0} probes exceed the cap of {MAX_PROBES}")]
    TooManyProbes(usize),
    #[error("encoding failed: {0}")]
    Postcard(postcard::Error),
}

#[derive(Serialize, Deserialize)]
struct WireReport<'a> {
    site: &'a str,
    boot: u32,
    seq: u64,
    start_ms: u64,
    window_ms: u32,
    #[serde(borrow)]
    host: Option<Record<'a>>,
    #[serde(borrow)]
    probes: Vec<Record<'a>>,
}

/// A length-prefixed nested record (postcard byte string).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Record<'a>(#[serde(borrow, with = "bytes")] &'a [u8]);

mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = &'de [u8];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(Serialize, Deserialize)]
struct WireHost {
    cpu_permille: u16,
    mem_permille: u16,
    load_centi: u32,
}

#[derive(Serialize, Deserialize)]
struct WireProbe<'a> {
    target: &'a str,
    layer: u8,
    provider: Option<&'a str>,
    kind: u8,
    sent: u32,
    received: u32,
    /// min, then p50, avg, p95, max as offsets above min; 10 µs units.
    rtt: Option<[u32; 5]>,
    jitter: Option<u32>,
    max_burst: Option<u32>,
    mos_centi: Option<u16>,
    error: Option<&'a str>,
}

fn to_units(v: f64, scale: f64) -> u32 {
    // `as` saturates and maps NaN to 0: no input can panic here.
    (v * scale).round() as u32
}

fn from_units(u: u32, scale: f64) -> f64 {
    f64::from(u) / scale
}

fn to_units16(v: f64, scale: f64) -> u16 {
    (v * scale).round() as u16
}

fn rtt_to_wire(r: &RttStats) -> [u32; 5] {
    let min = to_units(r.min, MS_SCALE);
    let above = |v: f64| to_units(v, MS_SCALE).saturating_sub(min);
    [min, above(r.p50), above(r.avg), above(r.p95), above(r.max)]
}

fn rtt_from_wire(w: [u32; 5]) -> RttStats {
    let at = |d: u32| from_units(w[0].saturating_add(d), MS_SCALE);
    RttStats {
        min: from_units(w[0], MS_SCALE),
        p50: at(w[1]),
        avg: at(w[2]),
        p95: at(w[3]),
        max: at(w[4]),
    }
}

/// Encodes `report` as a versioned envelope.
pub fn encode(report: &Report) -> Result<Vec<u8>, EncodeError> {
    if report.probes.len() > MAX_PROBES {
        return Err(EncodeError::TooManyProbes(report.probes.len()));
    }
    let host = report
        .host
        .map(|h| {
            postcard::to_allocvec(&WireHost {
                cpu_permille: to_units16(h.cpu_pct, PCT_SCALE),
                mem_permille: to_units16(h.mem_pct, PCT_SCALE),
                load_centi: to_units(h.load1, LOAD_SCALE),
            })
        })
        .transpose()
        .map_err(EncodeError::Postcard)?;
    let probes = report
        .probes
        .iter()
        .map(|p| {
            postcard::to_allocvec(&WireProbe {
                target: p.target.as_str(),
                layer: p.layer.code(),
                provider: p.provider.as_ref().map(Id::as_str),
                kind: p.kind.code(),
                sent: p.sent,
                received: p.received,
                rtt: p.rtt_ms.as_ref().map(rtt_to_wire),
                jitter: p.jitter_ms.map(|j| to_units(j, MS_SCALE)),
                max_burst: p.max_burst,
                mos_centi: p.mos.map(|m| to_units16(m, MOS_SCALE)),
                error: p.error.as_deref(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(EncodeError::Postcard)?;
    let wire = WireReport {
        site: report.site.as_str(),
        boot: report.boot,
        seq: report.seq,
        start_ms: report.start_ms,
        window_ms: report.window_ms,
        host: host.as_deref().map(Record),
        probes: probes.iter().map(|p| Record(p)).collect(),
    };
    let mut out = vec![WIRE_VERSION];
    let body = postcard::to_allocvec(&wire).map_err(EncodeError::Postcard)?;
    out.extend_from_slice(&body);
    if out.len() > MAX_ENVELOPE_BYTES {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    Ok(out)
}

fn id(field: &'static str, s: &str) -> Result<Id, DecodeError> {
    Id::new(s).map_err(|err| DecodeError::InvalidId { field, err })
}

/// Decodes an envelope. Never panics, whatever the bytes; trailing bytes after a
/// known record are extensions from newer agents and are skipped.
pub fn decode(bytes: &[u8]) -> Result<Report, DecodeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (wire, _extensions) = postcard::take_from_bytes::<WireReport<'_>>(body)?;
    if wire.probes.len() > MAX_PROBES {
        return Err(DecodeError::TooManyProbes(wire.probes.len()));
    }
    let host = match wire.host {
        Some(Record(rec)) => {
            let (h, _) = postcard::take_from_bytes::<WireHost>(rec)?;
            Some(HostHealth {
                cpu_pct: from_units(h.cpu_permille.into(), PCT_SCALE),
                mem_pct: from_units(h.mem_permille.into(), PCT_SCALE),
                load1: from_units(h.load_centi, LOAD_SCALE),
            })
        }
        None => None,
    };
    let probes = wire
        .probes
        .iter()
        .map(|Record(rec)| {
            let (p, _) = postcard::take_from_bytes::<WireProbe<'_>>(rec)?;
            Ok(ProbeResult {
                target: id("target", p.target)?,
                layer: Layer::from_code(p.layer),
                provider: p.provider.map(|s| id("provider", s)).transpose()?,
                kind: Kind::from_code(p.kind),
                sent: p.sent,
                received: p.received,
                rtt_ms: p.rtt.map(rtt_from_wire),
                jitter_ms: p.jitter.map(|j| from_units(j, MS_SCALE)),
                max_burst: p.max_burst,
                mos: p.mos_centi.map(|m| from_units(m.into(), MOS_SCALE)),
                error: p.error.map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(Report {
        v: version,
        site: id("site", wire.site)?,
        boot: wire.boot,
        seq: wire.seq,
        start_ms: wire.start_ms,
        window_ms: wire.window_ms,
        host,
        probes,
    })
}

impl Report {
    /// This report with every measurement rounded to the wire's resolution, so that
    /// its JSON and postcard forms agree exactly.
    pub fn on_wire_grid(&self) -> Report {
        let q = |v: f64, s: f64| from_units(to_units(v, s), s);
        let q16 = |v: f64, s: f64| from_units(to_units16(v, s).into(), s);
        let mut r = self.clone();
        r.v = WIRE_VERSION;
        if let Some(h) = &mut r.host {
            h.cpu_pct = q16(h.cpu_pct, PCT_SCALE);
            h.mem_pct = q16(h.mem_pct, PCT_SCALE);
            h.load1 = q(h.load1, LOAD_SCALE);
        }
        for p in &mut r.probes {
            p.rtt_ms = p.rtt_ms.as_ref().map(|s| rtt_from_wire(rtt_to_wire(s)));
            p.jitter_ms = p.jitter_ms.map(|j| q(j, MS_SCALE));
            p.mos = p.mos.map(|m| q16(m, MOS_SCALE));
        }
        r
    }
}
