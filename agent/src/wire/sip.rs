//! SIP messages (RFC 3261), as much as an OPTIONS "ping" needs: the request we send
//! ([`Request`], emitted as text) and the parts of a response we read ([`Response`]:
//! status, top Via branch, Call-ID, CSeq, Content-Length), parsed from bytes that may
//! hold less (TCP: [`Error::Incomplete`]) or more (the next message) than one message.
//!
//! Pure: no sockets, no timers; retransmission (Timer E/F) lives in `probe::sip`.

use std::net::SocketAddr;

pub use faultline_shared::target::sip::{PORT, Transport};
/// Largest SIP message accepted.
pub const MAX_MESSAGE: usize = 65_535;

/// One OPTIONS transaction: what the request says and what identifies its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Host of the Request-URI: a name or an IP address (IPv6 without brackets).
    pub uri_host: String,
    pub uri_port: u16,
    pub transport: Transport,
    /// Our end of the flow (Via, Contact).
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
    /// A new transaction with a random branch, tag and Call-ID.
    pub fn new(
        uri_host: String,
        uri_port: u16,
        transport: Transport,
        local: SocketAddr,
        cseq: u32,
    ) -> Self {
        Self {
            uri_host,
            uri_port,
            transport,
            local,
            branch: format!("z9hG4bK{}", hex(16)),
            tag: hex(10),
            call_id: format!("{}@faultline", hex(20)),
            cseq,
        }
    }

    /// The request's text.
    pub fn emit(&self) -> String {
        let mut uri = format!("sip:{}", host_in_uri(&self.uri_host));
        if self.uri_port != PORT {
            uri.push_str(&format!(":{}", self.uri_port));
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
pub enum Error {
    /// More bytes needed (TCP): the header block or the body has not ended.
    #[error("incomplete message")]
    Incomplete,
    #[error("not a SIP response: {0}")]
    Invalid(&'static str),
}

impl Response {
    /// Parses one response from the start of `b`; returns it and the bytes it took
    /// (headers and body). Never panics on any input.
    pub fn parse(b: &[u8]) -> Result<(Response, usize), Error> {
        let end = match b.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(p) => p + 4,
            None if b.len() > MAX_MESSAGE => return Err(Error::Invalid("header too long")),
            None => return Err(Error::Incomplete),
        };
        let head = std::str::from_utf8(&b[..end]).map_err(|_| Error::Invalid("not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let mut parts = status.splitn(3, ' ');
        if parts.next() != Some("SIP/2.0") {
            return Err(Error::Invalid("status line does not start with SIP/2.0"));
        }
        let code = parts
            .next()
            .filter(|c| c.len() == 3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or(Error::Invalid("bad status code"))?;
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
                    r.branch = Some(
                        top.split(';')
                            .skip(1)
                            .filter_map(|p| p.split_once('='))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case("branch"))
                            .map(|(_, v)| v.trim().to_owned())
                            .unwrap_or_default(),
                    );
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
                        .map_err(|_| Error::Invalid("bad Content-Length"))?;
                    if r.content_length > MAX_MESSAGE {
                        return Err(Error::Invalid("Content-Length too large"));
                    }
                }
                _ => {}
            }
        }
        let total = end + r.content_length;
        if b.len() < total {
            return Err(Error::Incomplete);
        }
        Ok((r, total))
    }

    /// Final (≥ 200) rather than provisional.
    pub fn is_final(&self) -> bool {
        self.code >= 200
    }

    /// The probe's verdict: `None` for a healthy server (2xx–4xx, 6xx: a 404 or 403 to
    /// OPTIONS is policy, not an outage), else the error word (the 5xx code).
    pub fn error(&self) -> Option<String> {
        (500..600)
            .contains(&self.code)
            .then(|| self.code.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request {
            uri_host: "sip.example.com".into(),
            uri_port: 5060,
            transport: Transport::Udp,
            local: "192.0.2.5:40000".parse().unwrap(),
            branch: "z9hG4bKabc".into(),
            tag: "t1".into(),
            call_id: "c1@faultline".into(),
            cseq: 7,
        }
    }

    #[test]
    fn test_construct_options() {
        let s = req().emit();
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
        r.uri_port = 5080;
        r.transport = Transport::Tcp;
        r.local = "[2001:db8::1]:5".parse().unwrap();
        let s = r.emit();
        assert!(s.starts_with(
            "OPTIONS sip:sip.example.com:5080 SIP/2.0\r\nVia: SIP/2.0/TCP [2001:db8::1]:5;"
        ));
        r.uri_host = "2001:db8::9".into();
        assert!(
            r.emit()
                .starts_with("OPTIONS sip:[2001:db8::9]:5080 SIP/2.0\r\n")
        );
        let fresh = Request::new("h".into(), PORT, Transport::Udp, r.local, 1);
        assert!(fresh.branch.starts_with("z9hG4bK") && fresh.branch.len() == 23);
    }

    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\
        Via: SIP/2.0/UDP 192.0.2.5:40000;branch=z9hG4bKabc;rport=40000;received=192.0.2.5\r\n\
        From: <sip:faultline@192.0.2.5>;tag=t1\r\n\
        To: <sip:sip.example.com>;tag=srv\r\n\
        Call-ID: c1@faultline\r\n\
        CSeq: 7 OPTIONS\r\n\
        Content-Length: 4\r\n\r\nbody";

    #[test]
    fn test_deconstruct_final_response() {
        let (resp, used) = Response::parse(OK).unwrap();
        assert_eq!(used, OK.len());
        assert_eq!(
            resp,
            Response {
                code: 200,
                reason: "OK".into(),
                call_id: Some("c1@faultline".into()),
                cseq: Some((7, "OPTIONS".into())),
                branch: Some("z9hG4bKabc".into()),
                content_length: 4,
            }
        );
        assert!(req().matches(&resp));
        assert!(resp.is_final() && resp.error().is_none());
        let mut other = req();
        other.branch = "z9hG4bKzzz".into();
        assert!(!other.matches(&resp));
        // Two messages back to back: the first is taken, its length says where the next starts.
        let two = [OK, OK].concat();
        assert_eq!(Response::parse(&two).unwrap().1, OK.len());
    }

    #[test]
    fn compact_headers_and_5xx() {
        let m = b"SIP/2.0 503 Service Unavailable\r\nv: SIP/2.0/TCP h;branch=z9hG4bKabc\r\ni: c1@faultline\r\nCSeq: 7 OPTIONS\r\nl: 0\r\n\r\n";
        let (resp, _) = Response::parse(m).unwrap();
        assert!(req().matches(&resp));
        assert_eq!(resp.error().as_deref(), Some("503"));
        let (r404, _) = Response::parse(b"SIP/2.0 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(r404.error(), None);
        let (r100, _) = Response::parse(b"SIP/2.0 100 Trying\r\n\r\n").unwrap();
        assert!(!r100.is_final());
    }

    #[test]
    fn incomplete_and_invalid() {
        assert_eq!(Response::parse(&OK[..30]), Err(Error::Incomplete));
        assert_eq!(Response::parse(&OK[..OK.len() - 1]), Err(Error::Incomplete));
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"SIP/2.0 2000 OK\r\n\r\n",
            b"SIP/2.0 099 x\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(
                matches!(Response::parse(bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok((_, used)) = Response::parse(&b) {
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
            let _ = Response::parse(&b);
        }
    }
}
