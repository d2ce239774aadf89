//! DNS resolution, timed: a minimal query builder and response parser (RFC 1035,
//! AAAA from RFC 3596, SRV from RFC 2782), the resolv.conf reader, and a UDP driver
//! that asks the configured server or the system's first `nameserver`, retrying after
//! 1 s, 2 s, 4 s… within the window. The agent's own resolver ([`crate::resolve`])
//! shares the codec and the resolv.conf reader.
//!
//! How answers count: an answer with records of the asked type is healthy. NXDOMAIN,
//! SERVFAIL, REFUSED or an empty answer mean the name does not resolve, which is what
//! the probe is for: received = 1 and `error` names it (`nxdomain`, `servfail`,
//! `refused`, `rcode N`, `no records`). No answer in time: `timeout`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use faultline_shared::ProbeResult;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{DNS_PORT, any_local, io_error_word, single_rtt};

/// The record types a probe asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A,
    Aaaa,
    Srv,
}

impl RecordType {
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
            RecordType::Srv => 33,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordType::A => "a",
            RecordType::Aaaa => "aaaa",
            RecordType::Srv => "srv",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "a" => Some(RecordType::A),
            "aaaa" => Some(RecordType::Aaaa),
            "srv" => Some(RecordType::Srv),
            _ => None,
        }
    }

    /// SRV for service names (`_sip._udp.example.com`), else A.
    pub fn default_for(name: &str) -> Self {
        if name.starts_with('_') {
            RecordType::Srv
        } else {
            RecordType::A
        }
    }
}

/// Checks that `name` is a DNS name we can put in a query.
pub fn validate_name(name: &str) -> Result<(), String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 {
        return Err(format!("{name:?} is not a DNS name (1-253 characters)"));
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() || label.contains(' ') {
            return Err(format!("{name:?} is not a DNS name (bad label {label:?})"));
        }
    }
    Ok(())
}

/// A recursive query for `name`/`rtype` with id `id`.
pub fn build_query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&rtype.code().to_be_bytes());
    q.extend_from_slice(&[0, 1]); // IN
    q
}

/// One answer record of a type we asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Record::A(ip) => write!(f, "{ip}"),
            Record::Aaaa(ip) => write!(f, "{ip}"),
            Record::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}"),
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The question's name, as the server echoed it.
    pub name: String,
    pub rcode: u8,
    pub truncated: bool,
    /// Records of the asked type owned by the question's name or, when the answer
    /// holds a CNAME chain from it, by the chain's end (others are skipped).
    pub records: Vec<Record>,
}

impl Answer {
    /// The probe's verdict: `None` when the name resolved, else the error word.
    pub fn error(&self) -> Option<String> {
        match self.rcode {
            0 if self.records.is_empty() => Some("no records".into()),
            0 => None,
            2 => Some("servfail".into()),
            3 => Some("nxdomain".into()),
            5 => Some("refused".into()),
            n => Some(format!("rcode {n}")),
        }
    }
}

/// Why bytes are not the response to our query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a response to our query")]
    NotOurs,
    #[error("malformed DNS message")]
    Malformed,
}

struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ParseError> {
        let s = self
            .msg
            .get(self.at..self.at + n)
            .ok_or(ParseError::Malformed)?;
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a possibly compressed name; returns it dotted.
    fn name(&mut self) -> Result<String, ParseError> {
        let (name, end) = read_name(self.msg, self.at)?;
        self.at = end;
        Ok(name)
    }
}

/// Reads the name at `at`; returns it and the offset just past it (in the record).
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(ParseError::Malformed)?;
        match len {
            0 => {
                if out.is_empty() {
                    out.push('.');
                }
                return Ok((out, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let lo = *msg.get(at + 1).ok_or(ParseError::Malformed)?;
                end.get_or_insert(at + 2);
                at = (usize::from(l & 0x3f) << 8) | usize::from(lo);
            }
            l if l & 0xc0 == 0 => {
                let label = msg
                    .get(at + 1..at + 1 + usize::from(l))
                    .ok_or(ParseError::Malformed)?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&String::from_utf8_lossy(label));
                at += 1 + usize::from(l);
            }
            _ => return Err(ParseError::Malformed),
        }
    }
    Err(ParseError::Malformed) // a pointer loop
}

/// Parses the response to query `id` for `rtype`. Never panics on any input.
pub fn parse_response(b: &[u8], id: u16, rtype: RecordType) -> Result<Answer, ParseError> {
    if b.len() < 12 || u16::from_be_bytes([b[0], b[1]]) != id || b[2] & 0x80 == 0 {
        return Err(ParseError::NotOurs);
    }
    let truncated = b[2] & 0x02 != 0;
    let rcode = b[3] & 0x0f;
    let qd = u16::from_be_bytes([b[4], b[5]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    let mut r = Reader { msg: b, at: 12 };
    let mut name = String::new();
    for i in 0..qd {
        let n = r.name()?;
        if i == 0 {
            name = n;
        }
        r.take(4)?;
    }
    // (owner, record) of the asked type, and CNAMEs as (alias, target).
    let mut found = Vec::new();
    let mut cnames = Vec::new();
    for _ in 0..an {
        if truncated && r.at >= b.len() {
            break;
        }
        let owner = r.name()?;
        let t = r.u16()?;
        let _class = r.u16()?;
        r.take(4)?; // TTL
        let len = usize::from(r.u16()?);
        let start = r.at;
        let data = r.take(len)?;
        let record = match (t, rtype) {
            (1, RecordType::A) if len == 4 => {
                Record::A(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
            }
            (28, RecordType::Aaaa) if len == 16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                Record::Aaaa(Ipv6Addr::from(a))
            }
            (33, RecordType::Srv) if len >= 7 => Record::Srv {
                priority: u16::from_be_bytes([data[0], data[1]]),
                weight: u16::from_be_bytes([data[2], data[3]]),
                port: u16::from_be_bytes([data[4], data[5]]),
                target: read_name(b, start + 6)?.0,
            },
            (5, _) => {
                cnames.push((owner, read_name(b, start)?.0));
                continue;
            }
            _ => continue,
        };
        found.push((owner, record));
    }
    // Follow the CNAME chain from the question (RFC 1034 3.6.2); bounded, so a loop ends.
    let mut owner = name.as_str();
    for _ in 0..cnames.len() {
        match cnames.iter().find(|(a, _)| a.eq_ignore_ascii_case(owner)) {
            Some((_, target)) => owner = target,
            None => break,
        }
    }
    let records = found
        .into_iter()
        .filter(|(o, _)| o.eq_ignore_ascii_case(owner))
        .map(|(_, rec)| rec)
        .collect();
    Ok(Answer {
        name,
        rcode,
        truncated,
        records,
    })
}

/// Where the system's resolver configuration lives.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// At most this many `nameserver` lines are used (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;

/// What a stub resolver takes from resolv.conf (resolv.conf(5)): `nameserver`,
/// `search` / `domain` (the last of them wins) and `options ndots: timeout:
/// attempts:`, with glibc's defaults and limits. Anything else is ignored, as are
/// malformed lines and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Port 53, at most [`MAX_NAMESERVERS`]; 127.0.0.1 when none is named (never empty).
    pub nameservers: Vec<SocketAddr>,
    /// Domains tried in turn after a name that is not absolute (no trailing dots).
    pub search: Vec<String>,
    /// Names with at least this many dots are first tried as they are (default 1).
    pub ndots: usize,
    /// How long to wait for one server's answer (default 5 s).
    pub timeout: Duration,
    /// Rounds over all the servers (default 2).
    pub attempts: u32,
}

impl ResolvConf {
    /// Parses a resolv.conf text.
    pub fn parse(text: &str) -> Self {
        let mut c = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        for line in text.lines() {
            let mut words = line
                .split_whitespace()
                .take_while(|w| !w.starts_with(['#', ';']));
            match words.next() {
                Some("nameserver") => {
                    // An IPv6 zone (fe80::1%eth0) is dropped: we cannot use it without
                    // the scope id.
                    let ip = words.next().and_then(|w| w.split('%').next()?.parse().ok());
                    if let Some(ip) = ip
                        && c.nameservers.len() < MAX_NAMESERVERS
                    {
                        c.nameservers.push(SocketAddr::new(ip, DNS_PORT));
                    }
                }
                Some(kw @ ("search" | "domain")) => {
                    let n = if kw == "domain" { 1 } else { usize::MAX };
                    let domains: Vec<String> = words
                        .take(n)
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect();
                    if !domains.is_empty() {
                        c.search = domains;
                    }
                }
                Some("options") => {
                    for (key, value) in words.filter_map(|w| w.split_once(':')) {
                        let Ok(v) = value.parse::<u32>() else {
                            continue;
                        };
                        match key {
                            "ndots" => c.ndots = v.min(15) as usize,
                            "timeout" => c.timeout = Duration::from_secs(v.clamp(1, 30).into()),
                            "attempts" => c.attempts = v.clamp(1, 5),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if c.nameservers.is_empty() {
            c.nameservers
                .push(SocketAddr::from(([127, 0, 0, 1], DNS_PORT)));
        }
        c
    }

    /// Reads `path`; a missing or unreadable file gives the defaults, as in glibc.
    pub fn read(path: &Path) -> Self {
        Self::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }
}

/// The system resolver: the first nameserver of /etc/resolv.conf, else 127.0.0.1.
pub fn system_server() -> SocketAddr {
    // `nameservers` is never empty.
    ResolvConf::read(Path::new(RESOLV_CONF)).nameservers[0]
}

/// Resolves one name, window after window.
#[derive(Debug, Default)]
pub struct DnsProber;

impl DnsProber {
    pub async fn measure(
        &mut self,
        name: &str,
        rtype: RecordType,
        server: Option<SocketAddr>,
        deadline: Instant,
        r: &mut ProbeResult,
        notes: &mut Vec<(&'static str, String)>,
    ) {
        let server = server.unwrap_or_else(system_server);
        notes.push(("server", server.to_string()));
        let mut sends = 0;
        r.sent = 1;
        let got = query(server, name, rtype, deadline, &mut sends).await;
        notes.push(("transmissions", sends.to_string()));
        match got {
            Ok((answer, rtt)) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                r.error = answer.error();
                for rec in &answer.records {
                    notes.push(("answer", rec.to_string()));
                }
                if answer.truncated {
                    notes.push(("truncated", "yes (answers over UDP only)".into()));
                }
            }
            Err(e) => r.error = Some(e),
        }
    }
}

async fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    deadline: Instant,
    sends: &mut u32,
) -> Result<(Answer, Duration), String> {
    let socket = UdpSocket::bind(any_local(&server))
        .await
        .map_err(|e| io_error_word(&e))?;
    socket
        .connect(server)
        .await
        .map_err(|e| io_error_word(&e))?;
    let id = fastrand::u16(..);
    let q = build_query(id, name, rtype);
    let start = Instant::now();
    let mut next = start;
    let mut wait = Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if Instant::now() >= deadline {
                    return Err(last_error.unwrap_or_else(|| "timeout".into()));
                }
                if let Err(e) = socket.send(&q).await {
                    last_error = Some(io_error_word(&e));
                }
                *sends += 1;
                next = (Instant::now() + wait).min(deadline);
                wait *= 2;
            }
            got = socket.recv(&mut buf) => match got {
                Ok(n) => match parse_response(&buf[..n], id, rtype) {
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

    #[test]
    fn query_bytes() {
        let q = build_query(0xabcd, "example.com", RecordType::A);
        let want: &[u8] = &[
            0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ];
        assert_eq!(q, want);
        let q = build_query(1, "_sip._udp.x.", RecordType::Srv);
        assert_eq!(&q[12..], b"\x04_sip\x04_udp\x01x\x00\x00\x21\x00\x01");
    }

    /// A response to `build_query(0xabcd, "_sip._udp.example.com", Srv)`: one CNAME-less
    /// SRV answer whose target is compressed against the question, plus an A record.
    fn srv_response() -> Vec<u8> {
        let mut m = build_query(0xabcd, "_sip._udp.example.com", RecordType::Srv);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2; // AN = 2
        // SRV: name → pointer to the question (offset 12).
        m.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60, 0, 12]);
        m.extend_from_slice(&[0, 10, 0, 5, 0x13, 0xc4, 3, b's', b'i', b'p', 0xc0, 22]);
        // An A record (glue-like) the SRV query did not ask for: skipped.
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        m
    }

    #[test]
    fn parses_srv_with_compression() {
        let a = parse_response(&srv_response(), 0xabcd, RecordType::Srv).unwrap();
        assert_eq!(a.rcode, 0);
        assert_eq!(
            a.records,
            vec![Record::Srv {
                priority: 10,
                weight: 5,
                port: 5060,
                target: "sip.example.com".into()
            }]
        );
        assert_eq!(a.error(), None);
        assert_eq!(a.records[0].to_string(), "10 5 5060 sip.example.com");
    }

    #[test]
    fn parses_a_aaaa_and_rcodes() {
        let mut m = build_query(7, "h.example", RecordType::A);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 1;
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        let a = parse_response(&m, 7, RecordType::A).unwrap();
        assert_eq!(a.records, vec![Record::A(Ipv4Addr::new(10, 1, 2, 3))]);
        assert_eq!(
            parse_response(&m, 8, RecordType::A),
            Err(ParseError::NotOurs)
        );
        let mut nx = build_query(9, "nope.example", RecordType::Aaaa);
        nx[2] = 0x81;
        nx[3] = 0x83;
        let a = parse_response(&nx, 9, RecordType::Aaaa).unwrap();
        assert_eq!(a.error().as_deref(), Some("nxdomain"));
        nx[3] = 0x80;
        assert_eq!(
            parse_response(&nx, 9, RecordType::Aaaa)
                .unwrap()
                .error()
                .as_deref(),
            Some("no records")
        );
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_answer_section(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), an in 0u8..8) {
            let mut m = build_query(5, "_sip._udp.example.com", RecordType::Srv);
            m[2] = 0x81;
            m[7] = an;
            m.extend_from_slice(&tail);
            let _ = parse_response(&m, 5, RecordType::Srv);
        }
    }

    #[test]
    fn pointer_loops_and_garbage_do_not_panic() {
        let mut m = build_query(1, "a", RecordType::A);
        m[2] = 0x81;
        m[7] = 1;
        m.extend_from_slice(&[0xc0, 19, 0, 1]); // points at itself
        assert_eq!(
            parse_response(&m, 1, RecordType::A),
            Err(ParseError::Malformed)
        );
        let base = srv_response();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(12..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(12..=b.len()));
            let _ = parse_response(&b, 0xabcd, RecordType::Srv);
        }
    }

    /// A response to `build_query(3, "alias.example", A)`: a CNAME chain
    /// alias → mid → host (in a scrambled order), host's A, and an A of an unrelated
    /// name, which must not count.
    fn cname_response() -> Vec<u8> {
        let mut m = build_query(3, "alias.example", RecordType::A);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 4;
        let at = m.len();
        // mid.example CNAME host.example; "mid" then a pointer to "example" (offset 18).
        m.extend_from_slice(&[3, b'm', b'i', b'd', 0xc0, 18, 0, 5, 0, 1, 0, 0, 0, 9, 0, 7]);
        m.extend_from_slice(&[4, b'h', b'o', b's', b't', 0xc0, 18]);
        // other.example A 192.0.2.66
        m.extend_from_slice(&[5, b'o', b't', b'h', b'e', b'r', 0xc0, 18]);
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 192, 0, 2, 66]);
        // alias.example (the question) CNAME mid.example
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 2, 0xc0, at as u8]);
        // host.example A 192.0.2.10, its name from the first CNAME's data.
        let host = (at + 16) as u8;
        m.extend_from_slice(&[0xc0, host, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 192, 0, 2, 10]);
        m
    }

    #[test]
    fn follows_a_cname_chain_and_skips_other_owners() {
        let a = parse_response(&cname_response(), 3, RecordType::A).unwrap();
        assert_eq!(a.name, "alias.example");
        assert_eq!(a.records, vec![Record::A(Ipv4Addr::new(192, 0, 2, 10))]);
        assert!(!a.truncated);
        // A chain that loops ends somewhere; whatever it keeps, it terminates.
        let mut m = build_query(4, "a.x", RecordType::A);
        m[2] = 0x81;
        m[7] = 2;
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 4, 1, b'b', 0xc0, 14]);
        m.extend_from_slice(&[0xc0, 33, 0, 5, 0, 1, 0, 0, 0, 9, 0, 2, 0xc0, 12]);
        let a = parse_response(&m, 4, RecordType::A).unwrap();
        assert_eq!((a.rcode, a.records.len()), (0, 0));
    }

    #[test]
    fn truncated_flag() {
        let mut m = build_query(5, "big.example", RecordType::A);
        m[2] = 0x83; // QR, TC, RD
        m[7] = 3; // claims three answers, carries none
        let a = parse_response(&m, 5, RecordType::A).unwrap();
        assert!(a.truncated);
        assert!(a.records.is_empty());
    }

    #[test]
    fn resolv_conf_defaults_like_glibc() {
        assert_eq!(
            ResolvConf::parse(""),
            ResolvConf {
                nameservers: vec!["127.0.0.1:53".parse().unwrap()],
                search: vec![],
                ndots: 1,
                timeout: Duration::from_secs(5),
                attempts: 2,
            }
        );
        assert_eq!(
            ResolvConf::read(Path::new("/nonexistent/resolv.conf")),
            ResolvConf::parse("")
        );
    }

    #[test]
    fn resolv_conf_keywords_limits_and_malformed_lines() {
        let c = ResolvConf::parse(
            "# generated by udhcpc\n\
             ; a comment too\n\
             search Lan. corp.example # trailing comment\n\
             nameserver 192.0.2.53\n\
             nameserver fe80::1%eth0\n\
             nameserver not-an-ip\n\
             nameserver\n\
             nameserver192.0.2.9\n\
             \tnameserver   192.0.2.54   extra words\n\
             nameserver 192.0.2.55\n\
             options ndots:2 timeout:0 attempts:9 rotate ndots:x edns0 timeout:\n\
             options timeout:3\n\
             sortlist 130.155.160.0/255.255.240.0\n\
             garbage\n",
        );
        assert_eq!(
            c.nameservers,
            ["192.0.2.53:53", "[fe80::1]:53", "192.0.2.54:53"]
                .map(|s| s.parse::<SocketAddr>().unwrap())
        );
        assert_eq!(c.search, ["lan", "corp.example"]);
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (2, Duration::from_secs(3), 5)
        );
        let c = ResolvConf::parse("options ndots:99 timeout:99 attempts:0\n");
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (15, Duration::from_secs(30), 1)
        );
        // `search` and `domain` replace each other; the last one wins.
        assert_eq!(ResolvConf::parse("search a b\ndomain c.\n").search, ["c"]);
        assert_eq!(
            ResolvConf::parse("domain c\nsearch a b\n").search,
            ["a", "b"]
        );
        // Without a domain the line is ignored (glibc too).
        assert_eq!(ResolvConf::parse("search a\ndomain\n").search, ["a"]);
    }

    #[test]
    fn names_and_resolv_conf() {
        assert!(validate_name("_sip._udp.example.com").is_ok());
        assert!(validate_name("a..b").is_err());
        assert!(validate_name(&"x".repeat(64)).is_err());
        assert_eq!(RecordType::default_for("_sip._tcp.x"), RecordType::Srv);
    }
}
