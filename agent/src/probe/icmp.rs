//! ICMP echo (ping) with our own identifier and sequence numbers, IPv4 and IPv6.
//!
//! Socket choice: the unprivileged ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed
//! when the process's group is inside `net.ipv4.ping_group_range`) first, else a raw
//! socket (needs `CAP_NET_RAW`). With neither, every window's result carries an error
//! saying exactly what to grant. A ping socket's identifier is chosen by the kernel
//! and replies are demultiplexed by it; a raw socket sees every echo reply on the
//! host, so replies are matched by our identifier and the target's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use faultline_shared::ProbeResult;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{EchoTally, io_error_word};

/// Echo payload length (as ping(8) sends: 56 bytes, 64 with the header).
pub const PAYLOAD_LEN: usize = 56;
const MAGIC: &[u8; 8] = b"faultlin";
/// What to grant when no ICMP socket may be opened.
pub const PERMISSION_HINT: &str = "icmp needs a ping socket or a raw socket: grant CAP_NET_RAW \
     (setcap cap_net_raw+ep faultline-agent, or AmbientCapabilities=CAP_NET_RAW in the systemd unit) \
     or allow this group ping sockets (sysctl -w net.ipv4.ping_group_range=\"0 2147483647\")";

/// The short form of [`PERMISSION_HINT`] for the report's `error` field (the full
/// hint is logged once).
pub const PERMISSION_ERROR: &str =
    "icmp not permitted: grant CAP_NET_RAW or net.ipv4.ping_group_range";

/// Which kind of ICMP socket is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// Unprivileged ping socket: no IP header on receive, kernel picks the identifier.
    Ping,
    /// Raw socket: IPv4 replies carry the IP header; we filter by identifier.
    Raw,
}

/// Picks the socket kind from the outcome of trying each, ping socket first; the error
/// says what to grant when neither may be opened.
pub fn choose<T>(
    ping: std::io::Result<T>,
    raw: impl FnOnce() -> std::io::Result<T>,
) -> Result<(T, SocketKind), String> {
    let ping_err = match ping {
        Ok(s) => return Ok((s, SocketKind::Ping)),
        Err(e) => e,
    };
    match raw() {
        Ok(s) => Ok((s, SocketKind::Raw)),
        Err(raw_err) => {
            use std::io::ErrorKind::PermissionDenied;
            if ping_err.kind() == PermissionDenied || raw_err.kind() == PermissionDenied {
                Err(PERMISSION_HINT.into())
            } else {
                Err(format!(
                    "icmp socket: ping socket: {ping_err}; raw socket: {raw_err}"
                ))
            }
        }
    }
}

/// Computes the Internet checksum (RFC 1071) of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request (type 8, or 128 for IPv6) with identifier `id` and sequence `seq`.
/// The IPv6 checksum is left zero: the kernel fills it in for ICMPv6 sockets.
pub fn echo_request(v6: bool, id: u16, seq: u16) -> [u8; 8 + PAYLOAD_LEN] {
    let mut p = [0u8; 8 + PAYLOAD_LEN];
    p[0] = if v6 { 128 } else { 8 };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(MAGIC);
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// An echo reply's identifier and sequence number, or `None` for anything else.
/// `raw_v4` says the bytes start with an IPv4 header (raw IPv4 sockets).
pub fn parse_echo_reply(b: &[u8], v6: bool, raw_v4: bool) -> Option<(u16, u16)> {
    let icmp = if raw_v4 {
        let ihl = usize::from(*b.first()? & 0x0f) * 4;
        if *b.first()? >> 4 != 4 || ihl < 20 {
            return None;
        }
        b.get(ihl..)?
    } else {
        b
    };
    if icmp.len() < 8 || icmp[0] != if v6 { 129 } else { 0 } || icmp[1] != 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

fn open(ip: IpAddr) -> Result<(UdpSocket, SocketKind), String> {
    let (domain, proto) = if ip.is_ipv6() {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let (s, kind) = choose(Socket::new(domain, Type::DGRAM, Some(proto)), || {
        Socket::new(domain, Type::RAW, Some(proto))
    })?;
    s.set_nonblocking(true).map_err(|e| io_error_word(&e))?;
    // An ICMP socket does datagram send_to/recv_from like a UDP one; tokio's
    // UdpSocket only drives readiness, it never looks at the protocol.
    let std_sock: std::net::UdpSocket = s.into();
    let s = UdpSocket::from_std(std_sock).map_err(|e| io_error_word(&e))?;
    Ok((s, kind))
}

/// Pings one host, window after window.
#[derive(Debug)]
pub struct IcmpProber {
    host: String,
    resolver: super::Resolver,
    socket: Option<(UdpSocket, SocketKind, bool)>,
    id: u16,
    next_seq: u32,
    warned: bool,
}

impl IcmpProber {
    pub fn new(host: String) -> Self {
        Self {
            resolver: super::Resolver::new(super::HostPort {
                host: host.clone(),
                port: 0,
            }),
            host,
            socket: None,
            id: fastrand::u16(..),
            next_seq: 0,
            warned: false,
        }
    }

    /// Sends `count` echoes (default one per second of window) spaced `interval`
    /// (default: spread over the window) and waits for replies until the window ends.
    pub async fn measure(
        &mut self,
        window: Duration,
        count: Option<u32>,
        interval: Option<Duration>,
        r: &mut ProbeResult,
        notes: &mut Vec<(&'static str, String)>,
    ) {
        let start = Instant::now();
        let deadline = start + window;
        let Some(ip) = self.resolver.resolve_for(r).await.map(|a| a.ip()) else {
            return;
        };
        let v6 = ip.is_ipv6();
        if self.socket.as_ref().is_none_or(|s| s.2 != v6) {
            match open(ip) {
                Ok((s, k)) => self.socket = Some((s, k, v6)),
                Err(e) => {
                    if !self.warned {
                        tracing::warn!("{}: {e}", self.host);
                        self.warned = true;
                    }
                    r.error = Some(if e == PERMISSION_HINT {
                        PERMISSION_ERROR.into()
                    } else {
                        e
                    });
                    return;
                }
            }
        }
        // Just opened above when absent.
        let (socket, kind, _) = self.socket.as_ref().unwrap();
        notes.push((
            "socket",
            match kind {
                SocketKind::Ping => "ping (unprivileged)".into(),
                SocketKind::Raw => "raw".into(),
            },
        ));
        let grace = super::stamp::MAX_GRACE.min(window / 4);
        let secs = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
        let count = count.unwrap_or(secs.max(1));
        let interval = interval.unwrap_or_else(|| window.saturating_sub(grace) / count.max(1));
        let send_until = deadline - grace;
        let base = self.next_seq;
        // Reserved up front, so a window cut short never shares numbers with the next.
        self.next_seq = base.wrapping_add(count);
        let mut tally = EchoTally::new(base);
        let mut buf = [0u8; 1500];
        let mut next_send = start;
        let mut last_error = None;
        let to = SocketAddr::new(ip, 0);
        loop {
            let sending = tally.sent() < count && next_send <= send_until;
            if !sending && tally.complete() {
                break;
            }
            let wake = if sending { next_send } else { deadline };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if !sending {
                        break;
                    }
                    let seq = tally.next_seq() as u16;
                    let pkt = echo_request(v6, self.id, seq);
                    let now = Instant::now();
                    if let Err(e) = socket.send_to(&pkt, to).await {
                        last_error = Some(io_error_word(&e));
                    }
                    tally.on_sent(now.into_std());
                    next_send += interval;
                }
                got = socket.recv_from(&mut buf) => {
                    let at = Instant::now().into_std();
                    let Ok((n, from)) = got else { continue };
                    if from.ip() != ip {
                        continue;
                    }
                    let raw_v4 = *kind == SocketKind::Raw && !v6;
                    let Some((id, seq16)) = parse_echo_reply(&buf[..n], v6, raw_v4) else {
                        continue;
                    };
                    if *kind == SocketKind::Raw && id != self.id {
                        continue; // another pinger's reply
                    }
                    let off = u32::from(seq16.wrapping_sub(base as u16));
                    tally.on_reply(base.wrapping_add(off), at, Duration::ZERO);
                }
            }
        }
        let s = tally.finish();
        s.fill(r);
        if s.stats.received == 0 {
            r.error = Some(last_error.unwrap_or_else(|| "timeout".into()));
        }
        notes.push(("loss_pct", format!("{:.2}", s.stats.loss() * 100.0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn prefers_ping_socket_then_raw_then_says_what_to_grant() {
        assert_eq!(choose(Ok(1), || Ok(2)), Ok((1, SocketKind::Ping)));
        let denied = || Error::from(ErrorKind::PermissionDenied);
        assert_eq!(choose(Err(denied()), || Ok(2)), Ok((2, SocketKind::Raw)));
        let e = choose::<u8>(Err(denied()), || Err(denied())).unwrap_err();
        assert!(
            e.contains("CAP_NET_RAW") && e.contains("net.ipv4.ping_group_range"),
            "{e}"
        );
    }

    #[test]
    fn echo_request_bytes_and_checksum() {
        let p = echo_request(false, 0x1234, 0x0001);
        assert_eq!(&p[..8], &[8, 0, p[2], p[3], 0x12, 0x34, 0, 1]);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        // RFC 1071's example: 0x0001 0xf203 0xf4f5 0xf6f7 sums to 0xddf2 → !0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let p6 = echo_request(true, 1, 2);
        assert_eq!(&p6[..8], &[128, 0, 0, 0, 0, 1, 0, 2]);
    }

    #[test]
    fn parses_replies_with_and_without_ip_header() {
        let mut reply = echo_request(false, 7, 9);
        reply[0] = 0;
        assert_eq!(parse_echo_reply(&reply, false, false), Some((7, 9)));
        let mut with_ip = vec![0x45u8];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&reply);
        assert_eq!(parse_echo_reply(&with_ip, false, true), Some((7, 9)));
        // Our own request seen on a raw socket is not a reply.
        assert_eq!(
            parse_echo_reply(&echo_request(false, 7, 9), false, false),
            None
        );
        assert_eq!(parse_echo_reply(&[0x45, 0, 0], false, true), None);
        let mut r6 = echo_request(true, 3, 4);
        r6[0] = 129;
        assert_eq!(parse_echo_reply(&r6, true, false), Some((3, 4)));
    }
}
