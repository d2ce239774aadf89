//! STAMP (RFC 8762), unauthenticated mode: the test packet formats, the reflection
//! rule, and the session-sender that measures a voice-cadence stream.
//!
//! Session-Sender test packet (44 bytes, optionally zero-padded):
//! ```text
//! 0  Sequence Number (4) | 4 Timestamp (8, NTP) | 12 Error Estimate (2) | 14 MBZ (30)
//! ```
//! Session-Reflector test packet (44 bytes, padded to the sender's length):
//! ```text
//! 0  Sequence Number (4) | 4 Timestamp (8) | 12 Error Estimate (2) | 14 MBZ (2)
//! 16 Receive Timestamp (8) | 24 Session-Sender Sequence Number (4)
//! 28 Session-Sender Timestamp (8) | 36 Session-Sender Error Estimate (2) | 38 MBZ (2)
//! 40 Session-Sender TTL (1) | 41 MBZ (3)
//! ```
//! The sender numbers its own packets and matches replies by the Session-Sender
//! Sequence Number, so it works against any RFC 8762 reflector, stateless or stateful.
//! RTT is `(T4 − T1) − (T3 − T2)`: the reflector's holding time, read from its own
//! two timestamps, is taken out. Jitter is RFC 3550's estimator over those round-trip
//! times (both directions' variation together; needs no clock sync with the
//! reflector). Loss, duplicates, reordering and the longest loss burst come from the
//! Session-Sender Sequence Numbers; a reply later than the grace period after the last
//! packet counts as lost (and is ignored when it turns up in the next window).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_shared::ProbeResult;
use faultline_shared::measure::{Arrival, Codec, VoiceQuality};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{EchoTally, HostPort, Resolver, any_local, io_error_word, round3};

/// Length of an unauthenticated STAMP test packet, both directions.
pub const BASE_LEN: usize = 44;
/// Largest packet the sender pads to or the reflector answers.
pub const MAX_LEN: usize = 1472;
/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Error Estimate: S=0 (not synchronised to UTC), Z=0 (NTP format), Scale 22 and
/// Multiplier 1, i.e. about ±1 ms: what an unsynchronised gateway can honestly claim.
pub const ERROR_ESTIMATE: u16 = (22 << 8) | 1;

/// A 64-bit NTP timestamp (seconds since 1900, 32.32 fixed point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// `self − earlier`, or `None` when negative or absurd (> 1 hour).
    pub fn since(self, earlier: NtpTime) -> Option<Duration> {
        let diff = self.0.checked_sub(earlier.0)?;
        let secs = diff >> 32;
        if secs > 3600 {
            return None;
        }
        let nanos = ((diff & 0xffff_ffff) * 1_000_000_000) >> 32;
        Some(Duration::new(secs, nanos as u32))
    }
}

/// The sender's test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderPacket {
    pub seq: u32,
    pub timestamp: NtpTime,
    pub error_estimate: u16,
}

/// The reflector's test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectorPacket {
    pub seq: u32,
    pub timestamp: NtpTime,
    pub error_estimate: u16,
    pub receive_timestamp: NtpTime,
    pub sender_seq: u32,
    pub sender_timestamp: NtpTime,
    pub sender_error_estimate: u16,
    pub sender_ttl: u8,
}

/// Why bytes are not a STAMP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes is shorter than STAMP's 44")]
    TooShort(usize),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    (u64::from(u32_at(b, at)) << 32) | u64::from(u32_at(b, at + 4))
}

impl SenderPacket {
    /// Writes the packet into `buf` (its length is the packet length, ≥ 44; the rest
    /// is zeroed: MBZ and padding).
    pub fn encode(&self, buf: &mut [u8]) {
        assert!(buf.len() >= BASE_LEN, "STAMP packets are at least 44 bytes");
        buf.fill(0);
        buf[0..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..12].copy_from_slice(&self.timestamp.0.to_be_bytes());
        buf[12..14].copy_from_slice(&self.error_estimate.to_be_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<Self, PacketError> {
        if b.len() < BASE_LEN {
            return Err(PacketError::TooShort(b.len()));
        }
        Ok(Self {
            seq: u32_at(b, 0),
            timestamp: NtpTime(u64_at(b, 4)),
            error_estimate: u16_at(b, 12),
        })
    }
}

impl ReflectorPacket {
    /// Writes the packet into `buf` (≥ 44 bytes; the rest zeroed).
    pub fn encode(&self, buf: &mut [u8]) {
        assert!(buf.len() >= BASE_LEN, "STAMP packets are at least 44 bytes");
        buf.fill(0);
        buf[0..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..12].copy_from_slice(&self.timestamp.0.to_be_bytes());
        buf[12..14].copy_from_slice(&self.error_estimate.to_be_bytes());
        buf[16..24].copy_from_slice(&self.receive_timestamp.0.to_be_bytes());
        buf[24..28].copy_from_slice(&self.sender_seq.to_be_bytes());
        buf[28..36].copy_from_slice(&self.sender_timestamp.0.to_be_bytes());
        buf[36..38].copy_from_slice(&self.sender_error_estimate.to_be_bytes());
        buf[40] = self.sender_ttl;
    }

    pub fn decode(b: &[u8]) -> Result<Self, PacketError> {
        if b.len() < BASE_LEN {
            return Err(PacketError::TooShort(b.len()));
        }
        Ok(Self {
            seq: u32_at(b, 0),
            timestamp: NtpTime(u64_at(b, 4)),
            error_estimate: u16_at(b, 12),
            receive_timestamp: NtpTime(u64_at(b, 16)),
            sender_seq: u32_at(b, 24),
            sender_timestamp: NtpTime(u64_at(b, 28)),
            sender_error_estimate: u16_at(b, 36),
            sender_ttl: b[40],
        })
    }

    /// How long the reflector held the packet (T3 − T2), when its clock is sane.
    pub fn holding_time(&self) -> Option<Duration> {
        self.timestamp.since(self.receive_timestamp)
    }
}

/// The reflection rule (RFC 8762 §4.3): builds the answer to `request` into `out`
/// and returns its length (the request's, at least 44), or `None` when the request
/// is not a STAMP packet. `seq` is the reflector's own number (stateful) or the
/// sender's (stateless); `t2` when it arrived, `t3` now; `ttl` the IP TTL it had.
pub fn reflect(
    request: &[u8],
    seq: Option<u32>,
    t2: NtpTime,
    t3: NtpTime,
    ttl: u8,
    out: &mut [u8],
) -> Option<usize> {
    let req = SenderPacket::decode(request).ok()?;
    let len = request.len().clamp(BASE_LEN, MAX_LEN.min(out.len()));
    ReflectorPacket {
        seq: seq.unwrap_or(req.seq),
        timestamp: t3,
        error_estimate: ERROR_ESTIMATE,
        receive_timestamp: t2,
        sender_seq: req.seq,
        sender_timestamp: req.timestamp,
        sender_error_estimate: req.error_estimate,
        sender_ttl: ttl,
    }
    .encode(&mut out[..len]);
    Some(len)
}

/// Test packet length for `codec`: 44 bytes, or the codec's 20 ms frame when padded.
pub fn packet_len(codec: Codec, pad: bool) -> usize {
    if pad {
        codec.frame_bytes().max(BASE_LEN)
    } else {
        BASE_LEN
    }
}

/// One window's stream, derived from the target's options and the window.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub packets: u32,
    pub interval: Duration,
    /// How long to wait for replies after the last packet; later replies are lost.
    pub grace: Duration,
    pub codec: Codec,
    pub len: usize,
    /// Hard end of the measurement (the window): a stalled box stops here.
    pub window: Duration,
}

/// Default packets sent at the voice cadence in a window without a burst
/// (`stamp_every`, `stamp_idle_packets`): RTT, loss and a MOS estimate every window
/// for little traffic.
pub const IDLE_PACKETS: u32 = 5;

/// Most packets in one window: what `SeqTracker` tracks (its `SEQ_CAPACITY`, which
/// the shared crate does not export), 5 minutes at 50 packets/s.
pub const MAX_PACKETS: u32 = 16 * 1024;

/// Longest wait for replies after the last packet of a burst.
pub const MAX_GRACE: Duration = Duration::from_secs(1);

impl StreamConfig {
    /// `burst` of zero means the whole window. The stream and its grace period always
    /// fit in `window`: the grace is a quarter of the window at most.
    pub fn for_window(
        window: Duration,
        pps: u32,
        burst: Duration,
        codec: Codec,
        pad: bool,
    ) -> Self {
        let grace = MAX_GRACE.min(window / 4);
        let room = window.saturating_sub(grace);
        let run = if burst.is_zero() {
            room
        } else {
            burst.min(room)
        };
        let pps = pps.max(1);
        // Capped at what one window's sequence tracker holds (5 min at 50 packets/s),
        // so loss is never counted for packets it could not track.
        let packets = ((run.as_secs_f64() * f64::from(pps)).floor() as u32).clamp(1, MAX_PACKETS);
        Self {
            packets,
            interval: Duration::from_secs(1) / pps,
            grace,
            codec,
            len: packet_len(codec, pad),
            window,
        }
    }
}

/// The session-sender of one target, kept across windows (its socket and sequence).
#[derive(Debug)]
pub struct StampProber {
    resolver: Resolver,
    socket: Option<(std::net::SocketAddr, UdpSocket)>,
    next_seq: u32,
    windows: u64,
}

impl StampProber {
    pub fn new(to: HostPort) -> Self {
        Self {
            resolver: Resolver::new(to),
            socket: None,
            next_seq: 0,
            windows: 0,
        }
    }

    /// Whether this window runs the full burst (every `every`-th window, starting
    /// with the first); counts the window.
    pub fn burst_due(&mut self, every: u32) -> bool {
        let due = self.windows.is_multiple_of(u64::from(every.max(1)));
        self.windows += 1;
        due
    }

    async fn socket(&mut self) -> Result<&UdpSocket, String> {
        let peer = self.resolver.resolve().await?;
        if self.socket.as_ref().is_none_or(|(p, _)| *p != peer) {
            let s = UdpSocket::bind(any_local(&peer))
                .await
                .map_err(|e| io_error_word(&e))?;
            s.connect(peer).await.map_err(|e| io_error_word(&e))?;
            self.socket = Some((peer, s));
        }
        // Just set above when absent.
        Ok(&self.socket.as_ref().unwrap().1)
    }

    /// Sends one stream and summarises it into `r`.
    pub async fn measure(
        &mut self,
        cfg: &StreamConfig,
        r: &mut ProbeResult,
        notes: &mut Vec<(&'static str, String)>,
    ) {
        let base = self.next_seq;
        // Reserve the window's numbers up front: if the caller cuts this window short
        // (drops the future), the next one still starts past every number sent here.
        self.next_seq = base.wrapping_add(cfg.packets);
        let socket = match self.socket().await {
            Ok(s) => s,
            Err(e) => {
                self.resolver.forget();
                r.error = Some(e);
                return;
            }
        };
        let mut tally = EchoTally::new(base);
        let mut out = vec![0u8; cfg.len];
        let mut buf = vec![0u8; MAX_LEN];
        let start = Instant::now();
        let mut next_send = start;
        let mut stop_at = start + cfg.interval * cfg.packets + cfg.grace;
        let mut last_error: Option<String> = None;
        let mut stray = 0u32;
        let hard_end = start + cfg.window;
        loop {
            let sending = tally.sent() < cfg.packets && next_send + cfg.grace <= hard_end;
            if !sending && tally.complete() {
                break;
            }
            let wake = if sending {
                next_send
            } else {
                stop_at.min(hard_end)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if !sending {
                        break;
                    }
                    let now = Instant::now();
                    SenderPacket {
                        seq: tally.next_seq(),
                        timestamp: NtpTime::now(),
                        error_estimate: ERROR_ESTIMATE,
                    }
                    .encode(&mut out);
                    match socket.send(&out).await {
                        Ok(_) => {}
                        Err(e) => last_error = Some(io_error_word(&e)),
                    }
                    tally.on_sent(now.into_std());
                    // On the nominal schedule: after a stall the late packets go out
                    // at once, so a window always sends what it planned.
                    next_send += cfg.interval;
                    if tally.sent() == cfg.packets {
                        stop_at = now + cfg.grace;
                    }
                }
                got = socket.recv(&mut buf) => {
                    let at = Instant::now().into_std();
                    match got {
                        Ok(n) => match ReflectorPacket::decode(&buf[..n]) {
                            Ok(p) => {
                                let hold = p.holding_time().unwrap_or_default();
                                if tally.on_reply(p.sender_seq, at, hold) == Arrival::OutOfWindow {
                                    stray += 1;
                                }
                            }
                            Err(_) => stray += 1,
                        },
                        Err(e) => last_error = Some(io_error_word(&e)),
                    }
                }
            }
        }
        let s = tally.finish();
        s.fill(r);
        if s.stats.received > 0 {
            let rtt = s.rtt.map_or(0.0, |x| x.avg);
            let q = VoiceQuality::assess(
                rtt,
                s.jitter_ms.unwrap_or(0.0),
                s.stats.loss(),
                s.stats.burst_r,
                cfg.codec,
            );
            r.mos = Some((q.mos * 100.0).round() / 100.0);
            notes.push(("r_factor", format!("{:.1}", q.r)));
        } else {
            r.error = Some(last_error.unwrap_or_else(|| "timeout".into()));
        }
        notes.push(("codec", cfg.codec.to_string()));
        notes.push(("packet_bytes", cfg.len.to_string()));
        notes.push(("duplicates", s.stats.duplicates.to_string()));
        notes.push(("reordered", s.stats.reordered.to_string()));
        notes.push(("loss_pct", format!("{:.2}", round3(s.stats.loss() * 100.0))));
        if stray > 0 {
            notes.push(("late_or_stray", stray.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_time_from_unix_epoch_and_half_second() {
        let t = NtpTime::from_system(UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(t.0 >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(t.0 & 0xffff_ffff, 0x8000_0000);
        let later = NtpTime::from_system(UNIX_EPOCH + Duration::from_millis(1750));
        assert_eq!(later.since(t), Some(Duration::from_millis(250)));
        assert_eq!(t.since(later), None);
    }

    #[test]
    fn sender_packet_layout() {
        let p = SenderPacket {
            seq: 0x0102_0304,
            timestamp: NtpTime(0x1112_1314_1516_1718),
            error_estimate: 0x1601,
        };
        let mut b = [0xffu8; 44];
        p.encode(&mut b);
        let mut want = [0u8; 44];
        want[..14].copy_from_slice(&[
            1, 2, 3, 4, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x16, 0x01,
        ]);
        assert_eq!(b, want);
        assert_eq!(SenderPacket::decode(&b), Ok(p));
        assert_eq!(
            SenderPacket::decode(&b[..43]),
            Err(PacketError::TooShort(43))
        );
    }

    #[test]
    fn reflector_packet_layout() {
        let p = ReflectorPacket {
            seq: 7,
            timestamp: NtpTime(0xA0A1_A2A3_A4A5_A6A7),
            error_estimate: 0x8001,
            receive_timestamp: NtpTime(0xB0B1_B2B3_B4B5_B6B7),
            sender_seq: 0x0102_0304,
            sender_timestamp: NtpTime(0xC0C1_C2C3_C4C5_C6C7),
            sender_error_estimate: 0x1601,
            sender_ttl: 64,
        };
        let mut b = [0u8; 44];
        p.encode(&mut b);
        let want: [u8; 44] = [
            0, 0, 0, 7, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0x80, 0x01, 0, 0, //
            0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 1, 2, 3, 4, //
            0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0x16, 0x01, 0, 0, //
            64, 0, 0, 0,
        ];
        assert_eq!(b, want);
        assert_eq!(ReflectorPacket::decode(&b), Ok(p));
    }

    #[test]
    fn reflection_keeps_length_and_copies_sender_fields() {
        let mut req = [0u8; 160];
        SenderPacket {
            seq: 42,
            timestamp: NtpTime(1 << 40),
            error_estimate: ERROR_ESTIMATE,
        }
        .encode(&mut req);
        let mut out = [0u8; MAX_LEN];
        let t2 = NtpTime(2 << 40);
        let t3 = NtpTime((2 << 40) + (1 << 22));
        let n = reflect(&req, None, t2, t3, 63, &mut out).unwrap();
        assert_eq!(n, 160);
        let p = ReflectorPacket::decode(&out[..n]).unwrap();
        assert_eq!((p.seq, p.sender_seq, p.sender_ttl), (42, 42, 63));
        assert_eq!(p.sender_timestamp, NtpTime(1 << 40));
        assert_eq!(p.receive_timestamp, t2);
        assert_eq!(p.holding_time(), Some(Duration::from_nanos(976_562)));
        let n = reflect(&req, Some(9), t2, t3, 63, &mut out).unwrap();
        assert_eq!(ReflectorPacket::decode(&out[..n]).unwrap().seq, 9);
        assert_eq!(reflect(&req[..20], None, t2, t3, 1, &mut out), None);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn packets_round_trip(seq: u32, ts: u64, ee: u16, rseq: u32, t2: u64, ttl: u8, pad in 0usize..200) {
                let mut b = vec![0u8; BASE_LEN + pad];
                let p = SenderPacket { seq, timestamp: NtpTime(ts), error_estimate: ee };
                p.encode(&mut b);
                prop_assert_eq!(SenderPacket::decode(&b), Ok(p));
                let mut out = vec![0u8; MAX_LEN];
                let n = reflect(&b, Some(rseq), NtpTime(t2), NtpTime(ts), ttl, &mut out).unwrap();
                prop_assert_eq!(n, b.len().min(MAX_LEN));
                let r = ReflectorPacket::decode(&out[..n]).unwrap();
                prop_assert_eq!((r.seq, r.sender_seq, r.sender_timestamp, r.sender_ttl), (rseq, seq, NtpTime(ts), ttl));
            }

            #[test]
            fn decoders_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..100)) {
                prop_assert_eq!(SenderPacket::decode(&b).is_ok(), b.len() >= BASE_LEN);
                prop_assert_eq!(ReflectorPacket::decode(&b).is_ok(), b.len() >= BASE_LEN);
            }

            #[test]
            fn ntp_differences_match_durations(base_ms in 0u64..4_000_000_000_000, d_us in 0u64..3_600_000_000) {
                let t0 = UNIX_EPOCH + Duration::from_millis(base_ms);
                let a = NtpTime::from_system(t0);
                let b = NtpTime::from_system(t0 + Duration::from_micros(d_us));
                let got = b.since(a).unwrap().as_nanos() as i128;
                prop_assert!((got - i128::from(d_us) * 1000).abs() <= 2, "{got} vs {d_us} us");
            }
        }
    }

    #[test]
    fn bursts_run_every_nth_window_from_the_first() {
        let mut p = StampProber::new(HostPort {
            host: "127.0.0.1".into(),
            port: 862,
        });
        let due: Vec<bool> = (0..7).map(|_| p.burst_due(3)).collect();
        assert_eq!(due, [true, false, false, true, false, false, true]);
        assert!(p.burst_due(1) && p.burst_due(1));
    }

    #[test]
    fn stream_fits_the_window() {
        let c = StreamConfig::for_window(
            Duration::from_secs(10),
            50,
            Duration::from_secs(5),
            Codec::G711,
            true,
        );
        assert_eq!(
            (c.packets, c.interval, c.grace, c.len),
            (250, Duration::from_millis(20), MAX_GRACE, 160)
        );
        let c = StreamConfig::for_window(
            Duration::from_secs(10),
            50,
            Duration::ZERO,
            Codec::G729a,
            true,
        );
        assert_eq!((c.packets, c.len), (450, 44));
        let c = StreamConfig::for_window(
            Duration::from_secs(2),
            50,
            Duration::from_secs(5),
            Codec::G711,
            false,
        );
        assert_eq!((c.packets, c.grace), (75, Duration::from_millis(500)));
        let c = StreamConfig::for_window(
            Duration::from_secs(600),
            1000,
            Duration::ZERO,
            Codec::G711,
            false,
        );
        assert_eq!(c.packets, MAX_PACKETS);
    }
}
