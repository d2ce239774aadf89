//! DNS messages (RFC 1035; AAAA from RFC 3596, SRV from RFC 2782), as much as a timed
//! lookup needs: the query we send ([`Query`], at most [`MAX_QUERY_LEN`] bytes, so it
//! never needs the heap), a checked view of a message header ([`Packet`]) and the
//! answer we read ([`Answer`]: records of the asked type, following CNAME chains,
//! names decompressed).
//!
//! Pure: no sockets, no timers, no resolv.conf; the probe lives in `probe::dns`. The
//! agent resolves names through the C library, not through this codec.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use faultline_shared::target::dns::{PORT, RecordType, validate_name};
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 §2.3.4): 255 bytes with its length octets.
pub const MAX_NAME_LEN: usize = 255;
/// Longest query: header, name, type and class.
pub const MAX_QUERY_LEN: usize = HEADER_LEN + MAX_NAME_LEN + 4;

/// A query's bytes.
pub type QueryBuffer = heapless::Vec<u8, MAX_QUERY_LEN, u16>;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const ID: Field = 0..2;
    pub const FLAGS: Field = 2..4;
    pub const QDCOUNT: Field = 4..6;
    pub const ANCOUNT: Field = 6..8;
}

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const CLASS_IN: u16 = 1;
const TYPE_CNAME: u16 = 5;

/// A recursive query for one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    name: String,
    pub rtype: RecordType,
}

impl Query {
    /// A query for `name` (checked by [`validate_name`]).
    pub fn new(id: u16, name: &str, rtype: RecordType) -> Result<Self, String> {
        validate_name(name)?;
        Ok(Self {
            id,
            name: name.trim_end_matches('.').to_owned(),
            rtype,
        })
    }

    pub fn emit(&self) -> QueryBuffer {
        let mut q = QueryBuffer::new();
        // A valid name (checked in `new`) encodes in at most MAX_NAME_LEN bytes, so
        // the query fits MAX_QUERY_LEN.
        let mut put = |b: &[u8]| q.extend_from_slice(b).unwrap();
        put(&self.id.to_be_bytes());
        put(&FLAG_RD.to_be_bytes());
        put(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
        for label in self.name.split('.') {
            put(&[label.len() as u8]);
            put(label.as_bytes());
        }
        put(&[0]);
        put(&self.rtype.code().to_be_bytes());
        put(&CLASS_IN.to_be_bytes());
        q
    }
}

/// Why bytes are not the response to our query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a response to our query")]
    NotOurs,
    #[error("malformed DNS message")]
    Malformed,
}

/// A view of a DNS message's header over a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        Ok(p)
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn id(&self) -> u16 {
        self.u16_at(field::ID)
    }

    pub fn is_response(&self) -> bool {
        self.u16_at(field::FLAGS) & FLAG_QR != 0
    }

    pub fn truncated(&self) -> bool {
        self.u16_at(field::FLAGS) & FLAG_TC != 0
    }

    pub fn rcode(&self) -> u8 {
        (self.u16_at(field::FLAGS) & 0x000f) as u8
    }

    pub fn question_count(&self) -> u16 {
        self.u16_at(field::QDCOUNT)
    }

    pub fn answer_count(&self) -> u16 {
        self.u16_at(field::ANCOUNT)
    }
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
    /// Parses the response to `query`. Never panics on any input.
    pub fn parse(b: &[u8], query: &Query) -> Result<Answer, Error> {
        let header = Packet::new_checked(b).map_err(|_| Error::NotOurs)?;
        if header.id() != query.id || !header.is_response() {
            return Err(Error::NotOurs);
        }
        let truncated = header.truncated();
        let mut r = Reader {
            msg: b,
            at: HEADER_LEN,
        };
        let mut name = String::new();
        for i in 0..header.question_count() {
            let n = r.name()?;
            if i == 0 {
                name = n;
            }
            r.take(4)?;
        }
        // (owner, record) of the asked type, and CNAMEs as (alias, target).
        let mut found = Vec::new();
        let mut cnames = Vec::new();
        for _ in 0..header.answer_count() {
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
            let record = match (t, query.rtype) {
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
                (TYPE_CNAME, _) => {
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
            rcode: header.rcode(),
            truncated,
            records,
        })
    }

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

struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let s = self.msg.get(self.at..self.at + n).ok_or(Error::Malformed)?;
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a possibly compressed name; returns it dotted.
    fn name(&mut self) -> Result<String, Error> {
        let (name, end) = read_name(self.msg, self.at)?;
        self.at = end;
        Ok(name)
    }
}

/// Reads the name at `at`; returns it and the offset just past it (in the record).
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), Error> {
    let mut out = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(Error::Malformed)?;
        match len {
            0 => {
                if out.is_empty() {
                    out.push('.');
                }
                return Ok((out, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let lo = *msg.get(at + 1).ok_or(Error::Malformed)?;
                end.get_or_insert(at + 2);
                at = (usize::from(l & 0x3f) << 8) | usize::from(lo);
            }
            l if l & 0xc0 == 0 => {
                let label = msg
                    .get(at + 1..at + 1 + usize::from(l))
                    .ok_or(Error::Malformed)?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&String::from_utf8_lossy(label));
                at += 1 + usize::from(l);
            }
            _ => return Err(Error::Malformed),
        }
    }
    Err(Error::Malformed) // a pointer loop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, rtype: RecordType) -> Query {
        Query::new(id, name, rtype).unwrap()
    }

    /// `query` as a response header: QR and RD (and RA), `an` answers follow.
    fn response_to(q: &Query, rcode: u8, an: u8) -> Vec<u8> {
        let mut m = q.emit().to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = an;
        m
    }

    #[test]
    fn test_construct_query() {
        let q = query(0xabcd, "example.com", RecordType::A).emit();
        let want: &[u8] = &[
            0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ];
        assert_eq!(&q[..], want);
        let q = query(1, "_sip._udp.x.", RecordType::Srv).emit();
        assert_eq!(&q[12..], b"\x04_sip\x04_udp\x01x\x00\x00\x21\x00\x01");
    }

    #[test]
    fn the_longest_name_fits_the_query_buffer() {
        let label = "a".repeat(63);
        let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name.len(), 253);
        let q = query(1, &name, RecordType::Aaaa).emit();
        assert_eq!(q.len(), MAX_QUERY_LEN);
        assert!(Query::new(1, &format!("{name}x"), RecordType::A).is_err());
    }

    #[test]
    fn test_deconstruct_header() {
        let m = response_to(&query(0x1234, "h.example", RecordType::A), 3, 0);
        let p = Packet::new_checked(&m[..]).unwrap();
        assert_eq!(p.id(), 0x1234);
        assert!(p.is_response() && !p.truncated());
        assert_eq!((p.rcode(), p.question_count(), p.answer_count()), (3, 1, 0));
        assert_eq!(Packet::new_checked(&m[..11]).unwrap_err(), Error::Malformed);
    }

    /// A response to `_sip._udp.example.com` SRV: one SRV answer whose target is
    /// compressed against the question, plus an A record the query did not ask for.
    fn srv_response() -> (Query, Vec<u8>) {
        let q = query(0xabcd, "_sip._udp.example.com", RecordType::Srv);
        let mut m = response_to(&q, 0, 2);
        // SRV: name → pointer to the question (offset 12).
        m.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60, 0, 12]);
        m.extend_from_slice(&[0, 10, 0, 5, 0x13, 0xc4, 3, b's', b'i', b'p', 0xc0, 22]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        (q, m)
    }

    #[test]
    fn parses_srv_with_compression() {
        let (q, m) = srv_response();
        let a = Answer::parse(&m, &q).unwrap();
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
        let q = query(7, "h.example", RecordType::A);
        let mut m = response_to(&q, 0, 1);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        let a = Answer::parse(&m, &q).unwrap();
        assert_eq!(a.records, vec![Record::A(Ipv4Addr::new(10, 1, 2, 3))]);
        assert_eq!(
            Answer::parse(&m, &query(8, "h.example", RecordType::A)),
            Err(Error::NotOurs)
        );
        // Our own query (QR clear) is not an answer.
        assert_eq!(Answer::parse(&q.emit(), &q), Err(Error::NotOurs));
        let q6 = query(9, "nope.example", RecordType::Aaaa);
        let a = Answer::parse(&response_to(&q6, 3, 0), &q6).unwrap();
        assert_eq!(a.error().as_deref(), Some("nxdomain"));
        let a = Answer::parse(&response_to(&q6, 0, 0), &q6).unwrap();
        assert_eq!(a.error().as_deref(), Some("no records"));
        let a = Answer::parse(&response_to(&q6, 2, 0), &q6).unwrap();
        assert_eq!(a.error().as_deref(), Some("servfail"));
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_answer_section(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), an in 0u8..8) {
            let q = query(5, "_sip._udp.example.com", RecordType::Srv);
            let mut m = response_to(&q, 0, an);
            m.extend_from_slice(&tail);
            let _ = Answer::parse(&m, &q);
        }
    }

    #[test]
    fn pointer_loops_and_garbage_do_not_panic() {
        let q = query(1, "a", RecordType::A);
        let mut m = response_to(&q, 0, 1);
        m.extend_from_slice(&[0xc0, 19, 0, 1]); // points at itself
        assert_eq!(Answer::parse(&m, &q), Err(Error::Malformed));
        let (q, base) = srv_response();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(12..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(12..=b.len()));
            let _ = Answer::parse(&b, &q);
        }
    }

    /// A response to `alias.example` A: a CNAME chain alias → mid → host (in a
    /// scrambled order), host's A, and an A of an unrelated name, which must not count.
    fn cname_response() -> (Query, Vec<u8>) {
        let q = query(3, "alias.example", RecordType::A);
        let mut m = response_to(&q, 0, 4);
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
        (q, m)
    }

    #[test]
    fn follows_a_cname_chain_and_skips_other_owners() {
        let (q, m) = cname_response();
        let a = Answer::parse(&m, &q).unwrap();
        assert_eq!(a.name, "alias.example");
        assert_eq!(a.records, vec![Record::A(Ipv4Addr::new(192, 0, 2, 10))]);
        assert!(!a.truncated);
        // A chain that loops ends somewhere; whatever it keeps, it terminates.
        let q = query(4, "a.x", RecordType::A);
        let mut m = response_to(&q, 0, 2);
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 4, 1, b'b', 0xc0, 14]);
        m.extend_from_slice(&[0xc0, 33, 0, 5, 0, 1, 0, 0, 0, 9, 0, 2, 0xc0, 12]);
        let a = Answer::parse(&m, &q).unwrap();
        assert_eq!((a.rcode, a.records.len()), (0, 0));
    }

    #[test]
    fn truncated_flag() {
        let q = query(5, "big.example", RecordType::A);
        let mut m = response_to(&q, 0, 3); // claims three answers, carries none
        m[2] = 0x83; // QR, TC, RD
        let a = Answer::parse(&m, &q).unwrap();
        assert!(a.truncated);
        assert!(a.records.is_empty());
    }

    #[test]
    fn names_and_record_types() {
        assert!(validate_name("_sip._udp.example.com").is_ok());
        assert!(validate_name("a..b").is_err());
        assert!(validate_name(&"x".repeat(64)).is_err());
        assert_eq!(RecordType::default_for("_sip._tcp.x"), RecordType::Srv);
        assert_eq!(RecordType::from_name("AAAA"), Some(RecordType::Aaaa));
        assert_eq!(RecordType::from_name("mx"), None);
    }
}
