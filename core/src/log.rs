//! The canonical log: append-only segment files, the one store everything
//! else is derived from.
//!
//! A record's *offset* is its byte position in the whole log. Segment files
//! are named by the offset of their first byte (`log/00000000000000000000.seg`),
//! so offsets only grow and are never reused, and a record is found without
//! any index. Every record is framed:
//!
//! ```text
//! record  = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//! body    = 1u8 | header_len: u16 LE | header (postcard) | signature (64)
//!               | has_payload: u8 | payload           (an entry)
//!         | 2u8 | postcard(ForkProof)                   (a fork proof)
//! ```
//!
//! The payload sits last so that a later payload deletion can overwrite it
//! in place. Writes go to the newest segment and are fsynced before the call
//! that made them returns; a batch shares one fsync.
//!
//! On open, the newest segment is scanned: a torn or corrupt record at the
//! tail and everything after it is moved to a `torn-<offset>.bin` file beside
//! the segments (never simply deleted) and cut off, and the cut is reported.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::entry::{Entry, ForkProof, Header, MAX_HEADER_LEN};
use crate::error::StoreError;

/// Bytes of framing before each record body.
pub const FRAME_LEN: u64 = 8;
/// The largest record body a log accepts: the largest allowed payload limit
/// plus room for the header.
pub const MAX_BODY_LEN: u32 = MAX_PAYLOAD_LIMIT + 4096;
/// The largest payload limit a database can be configured with.
pub const MAX_PAYLOAD_LIMIT: u32 = 64 * 1024 * 1024;

/// The active segment is zero-filled ahead of the writer in chunks of this
/// size.
const PREALLOC_CHUNK: u64 = 1024 * 1024;

const KIND_ENTRY: u8 = 1;
const KIND_FORK: u8 = 2;
const SEG_EXT: &str = "seg";

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody {
    /// An entry of some feed.
    Entry(Entry),
    /// Proof that a feed forked.
    Fork(ForkProof),
}

/// One record of the log, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Byte offset of the record in the log.
    pub offset: u64,
    /// Offset of the record after this one.
    pub next_offset: u64,
    /// The record's content.
    pub body: RecordBody,
}

impl LogRecord {
    /// The entry, if this record holds one.
    pub fn entry(&self) -> Option<&Entry> {
        match &self.body {
            RecordBody::Entry(e) => Some(e),
            RecordBody::Fork(_) => None,
        }
    }
}

/// What opening the log had to repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Offset where the log was cut.
    pub cut_at: u64,
    /// Bytes removed from the tail.
    pub bytes_removed: u64,
    /// Where the removed bytes were saved.
    pub saved_to: PathBuf,
    /// Why the first removed record was refused.
    pub reason: String,
}

/// Encode a record body for an entry.
pub(crate) fn encode_entry_body(entry: &Entry, out: &mut Vec<u8>) {
    let header = entry.header.encode();
    out.push(KIND_ENTRY);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&entry.signature.to_bytes());
    match &entry.payload {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(p);
        }
        None => out.push(0),
    }
}

/// Encode a full framed record (frame + body) onto `out`.
pub(crate) fn encode_record(body: &RecordBody, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN as usize]);
    match body {
        RecordBody::Entry(e) => encode_entry_body(e, out),
        RecordBody::Fork(p) => {
            out.push(KIND_FORK);
            out.extend_from_slice(&postcard::to_stdvec(p).unwrap_or_default());
        }
    }
    let body_len = (out.len() - start) as u64 - FRAME_LEN;
    let crc = crc32fast::hash(&out[start + FRAME_LEN as usize..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decode a record body (already checksummed).
pub(crate) fn decode_body(body: &[u8]) -> Result<RecordBody, &'static str> {
    let (&kind, rest) = body.split_first().ok_or("empty record")?;
    match kind {
        KIND_ENTRY => {
            if rest.len() < 2 {
                return Err("record too short");
            }
            let header_len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let rest = &rest[2..];
            if header_len > MAX_HEADER_LEN || rest.len() < header_len + 64 + 1 {
                return Err("record too short for its header");
            }
            let header =
                Header::decode(&rest[..header_len]).map_err(|_| "header does not decode")?;
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&rest[header_len..header_len + 64]);
            let signature = ed25519_dalek::Signature::from_bytes(&sig);
            let rest = &rest[header_len + 64..];
            let payload = match rest[0] {
                0 if rest.len() == 1 => None,
                1 => Some(rest[1..].to_vec()),
                _ => return Err("bad payload flag"),
            };
            Ok(RecordBody::Entry(Entry {
                header,
                signature,
                payload,
            }))
        }
        KIND_FORK => {
            let (proof, left) =
                postcard::take_from_bytes::<ForkProof>(rest).map_err(|_| "bad fork proof")?;
            if !left.is_empty() {
                return Err("trailing bytes after fork proof");
            }
            Ok(RecordBody::Fork(proof))
        }
        _ => Err("unknown record kind"),
    }
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.{SEG_EXT}"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// List segment start offsets, sorted.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut starts = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if let Ok(start) = stem.parse::<u64>() {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

/// Read one frame from `reader` at `offset`. `Ok(None)` at a clean end of
/// the data; `Err(reason)` for a torn or corrupt record.
fn read_frame(reader: &mut impl Read, available: u64) -> Result<Option<(u64, RecordBody)>, String> {
    if available == 0 {
        return Ok(None);
    }
    if available < FRAME_LEN {
        return Err(format!("torn frame header ({available} bytes)"));
    }
    let mut frame = [0u8; FRAME_LEN as usize];
    reader
        .read_exact(&mut frame)
        .map_err(|e| format!("read failed: {e}"))?;
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 || len > MAX_BODY_LEN {
        return Err(format!("impossible record length {len}"));
    }
    if u64::from(len) > available - FRAME_LEN {
        return Err(format!(
            "torn record: {len} bytes framed, {} present",
            available - FRAME_LEN
        ));
    }
    let mut body = vec![0u8; len as usize];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read failed: {e}"))?;
    if crc32fast::hash(&body) != crc {
        return Err("checksum mismatch".to_string());
    }
    let body = decode_body(&body).map_err(str::to_string)?;
    Ok(Some((FRAME_LEN + u64::from(len), body)))
}

/// Look for a well-formed record starting anywhere in `[from, len)` of
/// `file`. Cheap filters (record kind, header version) run before the
/// checksum, so this is fast even on large segments.
fn find_intact_record_after(data: &[u8], from: u64) -> Option<u64> {
    let bytes = data.get(from as usize..)?;
    let n = bytes.len();
    for i in 0..n.saturating_sub(FRAME_LEN as usize + 4) {
        let body_len =
            u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        if body_len == 0 || body_len > MAX_BODY_LEN as usize || i + 8 + body_len > n {
            continue;
        }
        let body = &bytes[i + 8..i + 8 + body_len];
        let plausible = match body[0] {
            KIND_ENTRY => body.len() > 3 && body[3] == crate::entry::HEADER_VERSION,
            KIND_FORK => true,
            _ => false,
        };
        if !plausible {
            continue;
        }
        let crc = u32::from_le_bytes([bytes[i + 4], bytes[i + 5], bytes[i + 6], bytes[i + 7]]);
        if crc32fast::hash(body) == crc && decode_body(body).is_ok() {
            return Some(from + i as u64);
        }
    }
    None
}

/// Are all bytes of `path` from `from` on zero?
fn zeros_after(path: &Path, from: u64) -> Result<bool, StoreError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).map_err(io_err(path))?;
    Ok(rest.iter().all(|&b| b == 0))
}

/// Shared, read-only view of the segment files.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    /// Segment starts, sorted. Grows when the writer rolls.
    starts: RwLock<Vec<u64>>,
    /// Open read handles, by segment start.
    files: Mutex<HashMap<u64, Arc<File>>>,
}

impl Segments {
    fn segment_for(&self, offset: u64) -> Option<u64> {
        let starts = self.starts.read().unwrap_or_else(|e| e.into_inner());
        let idx = starts.partition_point(|&s| s <= offset);
        idx.checked_sub(1).map(|i| starts[i])
    }

    fn next_segment(&self, start: u64) -> Option<u64> {
        let starts = self.starts.read().unwrap_or_else(|e| e.into_inner());
        starts.iter().copied().find(|&s| s > start)
    }

    fn file(&self, start: u64) -> Result<Arc<File>, StoreError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&start) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.dir, start);
        let f = Arc::new(File::open(&path).map_err(io_err(&path))?);
        files.insert(start, f.clone());
        Ok(f)
    }

    /// Read the record at `offset`, which must be below `end`.
    pub(crate) fn read_at(&self, offset: u64, end: u64) -> Result<LogRecord, StoreError> {
        use std::os::unix::fs::FileExt;
        let corrupt = |reason: String| StoreError::Corrupt { offset, reason };
        if offset >= end {
            return Err(corrupt("offset is past the end of the log".into()));
        }
        let start = self
            .segment_for(offset)
            .ok_or_else(|| corrupt("no segment holds this offset".into()))?;
        let file = self.file(start)?;
        let pos = offset - start;
        let seg_end = self.next_segment(start).unwrap_or(end).min(end);
        let mut frame = [0u8; FRAME_LEN as usize];
        file.read_exact_at(&mut frame, pos)
            .map_err(|e| corrupt(format!("read failed: {e}")))?;
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let available = seg_end - offset;
        if len == 0 || len > MAX_BODY_LEN || u64::from(len) + FRAME_LEN > available {
            return Err(corrupt(format!("impossible record length {len}")));
        }
        let mut record = vec![0u8; (FRAME_LEN + u64::from(len)) as usize];
        file.read_exact_at(&mut record, pos)
            .map_err(|e| corrupt(format!("read failed: {e}")))?;
        let (n, body) = read_frame(&mut record.as_slice(), record.len() as u64)
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("empty record".into()))?;
        Ok(LogRecord {
            offset,
            next_offset: offset + n,
            body,
        })
    }

    /// The offset `n` records after the record at `offset`, reading only
    /// frame headers.
    pub(crate) fn skip(&self, mut offset: u64, n: u64, end: u64) -> Result<u64, StoreError> {
        use std::os::unix::fs::FileExt;
        for _ in 0..n {
            let at = offset;
            let corrupt = |reason: String| StoreError::Corrupt { offset: at, reason };
            let start = self
                .segment_for(offset)
                .ok_or_else(|| corrupt("no segment holds this offset".into()))?;
            let file = self.file(start)?;
            let mut frame = [0u8; 4];
            file.read_exact_at(&mut frame, offset - start)
                .map_err(|e| corrupt(format!("read failed: {e}")))?;
            let len = u32::from_le_bytes(frame);
            if len == 0 || len > MAX_BODY_LEN {
                return Err(corrupt(format!("impossible record length {len}")));
            }
            offset += FRAME_LEN + u64::from(len);
            if offset > end {
                return Err(corrupt("record runs past the end of the log".into()));
            }
        }
        Ok(offset)
    }

    /// Sequential reader over `[from, end)`. `from` must be a record
    /// boundary.
    pub(crate) fn iter(self: &Arc<Self>, from: u64, end: u64) -> LogIter {
        LogIter {
            segments: self.clone(),
            offset: from,
            end,
            current: None,
            failed: false,
        }
    }

    /// The first record boundary at or after `offset` (scans its segment).
    pub(crate) fn boundary_at_or_after(&self, offset: u64, end: u64) -> Result<u64, StoreError> {
        if offset >= end {
            return Ok(end);
        }
        let Some(start) = self.segment_for(offset) else {
            return Ok(0);
        };
        let seg_end = self.next_segment(start).unwrap_or(end).min(end);
        let path = segment_path(&self.dir, start);
        let mut reader =
            BufReader::with_capacity(1 << 18, File::open(&path).map_err(io_err(&path))?);
        let mut pos = start;
        while pos < offset {
            match read_frame(&mut reader, seg_end - pos) {
                Ok(Some((n, _))) => pos += n,
                Ok(None) => break,
                Err(reason) => {
                    return Err(StoreError::Corrupt {
                        offset: pos,
                        reason,
                    });
                }
            }
        }
        Ok(pos)
    }
}

/// Iterator over log records in offset order, up to a fixed end.
pub struct LogIter {
    segments: Arc<Segments>,
    offset: u64,
    end: u64,
    /// The open segment: its end (or the iterator's) and a reader.
    current: Option<(u64, BufReader<File>)>,
    failed: bool,
}

impl LogIter {
    /// The offset of the next record this iterator would return.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The offset this iterator stops at.
    pub fn end(&self) -> u64 {
        self.end
    }
}

impl Iterator for LogIter {
    type Item = Result<LogRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.end {
            return None;
        }
        let offset = self.offset;
        let res = (|| {
            loop {
                if let Some((seg_end, reader)) = &mut self.current {
                    if offset < *seg_end {
                        let available = *seg_end - offset;
                        return match read_frame(reader, available) {
                            Ok(Some((n, body))) => Ok(LogRecord {
                                offset,
                                next_offset: offset + n,
                                body,
                            }),
                            Ok(None) => Err(StoreError::Corrupt {
                                offset,
                                reason: "unexpected end of segment".into(),
                            }),
                            Err(reason) => Err(StoreError::Corrupt { offset, reason }),
                        };
                    }
                    self.current = None;
                }
                let start = self
                    .segments
                    .segment_for(offset)
                    .ok_or(StoreError::Corrupt {
                        offset,
                        reason: "no segment holds this offset".into(),
                    })?;
                let seg_end = self
                    .segments
                    .next_segment(start)
                    .unwrap_or(self.end)
                    .min(self.end);
                if offset >= seg_end {
                    // The offset sits at the very end of a segment: move on.
                    match self.segments.next_segment(start) {
                        Some(next) if next == offset => {}
                        _ => {
                            return Err(StoreError::Corrupt {
                                offset,
                                reason: "gap between segments".into(),
                            });
                        }
                    }
                }
                let path = segment_path(&self.segments.dir, start);
                let mut file = File::open(&path).map_err(io_err(&path))?;
                file.seek(SeekFrom::Start(offset - start))
                    .map_err(io_err(&path))?;
                self.current = Some((seg_end, BufReader::with_capacity(1 << 18, file)));
            }
        })();
        match res {
            Ok(rec) => {
                self.offset = rec.next_offset;
                Some(Ok(rec))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The single writer of the log. Lives behind the database's write lock.
#[derive(Debug)]
pub(crate) struct LogWriter {
    segments: Arc<Segments>,
    active: File,
    active_start: u64,
    /// Bytes of records in the active segment.
    active_len: u64,
    /// The active segment's file length: records, then zeros written ahead
    /// so that appends overwrite allocated blocks and `fdatasync` has no
    /// size change to journal.
    zeroed_to: u64,
    segment_size: u64,
}

impl LogWriter {
    /// Open (or create) the log in `dir`, repairing a torn tail.
    /// `known_durable`, when given, is an offset below which every record
    /// is known to have been fsynced (the index's checkpoint).
    pub(crate) fn open(
        dir: &Path,
        segment_size: u64,
        known_durable: Option<u64>,
    ) -> Result<(Self, Option<Recovery>), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut starts = list_segments(dir)?;
        if starts.is_empty() {
            let path = segment_path(dir, 0);
            File::create(&path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            starts.push(0);
        }
        // Sealed segments must tile the offset space exactly.
        for pair in starts.windows(2) {
            let path = segment_path(dir, pair[0]);
            let mut len = fs::metadata(&path).map_err(io_err(&path))?.len();
            if pair[0] + len > pair[1] && zeros_after(&path, pair[1] - pair[0])? {
                // Preallocated zeros left by a crash before the roll
                // trimmed them: not data.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(pair[1] - pair[0]).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                len = pair[1] - pair[0];
            }
            if pair[0] + len != pair[1] {
                return Err(StoreError::Corrupt {
                    offset: pair[0] + len.min(pair[1] - pair[0]),
                    reason: format!(
                        "segment {} ends at {} but the next one starts at {}",
                        path.display(),
                        pair[0] + len,
                        pair[1]
                    ),
                });
            }
        }
        let active_start = *starts.last().unwrap_or(&0);
        let path = segment_path(dir, active_start);
        let mut active = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let file_len = active.metadata().map_err(io_err(&path))?.len();
        // Scan the active segment for the last good record. Its tail is
        // preallocated zeros: an all-zero frame header is the clean end.
        let mut data = Vec::new();
        active
            .seek(SeekFrom::Start(0))
            .and_then(|_| active.read_to_end(&mut data))
            .map_err(io_err(&path))?;
        let mut good = 0u64;
        let mut failure = None;
        loop {
            let rest = &data[good as usize..];
            if rest.len() >= FRAME_LEN as usize
                && rest[..FRAME_LEN as usize].iter().all(|&b| b == 0)
            {
                if rest.iter().any(|&b| b != 0) {
                    failure = Some("bytes after the end of the log's data".to_string());
                }
                break;
            }
            match read_frame(&mut &rest[..], rest.len() as u64) {
                Ok(Some((n, _))) => good += n,
                Ok(None) => break,
                Err(reason) => {
                    failure = Some(reason);
                    break;
                }
            }
        }
        let mut recovery = None;
        if let Some(reason) = &failure {
            // A crash can only tear what was not yet fsynced. Everything
            // below `known_durable` was fsynced (the index only records
            // durable records), so a bad record there is damage, not a torn
            // tail. Without that hint, an intact record after the bad one
            // means the same. Either way: refuse, and cut nothing.
            let bad_at = active_start + good;
            let damaged = match known_durable {
                Some(durable) if bad_at < durable => Some(format!(
                    "{reason}; records up to offset {durable} were durably written, so the log is damaged, not torn"
                )),
                Some(_) => None,
                None => find_intact_record_after(&data[..], good + 1).map(|next| {
                    format!(
                        "{reason}, but an intact record follows at offset {}; the log is damaged in the middle, not torn at the tail",
                        active_start + next
                    )
                }),
            };
            if let Some(reason) = damaged {
                return Err(StoreError::Corrupt {
                    offset: bad_at,
                    reason: format!(
                        "{reason}; nothing was cut. Copy the database directory aside before any repair"
                    ),
                });
            }
        }
        if let Some(reason) = failure {
            let cut_at = active_start + good;
            let saved_to = dir.join(format!("torn-{cut_at:020}.bin"));
            let mut tail = data[good as usize..].to_vec();
            while tail.last() == Some(&0) {
                tail.pop();
            }
            let mut save = File::create(&saved_to).map_err(io_err(&saved_to))?;
            save.write_all(&tail)
                .and_then(|_| save.sync_all())
                .map_err(io_err(&saved_to))?;
            active.set_len(good).map_err(io_err(&path))?;
            active.sync_all().map_err(io_err(&path))?;
            sync_dir(dir)?;
            tracing::warn!(
                cut_at,
                bytes = tail.len(),
                %reason,
                "cut a torn or corrupt tail off the log"
            );
            recovery = Some(Recovery {
                cut_at,
                bytes_removed: tail.len() as u64,
                saved_to,
                reason,
            });
        }
        let segments = Arc::new(Segments {
            dir: dir.to_path_buf(),
            starts: RwLock::new(starts),
            files: Mutex::new(HashMap::new()),
        });
        Ok((
            Self {
                segments,
                active,
                active_start,
                active_len: good,
                zeroed_to: if recovery.is_some() { good } else { file_len },
                segment_size,
            },
            recovery,
        ))
    }

    pub(crate) fn segments(&self) -> &Arc<Segments> {
        &self.segments
    }

    /// The offset the next record will get.
    pub(crate) fn end(&self) -> u64 {
        self.active_start + self.active_len
    }

    /// Append framed records (as produced by [`encode_record`], with their
    /// lengths in `lens`) and make them durable. Returns each record's
    /// offset.
    /// A failed call leaves the file's state unknown: the caller must stop
    /// writing until the log is reopened (and its tail checked).
    pub(crate) fn append(&mut self, buf: &[u8], lens: &[usize]) -> Result<Vec<u64>, StoreError> {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut pending_from = 0usize;
        let mut pos = 0usize;
        for &len in lens {
            if self.active_len > 0 && self.active_len + len as u64 > self.segment_size {
                // Flush what belongs to the current segment, then roll.
                self.write_out(&buf[pending_from..pos])?;
                pending_from = pos;
                self.roll()?;
            }
            offsets.push(self.active_start + self.active_len);
            self.active_len += len as u64;
            pos += len;
        }
        self.write_out(&buf[pending_from..pos])?;
        Ok(offsets)
    }

    /// Write `bytes`, which end at `active_len`, and make them durable.
    fn write_out(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let path = segment_path(&self.segments.dir, self.active_start);
        if !bytes.is_empty() {
            let pos = self.active_len - bytes.len() as u64;
            if self.active_len > self.zeroed_to {
                // Zero-fill ahead, a chunk at a time, up to the segment size.
                let target = self
                    .active_len
                    .div_ceil(PREALLOC_CHUNK)
                    .saturating_mul(PREALLOC_CHUNK)
                    .min(self.segment_size.max(self.active_len));
                let zeros = vec![0u8; (target - self.zeroed_to) as usize];
                self.active
                    .write_all_at(&zeros, self.zeroed_to)
                    .map_err(io_err(&path))?;
                self.zeroed_to = target;
            }
            self.active
                .write_all_at(bytes, pos)
                .map_err(io_err(&path))?;
        }
        self.active.sync_data().map_err(io_err(&path))?;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        // Seal the full segment: trim its zeros, so sealed segments tile
        // the offset space exactly.
        let old = segment_path(&self.segments.dir, self.active_start);
        self.active
            .set_len(self.active_len)
            .and_then(|_| self.active.sync_all())
            .map_err(io_err(&old))?;
        let start = self.active_start + self.active_len;
        let path = segment_path(&self.segments.dir, start);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.segments.dir)?;
        self.active = file;
        self.active_start = start;
        self.active_len = 0;
        self.zeroed_to = 0;
        self.segments
            .starts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(start);
        Ok(())
    }
}
