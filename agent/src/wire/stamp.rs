//! STAMP test packets (RFC 8762, unauthenticated mode): a checked view over the bytes
//! ([`Packet`]), the sender's and the reflector's parsed forms ([`SenderRepr`],
//! [`ReflectorRepr`]), NTP timestamps and the reflection rule.
//!
//! Pure: no sockets, no clock reads (times are passed in). The session-sender lives in
//! `probe::stamp`, the session-reflector in `reflect`.
//!
//! Session-Sender test packet (44 bytes, optionally zero-padded):
//! ```text
//! 0  Sequence Number (4) | 4 Timestamp (8, NTP) | 12 Error Estimate (2) | 14 MBZ (30)
//! ```
//! Session-Reflector test packet (44 bytes, padded to the sender's length):
//! ```text
//! 0  Sequence Number (4) | 4 Timestamp (8) | 12 Error Estimate (2) | 14 MBZ (2)
//! 16 Receive Timestamp (8) | 24 Session-Sender Sequence Number (4)
//! 28 Session-Sender Timestamp (8) | 36 Session-Sender Error Estimate (2) | 38 MBZ (2)
//! 40 Session-Sender TTL (1) | 41 MBZ (3)
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use faultline_shared::target::stamp::{BASE_LEN, MAX_LEN, PORT};
/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Error Estimate: S=0 (not synchronised to UTC), Z=0 (NTP format), Scale 22 and
/// Multiplier 1, i.e. about ±1 ms: what an unsynchronised gateway can honestly claim.
pub const ERROR_ESTIMATE: u16 = (22 << 8) | 1;

/// One test packet's bytes, 44 to [`MAX_LEN`] long: a packet never needs the heap.
pub type Buffer = heapless::Vec<u8, MAX_LEN, u16>;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SEQ: Field = 0..4;
    pub const TIMESTAMP: Field = 4..12;
    pub const ERROR_ESTIMATE: Field = 12..14;
    pub const RECEIVE_TIMESTAMP: Field = 16..24;
    pub const SENDER_SEQ: Field = 24..28;
    pub const SENDER_TIMESTAMP: Field = 28..36;
    pub const SENDER_ERROR_ESTIMATE: Field = 36..38;
    pub const SENDER_TTL: usize = 40;
}

/// Why bytes are not a STAMP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("packet of {0} bytes is shorter than STAMP's 44")]
    Truncated(usize),
}

/// A 64-bit NTP timestamp (seconds since 1900, 32.32 fixed point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// `self − earlier`, or `None` when negative or absurd (> 1 hour).
    pub fn since(self, earlier: NtpTime) -> Option<Duration> {
        let diff = self.0.checked_sub(earlier.0)?;
        let secs = diff >> 32;
        if secs > 3600 {
            return None;
        }
        let nanos = ((diff & 0xffff_ffff) * 1_000_000_000) >> 32;
        Some(Duration::new(secs, nanos as u32))
    }
}

/// A read/write view of a STAMP test packet (either direction) over a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checking the length; accessors panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view over a buffer long enough for every field.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < BASE_LEN {
            Err(Error::Truncated(len))
        } else {
            Ok(())
        }
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, f: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[f];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn ntp_at(&self, f: field::Field) -> NtpTime {
        let b = &self.buffer.as_ref()[f];
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        NtpTime(u64::from_be_bytes(a))
    }

    /// The packet's own sequence number (the sender's, or the reflector's).
    pub fn seq(&self) -> u32 {
        self.u32_at(field::SEQ)
    }

    /// When it was sent (T1 from the sender, T3 from the reflector).
    pub fn timestamp(&self) -> NtpTime {
        self.ntp_at(field::TIMESTAMP)
    }

    pub fn error_estimate(&self) -> u16 {
        self.u16_at(field::ERROR_ESTIMATE)
    }

    /// Reflector packets: when the sender's packet arrived (T2).
    pub fn receive_timestamp(&self) -> NtpTime {
        self.ntp_at(field::RECEIVE_TIMESTAMP)
    }

    /// Reflector packets: the sequence number of the packet answered.
    pub fn sender_seq(&self) -> u32 {
        self.u32_at(field::SENDER_SEQ)
    }

    pub fn sender_timestamp(&self) -> NtpTime {
        self.ntp_at(field::SENDER_TIMESTAMP)
    }

    pub fn sender_error_estimate(&self) -> u16 {
        self.u16_at(field::SENDER_ERROR_ESTIMATE)
    }

    /// The IP TTL (or hop limit) the sender's packet arrived with.
    pub fn sender_ttl(&self) -> u8 {
        self.buffer.as_ref()[field::SENDER_TTL]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, f: field::Field, bytes: &[u8]) {
        self.buffer.as_mut()[f].copy_from_slice(bytes);
    }

    /// Zeroes the whole packet: MBZ fields and padding.
    pub fn clear(&mut self) {
        self.buffer.as_mut().fill(0);
    }

    pub fn set_seq(&mut self, v: u32) {
        self.put(field::SEQ, &v.to_be_bytes());
    }

    pub fn set_timestamp(&mut self, v: NtpTime) {
        self.put(field::TIMESTAMP, &v.0.to_be_bytes());
    }

    pub fn set_error_estimate(&mut self, v: u16) {
        self.put(field::ERROR_ESTIMATE, &v.to_be_bytes());
    }

    pub fn set_receive_timestamp(&mut self, v: NtpTime) {
        self.put(field::RECEIVE_TIMESTAMP, &v.0.to_be_bytes());
    }

    pub fn set_sender_seq(&mut self, v: u32) {
        self.put(field::SENDER_SEQ, &v.to_be_bytes());
    }

    pub fn set_sender_timestamp(&mut self, v: NtpTime) {
        self.put(field::SENDER_TIMESTAMP, &v.0.to_be_bytes());
    }

    pub fn set_sender_error_estimate(&mut self, v: u16) {
        self.put(field::SENDER_ERROR_ESTIMATE, &v.to_be_bytes());
    }

    pub fn set_sender_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::SENDER_TTL] = v;
    }
}

/// A zeroed buffer of `len` bytes, clamped to 44..=[`MAX_LEN`].
pub fn zeroed(len: usize) -> Buffer {
    let mut b = Buffer::new();
    // Clamped to the capacity just above.
    b.resize(len.clamp(BASE_LEN, MAX_LEN), 0).unwrap();
    b
}

/// The sender's test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderRepr {
    pub seq: u32,
    pub timestamp: NtpTime,
    pub error_estimate: u16,
}

impl SenderRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Self {
            seq: packet.seq(),
            timestamp: packet.timestamp(),
            error_estimate: packet.error_estimate(),
        })
    }

    /// Writes the fields; MBZ and padding are zeroed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.clear();
        packet.set_seq(self.seq);
        packet.set_timestamp(self.timestamp);
        packet.set_error_estimate(self.error_estimate);
    }

    /// The packet, `len` bytes long (clamped to 44..=[`MAX_LEN`]).
    pub fn emit_padded(&self, len: usize) -> Buffer {
        let mut b = zeroed(len);
        self.emit(&mut Packet::new_unchecked(&mut b[..]));
        b
    }
}

/// The reflector's test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectorRepr {
    pub seq: u32,
    pub timestamp: NtpTime,
    pub error_estimate: u16,
    pub receive_timestamp: NtpTime,
    pub sender_seq: u32,
    pub sender_timestamp: NtpTime,
    pub sender_error_estimate: u16,
    pub sender_ttl: u8,
}

impl ReflectorRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        Ok(Self {
            seq: packet.seq(),
            timestamp: packet.timestamp(),
            error_estimate: packet.error_estimate(),
            receive_timestamp: packet.receive_timestamp(),
            sender_seq: packet.sender_seq(),
            sender_timestamp: packet.sender_timestamp(),
            sender_error_estimate: packet.sender_error_estimate(),
            sender_ttl: packet.sender_ttl(),
        })
    }

    /// Writes the fields; MBZ and padding are zeroed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.clear();
        packet.set_seq(self.seq);
        packet.set_timestamp(self.timestamp);
        packet.set_error_estimate(self.error_estimate);
        packet.set_receive_timestamp(self.receive_timestamp);
        packet.set_sender_seq(self.sender_seq);
        packet.set_sender_timestamp(self.sender_timestamp);
        packet.set_sender_error_estimate(self.sender_error_estimate);
        packet.set_sender_ttl(self.sender_ttl);
    }

    /// The packet, `len` bytes long (clamped to 44..=[`MAX_LEN`]).
    pub fn emit_padded(&self, len: usize) -> Buffer {
        let mut b = zeroed(len);
        self.emit(&mut Packet::new_unchecked(&mut b[..]));
        b
    }

    /// How long the reflector held the packet (T3 − T2), when its clock is sane.
    pub fn holding_time(&self) -> Option<Duration> {
        self.timestamp.since(self.receive_timestamp)
    }
}

/// The reflection rule (RFC 8762 §4.3): the answer to `request`, as long as the
/// request (44..=[`MAX_LEN`] bytes), or `None` when it is not a STAMP packet. `seq`
/// is the reflector's own number (stateful) or the sender's (stateless); `t2` when
/// the request arrived, `t3` now; `ttl` the IP TTL it had.
pub fn reflect(
    request: &[u8],
    seq: Option<u32>,
    t2: NtpTime,
    t3: NtpTime,
    ttl: u8,
) -> Option<Buffer> {
    let req = SenderRepr::parse(&Packet::new_unchecked(request)).ok()?;
    let answer = ReflectorRepr {
        seq: seq.unwrap_or(req.seq),
        timestamp: t3,
        error_estimate: ERROR_ESTIMATE,
        receive_timestamp: t2,
        sender_seq: req.seq,
        sender_timestamp: req.timestamp,
        sender_error_estimate: req.error_estimate,
        sender_ttl: ttl,
    };
    Some(answer.emit_padded(request.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    static SENDER_BYTES: [u8; 44] = [
        0x01, 0x02, 0x03, 0x04, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x16, 0x01, 0,
        0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn sender_repr() -> SenderRepr {
        SenderRepr {
            seq: 0x0102_0304,
            timestamp: NtpTime(0x1112_1314_1516_1718),
            error_estimate: 0x1601,
        }
    }

    static REFLECTOR_BYTES: [u8; 44] = [
        0, 0, 0, 7, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0x80, 0x01, 0, 0, //
        0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 1, 2, 3, 4, //
        0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0x16, 0x01, 0, 0, //
        64, 0, 0, 0,
    ];

    fn reflector_repr() -> ReflectorRepr {
        ReflectorRepr {
            seq: 7,
            timestamp: NtpTime(0xA0A1_A2A3_A4A5_A6A7),
            error_estimate: 0x8001,
            receive_timestamp: NtpTime(0xB0B1_B2B3_B4B5_B6B7),
            sender_seq: 0x0102_0304,
            sender_timestamp: NtpTime(0xC0C1_C2C3_C4C5_C6C7),
            sender_error_estimate: 0x1601,
            sender_ttl: 64,
        }
    }

    #[test]
    fn test_deconstruct_sender() {
        let p = Packet::new_checked(&SENDER_BYTES[..]).unwrap();
        assert_eq!(p.seq(), 0x0102_0304);
        assert_eq!(p.timestamp(), NtpTime(0x1112_1314_1516_1718));
        assert_eq!(p.error_estimate(), 0x1601);
        assert_eq!(SenderRepr::parse(&p), Ok(sender_repr()));
    }

    #[test]
    fn test_construct_sender() {
        let mut b = [0xffu8; 44];
        sender_repr().emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, SENDER_BYTES);
        let padded = sender_repr().emit_padded(160);
        assert_eq!(padded.len(), 160);
        assert_eq!(&padded[..44], &SENDER_BYTES[..]);
        assert!(padded[44..].iter().all(|&b| b == 0), "padding is zero");
    }

    #[test]
    fn test_deconstruct_reflector() {
        let p = Packet::new_checked(&REFLECTOR_BYTES[..]).unwrap();
        assert_eq!((p.sender_seq(), p.sender_ttl()), (0x0102_0304, 64));
        assert_eq!(ReflectorRepr::parse(&p), Ok(reflector_repr()));
    }

    #[test]
    fn test_construct_reflector() {
        let mut b = [0xffu8; 44];
        reflector_repr().emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, REFLECTOR_BYTES);
    }

    #[test]
    fn short_packets_are_rejected_and_lengths_clamped() {
        assert_eq!(
            Packet::new_checked(&SENDER_BYTES[..43]).unwrap_err(),
            Error::Truncated(43)
        );
        assert_eq!(
            SenderRepr::parse(&Packet::new_unchecked(&SENDER_BYTES[..10])),
            Err(Error::Truncated(10))
        );
        assert_eq!(zeroed(0).len(), BASE_LEN);
        assert_eq!(zeroed(100_000).len(), MAX_LEN);
    }

    #[test]
    fn ntp_time_from_unix_epoch_and_half_second() {
        let t = NtpTime::from_system(UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(t.0 >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(t.0 & 0xffff_ffff, 0x8000_0000);
        let later = NtpTime::from_system(UNIX_EPOCH + Duration::from_millis(1750));
        assert_eq!(later.since(t), Some(Duration::from_millis(250)));
        assert_eq!(t.since(later), None);
    }

    #[test]
    fn reflection_keeps_length_and_copies_sender_fields() {
        let req = SenderRepr {
            seq: 42,
            timestamp: NtpTime(1 << 40),
            error_estimate: ERROR_ESTIMATE,
        }
        .emit_padded(160);
        let t2 = NtpTime(2 << 40);
        let t3 = NtpTime((2 << 40) + (1 << 22));
        let out = reflect(&req, None, t2, t3, 63).unwrap();
        assert_eq!(out.len(), 160);
        let p = ReflectorRepr::parse(&Packet::new_unchecked(&out[..])).unwrap();
        assert_eq!((p.seq, p.sender_seq, p.sender_ttl), (42, 42, 63));
        assert_eq!(p.sender_timestamp, NtpTime(1 << 40));
        assert_eq!(p.receive_timestamp, t2);
        assert_eq!(p.holding_time(), Some(Duration::from_nanos(976_562)));
        let out = reflect(&req, Some(9), t2, t3, 63).unwrap();
        assert_eq!(Packet::new_unchecked(&out[..]).seq(), 9);
        assert_eq!(reflect(&req[..20], None, t2, t3, 1), None);
        // A jumbo request is answered at the largest length we send.
        assert_eq!(
            reflect(&[0u8; 9000], None, t2, t3, 1).unwrap().len(),
            MAX_LEN
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn packets_round_trip(seq: u32, ts: u64, ee: u16, rseq: u32, t2: u64, ttl: u8, pad in 0usize..200) {
                let p = SenderRepr { seq, timestamp: NtpTime(ts), error_estimate: ee };
                let b = p.emit_padded(BASE_LEN + pad);
                prop_assert_eq!(SenderRepr::parse(&Packet::new_unchecked(&b[..])), Ok(p));
                let out = reflect(&b, Some(rseq), NtpTime(t2), NtpTime(ts), ttl).unwrap();
                prop_assert_eq!(out.len(), b.len());
                let r = ReflectorRepr::parse(&Packet::new_unchecked(&out[..])).unwrap();
                prop_assert_eq!((r.seq, r.sender_seq, r.sender_timestamp, r.sender_ttl), (rseq, seq, NtpTime(ts), ttl));
            }

            #[test]
            fn parsers_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..100)) {
                let p = Packet::new_unchecked(&b[..]);
                prop_assert_eq!(SenderRepr::parse(&p).is_ok(), b.len() >= BASE_LEN);
                prop_assert_eq!(ReflectorRepr::parse(&p).is_ok(), b.len() >= BASE_LEN);
            }

            #[test]
            fn ntp_differences_match_durations(base_ms in 0u64..4_000_000_000_000, d_us in 0u64..3_600_000_000) {
                let t0 = UNIX_EPOCH + Duration::from_millis(base_ms);
                let a = NtpTime::from_system(t0);
                let b = NtpTime::from_system(t0 + Duration::from_micros(d_us));
                let got = b.since(a).unwrap().as_nanos() as i128;
                prop_assert!((got - i128::from(d_us) * 1000).abs() <= 2, "{got} vs {d_us} us");
            }
        }
    }
}
