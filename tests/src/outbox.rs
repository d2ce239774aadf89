//! Writes and reads an agent's durable outbox (`{state_dir}/outbox/`) in the on-disk
//! format documented at the top of `agent/src/net/spool.rs`, independently of the
//! agent's code: a benchmark pre-fills a spool with this as a gateway's flash would
//! hold it after a day without a broker.
//!
//! Segment files `{first id:020}.seg`: the magic `FLOUTBX1`, then records
//! `[u32 LE body length][u32 LE CRC-32 (IEEE) of the body][body]`, the body being
//! `u8 format (0 postcard, 1 JSON) · u32 LE boot · u64 LE seq · payload`, at most
//! [`SEGMENT_RECORDS`] a file. Ids count from 0; without an `acked` watermark file
//! every record is live.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Records per segment file (the agent's `SEGMENT_RECORDS`).
pub const SEGMENT_RECORDS: usize = 64;
/// Every segment file starts with this.
pub const MAGIC: &[u8; 8] = b"FLOUTBX1";
/// The body's format byte for a postcard payload.
pub const FORMAT_POSTCARD: u8 = 0;

/// One record's bytes: header and body.
pub fn encode_record(format: u8, boot: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(13 + payload.len());
    body.push(format);
    body.extend_from_slice(&boot.to_le_bytes());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit: the test kit
/// checks the agent's `crc32fast` against an independent implementation.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Writes `records` (format, boot, seq, payload) as segment files into `dir` (the
/// outbox folder, created), with ids from 0. Returns the files written.
pub fn write_segments<'a>(
    dir: &Path,
    records: impl IntoIterator<Item = (u8, u32, u64, &'a [u8])>,
) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let mut file: Option<io::BufWriter<fs::File>> = None;
    for (i, (format, boot, seq, payload)) in records.into_iter().enumerate() {
        if i % SEGMENT_RECORDS == 0 {
            if let Some(mut f) = file.take() {
                f.flush()?;
            }
            let path = dir.join(format!("{i:020}.seg"));
            let mut f = io::BufWriter::new(fs::File::create(&path)?);
            f.write_all(MAGIC)?;
            file = Some(f);
            files.push(path);
        }
        // Set just above on the first record.
        let f = file.as_mut().unwrap();
        f.write_all(&encode_record(format, boot, seq, payload))?;
    }
    if let Some(mut f) = file {
        f.flush()?;
    }
    Ok(files)
}

/// What is in an outbox folder: segment files, records in them (checksums good) and
/// their bytes on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolCount {
    pub segments: usize,
    pub records: usize,
    pub bytes: u64,
}

/// Counts the records in `dir`'s segment files (ignoring the `acked` watermark).
pub fn count(dir: &Path) -> io::Result<SpoolCount> {
    let mut c = SpoolCount::default();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = fs::read(&path)?;
        c.segments += 1;
        c.bytes += bytes.len() as u64;
        let mut at = MAGIC.len().min(bytes.len());
        while let Some(head) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let Some(body) = bytes.get(at + 8..at + 8 + len) else {
                break;
            };
            c.records += usize::from(crc32(body) == crc);
            at += 8 + len;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_record_is_length_crc_and_body() {
        let r = encode_record(FORMAT_POSTCARD, 0x0102_0304, 5, b"ab");
        #[rustfmt::skip]
        let body: &[u8] = &[
            0x00,                                     // postcard
            0x04, 0x03, 0x02, 0x01,                   // boot
            0x05, 0, 0, 0, 0, 0, 0, 0,                // seq
            b'a', b'b',                               // payload
        ];
        assert_eq!(&r[0..4], &15u32.to_le_bytes());
        assert_eq!(&r[4..8], &crc32(body).to_le_bytes());
        assert_eq!(&r[8..], body);
    }

    #[test]
    fn segments_hold_64_records_each_and_count_back() {
        let dir = crate::TempDir::new("outbox-kit");
        let payload = [7u8; 300];
        let files = write_segments(
            dir.path(),
            (0..130u64).map(|s| (FORMAT_POSTCARD, 9, s, &payload[..])),
        )
        .unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "00000000000000000000.seg",
                "00000000000000000064.seg",
                "00000000000000000128.seg"
            ]
        );
        let c = count(dir.path()).unwrap();
        assert_eq!((c.segments, c.records), (3, 130));
        assert_eq!(c.bytes, 3 * 8 + 130 * (8 + 13 + 300));
    }
}
