//! STUN messages (RFC 8489), as much as a Binding probe needs: a checked view over a
//! message ([`Packet`]: header and attributes), the request we send
//! ([`BindingRequest`]) and the responses we read ([`Response`]).
//!
//! Pure: no sockets, no timers; retransmission lives in `probe::stun`. Attributes we
//! do not read (SOFTWARE, MESSAGE-INTEGRITY, FINGERPRINT...) are skipped, and a message
//! type we do not know survives as [`Response::Other`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use faultline_shared::target::stun::PORT;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;
pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const TYPE: Field = 0..2;
    pub const LENGTH: Field = 2..4;
    pub const COOKIE: Field = 4..8;
    pub const TXID: Field = 8..20;
}

/// A transaction id.
pub type TransactionId = [u8; 12];

/// Why bytes are not a STUN message we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too short, the top bits set, or no magic cookie: another protocol.
    #[error("not a STUN message")]
    NotStun,
    /// A STUN header whose length or attributes do not fit.
    #[error("malformed STUN message")]
    Malformed,
}

/// A view of a STUN message over a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view over a message whose header is STUN's and whose length fits the buffer.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || b[0] & 0xc0 != 0 || self.magic_cookie() != MAGIC_COOKIE {
            return Err(Error::NotStun);
        }
        let len = usize::from(self.message_length());
        if len % 4 != 0 || b.len() < HEADER_LEN + len {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn message_type(&self) -> u16 {
        self.u16_at(field::TYPE)
    }

    /// Length of the attributes, bytes.
    pub fn message_length(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    pub fn magic_cookie(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::COOKIE];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn transaction_id(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buffer.as_ref()[field::TXID]);
        t
    }

    /// The attributes as (type, value); an attribute running past the message ends
    /// the walk with [`Error::Malformed`].
    pub fn attributes(&self) -> Attributes<'_> {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.message_length())).min(b.len());
        Attributes {
            rest: &b[HEADER_LEN..end],
        }
    }
}

/// Iterator over a message's attributes (see [`Packet::attributes`]).
#[derive(Debug)]
pub struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            return None;
        }
        let t = u16::from_be_bytes([self.rest[0], self.rest[1]]);
        let l = usize::from(u16::from_be_bytes([self.rest[2], self.rest[3]]));
        let Some(v) = self.rest.get(4..4 + l) else {
            self.rest = &[];
            return Some(Err(Error::Malformed));
        };
        // Values are padded to 4 bytes; the last one's padding may be missing.
        let padded = (l + 3) & !3;
        self.rest = self.rest.get(4 + padded..).unwrap_or_default();
        Some(Ok((t, v)))
    }
}

/// A Binding request: 20 bytes, no attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    pub txid: TransactionId,
}

impl BindingRequest {
    pub const LEN: usize = HEADER_LEN;

    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[field::TYPE].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
        b[field::COOKIE].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b[field::TXID].copy_from_slice(&self.txid);
        b
    }
}

/// A response (or any other message) as the probe reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Success with the mapped address (XOR-MAPPED-ADDRESS preferred over MAPPED-ADDRESS).
    BindingSuccess {
        txid: TransactionId,
        mapped: Option<SocketAddr>,
    },
    /// Error response with its code (e.g. 420); 0 when it carried none.
    BindingError { txid: TransactionId, code: u16 },
    /// A message type this probe does not read (a request, an indication...).
    Other {
        txid: TransactionId,
        message_type: u16,
    },
}

impl Response {
    /// Parses a checked message. Never panics on any input.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check()?;
        let txid = packet.transaction_id();
        let (mut xor, mut plain, mut code) = (None, None, None);
        for attr in packet.attributes() {
            let (t, v) = attr?;
            match t {
                ATTR_XOR_MAPPED_ADDRESS => xor = Some(address(v, Some(&txid))?),
                ATTR_MAPPED_ADDRESS => plain = Some(address(v, None)?),
                ATTR_ERROR_CODE if v.len() >= 4 => {
                    code = Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]));
                }
                _ => {}
            }
        }
        Ok(match packet.message_type() {
            BINDING_SUCCESS => Response::BindingSuccess {
                txid,
                mapped: xor.or(plain),
            },
            BINDING_ERROR => Response::BindingError {
                txid,
                code: code.unwrap_or(0),
            },
            message_type => Response::Other { txid, message_type },
        })
    }

    pub fn txid(&self) -> &TransactionId {
        match self {
            Response::BindingSuccess { txid, .. }
            | Response::BindingError { txid, .. }
            | Response::Other { txid, .. } => txid,
        }
    }
}

/// A (XOR-)MAPPED-ADDRESS value; `txid` given means XORed (RFC 8489 §14.2).
fn address(v: &[u8], txid: Option<&TransactionId>) -> Result<SocketAddr, Error> {
    if v.len() < 4 {
        return Err(Error::Malformed);
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
                for (x, k) in a.iter_mut().zip(cookie.iter().chain(t.iter())) {
                    *x ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(Error::Malformed),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TransactionId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

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

    /// RFC 5769 §2.3: the IPv6 sample's XOR-MAPPED-ADDRESS
    /// (2001:db8:1234:5678:11:2233:4455:6677 port 32853).
    const RFC5769_V6_XOR_ADDR: [u8; 24] = [
        0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1,
        0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
    ];

    fn parse(b: &[u8]) -> Result<Response, Error> {
        Response::parse(&Packet::new_unchecked(b))
    }

    #[test]
    fn test_construct_request() {
        let b = BindingRequest { txid: TXID }.emit();
        assert_eq!(&b[..8], &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&b[8..], &TXID);
    }

    #[test]
    fn test_deconstruct_rfc5769_v4() {
        let p = Packet::new_checked(&RFC5769_V4[..]).unwrap();
        assert_eq!(
            (p.message_type(), p.message_length()),
            (BINDING_SUCCESS, 60)
        );
        assert_eq!(p.transaction_id(), TXID);
        let types: Vec<u16> = p.attributes().map(|a| a.unwrap().0).collect();
        assert_eq!(types, [0x8022, ATTR_XOR_MAPPED_ADDRESS, 0x0008, 0x8028]);
        assert_eq!(
            Response::parse(&p),
            Ok(Response::BindingSuccess {
                txid: TXID,
                mapped: Some("192.0.2.1:32853".parse().unwrap())
            })
        );
    }

    #[test]
    fn test_deconstruct_rfc5769_v6() {
        let mut v6 = vec![0x01, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42];
        v6.extend_from_slice(&TXID);
        v6.extend_from_slice(&RFC5769_V6_XOR_ADDR);
        assert_eq!(
            parse(&v6),
            Ok(Response::BindingSuccess {
                txid: TXID,
                mapped: Some(
                    "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                        .parse()
                        .unwrap()
                )
            })
        );
    }

    #[test]
    fn plain_mapped_address_error_code_and_other_types() {
        let mut m = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&TXID);
        m.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x0d, 0x96, 127, 0, 0, 1]);
        assert_eq!(
            parse(&m),
            Ok(Response::BindingSuccess {
                txid: TXID,
                mapped: Some("127.0.0.1:3478".parse().unwrap())
            })
        );
        let mut e = vec![0x01, 0x11, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        e.extend_from_slice(&TXID);
        e.extend_from_slice(&[0x00, 0x09, 0x00, 0x04, 0, 0, 4, 20]);
        assert_eq!(
            parse(&e),
            Ok(Response::BindingError {
                txid: TXID,
                code: 420
            })
        );
        // Our own request read back: a type the probe does not take as an answer.
        let req = BindingRequest { txid: TXID }.emit();
        assert_eq!(
            parse(&req),
            Ok(Response::Other {
                txid: TXID,
                message_type: BINDING_REQUEST
            })
        );
    }

    #[test]
    fn strangers_and_truncation() {
        assert_eq!(parse(&RFC5769_V4[..19]), Err(Error::NotStun));
        let mut http = RFC5769_V4;
        http[4] = b'H';
        assert_eq!(parse(&http), Err(Error::NotStun));
        assert_eq!(parse(&RFC5769_V4[..60]), Err(Error::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_attributes(mut b in proptest::collection::vec(proptest::prelude::any::<u8>(), 20..200)) {
            // A valid header over random attributes reaches the attribute walk.
            let len = ((b.len() - 20) & !3) as u16;
            b[..8].copy_from_slice(&[0x01, 0x01, (len >> 8) as u8, len as u8, 0x21, 0x12, 0xa4, 0x42]);
            let _ = parse(&b);
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
            let _ = parse(&b);
        }
    }
}
