//! `faultline-agent reflect`: an RFC 8762 STAMP session-reflector, unauthenticated,
//! stateless (echoes the sender's sequence number) or stateful (`--stateful`: its own
//! per-session counter, so a sender can tell forward from backward loss).
//!
//! The packet rule lives in `probe::stamp::reflect`; this file owns the socket, the
//! session table and the shutdown signals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::probe::stamp::{self, MAX_LEN, NtpTime};

#[derive(Debug, clap::Args)]
pub struct ReflectArgs {
    /// Address to listen on (default port 862)
    #[arg(long, default_value = "0.0.0.0:862")]
    pub listen: String,
    /// Keep a sequence counter per sender (RFC 8762 stateful mode)
    #[arg(long)]
    pub stateful: bool,
}

/// Most sessions a stateful reflector remembers; idle ones are forgotten first.
pub const MAX_SESSIONS: usize = 4096;
/// A stateful session idle this long starts again at sequence 0.
pub const SESSION_IDLE: Duration = Duration::from_secs(60);

/// The reflector's per-sender counters (stateful mode), bounded in memory.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<SocketAddr, (u32, Instant)>,
}

impl Sessions {
    /// The reflector sequence number for the next packet from `peer` at `now`.
    pub fn next(&mut self, peer: SocketAddr, now: Instant) -> u32 {
        if self.map.len() >= MAX_SESSIONS && !self.map.contains_key(&peer) {
            self.map
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < SESSION_IDLE);
            if self.map.len() >= MAX_SESSIONS {
                // All busy: drop the stalest to make room.
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
                {
                    self.map.remove(&oldest);
                }
            }
        }
        let e = self.map.entry(peer).or_insert((0, now));
        if now.saturating_duration_since(e.1) >= SESSION_IDLE {
            e.0 = 0;
        }
        let seq = e.0;
        e.0 = e.0.wrapping_add(1);
        e.1 = now;
        seq
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Reflects every STAMP packet arriving on `socket` until `shutdown` completes.
/// Malformed packets are counted and dropped; returns (reflected, dropped).
pub async fn serve(
    socket: UdpSocket,
    stateful: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> (u64, u64) {
    let mut sessions = Sessions::default();
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; MAX_LEN];
    let (mut reflected, mut dropped) = (0u64, 0u64);
    enable_ttl(&socket);
    let fd = socket.as_raw_fd();
    tokio::pin!(shutdown);
    loop {
        let (n, peer, ttl) = tokio::select! {
            _ = &mut shutdown => break,
            got = socket.async_io(Interest::READABLE, || recv_with_ttl(fd, &mut buf)) => match got {
                Ok(x) => x,
                // ICMP errors from earlier sends surface here on some systems: not fatal.
                Err(e) => {
                    tracing::debug!("reflect: receive error: {e}");
                    continue;
                }
            },
        };
        let t2 = NtpTime::now();
        let seq = stateful.then(|| sessions.next(peer, Instant::now()));
        // 0 when the kernel did not say (it always does on Linux once asked).
        match stamp::reflect(
            &buf[..n],
            seq,
            t2,
            NtpTime::now(),
            ttl.unwrap_or(0),
            &mut out,
        ) {
            Some(len) => {
                if let Err(e) = socket.send_to(&out[..len], peer).await {
                    tracing::debug!("reflect: send to {peer}: {e}");
                }
                reflected += 1;
            }
            None => dropped += 1,
        }
    }
    (reflected, dropped)
}

/// Asks the kernel to hand each datagram's IPv4 TTL / IPv6 hop limit with it
/// (RFC 8762: the reflector copies it into Session-Sender TTL). Best effort: an
/// option the socket's family does not know is simply not set.
fn enable_ttl(socket: &UdpSocket) {
    let fd = socket.as_raw_fd();
    let one: libc::c_int = 1;
    for (level, opt) in [
        (libc::IPPROTO_IP, libc::IP_RECVTTL),
        (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT),
    ] {
        // SAFETY: `fd` is an open socket for the duration of the call, and the
        // option value points at a live c_int of the length given.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// `recvmsg` on `fd`: the datagram into `buf`, its sender, and its TTL / hop limit
/// when the kernel attached one. Non-blocking: `WouldBlock` when nothing is queued.
fn recv_with_ttl(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<u8>)> {
    // 128 bytes of u64 words: room for the TTL message, aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: every pointer handed to recvmsg (address storage, iovec over `buf`,
    // control buffer) is valid and sized as declared for the call; the control
    // messages are walked only with the libc CMSG macros within `msg_controllen`,
    // and their data read unaligned.
    let ((n, ttl), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = storage.cast();
            msg.msg_namelen = *len;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(fd, &raw mut msg, 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *len = msg.msg_namelen;
            let mut ttl = None;
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
                    || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT)
                {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    ttl = u8::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
            Ok((n as usize, ttl))
        })?
    };
    let peer = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::other("datagram from a non-IP address"))?;
    Ok((n, peer, ttl))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, crate::probe::STAMP_PORT));
    }
    Err(format!(
        "--listen {s:?}: expected IP:PORT (e.g. 0.0.0.0:862) or an IP"
    ))
}

pub fn main(args: ReflectArgs) -> ExitCode {
    let addr = match listen_addr(&args.listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let socket = match UdpSocket::bind(addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    eprintln!(
                        "hint: ports below 1024 need root or CAP_NET_BIND_SERVICE; or use --listen 0.0.0.0:8620"
                    );
                }
                return ExitCode::FAILURE;
            }
        };
        let local = socket.local_addr().unwrap_or(addr);
        tracing::info!(
            "STAMP reflector (RFC 8762, unauthenticated, {}) listening on udp {local}",
            if args.stateful { "stateful" } else { "stateless" }
        );
        let (reflected, dropped) = serve(socket, args.stateful, shutdown_signal()).await;
        tracing::info!("reflector stopped: {reflected} packets reflected, {dropped} malformed dropped");
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateful_counts_per_peer_and_restarts_after_idle() {
        let mut s = Sessions::default();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let t = Instant::now();
        assert_eq!(s.next(a, t), 0);
        assert_eq!(s.next(a, t), 1);
        assert_eq!(s.next(b, t), 0);
        assert_eq!(s.next(a, t + SESSION_IDLE), 0);
    }

    #[test]
    fn session_table_is_bounded() {
        let mut s = Sessions::default();
        let t = Instant::now();
        for i in 0..(MAX_SESSIONS as u32 + 10) {
            let peer =
                SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1000 + (i >> 16) as u16));
            s.next(peer, t);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
    }

    #[test]
    fn listen_forms() {
        assert_eq!(listen_addr("127.0.0.1:9").unwrap().port(), 9);
        assert_eq!(listen_addr("::").unwrap().port(), 862);
        assert!(listen_addr("nope").is_err());
    }
}
