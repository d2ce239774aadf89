//! ICMP echo (ping) with our own identifier and sequence numbers, IPv4 and IPv6.
//!
//! Socket choice: the unprivileged ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed
//! when the process's group is inside `net.ipv4.ping_group_range`) first, else a raw
//! socket (needs `CAP_NET_RAW`). With neither, every window's result carries an error
//! saying exactly what to grant. A ping socket's identifier is chosen by the kernel
//! and replies are demultiplexed by it; a raw socket sees every echo reply on the
//! host, so replies are matched by our identifier and the target's address.
//!
//! The message format is `wire::icmp`'s; this module owns the socket and the timing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use faultline_shared::ProbeResult;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::peer::Peer;
use super::tally::EchoTally;
use super::{MAX_GRACE, Notes, Probe, io_error_word};
use crate::config::target::{HostPort, IcmpSpec};
use faultline_agent::wire::icmp::{self, EchoRepr, Family, Message, Packet};

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

/// The identifier and sequence number of an echo reply in what a socket of `kind`
/// delivered, or `None` for anything else.
fn echo_reply(b: &[u8], family: Family, kind: SocketKind) -> Option<(u16, u16)> {
    let msg = match (kind, family) {
        (SocketKind::Raw, Family::V4) => icmp::ipv4_payload(b)?,
        _ => b,
    };
    let echo = EchoRepr::parse(family, &Packet::new_checked(msg).ok()?).ok()?;
    (echo.message == Message::EchoReply).then_some((echo.ident, echo.seq_no))
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
pub struct IcmpProbe {
    peer: Peer,
    count: Option<u32>,
    interval: Option<Duration>,
    socket: Option<(UdpSocket, SocketKind, Family)>,
    id: u16,
    next_seq: u32,
    warned: bool,
}

impl IcmpProbe {
    pub fn new(spec: &IcmpSpec) -> Self {
        Self {
            peer: Peer::new(HostPort {
                host: spec.host.clone(),
                port: 0,
            }),
            count: spec.count,
            interval: spec.interval,
            socket: None,
            id: fastrand::u16(..),
            next_seq: 0,
            warned: false,
        }
    }
}

impl Probe for IcmpProbe {
    /// Sends `count` echoes (default one per second of window) spaced `interval`
    /// (default: spread over the window) and waits for replies until the window ends.
    async fn measure(&mut self, window: Duration, r: &mut ProbeResult, notes: &mut Notes) {
        let start = Instant::now();
        let deadline = start + window;
        let Some(ip) = self.peer.resolve_for(deadline, r).await.map(|a| a.ip()) else {
            return;
        };
        let family = if ip.is_ipv6() { Family::V6 } else { Family::V4 };
        if self.socket.as_ref().is_none_or(|s| s.2 != family) {
            match open(ip) {
                Ok((s, k)) => self.socket = Some((s, k, family)),
                Err(e) => {
                    if !self.warned {
                        tracing::warn!("{}: {e}", self.peer.host_port().host);
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
        let grace = MAX_GRACE.min(window / 4);
        let secs = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
        let count = self.count.unwrap_or(secs.max(1));
        let interval = self
            .interval
            .unwrap_or_else(|| window.saturating_sub(grace) / count.max(1));
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
                    let pkt = EchoRepr {
                        family,
                        message: Message::EchoRequest,
                        ident: self.id,
                        seq_no: tally.next_seq() as u16,
                    }
                    .emit();
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
                    let Some((id, seq16)) = echo_reply(&buf[..n], family, *kind) else {
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
    fn replies_by_socket_kind() {
        let reply = |family| {
            EchoRepr {
                family,
                message: Message::EchoReply,
                ident: 7,
                seq_no: 9,
            }
            .emit()
        };
        let v4 = reply(Family::V4);
        assert_eq!(echo_reply(&v4, Family::V4, SocketKind::Ping), Some((7, 9)));
        let mut with_ip = vec![0x45u8];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&v4);
        assert_eq!(
            echo_reply(&with_ip, Family::V4, SocketKind::Raw),
            Some((7, 9))
        );
        // A raw IPv6 socket delivers no IP header.
        let v6 = reply(Family::V6);
        assert_eq!(echo_reply(&v6, Family::V6, SocketKind::Raw), Some((7, 9)));
        // Our own request seen on a raw socket is not a reply.
        let req = EchoRepr {
            family: Family::V4,
            message: Message::EchoRequest,
            ident: 7,
            seq_no: 9,
        }
        .emit();
        assert_eq!(echo_reply(&req, Family::V4, SocketKind::Ping), None);
        assert_eq!(echo_reply(&[0x45, 0, 0], Family::V4, SocketKind::Raw), None);
    }
}
