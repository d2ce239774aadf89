//! STUN Binding (RFC 8489): a pure request encoder and response parser, and a driver
//! that retransmits over UDP (RTO 500 ms doubling, up to 7 sends, then waits 16·RTO,
//! all bounded by the window), measures the RTT of the answer and logs when the mapped
//! (public) address changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use faultline_shared::ProbeResult;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{HostPort, Resolver, any_local, io_error_word, single_rtt};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_ERROR_CODE: u16 = 0x0009;
/// RFC 8489 initial retransmission timeout.
pub const RTO: Duration = Duration::from_millis(500);
/// RFC 8489 Rc: most transmissions.
pub const RC: u32 = 7;
/// RFC 8489 Rm: the last wait is Rm·RTO.
pub const RM: u32 = 16;

/// A Binding request with transaction id `txid` (20 bytes, no attributes).
pub fn binding_request(txid: [u8; 12]) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    b[8..20].copy_from_slice(&txid);
    b
}

/// What a Binding response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Success with the mapped address (XOR-MAPPED-ADDRESS preferred).
    Mapped(Option<SocketAddr>),
    /// Error response with its code (e.g. 400).
    Error(u16),
}

/// Why bytes are not a response to our request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a STUN message")]
    NotStun,
    #[error("another transaction")]
    OtherTransaction,
    #[error("malformed STUN message")]
    Malformed,
}

/// Parses a response to transaction `txid`. Never panics on any input.
pub fn parse_response(b: &[u8], txid: &[u8; 12]) -> Result<Answer, ParseError> {
    if b.len() < 20 || b[0] & 0xc0 != 0 || b[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(ParseError::NotStun);
    }
    if &b[8..20] != txid {
        return Err(ParseError::OtherTransaction);
    }
    let kind = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len % 4 != 0 || b.len() < 20 + len {
        return Err(ParseError::Malformed);
    }
    let mut attrs = &b[20..20 + len];
    let (mut xor, mut plain, mut error) = (None, None, None);
    while attrs.len() >= 4 {
        let t = u16::from_be_bytes([attrs[0], attrs[1]]);
        let l = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let padded = (l + 3) & !3;
        let v = attrs.get(4..4 + l).ok_or(ParseError::Malformed)?;
        match t {
            ATTR_XOR_MAPPED_ADDRESS => xor = Some(address(v, Some(txid))?),
            ATTR_MAPPED_ADDRESS => plain = Some(address(v, None)?),
            ATTR_ERROR_CODE if v.len() >= 4 => {
                error = Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]));
            }
            _ => {}
        }
        attrs = attrs.get(4 + padded..).unwrap_or_default();
    }
    match kind {
        BINDING_SUCCESS => Ok(Answer::Mapped(xor.or(plain))),
        BINDING_ERROR => Ok(Answer::Error(error.unwrap_or(0))),
        _ => Err(ParseError::NotStun),
    }
}

/// A (XOR-)MAPPED-ADDRESS value; `txid` given means XORed.
fn address(v: &[u8], txid: Option<&[u8; 12]>) -> Result<SocketAddr, ParseError> {
    if v.len() < 4 {
        return Err(ParseError::Malformed);
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if txid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut a = [v[4], v[5], v[6], v[7]];
            if txid.is_some() {
                for (x, k) in a.iter_mut().zip(cookie) {
                    *x ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        (0x02, 20) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&v[4..20]);
            if let Some(t) = txid {
                let key: Vec<u8> = cookie.iter().chain(t.iter()).copied().collect();
                for (x, k) in a.iter_mut().zip(key) {
                    *x ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(ParseError::Malformed),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Binding requests to one server, window after window.
#[derive(Debug)]
pub struct StunProber {
    resolver: Resolver,
    /// Kept across windows, so the NAT mapping seen is that of one long-lived flow
    /// and a change means the public address or the NAT binding really changed.
    socket: Option<(SocketAddr, UdpSocket)>,
    mapped: Option<SocketAddr>,
}

impl StunProber {
    pub fn new(to: HostPort) -> Self {
        Self {
            resolver: Resolver::new(to),
            socket: None,
            mapped: None,
        }
    }

    pub async fn measure(
        &mut self,
        deadline: Instant,
        r: &mut ProbeResult,
        notes: &mut Vec<(&'static str, String)>,
    ) {
        let Some(peer) = self.resolver.resolve_for(r).await else {
            return;
        };
        if self.socket.as_ref().is_none_or(|(p, _)| *p != peer) {
            match connect(peer).await {
                Ok(s) => self.socket = Some((peer, s)),
                Err(e) => {
                    r.error = Some(e);
                    return;
                }
            }
        }
        // Just set above when absent.
        let socket = &self.socket.as_ref().unwrap().1;
        let mut sends = 0;
        r.sent = 1;
        let got = transact(socket, deadline, &mut sends).await;
        notes.push(("transmissions", sends.to_string()));
        match got {
            Ok((Answer::Mapped(addr), rtt)) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                match addr {
                    Some(a) => {
                        notes.push(("mapped", a.to_string()));
                        match self.mapped {
                            None => {
                                tracing::info!("{}: mapped address {a}", self.resolver.host_port())
                            }
                            Some(old) if old != a => tracing::info!(
                                "{}: mapped address changed from {old} to {a}",
                                self.resolver.host_port()
                            ),
                            _ => {}
                        }
                        self.mapped = Some(a);
                    }
                    None => notes.push(("mapped", "none in the answer".into())),
                }
            }
            Ok((Answer::Error(code), rtt)) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                r.error = Some(format!("stun {code}"));
            }
            Err(e) => r.error = Some(e),
        }
    }
}

async fn connect(peer: SocketAddr) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind(any_local(&peer))
        .await
        .map_err(|e| io_error_word(&e))?;
    socket.connect(peer).await.map_err(|e| io_error_word(&e))?;
    Ok(socket)
}

async fn transact(
    socket: &UdpSocket,
    deadline: Instant,
    sends: &mut u32,
) -> Result<(Answer, Duration), String> {
    let mut txid = [0u8; 12];
    txid.iter_mut().for_each(|b| *b = fastrand::u8(..));
    let req = binding_request(txid);
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    let mut rto = RTO;
    let mut next = start;
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if Instant::now() >= deadline || *sends >= RC {
                    return Err(last_error.unwrap_or_else(|| "timeout".into()));
                }
                if let Err(e) = socket.send(&req).await {
                    last_error = Some(io_error_word(&e));
                }
                *sends += 1;
                // After the last send wait Rm·RTO (initial RTO), per RFC 8489 §6.2.1.
                let wait = if *sends == RC { RTO * RM } else { rto };
                next = (Instant::now() + wait).min(deadline);
                rto *= 2;
            }
            got = socket.recv(&mut buf) => match got {
                // Late answers to an earlier window's request are another transaction.
                Ok(n) => match parse_response(&buf[..n], &txid) {
                    Ok(a) => return Ok((a, start.elapsed())),
                    Err(_) => continue,
                },
                Err(e) => last_error = Some(io_error_word(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn request_bytes() {
        let b = binding_request(TXID);
        assert_eq!(&b[..8], &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&b[8..], &TXID);
    }

    /// RFC 5769 §2.2: sample IPv4 response (XOR-MAPPED-ADDRESS 192.0.2.1:32853),
    /// with its SOFTWARE, MESSAGE-INTEGRITY and FINGERPRINT attributes.
    const RFC5769_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response (2001:db8:1234:5678:11:2233:4455:6677 port 32853).
    const RFC5769_V6_XOR_ADDR: [u8; 24] = [
        0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1,
        0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
    ];

    #[test]
    fn parses_rfc5769_vectors() {
        assert_eq!(
            parse_response(&RFC5769_V4, &TXID),
            Ok(Answer::Mapped(Some("192.0.2.1:32853".parse().unwrap())))
        );
        let mut v6 = vec![0x01, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42];
        v6.extend_from_slice(&TXID);
        v6.extend_from_slice(&RFC5769_V6_XOR_ADDR);
        assert_eq!(
            parse_response(&v6, &TXID),
            Ok(Answer::Mapped(Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )))
        );
    }

    #[test]
    fn plain_mapped_address_error_code_and_strangers() {
        let mut m = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&TXID);
        m.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x0d, 0x96, 127, 0, 0, 1]);
        assert_eq!(
            parse_response(&m, &TXID),
            Ok(Answer::Mapped(Some("127.0.0.1:3478".parse().unwrap())))
        );
        let mut e = vec![0x01, 0x11, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        e.extend_from_slice(&TXID);
        e.extend_from_slice(&[0x00, 0x09, 0x00, 0x04, 0, 0, 4, 20]);
        assert_eq!(parse_response(&e, &TXID), Ok(Answer::Error(420)));
        assert_eq!(
            parse_response(&RFC5769_V4, &[0; 12]),
            Err(ParseError::OtherTransaction)
        );
        assert_eq!(
            parse_response(&RFC5769_V4[..19], &TXID),
            Err(ParseError::NotStun)
        );
        assert_eq!(
            parse_response(&RFC5769_V4[..60], &TXID),
            Err(ParseError::Malformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_bytes(mut b in proptest::collection::vec(proptest::prelude::any::<u8>(), 20..200)) {
            // A valid header over random attributes reaches the attribute walk.
            let len = (b.len() - 20) as u16;
            b[..8].copy_from_slice(&[0x01, 0x01, (len >> 8) as u8, len as u8, 0x21, 0x12, 0xa4, 0x42]);
            b[8..20].copy_from_slice(&TXID);
            let _ = parse_response(&b, &TXID);
        }
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..5000 {
            let mut b = RFC5769_V4.to_vec();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(20..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(20..=b.len()));
            let _ = parse_response(&b, &TXID);
        }
    }
}
