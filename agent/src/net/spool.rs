//! The durable outbox: every encoded report is written to disk under
//! `{state_dir}/outbox/` and synced before delivery is attempted, and retired once the
//! broker acknowledged it, so a broker outage, an agent restart, a crash or a power cut
//! loses no measured window (a power cut at most the one being measured).
//!
//! On disk: segment files `{first id, 20 digits}.seg`, each an 8-byte magic followed by
//! up to [`SEGMENT_RECORDS`] records appended in id order:
//!
//! ```text
//! u32 LE  body length (13 + payload)
//! u32 LE  CRC-32 (IEEE) of the body
//! body:   u8 format (0 postcard, 1 JSON) · u32 LE boot · u64 LE seq · payload
//! ```
//!
//! Each run appends to a new segment; a segment is deleted once every record in it is
//! retired. Retiring is not written per record (that would double the flash writes):
//! the file `acked` holds a low watermark (every id below it is retired), rewritten when
//! a segment fills and at a clean stop. After a crash, reports acknowledged since the
//! last watermark are sent again — the collector counts each (site, boot, seq) once.
//!
//! Opening tolerates damage: a torn tail (a power cut during an append) or a record
//! whose checksum fails is skipped and counted, never fatal. The spool is bounded:
//! beyond `capacity` live records the oldest are dropped and counted.
//!
//! Only the index (12 bytes a record) lives in memory; payloads are read back from
//! disk when they are sent. If a write fails (flash full or gone read-only), the
//! report is kept in memory instead and the failure is logged and counted: measuring
//! goes on.
//!
//! This module does no networking and decides nothing about sending (that is
//! [`super::outbox`]); it stores, reads back and retires.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::Format;

/// Records per segment file: about 10 minutes of 10 s windows.
pub const SEGMENT_RECORDS: usize = 64;
/// Every segment file starts with this.
pub const MAGIC: &[u8; 8] = b"FLOUTBX1";
/// Largest record body accepted when reading back (reports are a few kB at most).
pub const MAX_BODY: usize = 1 << 20;
/// Bytes before the payload in a body: format, boot, seq.
const BODY_HEAD: usize = 1 + 4 + 8;
/// Bytes before the body in a record: length, CRC.
const RECORD_HEAD: usize = 4 + 4;
/// The record checksum: CRC-32 (IEEE 802.3, as zlib's), with a 256-entry table.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
/// The outbox's folder under `state_dir`.
pub const DIR: &str = crate::config::OUTBOX_DIR;
const WATERMARK: &str = "acked";
const LOCK: &str = "lock";

/// One report as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub format: Format,
    pub boot: u32,
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What opening found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Live records carried over from earlier runs, and their boots (oldest first).
    pub records: usize,
    pub boots: Vec<u32>,
    /// Records skipped because their checksum failed or their length was impossible.
    pub corrupt: u64,
    /// Segments that ended in a partial record (a write cut short).
    pub torn: u64,
    /// Records dropped because more than `capacity` were live.
    pub dropped: u64,
}

/// Where a live record is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u32,
    len: u32,
    live: bool,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    slots: Vec<Slot>,
    live: usize,
}

/// The on-disk outbox. One owner (the delivery task); not shared.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    capacity: usize,
    segments: VecDeque<Segment>,
    /// The segment this run appends to (the last in `segments`), once created.
    active: Option<File>,
    /// Reports whose write failed, kept in memory by id.
    memory: BTreeMap<u64, Record>,
    next_id: u64,
    live: usize,
    /// Held for the spool's life: a second agent on the same folder is refused.
    _lock: File,
    /// The segment last read from, kept open.
    reader: Option<(u64, File)>,
    dropped: u64,
    write_failures: u64,
}

/// Why the spool cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is in use by another faultline-agent")]
    Locked(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_code(f: Format) -> u8 {
    match f {
        Format::Postcard => 0,
        Format::Json => 1,
    }
}

fn format_of(code: u8) -> Option<Format> {
    match code {
        0 => Some(Format::Postcard),
        1 => Some(Format::Json),
        _ => None,
    }
}

/// Encodes one record (header and body).
pub fn encode_record(r: &Record) -> Vec<u8> {
    let body_len = BODY_HEAD + r.payload.len();
    let mut out = Vec::with_capacity(RECORD_HEAD + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(format_code(r.format));
    out.extend_from_slice(&r.boot.to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.payload);
    let crc = CRC32.checksum(&out[RECORD_HEAD..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a record body whose checksum was verified.
fn decode_body(body: &[u8]) -> Option<Record> {
    if body.len() < BODY_HEAD {
        return None;
    }
    Some(Record {
        format: format_of(body[0])?,
        boot: u32::from_le_bytes(body[1..5].try_into().ok()?),
        seq: u64::from_le_bytes(body[5..13].try_into().ok()?),
        payload: body[BODY_HEAD..].to_vec(),
    })
}

/// What one pass over a segment's bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Every record position, good or not (ids are positional).
    /// Offset, body length and, for a good record, its boot.
    slots: Vec<(u32, u32, Option<u32>)>,
    corrupt: u64,
    torn: bool,
}

/// Walks the records in `bytes` (a segment file after its magic, which starts at
/// offset `base`). A record whose checksum fails keeps its position and is marked
/// bad; an impossible length or a short record ends the scan (a torn tail).
fn scan(bytes: &[u8], base: usize) -> Scan {
    let mut s = Scan::default();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEAD {
            s.torn = true;
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize; // 4 bytes: cannot fail
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        if !(BODY_HEAD..=MAX_BODY).contains(&len) {
            // No way to find the next record: the rest is one damaged region.
            s.corrupt += 1;
            break;
        }
        if rest.len() < RECORD_HEAD + len {
            s.torn = true;
            break;
        }
        let body = &rest[RECORD_HEAD..RECORD_HEAD + len];
        let good = (CRC32.checksum(body) == crc)
            .then(|| decode_body(body))
            .flatten()
            .map(|r| r.boot);
        if good.is_none() {
            s.corrupt += 1;
        }
        s.slots.push(((base + at) as u32, len as u32, good));
        at += RECORD_HEAD + len;
    }
    s
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl Spool {
    /// Opens (creating) the spool in `{state_dir}/outbox`, reads what earlier runs
    /// left, and returns it with what was found. Records beyond `capacity` (oldest
    /// first) are dropped.
    pub fn open(state_dir: &Path, capacity: usize) -> Result<(Self, Recovered), OpenError> {
        let dir = state_dir.join(DIR);
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        let watermark = fs::read_to_string(dir.join(WATERMARK))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut found = Recovered::default();
        let mut segments = VecDeque::new();
        let mut next_id = watermark;
        for first in firsts {
            let path = dir.join(segment_name(first));
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_at(&path))?;
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                // Not ours, or damaged from its first byte: keep it aside for a look.
                tracing::error!(
                    "outbox segment {} is not an outbox file; renamed to .bad",
                    path.display()
                );
                found.corrupt += 1;
                let _ = fs::rename(&path, path.with_extension("bad"));
                continue;
            }
            let s = scan(&bytes[MAGIC.len()..], MAGIC.len());
            found.corrupt += s.corrupt;
            found.torn += u64::from(s.torn);
            let mut seg = Segment {
                first,
                path,
                slots: Vec::with_capacity(s.slots.len()),
                live: 0,
            };
            for (i, (offset, len, good)) in s.slots.into_iter().enumerate() {
                let id = first + i as u64;
                let live = match good {
                    Some(boot) if id >= watermark => {
                        if !found.boots.contains(&boot) {
                            found.boots.push(boot);
                        }
                        true
                    }
                    _ => false,
                };
                seg.live += usize::from(live);
                seg.slots.push(Slot { offset, len, live });
            }
            next_id = next_id.max(first + seg.slots.len() as u64);
            if seg.live == 0 {
                let _ = fs::remove_file(&seg.path);
            } else {
                found.records += seg.live;
                segments.push_back(seg);
            }
        }
        let mut spool = Self {
            dir,
            capacity: capacity.max(1),
            segments,
            active: None,
            memory: BTreeMap::new(),
            next_id,
            live: found.records,
            _lock: lock,
            reader: None,
            dropped: 0,
            write_failures: 0,
        };
        found.dropped = spool.enforce_capacity().len() as u64;
        found.records -= found.dropped as usize;
        Ok((spool, found))
    }

    /// Live record ids, oldest first (what is still to be delivered).
    pub fn live_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .segments
            .iter()
            .flat_map(|s| {
                s.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| slot.live)
                    .map(move |(i, _)| s.first + i as u64)
            })
            .chain(self.memory.keys().copied())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The `n` oldest live ids, without listing every live record (this runs on
    /// every append while the spool is full).
    fn oldest_live(&self, n: usize) -> Vec<u64> {
        let on_disk = self.segments.iter().flat_map(|s| {
            s.slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.live)
                .map(move |(i, _)| s.first + i as u64)
        });
        let mut ids: Vec<u64> = on_disk
            .take(n)
            .chain(self.memory.keys().copied().take(n))
            .collect();
        ids.sort_unstable();
        ids.truncate(n);
        ids
    }

    /// Stores `r` durably (written and synced) and returns its id, with the ids of
    /// the oldest records dropped to stay within capacity. A failed write keeps the
    /// record in memory (see [`Spool::write_failures`]).
    pub fn append(&mut self, r: Record) -> (u64, Vec<u64>) {
        let id = self.next_id;
        let bytes = encode_record(&r);
        // `next_id` moves on only after the write: a watermark saved while rotating
        // must not cover the record being written.
        let written = self.write(id, &bytes);
        self.next_id = id + 1;
        match written {
            Ok(()) => {}
            Err(e) => {
                self.write_failures += 1;
                if self.write_failures == 1 || self.write_failures.is_multiple_of(100) {
                    tracing::error!(
                        "cannot write report seq {} to the outbox in {}: {e}; kept in memory only ({} write failures)",
                        r.seq,
                        self.dir.display(),
                        self.write_failures
                    );
                }
                // The active segment may now hold a partial record: start a new one.
                self.active = None;
                self.memory.insert(id, r);
            }
        }
        self.live += 1;
        (id, self.enforce_capacity())
    }

    /// Appends `bytes` as record `id` to the active segment (rotating when it is
    /// full) and syncs it.
    fn write(&mut self, id: u64, bytes: &[u8]) -> io::Result<()> {
        let full = self.segments.back().is_none_or(|s| {
            s.slots.len() >= SEGMENT_RECORDS || s.first + s.slots.len() as u64 != id
        });
        if self.active.is_none() || full {
            self.rotate(id)?;
        }
        // Just set by `rotate` when missing: cannot be None here.
        let file = self.active.as_mut().unwrap();
        let seg = self.segments.back_mut().unwrap();
        let offset = file.metadata()?.len();
        file.write_all(bytes)?;
        file.sync_data()?;
        seg.slots.push(Slot {
            offset: offset as u32,
            len: (bytes.len() - RECORD_HEAD) as u32,
            live: true,
        });
        seg.live += 1;
        Ok(())
    }

    /// Starts a new segment whose first record is `first`.
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        self.active = None;
        if let Some(last) = self.segments.back()
            && last.live == 0
        {
            let _ = fs::remove_file(&last.path);
            self.segments.pop_back();
        }
        self.save_watermark();
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_data()?;
        // The new name must survive a power cut too.
        File::open(&self.dir)?.sync_all()?;
        self.segments.push_back(Segment {
            first,
            path,
            slots: Vec::with_capacity(SEGMENT_RECORDS),
            live: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Reads record `id` back. `None` when it is not live; a record damaged on disk
    /// since it was written is retired, logged and counted as dropped.
    pub fn read(&mut self, id: u64) -> Option<Record> {
        if let Some(r) = self.memory.get(&id) {
            return Some(r.clone());
        }
        let (si, slot) = self.locate(id)?;
        if !slot.live {
            return None;
        }
        let first = self.segments[si].first;
        let result = self.read_at(si, slot).and_then(|bytes| {
            let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap()); // 8-byte head
            let body = &bytes[RECORD_HEAD..];
            (CRC32.checksum(body) == crc)
                .then(|| decode_body(body))
                .flatten()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "checksum mismatch"))
        });
        match result {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(
                    "outbox record {id} in segment {first} cannot be read back ({e}); dropped"
                );
                self.reader = None;
                self.dropped += 1;
                self.retire(id);
                None
            }
        }
    }

    fn read_at(&mut self, si: usize, slot: Slot) -> io::Result<Vec<u8>> {
        let seg = &self.segments[si];
        if self.reader.as_ref().is_none_or(|(f, _)| *f != seg.first) {
            self.reader = Some((seg.first, File::open(&seg.path)?));
        }
        let (_, file) = self.reader.as_ref().unwrap(); // set just above
        let mut buf = vec![0; RECORD_HEAD + slot.len as usize];
        file.read_exact_at(&mut buf, u64::from(slot.offset))?;
        Ok(buf)
    }

    fn locate(&self, id: u64) -> Option<(usize, Slot)> {
        let si = self
            .segments
            .partition_point(|s| s.first <= id)
            .checked_sub(1)?;
        let seg = &self.segments[si];
        let slot = *seg.slots.get((id - seg.first) as usize)?;
        Some((si, slot))
    }

    /// The broker has `id` (or it was dropped): it is never sent again. A segment all
    /// of whose records are retired is deleted (the one being appended to, once full).
    pub fn retire(&mut self, id: u64) {
        if self.memory.remove(&id).is_some() {
            self.live -= 1;
            return;
        }
        let Some((si, slot)) = self.locate(id) else {
            return;
        };
        if !slot.live {
            return;
        }
        let is_active = si + 1 == self.segments.len() && self.active.is_some();
        let seg = &mut self.segments[si];
        seg.slots[(id - seg.first) as usize].live = false;
        seg.live -= 1;
        self.live -= 1;
        if seg.live == 0 && (!is_active || seg.slots.len() >= SEGMENT_RECORDS) {
            if self.reader.as_ref().is_some_and(|(f, _)| *f == seg.first) {
                self.reader = None;
            }
            if let Err(e) = fs::remove_file(&seg.path) {
                tracing::warn!("cannot delete outbox segment {}: {e}", seg.path.display());
            }
            if is_active {
                self.active = None;
            }
            let _ = self.segments.remove(si);
        }
    }

    /// Retires the oldest live records until at most `capacity` are live; returns
    /// their ids.
    fn enforce_capacity(&mut self) -> Vec<u64> {
        let excess = self.live.saturating_sub(self.capacity);
        if excess == 0 {
            return Vec::new();
        }
        let ids = self.oldest_live(excess);
        for &id in &ids {
            self.retire(id);
        }
        self.dropped += ids.len() as u64;
        ids
    }

    /// Writes the low watermark (every id below the oldest live record is retired),
    /// atomically. Failure only means more resends after a crash.
    pub fn save_watermark(&self) {
        let low = self.oldest_live(1).first().copied().unwrap_or(self.next_id);
        let tmp = self.dir.join("acked.tmp");
        let done = fs::write(&tmp, format!("{low}\n"))
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, self.dir.join(WATERMARK)));
        if let Err(e) = done {
            tracing::warn!(
                "cannot save the outbox watermark in {}: {e}",
                self.dir.display()
            );
        }
    }

    /// A clean stop: save the watermark and delete the segment being appended to when
    /// everything in it was delivered.
    pub fn close(mut self) {
        if let Some(last) = self.segments.back()
            && last.live == 0
        {
            let _ = fs::remove_file(&last.path);
            self.segments.pop_back();
        }
        self.save_watermark();
    }

    /// Live records (on disk or, after a failed write, in memory).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records dropped for room (or unreadable) since this run started.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends that could not be written to disk since this run started.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// The folder holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "faultline-spool-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rec(boot: u32, seq: u64) -> Record {
        Record {
            format: if seq.is_multiple_of(3) {
                Format::Json
            } else {
                Format::Postcard
            },
            boot,
            seq,
            payload: format!("report {boot}/{seq}").into_bytes(),
        }
    }

    fn seqs(spool: &mut Spool) -> Vec<(u32, u64)> {
        spool
            .live_ids()
            .into_iter()
            .map(|id| {
                let r = spool.read(id).unwrap();
                (r.boot, r.seq)
            })
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_checksum_is_the_standard_crc32() {
        // The check value of CRC-32/ISO-HDLC (zlib's crc32, Python's zlib.crc32).
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn record_bytes_are_the_documented_layout() {
        let bytes = encode_record(&Record {
            format: Format::Json,
            boot: 0xDEADBEEF,
            seq: 42,
            payload: b"{}".to_vec(),
        });
        let body = [
            1, // JSON
            0xEF, 0xBE, 0xAD, 0xDE, // boot
            42, 0, 0, 0, 0, 0, 0, 0, // seq
            b'{', b'}',
        ];
        assert_eq!(&bytes[0..4], &15u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &0x6B97_8054u32.to_le_bytes()); // zlib.crc32(body)
        assert_eq!(&bytes[8..], &body);
    }

    #[test]
    fn what_was_written_comes_back_after_a_crash() {
        let d = Dir::new("restart");
        let (mut s, found) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(found, Recovered::default());
        let ids: Vec<u64> = (0..5).map(|q| s.append(rec(7, q)).0).collect();
        s.retire(ids[1]);
        drop(s); // a crash: no watermark written since the segment began
        let (mut s, found) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(
            found.records, 5,
            "an ack not yet saved means a resend, not a loss"
        );
        assert_eq!(found.boots, [7]);
        assert_eq!(seqs(&mut s), [(7, 0), (7, 1), (7, 2), (7, 3), (7, 4)]);
        let (id, dropped) = s.append(rec(8, 0));
        assert!(dropped.is_empty());
        assert!(id > ids[4], "ids keep growing across runs");
        assert_eq!(s.read(id).unwrap(), rec(8, 0));
        let (_, found) = {
            drop(s);
            Spool::open(&d.0, 100).unwrap()
        };
        assert_eq!(found.boots, [7, 8]);
    }

    #[test]
    fn a_clean_stop_remembers_what_was_acknowledged() {
        let d = Dir::new("clean");
        let (mut s, _) = Spool::open(&d.0, 100).unwrap();
        let ids: Vec<u64> = (0..5).map(|q| s.append(rec(1, q)).0).collect();
        for &id in &ids[..3] {
            s.retire(id);
        }
        s.close();
        let (mut s, found) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(found.records, 2);
        assert_eq!(seqs(&mut s), [(1, 3), (1, 4)]);
        for id in s.live_ids() {
            s.retire(id);
        }
        s.close();
        assert!(
            segment_files(&d.0).is_empty(),
            "delivered segments are deleted"
        );
        let (s, found) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(found.records, 0);
        assert!(s.next_id >= 5, "the watermark keeps ids from going back");
    }

    #[test]
    fn full_segments_are_deleted_once_delivered() {
        let d = Dir::new("segments");
        let (mut s, _) = Spool::open(&d.0, 1000).unwrap();
        let ids: Vec<u64> = (0..SEGMENT_RECORDS as u64 * 2 + 3)
            .map(|q| s.append(rec(1, q)).0)
            .collect();
        assert_eq!(segment_files(&d.0).len(), 3);
        for &id in &ids[..SEGMENT_RECORDS] {
            s.retire(id);
        }
        assert_eq!(segment_files(&d.0).len(), 2);
        for &id in &ids[SEGMENT_RECORDS..] {
            s.retire(id);
        }
        assert_eq!(
            segment_files(&d.0).len(),
            1,
            "the segment being appended to stays until full or a clean stop"
        );
        assert!(s.is_empty());
    }

    #[test]
    fn a_torn_tail_is_skipped_and_counted() {
        let d = Dir::new("torn");
        let (mut s, _) = Spool::open(&d.0, 100).unwrap();
        for q in 0..3 {
            s.append(rec(1, q));
        }
        drop(s);
        let seg = segment_files(&d.0).pop().unwrap();
        // A power cut during the append of a fourth record: half of it reached disk.
        let half = encode_record(&rec(1, 3));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        let (mut s, found) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(found.torn, 1);
        assert_eq!(found.corrupt, 0);
        assert_eq!(seqs(&mut s), [(1, 0), (1, 1), (1, 2)]);
        let (id, _) = s.append(rec(2, 0));
        assert_eq!(
            s.read(id).unwrap(),
            rec(2, 0),
            "new records go to a new segment"
        );
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_counted_and_the_rest_survive() {
        let d = Dir::new("corrupt");
        let (mut s, _) = Spool::open(&d.0, 100).unwrap();
        for q in 0..3 {
            s.append(rec(1, q));
        }
        drop(s);
        let seg = segment_files(&d.0).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let first_len = encode_record(&rec(1, 0)).len();
        // Flip a payload byte of the second record.
        bytes[MAGIC.len() + first_len + RECORD_HEAD + BODY_HEAD] ^= 0xFF;
        fs::write(&seg, &bytes).unwrap();
        let (mut s, found) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(found.corrupt, 1);
        assert_eq!(seqs(&mut s), [(1, 0), (1, 2)]);
    }

    #[test]
    fn garbage_where_a_length_should_be_ends_the_segment_not_the_spool() {
        let d = Dir::new("garbage");
        let (mut s, _) = Spool::open(&d.0, 1000).unwrap();
        for q in 0..SEGMENT_RECORDS as u64 + 2 {
            s.append(rec(1, q));
        }
        drop(s);
        let first = segment_files(&d.0).remove(0);
        let mut bytes = fs::read(&first).unwrap();
        let len = encode_record(&rec(1, 0)).len();
        bytes[MAGIC.len() + 5 * len..MAGIC.len() + 5 * len + 4].copy_from_slice(&[0xFF; 4]);
        fs::write(&first, &bytes).unwrap();
        fs::write(d.0.join(DIR).join("00000000000000000999.seg"), b"not ours").unwrap();
        let (mut s, found) = Spool::open(&d.0, 1000).unwrap();
        assert_eq!(found.corrupt, 2, "the bad length and the foreign file");
        let got = seqs(&mut s);
        assert_eq!(got.len(), 5 + 2);
        assert_eq!(got[..5], [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]);
        assert!(d.0.join(DIR).join("00000000000000000999.bad").exists());
    }

    #[test]
    fn when_full_the_oldest_are_dropped_and_counted() {
        let d = Dir::new("full");
        let (mut s, _) = Spool::open(&d.0, 3).unwrap();
        let mut dropped = Vec::new();
        let ids: Vec<u64> = (0..5)
            .map(|q| {
                let (id, d) = s.append(rec(1, q));
                dropped.extend(d);
                id
            })
            .collect();
        assert_eq!(dropped, ids[..2]);
        assert_eq!(s.dropped(), 2);
        assert_eq!(seqs(&mut s), [(1, 2), (1, 3), (1, 4)]);
        s.close();
        // A smaller capacity on the next start drops the oldest again.
        let (mut s, found) = Spool::open(&d.0, 2).unwrap();
        assert_eq!(found.dropped, 1);
        assert_eq!(found.records, 2);
        assert_eq!(seqs(&mut s), [(1, 3), (1, 4)]);
    }

    #[test]
    fn a_second_agent_on_the_same_folder_is_refused() {
        let d = Dir::new("lock");
        let (_s, _) = Spool::open(&d.0, 10).unwrap();
        assert!(matches!(Spool::open(&d.0, 10), Err(OpenError::Locked(_))));
    }

    #[test]
    fn a_failed_write_keeps_the_record_in_memory() {
        let d = Dir::new("rofs");
        let (mut s, _) = Spool::open(&d.0, 10).unwrap();
        s.append(rec(1, 0));
        // Simulate the flash going away: the folder disappears under the agent.
        s.active = None;
        fs::remove_dir_all(d.0.join(DIR)).unwrap();
        let (id, _) = s.append(rec(1, 1));
        assert_eq!(s.write_failures(), 1);
        assert_eq!(s.read(id).unwrap(), rec(1, 1));
        assert_eq!(s.len(), 2);
        s.retire(id);
        assert_eq!(s.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Any mix of appends, retires and restarts: what is live after a reopen is
        /// exactly what was appended and not retired (a crash may resurrect retired
        /// records, never lose live ones), within capacity.
        #[test]
        fn reopen_loses_nothing_live(
            ops in proptest::collection::vec(0u8..11, 1..300),
            capacity in 1usize..200,
        ) {
            let d = Dir::new("prop");
            let (mut s, _) = Spool::open(&d.0, capacity).unwrap();
            let mut live: std::collections::BTreeSet<u64> = Default::default();
            let mut seq = 0;
            for op in ops {
                match op {
                    0..=5 => {
                        let (id, dropped) = s.append(rec(1, seq));
                        seq += 1;
                        live.insert(id);
                        for x in dropped { prop_assert!(live.remove(&x)); }
                    }
                    6..=8 => {
                        if let Some(&id) = live.iter().next() {
                            s.retire(id);
                            live.remove(&id);
                        }
                    }
                    op => {
                        if op == 9 { s.close(); } else { drop(s); }
                        let (s2, _) = Spool::open(&d.0, capacity).unwrap();
                        s = s2;
                        let now: std::collections::BTreeSet<u64> = s.live_ids().into_iter().collect();
                        prop_assert!(live.is_subset(&now), "live {:?} not in {:?}", live, now);
                        live = now;
                    }
                }
                prop_assert!(s.len() <= capacity);
                prop_assert_eq!(s.live_ids().len(), s.len());
            }
        }
    }
}
