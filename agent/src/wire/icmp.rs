//! ICMP and ICMPv6 echo messages (RFC 792, RFC 4443): a checked view over a message
//! ([`Packet`]), the echo request or reply as a parsed form ([`EchoRepr`]), the Internet
//! checksum, and the step past the IPv4 header that raw IPv4 sockets deliver.
//!
//! Pure: no sockets; which socket kind is used and how replies are matched lives in
//! `probe::icmp`. Message types other than echo survive as [`Message::Unknown`].

/// Echo payload length (as ping(8) sends: 56 bytes, 64 with the header).
pub const ECHO_PAYLOAD_LEN: usize = 56;
pub const HEADER_LEN: usize = 8;
/// An echo request as we send it.
pub const ECHO_LEN: usize = HEADER_LEN + ECHO_PAYLOAD_LEN;
/// The first payload bytes of our echoes.
pub const MAGIC: &[u8; 8] = b"faultlin";

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
}

/// Which ICMP: the message type numbers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// An ICMP message type, as far as echo goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    EchoRequest,
    EchoReply,
    /// Any other type (unreachable, time exceeded, router advertisement...).
    Unknown(u8),
}

impl Message {
    pub fn from_code(family: Family, t: u8) -> Self {
        match (family, t) {
            (Family::V4, 8) | (Family::V6, 128) => Message::EchoRequest,
            (Family::V4, 0) | (Family::V6, 129) => Message::EchoReply,
            (_, t) => Message::Unknown(t),
        }
    }

    pub fn code(self, family: Family) -> u8 {
        match (family, self) {
            (Family::V4, Message::EchoRequest) => 8,
            (Family::V4, Message::EchoReply) => 0,
            (Family::V6, Message::EchoRequest) => 128,
            (Family::V6, Message::EchoReply) => 129,
            (_, Message::Unknown(t)) => t,
        }
    }
}

/// Why bytes are not an echo message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("ICMP message of {0} bytes is shorter than its 8-byte header")]
    Truncated(usize),
    #[error("not an echo message (type {0}, code {1})")]
    NotEcho(u8, u8),
}

/// A view of an ICMP message over a buffer.
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
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated(len));
        }
        Ok(p)
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn echo_ident(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ECHO_IDENT];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn echo_seq_no(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ECHO_SEQNO];
        u16::from_be_bytes([b[0], b[1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::ECHO_IDENT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.buffer.as_mut()[field::ECHO_SEQNO].copy_from_slice(&v.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes and sets the ICMPv4 checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
}

/// An echo request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoRepr {
    pub family: Family,
    /// [`Message::EchoRequest`] or [`Message::EchoReply`].
    pub message: Message,
    pub ident: u16,
    pub seq_no: u16,
}

impl EchoRepr {
    /// Parses an echo request or reply (code 0); any other message is
    /// [`Error::NotEcho`]. The checksum is not verified: the kernel did that.
    pub fn parse<T: AsRef<[u8]>>(family: Family, packet: &Packet<T>) -> Result<Self, Error> {
        let len = packet.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated(len));
        }
        let message = Message::from_code(family, packet.msg_type());
        if matches!(message, Message::Unknown(_)) || packet.msg_code() != 0 {
            return Err(Error::NotEcho(packet.msg_type(), packet.msg_code()));
        }
        Ok(Self {
            family,
            message,
            ident: packet.echo_ident(),
            seq_no: packet.echo_seq_no(),
        })
    }

    /// The message with our [`ECHO_PAYLOAD_LEN`]-byte payload (starting with [`MAGIC`]).
    /// ICMPv6's checksum is left zero: the kernel fills it in for ICMPv6 sockets.
    pub fn emit(&self) -> [u8; ECHO_LEN] {
        let mut b = [0u8; ECHO_LEN];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(self.message.code(self.family));
        p.set_msg_code(0);
        p.set_echo_ident(self.ident);
        p.set_echo_seq_no(self.seq_no);
        p.payload_mut()[..MAGIC.len()].copy_from_slice(MAGIC);
        if self.family == Family::V4 {
            p.fill_checksum();
        }
        b
    }
}

/// The Internet checksum (RFC 1071) of `b`.
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

/// The payload of an IPv4 datagram (what a raw IPv4 socket delivers: header first),
/// or `None` when the bytes do not start with an IPv4 header.
pub fn ipv4_payload(b: &[u8]) -> Option<&[u8]> {
    let first = *b.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return None;
    }
    b.get(ihl..)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo request, identifier 0x1234, sequence 1, our payload.
    static ECHO_REQUEST_BYTES: [u8; 16] = [
        0x08, 0x00, 0x2c, 0x22, 0x12, 0x34, 0x00, 0x01, b'f', b'a', b'u', b'l', b't', b'l', b'i',
        b'n',
    ];

    fn echo_request() -> EchoRepr {
        EchoRepr {
            family: Family::V4,
            message: Message::EchoRequest,
            ident: 0x1234,
            seq_no: 1,
        }
    }

    #[test]
    fn test_construct_echo_request() {
        let b = echo_request().emit();
        assert_eq!(&b[..16], &ECHO_REQUEST_BYTES[..]);
        assert!(b[16..].iter().all(|&x| x == 0));
        assert_eq!(checksum(&b), 0, "a message with its checksum sums to zero");
        let v6 = EchoRepr {
            family: Family::V6,
            ..echo_request()
        }
        .emit();
        assert_eq!(&v6[..8], &[128, 0, 0, 0, 0x12, 0x34, 0, 1]);
    }

    #[test]
    fn test_deconstruct_echo_reply() {
        let mut b = echo_request().emit();
        b[0] = 0; // echo reply
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (0, 0));
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1234, 1));
        assert_eq!(&b[HEADER_LEN..HEADER_LEN + 8], MAGIC);
        assert_eq!(
            EchoRepr::parse(Family::V4, &p),
            Ok(EchoRepr {
                message: Message::EchoReply,
                ..echo_request()
            })
        );
        let mut r6 = b;
        r6[0] = 129;
        let r = EchoRepr::parse(Family::V6, &Packet::new_unchecked(&r6[..])).unwrap();
        assert_eq!(
            (r.message, r.ident, r.seq_no),
            (Message::EchoReply, 0x1234, 1)
        );
    }

    #[test]
    fn other_messages_and_short_ones() {
        let mut unreachable = echo_request().emit();
        unreachable[0] = 3;
        unreachable[1] = 1;
        assert_eq!(
            EchoRepr::parse(Family::V4, &Packet::new_unchecked(&unreachable[..])),
            Err(Error::NotEcho(3, 1))
        );
        assert_eq!(Message::from_code(Family::V6, 134), Message::Unknown(134));
        assert_eq!(
            Packet::new_checked(&[0u8, 0, 0][..]).unwrap_err(),
            Error::Truncated(3)
        );
        assert_eq!(
            EchoRepr::parse(Family::V4, &Packet::new_unchecked(&[0u8; 4][..])),
            Err(Error::Truncated(4))
        );
    }

    #[test]
    fn rfc1071_checksum_example() {
        // 0x0001 0xf203 0xf4f5 0xf6f7 sums to 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(
            checksum(&[0xff]),
            !0xff00,
            "an odd byte is padded with zero"
        );
    }

    #[test]
    fn ipv4_header_is_skipped() {
        let reply = echo_request().emit();
        let mut with_ip = vec![0x45u8];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&reply);
        assert_eq!(ipv4_payload(&with_ip), Some(&reply[..]));
        let mut with_options = vec![0x46u8];
        with_options.extend_from_slice(&[0; 23]);
        with_options.extend_from_slice(&reply);
        assert_eq!(ipv4_payload(&with_options), Some(&reply[..]));
        assert_eq!(ipv4_payload(&[0x45, 0, 0]), None);
        assert_eq!(ipv4_payload(&[0x60; 40]), None, "IPv6 is not IPv4");
        assert_eq!(ipv4_payload(&[]), None);
    }

    proptest::proptest! {
        #[test]
        fn parser_takes_any_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            for family in [Family::V4, Family::V6] {
                let _ = EchoRepr::parse(family, &Packet::new_unchecked(&b[..]));
            }
            let _ = ipv4_payload(&b);
        }
    }
}
