//! The few MQTT 3.1.1 packets a publishing agent needs, as bytes (OASIS MQTT 3.1.1,
//! §2–3). Pure: encoders append to a buffer, the decoder reads one packet from the
//! front of a buffer.
//!
//! Sent: CONNECT (persistent session, last will, credentials), PUBLISH at QoS 1,
//! PINGREQ, DISCONNECT. Understood: CONNACK, PUBACK, PINGRESP; any other packet is
//! framed and skipped (the agent subscribes to nothing).

use std::fmt;

/// Largest "remaining length" MQTT can express (four length bytes).
const MAX_REMAINING: usize = 268_435_455;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// What the CONNECT packet says.
#[derive(Debug)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub keepalive_s: u16,
    pub clean_session: bool,
    /// Topic and payload of the last will, published at QoS 1 and retained.
    pub will: Option<(&'a str, &'a [u8])>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// A packet from the broker.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    PubAck(u16),
    PingResp,
    /// Any other packet type (framed and skipped).
    Other(u8),
}

/// The broker sent bytes that are not MQTT 3.1.1.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    BadLength,
    TooLarge(usize),
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength => f.write_str("malformed MQTT packet length"),
            Self::TooLarge(n) => write!(f, "MQTT packet of {n} bytes is larger than expected"),
            Self::Malformed(what) => write!(f, "malformed MQTT {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a broker refused a connection (CONNACK return code, §3.2.2.3).
pub fn refusal(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown reason",
    }
}

fn fixed_header(out: &mut Vec<u8>, first: u8, mut remaining: usize) {
    debug_assert!(remaining <= MAX_REMAINING);
    out.push(first);
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if remaining == 0 {
            return;
        }
    }
}

/// A length-prefixed string or binary field (§1.5.3); fields here are far below 64 KiB.
fn field(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

pub fn connect(out: &mut Vec<u8>, c: &Connect<'_>) {
    let mut flags = 0u8;
    let mut len = 10 + 2 + c.client_id.len();
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some((topic, payload)) = c.will {
        // Will flag, will QoS 1, will retain.
        flags |= 0x04 | 0x08 | 0x20;
        len += 2 + topic.len() + 2 + payload.len();
    }
    if let Some(u) = c.username {
        flags |= 0x80;
        len += 2 + u.len();
        if let Some(p) = c.password {
            flags |= 0x40;
            len += 2 + p.len();
        }
    }
    fixed_header(out, CONNECT << 4, len);
    field(out, b"MQTT");
    out.push(4); // protocol level: 3.1.1
    out.push(flags);
    out.extend_from_slice(&c.keepalive_s.to_be_bytes());
    field(out, c.client_id.as_bytes());
    if let Some((topic, payload)) = c.will {
        field(out, topic.as_bytes());
        field(out, payload);
    }
    if let Some(u) = c.username {
        field(out, u.as_bytes());
        if let Some(p) = c.password {
            field(out, p.as_bytes());
        }
    }
}

/// A QoS 1 PUBLISH.
pub fn publish(out: &mut Vec<u8>, topic: &str, pkid: u16, dup: bool, retain: bool, payload: &[u8]) {
    let first = PUBLISH << 4 | u8::from(dup) << 3 | 1 << 1 | u8::from(retain);
    fixed_header(out, first, 2 + topic.len() + 2 + payload.len());
    field(out, topic.as_bytes());
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[PINGREQ << 4, 0]);
}

pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[DISCONNECT << 4, 0]);
}

/// Reads one packet from the front of `buf`: `Ok(None)` until it is all there, else
/// the packet and how many bytes it took. Packets over `max` bytes are an error.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Incoming, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (mut remaining, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        remaining |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::BadLength);
        }
    }
    let total = at + remaining;
    if total > max {
        return Err(DecodeError::TooLarge(total));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[at..total];
    let packet = match first >> 4 {
        CONNACK => match body {
            [flags, code] => Incoming::ConnAck {
                session_present: flags & 1 == 1,
                code: *code,
            },
            _ => return Err(DecodeError::Malformed("CONNACK")),
        },
        PUBACK => match body {
            [hi, lo] => Incoming::PubAck(u16::from_be_bytes([*hi, *lo])),
            _ => return Err(DecodeError::Malformed("PUBACK")),
        },
        PINGRESP => Incoming::PingResp,
        other => Incoming::Other(other),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_with_will_and_credentials_is_byte_exact() {
        let mut out = Vec::new();
        connect(
            &mut out,
            &Connect {
                client_id: "a1",
                keepalive_s: 60,
                clean_session: false,
                will: Some(("t/s", b"off")),
                username: Some("u"),
                password: Some("pw"),
            },
        );
        #[rustfmt::skip]
        let want = [
            0x10, 31,                       // CONNECT, remaining length
            0, 4, b'M', b'Q', b'T', b'T', 4, // protocol name, level 3.1.1
            0b1110_1100,                    // user, password, will retain, will QoS 1, will
            0, 60,                          // keepalive
            0, 2, b'a', b'1',               // client id
            0, 3, b't', b'/', b's',         // will topic
            0, 3, b'o', b'f', b'f',         // will payload
            0, 1, b'u',                     // user name
            0, 2, b'p', b'w',               // password
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn a_bare_clean_connect() {
        let mut out = Vec::new();
        connect(
            &mut out,
            &Connect {
                client_id: "x",
                keepalive_s: 5,
                clean_session: true,
                will: None,
                username: None,
                password: None,
            },
        );
        assert_eq!(
            out,
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 5, 0, 1, b'x'
            ]
        );
    }

    #[test]
    fn publish_sets_qos1_dup_and_retain_bits() {
        let mut out = Vec::new();
        publish(&mut out, "a/b", 0x0102, true, true, b"hi");
        assert_eq!(out, [0x3b, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i']);
        out.clear();
        publish(&mut out, "a", 7, false, false, &[]);
        assert_eq!(out, [0x32, 5, 0, 1, b'a', 0, 7]);
    }

    #[test]
    fn remaining_length_uses_one_to_four_bytes() {
        for (len, bytes) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (MAX_REMAINING, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            fixed_header(&mut out, 0x30, len);
            assert_eq!(out[1..], bytes[..], "length {len}");
        }
    }

    #[test]
    fn decodes_acks_and_waits_for_whole_packets() {
        let stream = [0x20, 2, 1, 0, 0x40, 2, 0x12, 0x34, 0xd0, 0];
        let (p, n) = decode(&stream, 64).unwrap().unwrap();
        assert_eq!(
            (p, n),
            (
                Incoming::ConnAck {
                    session_present: true,
                    code: 0
                },
                4
            )
        );
        let (p, n2) = decode(&stream[n..], 64).unwrap().unwrap();
        assert_eq!((p, n2), (Incoming::PubAck(0x1234), 4));
        assert_eq!(
            decode(&stream[n + n2..], 64).unwrap().unwrap(),
            (Incoming::PingResp, 2)
        );
        for cut in 0..4 {
            assert_eq!(decode(&stream[4..4 + cut], 64), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn skips_unknown_packets_and_rejects_bad_ones() {
        // A PUBLISH from the broker (the agent subscribes to nothing): framed, skipped.
        let mut out = Vec::new();
        publish(&mut out, "x", 1, false, false, b"data");
        assert_eq!(decode(&out, 64), Ok(Some((Incoming::Other(3), out.len()))));
        assert_eq!(
            decode(&[0x40, 0x80, 0x80, 0x80, 0x80, 0x01], 64),
            Err(DecodeError::BadLength)
        );
        assert_eq!(
            decode(&[0x30, 0x80, 0x01], 64),
            Err(DecodeError::TooLarge(131))
        );
        assert_eq!(
            decode(&[0x40, 3, 0, 1, 2], 64),
            Err(DecodeError::Malformed("PUBACK"))
        );
        assert_eq!(
            decode(&[0x20, 1, 0], 64),
            Err(DecodeError::Malformed("CONNACK"))
        );
    }

    #[test]
    fn refusal_codes_read_as_words() {
        assert_eq!(refusal(4), "bad user name or password");
        assert_eq!(refusal(5), "not authorized");
        assert_eq!(refusal(9), "unknown reason");
    }
}
