//! The STAMP session-sender (RFC 8762): a voice-cadence stream of test packets per
//! window toward a reflector, summarised into loss, RTT, jitter and MOS.
//!
//! The sender numbers its own packets and matches replies by the Session-Sender
//! Sequence Number, so it works against any RFC 8762 reflector, stateless or stateful.
//! RTT is `(T4 − T1) − (T3 − T2)`: the reflector's holding time, read from its own
//! two timestamps, is taken out. Jitter is RFC 3550's estimator over those round-trip
//! times (both directions' variation together; needs no clock sync with the
//! reflector). Loss, duplicates, reordering and the longest loss burst come from the
//! Session-Sender Sequence Numbers; a reply later than the grace period after the last
//! packet counts as lost (and is ignored when it turns up in the next window).
//!
//! The packet format is `wire::stamp`'s; this module owns the socket and the timing.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use faultline_shared::ProbeResult;
use faultline_shared::measure::{Arrival, Codec, VoiceQuality};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::peer::Peer;
use super::tally::{EchoTally, round3};
use super::{MAX_GRACE, Notes, Probe, connected_udp, io_error_word};
use crate::config::target::StampSpec;
use faultline_agent::wire::stamp::{
    self, ERROR_ESTIMATE, NtpTime, Packet, ReflectorRepr, SenderRepr,
};

/// Most packets in one window: what `SeqTracker` tracks (its `SEQ_CAPACITY`, which
/// the shared crate does not export), 5 minutes at 50 packets/s, so loss is never
/// counted for packets it could not track.
pub const MAX_PACKETS: u32 = 16 * 1024;

/// One window's stream, derived from the target's options and the window.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub packets: u32,
    pub interval: Duration,
    /// How long to wait for replies after the last packet; later replies are lost.
    pub grace: Duration,
    pub codec: Codec,
    /// Test packet length, bytes.
    pub len: usize,
    /// Hard end of the measurement (the window): a stalled box stops here.
    pub window: Duration,
}

impl StreamConfig {
    /// `burst` of zero means the whole window. The stream and its grace period always
    /// fit in `window`: the grace is a quarter of the window at most.
    pub fn for_window(
        window: Duration,
        pps: u32,
        burst: Duration,
        codec: Codec,
        len: usize,
    ) -> Self {
        let grace = MAX_GRACE.min(window / 4);
        let room = window.saturating_sub(grace);
        let run = if burst.is_zero() {
            room
        } else {
            burst.min(room)
        };
        let pps = pps.max(1);
        let packets = ((run.as_secs_f64() * f64::from(pps)).floor() as u32).clamp(1, MAX_PACKETS);
        Self {
            packets,
            interval: Duration::from_secs(1) / pps,
            grace,
            codec,
            len,
            window,
        }
    }
}

/// The session-sender of one target, kept across windows (its socket and sequence).
#[derive(Debug)]
pub struct StampProbe {
    spec: StampSpec,
    peer: Peer,
    socket: Option<(SocketAddr, UdpSocket)>,
    next_seq: u32,
    windows: u64,
}

impl StampProbe {
    pub fn new(spec: &StampSpec) -> Self {
        Self {
            spec: spec.clone(),
            peer: Peer::new(spec.to.clone()),
            socket: None,
            next_seq: 0,
            windows: 0,
        }
    }

    /// Whether this window runs the full burst (every `every`-th window, starting
    /// with the first); counts the window.
    pub fn burst_due(&mut self) -> bool {
        let due = self
            .windows
            .is_multiple_of(u64::from(self.spec.every.max(1)));
        self.windows += 1;
        due
    }

    async fn socket(&mut self, deadline: Instant) -> Result<&UdpSocket, String> {
        let peer = self.peer.resolve(deadline).await?;
        if self.socket.as_ref().is_none_or(|(p, _)| *p != peer) {
            self.socket = Some((peer, connected_udp(peer).await?));
        }
        // Just set above when absent.
        Ok(&self.socket.as_ref().unwrap().1)
    }

    /// Sends one stream and summarises it into `r`.
    async fn stream(&mut self, cfg: &StreamConfig, r: &mut ProbeResult, notes: &mut Notes) {
        let base = self.next_seq;
        // Reserve the window's numbers up front: if the caller cuts this window short
        // (drops the future), the next one still starts past every number sent here.
        self.next_seq = base.wrapping_add(cfg.packets);
        let start = Instant::now();
        let hard_end = start + cfg.window;
        let socket = match self.socket(hard_end).await {
            Ok(s) => s,
            Err(e) => {
                self.peer.forget();
                r.error = Some(e);
                return;
            }
        };
        let mut tally = EchoTally::new(base);
        // Built once per window; each send rewrites the sequence number and timestamp.
        let mut out = SenderRepr {
            seq: base,
            timestamp: NtpTime::default(),
            error_estimate: ERROR_ESTIMATE,
        }
        .emit_padded(cfg.len);
        let mut buf = [0u8; stamp::MAX_LEN];
        let mut next_send = start;
        let mut stop_at = start + cfg.interval * cfg.packets + cfg.grace;
        let mut last_error: Option<String> = None;
        let mut stray = 0u32;
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
                    let mut packet = Packet::new_unchecked(&mut out[..]);
                    packet.set_seq(tally.next_seq());
                    packet.set_timestamp(NtpTime::from_system(SystemTime::now()));
                    if let Err(e) = socket.send(&out).await {
                        last_error = Some(io_error_word(&e));
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
                        Ok(n) => match Packet::new_checked(&buf[..n]).and_then(|p| ReflectorRepr::parse(&p)) {
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

impl Probe for StampProbe {
    /// The burst (or, in windows between bursts, the short train) of this window.
    async fn measure(&mut self, window: Duration, r: &mut ProbeResult, notes: &mut Notes) {
        let s = &self.spec;
        let mut cfg = StreamConfig::for_window(window, s.pps, s.burst, s.codec, s.packet_len());
        let idle = s.idle_packets;
        if !self.burst_due() {
            cfg.packets = cfg.packets.min(idle);
        }
        self.stream(&cfg, r, notes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::{Host, HostPort};

    #[test]
    fn bursts_run_every_nth_window_from_the_first() {
        let spec = |every| StampSpec {
            to: HostPort {
                host: Host::Name("127.0.0.1".into()),
                port: 862,
            },
            pps: 50,
            burst: Duration::from_secs(5),
            every,
            idle_packets: 5,
            codec: Codec::G711,
            pad: false,
        };
        let mut p = StampProbe::new(&spec(3));
        let due: Vec<bool> = (0..7).map(|_| p.burst_due()).collect();
        assert_eq!(due, [true, false, false, true, false, false, true]);
        let mut p = StampProbe::new(&spec(1));
        assert!(p.burst_due() && p.burst_due());
    }

    #[test]
    fn stream_fits_the_window() {
        let c = StreamConfig::for_window(
            Duration::from_secs(10),
            50,
            Duration::from_secs(5),
            Codec::G711,
            160,
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
            44,
        );
        assert_eq!((c.packets, c.len), (450, 44));
        let c = StreamConfig::for_window(
            Duration::from_secs(2),
            50,
            Duration::from_secs(5),
            Codec::G711,
            44,
        );
        assert_eq!((c.packets, c.grace), (75, Duration::from_millis(500)));
        let c = StreamConfig::for_window(
            Duration::from_secs(600),
            1000,
            Duration::ZERO,
            Codec::G711,
            44,
        );
        assert_eq!(c.packets, MAX_PACKETS);
    }
}
