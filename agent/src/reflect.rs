//! `faultline-agent reflect`: an RFC 8762 STAMP session-reflector, unauthenticated,
//! stateless (echoes the sender's sequence number) or stateful (`--stateful`: its own
//! per-session counter, so a sender can tell forward from backward loss).
//!
//! The packet rule lives in `wire::stamp::reflect`; this file owns the socket, the
//! session table and the shutdown signals.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use faultline_agent::wire::stamp::{self, NtpTime};

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

/// SipHash keyed once per process (std's `RandomState`): the session table is filled
/// by strangers, who must not be able to pick addresses that collide.
#[derive(Debug, Clone)]
pub struct KeyedHasher(std::hash::DefaultHasher);

impl Default for KeyedHasher {
    fn default() -> Self {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        Self(KEYS.get_or_init(RandomState::new).build_hasher())
    }
}

impl Hasher for KeyedHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
}

/// One sender's counter.
#[derive(Debug, Clone, Copy)]
struct Session {
    next: u32,
    seen: Instant,
}

type SessionMap =
    heapless::IndexMap<SocketAddr, Session, hash32::BuildHasherDefault<KeyedHasher>, MAX_SESSIONS>;

/// The reflector's per-sender counters (stateful mode), in a table of fixed capacity:
/// however many senders there are, it holds [`MAX_SESSIONS`] and never grows.
#[derive(Debug)]
pub struct Sessions {
    map: Box<SessionMap>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            map: Box::new(SessionMap::new()),
        }
    }
}

impl Sessions {
    /// The reflector sequence number for the next packet from `peer` at `now`.
    pub fn next(&mut self, peer: SocketAddr, now: Instant) -> u32 {
        if let Some(s) = self.map.get_mut(&peer) {
            if now.saturating_duration_since(s.seen) >= SESSION_IDLE {
                s.next = 0;
            }
            let seq = s.next;
            s.next = s.next.wrapping_add(1);
            s.seen = now;
            return seq;
        }
        if self.map.is_full() {
            self.make_room(now);
        }
        // `make_room` left at least one slot free.
        let inserted = self.map.insert(peer, Session { next: 1, seen: now });
        debug_assert!(inserted.is_ok());
        0
    }

    /// Forgets idle sessions, or the stalest when all are busy.
    fn make_room(&mut self, now: Instant) {
        self.map
            .retain(|_, s| now.saturating_duration_since(s.seen) < SESSION_IDLE);
        if self.map.is_full() {
            let oldest = self.map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.map.swap_remove(&oldest);
            }
        }
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
    // Only a stateful reflector keeps sessions (a fixed table of MAX_SESSIONS).
    let mut sessions = stateful.then(Sessions::default);
    let mut buf = vec![0u8; 65_536];
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
        let t2 = NtpTime::from_system(SystemTime::now());
        let seq = sessions.as_mut().map(|s| s.next(peer, Instant::now()));
        let t3 = NtpTime::from_system(SystemTime::now());
        // 0 when the kernel did not say (it always does on Linux once asked).
        match stamp::reflect(&buf[..n], seq, t2, t3, ttl.unwrap_or(0)) {
            Some(answer) => {
                if let Err(e) = socket.send_to(&answer, peer).await {
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
        return Ok(SocketAddr::new(ip, stamp::PORT));
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

    fn peer(i: u32) -> SocketAddr {
        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5000))
    }

    #[test]
    fn a_full_table_drops_the_stalest_busy_session() {
        let mut s = Sessions::default();
        let t = Instant::now();
        let ms = Duration::from_millis;
        for i in 0..MAX_SESSIONS as u32 {
            assert_eq!(s.next(peer(i), t + ms(u64::from(i % 1000))), 0);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        // Peer 1000 was last seen at t + 0, as early as peer 0, which came first.
        assert_eq!(s.next(peer(1000), t + ms(1000)), 1);
        // Full, nobody idle: a newcomer takes the stalest slot.
        let late = t + ms(2000);
        assert_eq!(s.next(peer(9_999_999), late), 0);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.next(peer(9_999_999), late), 1, "the newcomer is kept");
        assert_eq!(s.next(peer(1000), late), 2, "a busy session is kept");
        assert_eq!(
            s.next(peer(0), late),
            0,
            "the stalest was dropped: it starts again"
        );
    }

    #[test]
    fn a_full_table_forgets_idle_sessions_first() {
        let mut s = Sessions::default();
        let t = Instant::now();
        for i in 0..MAX_SESSIONS as u32 {
            s.next(peer(i), t);
        }
        let later = t + SESSION_IDLE;
        s.next(peer(1), later - Duration::from_secs(1));
        assert_eq!(s.next(peer(9_999_999), later), 0);
        assert_eq!(s.len(), 2, "every idle session went, the busy one stayed");
        assert_eq!(s.next(peer(1), later), 2);
    }

    #[test]
    fn listen_forms() {
        assert_eq!(listen_addr("127.0.0.1:9").unwrap().port(), 9);
        assert_eq!(listen_addr("::").unwrap().port(), 862);
        assert!(listen_addr("nope").is_err());
    }
}
