//! SIP OPTIONS "ping" over UDP or TCP (RFC 3261): the request builder and response
//! parser are pure; the driver retransmits over UDP on Timer E (T1 = 500 ms doubling
//! up to T2 = 4 s, T2 once a provisional answer came) until Timer F (64·T1) or the
//! end of the window, whichever is first. TCP sends once.
//!
//! How answers count: any final response proves the server alive. 2xx, 3xx, 4xx and
//! 6xx are a healthy server (a 404 or 403 to OPTIONS is policy, not an outage):
//! received = 1, no error. 5xx means the server is there but not serving: received =
//! 1 and `error` is the status code (`"503"`). No final answer in time: `"timeout"`;
//! nobody listening: `"refused"`.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_shared::ProbeResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::{HostPort, Resolver, SIP_PORT, Transport, any_local, io_error_word, single_rtt};

/// RFC 3261 T1: round-trip estimate.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: longest retransmit interval for non-INVITE requests.
pub const T2: Duration = Duration::from_secs(4);
/// Largest SIP message accepted.
pub const MAX_MESSAGE: usize = 65_535;

/// What identifies one OPTIONS transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub target: HostPort,
    pub transport: Transport,
    pub local: SocketAddr,
    pub branch: String,
    pub tag: String,
    pub call_id: String,
    pub cseq: u32,
}

fn hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
        .collect()
}

fn host_in_uri(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl Request {
    /// A new transaction with random branch, tag and Call-ID.
    pub fn new(target: HostPort, transport: Transport, local: SocketAddr, cseq: u32) -> Self {
        Self {
            target,
            transport,
            local,
            branch: format!("z9hG4bK{}", hex(16)),
            tag: hex(10),
            call_id: format!("{}@faultline", hex(20)),
            cseq,
        }
    }

    /// The request's bytes.
    pub fn encode(&self) -> String {
        let mut uri = format!("sip:{}", host_in_uri(&self.target.host));
        if self.target.port != SIP_PORT {
            uri.push_str(&format!(":{}", self.target.port));
        }
        let local_host = host_in_uri(&self.local.ip().to_string());
        let proto = self.transport.as_str().to_ascii_uppercase();
        format!(
            "OPTIONS {uri} SIP/2.0\r\n\
             Via: SIP/2.0/{proto} {local_host}:{port};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:faultline@{local_host}>;tag={tag}\r\n\
             To: <{uri}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} OPTIONS\r\n\
             Contact: <sip:faultline@{local_host}:{port};transport={transport}>\r\n\
             Accept: application/sdp\r\n\
             User-Agent: faultline-agent/{version}\r\n\
             Content-Length: 0\r\n\r\n",
            port = self.local.port(),
            branch = self.branch,
            tag = self.tag,
            call_id = self.call_id,
            cseq = self.cseq,
            transport = self.transport.as_str(),
            version = env!("CARGO_PKG_VERSION"),
        )
    }

    /// Whether `resp` answers this transaction (same branch, Call-ID and CSeq).
    pub fn matches(&self, resp: &Response) -> bool {
        resp.branch.as_deref() == Some(self.branch.as_str())
            && resp.call_id.as_deref() == Some(self.call_id.as_str())
            && resp
                .cseq
                .as_ref()
                .is_some_and(|(n, m)| *n == self.cseq && m == "OPTIONS")
    }
}

/// A parsed SIP response (the parts a probe needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub call_id: Option<String>,
    pub cseq: Option<(u32, String)>,
    /// The `branch` parameter of the top Via.
    pub branch: Option<String>,
    pub content_length: usize,
}

/// Why bytes are not (yet) a SIP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes needed (TCP): the header block has not ended.
    #[error("incomplete message")]
    Incomplete,
    #[error("not a SIP response: {0}")]
    Invalid(&'static str),
}

impl Response {
    /// Final (≥ 200) rather than provisional.
    pub fn is_final(&self) -> bool {
        self.code >= 200
    }

    /// The probe's verdict: `None` for a healthy server, else the error word.
    pub fn error(&self) -> Option<String> {
        (500..600)
            .contains(&self.code)
            .then(|| self.code.to_string())
    }
}

/// Parses one response from the start of `b`; returns it and the bytes it took
/// (headers and body). Never panics on any input.
pub fn parse_response(b: &[u8]) -> Result<(Response, usize), ParseError> {
    let end = match b.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => p + 4,
        None if b.len() > MAX_MESSAGE => return Err(ParseError::Invalid("header too long")),
        None => return Err(ParseError::Incomplete),
    };
    let head = std::str::from_utf8(&b[..end]).map_err(|_| ParseError::Invalid("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    if parts.next() != Some("SIP/2.0") {
        return Err(ParseError::Invalid(
            "status line does not start with SIP/2.0",
        ));
    }
    let code = parts
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..700).contains(c))
        .ok_or(ParseError::Invalid("bad status code"))?;
    let reason = parts.next().unwrap_or_default().trim().to_owned();
    let mut r = Response {
        code,
        reason,
        call_id: None,
        cseq: None,
        branch: None,
        content_length: 0,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" if r.branch.is_none() => {
                // The top Via only (the first header, first comma-separated value).
                let top = value.split(',').next().unwrap_or_default();
                r.branch = top
                    .split(';')
                    .skip(1)
                    .filter_map(|p| p.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("branch"))
                    .map(|(_, v)| v.trim().to_owned());
                if r.branch.is_none() {
                    r.branch = Some(String::new());
                }
            }
            "call-id" | "i" => r.call_id = Some(value.to_owned()),
            "cseq" => {
                let mut it = value.split_whitespace();
                if let (Some(n), Some(m)) = (it.next(), it.next()) {
                    r.cseq = n.parse().ok().map(|n| (n, m.to_ascii_uppercase()));
                }
            }
            "content-length" | "l" => {
                r.content_length = value
                    .parse()
                    .map_err(|_| ParseError::Invalid("bad Content-Length"))?;
                if r.content_length > MAX_MESSAGE {
                    return Err(ParseError::Invalid("Content-Length too large"));
                }
            }
            _ => {}
        }
    }
    let total = end + r.content_length;
    if b.len() < total {
        return Err(ParseError::Incomplete);
    }
    Ok((r, total))
}

/// Timer E: the wait after a send that waited `prev` (T1 doubling up to T2), or T2
/// once a provisional response has come (RFC 3261 §17.1.2.2).
pub fn next_interval(prev: Duration, provisional: bool) -> Duration {
    if provisional { T2 } else { (prev * 2).min(T2) }
}

/// OPTIONS to one server, window after window.
#[derive(Debug)]
pub struct SipProber {
    resolver: Resolver,
    transport: Transport,
    cseq: u32,
}

/// The outcome of one transaction.
enum Outcome {
    Final(Response, Duration),
    Failed(String),
}

impl SipProber {
    pub fn new(to: HostPort, transport: Transport) -> Self {
        Self {
            resolver: Resolver::new(to),
            transport,
            cseq: 0,
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
        self.cseq = self.cseq.wrapping_add(1);
        // One transaction, however many retransmissions it took (noted apart).
        r.sent = 1;
        let target = self.resolver.host_port().clone();
        let deadline = deadline.min(Instant::now() + 64 * T1);
        let outcome = match self.transport {
            Transport::Udp => udp(peer, target, self.cseq, deadline, notes).await,
            Transport::Tcp => tcp(peer, target, self.cseq, deadline, notes).await,
        };
        match outcome {
            Outcome::Final(resp, rtt) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                r.error = resp.error();
                notes.push(("status", format!("{} {}", resp.code, resp.reason)));
            }
            Outcome::Failed(e) => r.error = Some(e),
        }
    }
}

async fn udp(
    peer: SocketAddr,
    target: HostPort,
    cseq: u32,
    deadline: Instant,
    notes: &mut Vec<(&'static str, String)>,
) -> Outcome {
    let mut sends = 0u32;
    let socket = match UdpSocket::bind(any_local(&peer)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(io_error_word(&e)),
    };
    if let Err(e) = socket.connect(peer).await {
        return Outcome::Failed(io_error_word(&e));
    }
    let local = socket.local_addr().unwrap_or_else(|_| any_local(&peer));
    let req = Request::new(target, Transport::Udp, local, cseq);
    let bytes = req.encode();
    let start = Instant::now();
    let mut next = start;
    let mut step = T1;
    let mut provisional = false;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if Instant::now() >= deadline {
                    return Outcome::Failed(last_error.unwrap_or_else(|| "timeout".into()));
                }
                if let Err(e) = socket.send(bytes.as_bytes()).await {
                    last_error = Some(io_error_word(&e));
                }
                sends += 1;
                notes.retain(|(k, _)| *k != "transmissions");
                notes.push(("transmissions", sends.to_string()));
                next = (Instant::now() + step).min(deadline);
                step = next_interval(step, provisional);
            }
            got = socket.recv(&mut buf) => {
                let n = match got {
                    Ok(n) => n,
                    Err(e) => {
                        // ICMP port unreachable: nobody listens there.
                        last_error = Some(io_error_word(&e));
                        continue;
                    }
                };
                let Ok((resp, _)) = parse_response(&buf[..n]) else { continue };
                if !req.matches(&resp) {
                    continue;
                }
                if resp.is_final() {
                    return Outcome::Final(resp, start.elapsed());
                }
                notes.push(("provisional", format!("{} {}", resp.code, resp.reason)));
                provisional = true;
            }
        }
    }
}

async fn tcp(
    peer: SocketAddr,
    target: HostPort,
    cseq: u32,
    deadline: Instant,
    notes: &mut Vec<(&'static str, String)>,
) -> Outcome {
    let start = Instant::now();
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(peer)).await {
        Err(_) => return Outcome::Failed("timeout".into()),
        Ok(Err(e)) => return Outcome::Failed(io_error_word(&e)),
        Ok(Ok(s)) => s,
    };
    notes.push((
        "connect_ms",
        format!("{:.3}", start.elapsed().as_secs_f64() * 1000.0),
    ));
    let local = stream.local_addr().unwrap_or_else(|_| any_local(&peer));
    let req = Request::new(target, Transport::Tcp, local, cseq);
    let work = async {
        stream.write_all(req.encode().as_bytes()).await?;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match parse_response(&buf) {
                    Ok((resp, used)) => {
                        buf.drain(..used);
                        if req.matches(&resp) && resp.is_final() {
                            return Ok(resp);
                        }
                    }
                    Err(ParseError::Incomplete) => break,
                    Err(ParseError::Invalid(why)) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
                    }
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Err(_) => Outcome::Failed("timeout".into()),
        Ok(Err(e)) => Outcome::Failed(io_error_word(&e)),
        Ok(Ok(resp)) => Outcome::Final(resp, start.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request {
            target: HostPort {
                host: "sip.example.com".into(),
                port: 5060,
            },
            transport: Transport::Udp,
            local: "192.0.2.5:40000".parse().unwrap(),
            branch: "z9hG4bKabc".into(),
            tag: "t1".into(),
            call_id: "c1@faultline".into(),
            cseq: 7,
        }
    }

    #[test]
    fn builds_a_complete_options_request() {
        let s = req().encode();
        let want = format!(
            "OPTIONS sip:sip.example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.5:40000;branch=z9hG4bKabc;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:faultline@192.0.2.5>;tag=t1\r\n\
             To: <sip:sip.example.com>\r\n\
             Call-ID: c1@faultline\r\n\
             CSeq: 7 OPTIONS\r\n\
             Contact: <sip:faultline@192.0.2.5:40000;transport=udp>\r\n\
             Accept: application/sdp\r\n\
             User-Agent: faultline-agent/{}\r\n\
             Content-Length: 0\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(s, want);
        let mut r = req();
        r.target.port = 5080;
        r.transport = Transport::Tcp;
        r.local = "[2001:db8::1]:5".parse().unwrap();
        let s = r.encode();
        assert!(s.starts_with(
            "OPTIONS sip:sip.example.com:5080 SIP/2.0\r\nVia: SIP/2.0/TCP [2001:db8::1]:5;"
        ));
        assert!(
            Request::new(r.target, Transport::Udp, r.local, 1)
                .branch
                .starts_with("z9hG4bK")
        );
    }

    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\
        Via: SIP/2.0/UDP 192.0.2.5:40000;branch=z9hG4bKabc;rport=40000;received=192.0.2.5\r\n\
        From: <sip:faultline@192.0.2.5>;tag=t1\r\n\
        To: <sip:sip.example.com>;tag=srv\r\n\
        Call-ID: c1@faultline\r\n\
        CSeq: 7 OPTIONS\r\n\
        Content-Length: 4\r\n\r\nbody";

    #[test]
    fn parses_and_matches_a_final_response() {
        let (resp, used) = parse_response(OK).unwrap();
        assert_eq!(used, OK.len());
        assert_eq!((resp.code, resp.reason.as_str()), (200, "OK"));
        assert_eq!(resp.cseq, Some((7, "OPTIONS".into())));
        assert!(req().matches(&resp));
        assert!(resp.is_final() && resp.error().is_none());
        let mut other = req();
        other.branch = "z9hG4bKzzz".into();
        assert!(!other.matches(&resp));
    }

    #[test]
    fn compact_headers_and_5xx() {
        let m = b"SIP/2.0 503 Service Unavailable\r\nv: SIP/2.0/TCP h;branch=z9hG4bKabc\r\ni: c1@faultline\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n";
        let (resp, _) = parse_response(m).unwrap();
        assert!(req().matches(&resp));
        assert_eq!(resp.error().as_deref(), Some("503"));
        let (r404, _) = parse_response(b"SIP/2.0 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(r404.error(), None);
        let (r100, _) = parse_response(b"SIP/2.0 100 Trying\r\n\r\n").unwrap();
        assert!(!r100.is_final());
    }

    #[test]
    fn incomplete_and_invalid() {
        assert_eq!(parse_response(&OK[..30]), Err(ParseError::Incomplete));
        assert_eq!(
            parse_response(&OK[..OK.len() - 1]),
            Err(ParseError::Incomplete)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"SIP/2.0 2000 OK\r\n\r\n",
            b"SIP/2.0 099 x\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(bad), Err(ParseError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok((_, used)) = parse_response(&b) {
                proptest::prop_assert!(used <= b.len());
            }
        }
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut b: Vec<u8> = OK.to_vec();
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            let _ = parse_response(&b);
        }
    }

    #[test]
    fn timer_e_doubles_to_t2_until_timer_f() {
        // Sends at 0, 0.5, 1.5, 3.5, 7.5, 11.5 … s: 11 transmissions before Timer F (32 s).
        let (mut at, mut step, mut sends) = (Duration::ZERO, T1, vec![0u64]);
        loop {
            at += step;
            if at >= 64 * T1 {
                break;
            }
            sends.push(at.as_millis() as u64);
            step = next_interval(step, false);
        }
        assert_eq!(&sends[..6], &[0, 500, 1500, 3500, 7500, 11500]);
        assert_eq!(sends.len(), 11);
        assert_eq!(next_interval(T1, true), T2);
    }
}
