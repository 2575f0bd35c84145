//! Reading the log: [`Segments`], the shared view of the segment files
//! (plain ones as the writer writes them, and compacted ones: module
//! `compact`), and [`LogIter`], records in offset order up to a fixed end.
//!
//! Offsets are logical: a record keeps its offset when its segment is
//! compacted. Dropped records (padding, or gaps in a compacted segment)
//! are stepped over by every reader.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::compact::{CFRAME_LEN, CFrames, CompactMap, cframe_crc, compact_path};
use super::record::{Decoded, decode_body, read_frame};
use super::{FRAME_LEN, LogRecord, MAX_BODY_LEN, io_err, segment_path};
use crate::error::StoreError;

/// One segment file: plain, or compacted with its map.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    file: Arc<File>,
    pub(crate) compact: Option<Arc<CompactMap>>,
}

/// Where a record's body sits in its file, for rewriting it in place.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) path: PathBuf,
    /// Position of the body in the file.
    pub(crate) body_pos: u64,
    /// Position of the checksum in the file.
    pub(crate) crc_pos: u64,
    pub(crate) crc: u32,
    pub(crate) body: Vec<u8>,
    /// For a compacted frame: the record's logical offset and length,
    /// which its checksum covers too.
    pub(crate) compact: Option<(u64, u32)>,
}

impl Raw {
    /// The checksum a frame with `body` at this place needs.
    pub(crate) fn crc_for(&self, body: &[u8]) -> u32 {
        match self.compact {
            None => crc32fast::hash(body),
            Some((logical, len)) => cframe_crc(logical, len, body),
        }
    }

    /// Whether the stored checksum vouches for the stored body.
    fn intact(&self) -> bool {
        self.crc_for(&self.body) == self.crc
    }
}

/// Shared, read-only view of the segment files.
#[derive(Debug)]
pub(crate) struct Segments {
    pub(super) dir: PathBuf,
    /// Segment starts, sorted. Grows when the writer rolls.
    pub(super) starts: RwLock<Vec<u64>>,
    /// Open segments, by start.
    files: Mutex<HashMap<u64, Segment>>,
}

impl Segments {
    pub(super) fn new(dir: PathBuf, starts: Vec<u64>) -> Self {
        Self {
            dir,
            starts: RwLock::new(starts),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// The log directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The start of the segment holding `offset`.
    pub(crate) fn segment_start(&self, offset: u64) -> u64 {
        self.segment_for(offset).unwrap_or(0)
    }

    fn segment_for(&self, offset: u64) -> Option<u64> {
        let starts = self.starts.read().unwrap_or_else(|e| e.into_inner());
        let idx = starts.partition_point(|&s| s <= offset);
        idx.checked_sub(1).map(|i| starts[i])
    }

    fn next_segment(&self, start: u64) -> Option<u64> {
        let starts = self.starts.read().unwrap_or_else(|e| e.into_inner());
        starts.iter().copied().find(|&s| s > start)
    }

    /// Every segment start, in order.
    pub(crate) fn starts(&self) -> Vec<u64> {
        self.starts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The segment starting at `start` (a compacted one if there is one).
    pub(crate) fn segment(&self, start: u64) -> Result<Segment, StoreError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = files.get(&start) {
            return Ok(s.clone());
        }
        let cpath = compact_path(&self.dir, start);
        let seg = match File::open(&cpath) {
            Ok(f) => {
                let map = CompactMap::load(&f, &cpath)?;
                Segment {
                    path: cpath,
                    file: Arc::new(f),
                    compact: Some(Arc::new(map)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = segment_path(&self.dir, start);
                let f = File::open(&path).map_err(io_err(&path))?;
                Segment {
                    path,
                    file: Arc::new(f),
                    compact: None,
                }
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: cpath,
                    source: e,
                });
            }
        };
        files.insert(start, seg.clone());
        Ok(seg)
    }

    /// Forget the open file of segment `start` (it was replaced by its
    /// compacted form). Readers holding the old one finish with it.
    pub(crate) fn reopen(&self, start: u64) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&start);
    }

    /// The record frame at `offset` (below `end`), raw.
    pub(crate) fn read_raw(&self, offset: u64, end: u64) -> Result<Raw, StoreError> {
        use std::os::unix::fs::FileExt;
        let corrupt = |reason: String| StoreError::Corrupt { offset, reason };
        if offset >= end {
            return Err(corrupt("offset is past the end of the log".into()));
        }
        let start = self
            .segment_for(offset)
            .ok_or_else(|| corrupt("no segment holds this offset".into()))?;
        let seg = self.segment(start)?;
        if let Some(map) = &seg.compact {
            let mut frames = CFrames::open(&seg.file, &seg.path, map, offset)?;
            return match frames.next_frame()? {
                Some(f) if f.logical == offset => Ok(Raw {
                    path: seg.path.clone(),
                    body_pos: f.pos + CFRAME_LEN,
                    crc_pos: f.pos + 4,
                    crc: f.crc,
                    body: f.body,
                    compact: Some((f.logical, f.logical_len)),
                }),
                _ => Err(corrupt("no record starts at this offset".into())),
            };
        }
        let pos = offset - start;
        let seg_end = self.next_segment(start).unwrap_or(end).min(end);
        let mut frame = [0u8; FRAME_LEN as usize];
        seg.file
            .read_exact_at(&mut frame, pos)
            .map_err(|e| corrupt(format!("read failed: {e}")))?;
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len == 0 || len > MAX_BODY_LEN || u64::from(len) + FRAME_LEN > seg_end - offset {
            return Err(corrupt(format!("impossible record length {len}")));
        }
        let mut body = vec![0u8; len as usize];
        seg.file
            .read_exact_at(&mut body, pos + FRAME_LEN)
            .map_err(|e| corrupt(format!("read failed: {e}")))?;
        Ok(Raw {
            path: seg.path.clone(),
            body_pos: pos + FRAME_LEN,
            crc_pos: pos + 4,
            crc,
            body,
            compact: None,
        })
    }

    /// Read the record at `offset`, which must be below `end`.
    pub(crate) fn read_at(&self, offset: u64, end: u64) -> Result<LogRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { offset, reason };
        let raw = self.read_raw(offset, end)?;
        if !raw.intact() {
            return Err(corrupt("checksum mismatch".into()));
        }
        let len = match raw.compact {
            Some((_, len)) => u64::from(len),
            None => raw.body.len() as u64,
        };
        match decode_body(&raw.body).map_err(|r| corrupt(r.into()))? {
            Decoded::Record(body) => Ok(LogRecord {
                offset,
                next_offset: offset + FRAME_LEN + len,
                body,
            }),
            Decoded::Padding => Err(corrupt("the record there was dropped".into())),
        }
    }

    /// Each segment's start and the size of its file (0 if it cannot be
    /// read), in offset order.
    pub(crate) fn file_sizes(&self) -> Vec<(u64, u64)> {
        self.starts()
            .into_iter()
            .map(|start| {
                let size = self
                    .segment(start)
                    .ok()
                    .and_then(|s| std::fs::metadata(&s.path).ok())
                    .map_or(0, |m| m.len());
                (start, size)
            })
            .collect()
    }

    /// The offset `n` records after the record at `offset` (records of one
    /// run: no dropped record between them).
    pub(crate) fn skip(&self, mut offset: u64, n: u64, end: u64) -> Result<u64, StoreError> {
        use std::os::unix::fs::FileExt;
        let mut left = n;
        while left > 0 {
            let at = offset;
            let corrupt = |reason: String| StoreError::Corrupt { offset: at, reason };
            let start = self
                .segment_for(offset)
                .ok_or_else(|| corrupt("no segment holds this offset".into()))?;
            let seg = self.segment(start)?;
            if let Some(map) = &seg.compact {
                let mut frames = CFrames::open(&seg.file, &seg.path, map, offset)?;
                while left > 0 {
                    match frames.next_frame()? {
                        Some(f) => {
                            offset = f.logical + FRAME_LEN + u64::from(f.logical_len);
                            left -= 1;
                        }
                        None => {
                            offset = map.end;
                            break;
                        }
                    }
                }
            } else {
                let mut frame = [0u8; 4];
                seg.file
                    .read_exact_at(&mut frame, offset - start)
                    .map_err(|e| corrupt(format!("read failed: {e}")))?;
                let len = u32::from_le_bytes(frame);
                if len == 0 || len > MAX_BODY_LEN {
                    return Err(corrupt(format!("impossible record length {len}")));
                }
                offset += FRAME_LEN + u64::from(len);
                left -= 1;
            }
            if offset > end {
                return Err(corrupt("record runs past the end of the log".into()));
            }
        }
        Ok(offset)
    }

    /// Sequential reader over `[from, end)`. `from` must be a record
    /// boundary (or a dropped record's place).
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
        let seg = self.segment(start)?;
        if let Some(map) = &seg.compact {
            let mut frames = CFrames::open(&seg.file, &seg.path, map, offset)?;
            return Ok(frames.next_frame()?.map_or(seg_end, |f| f.logical));
        }
        let mut reader =
            BufReader::with_capacity(1 << 18, File::open(&seg.path).map_err(io_err(&seg.path))?);
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

/// How a [`LogIter`] reads the segment it is in.
enum Reader {
    Plain(BufReader<File>),
    Compact(CFrames),
}

/// Iterator over log records in offset order, up to a fixed end.
pub struct LogIter {
    segments: Arc<Segments>,
    offset: u64,
    end: u64,
    /// The open segment: its end (or the iterator's) and a reader.
    current: Option<(u64, Reader)>,
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

    /// The next record; dropped records (padding) are stepped over.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.step()? {
                Ok(Some(rec)) => return Some(Ok(rec)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl LogIter {
    /// The next record, `Ok(None)` when a dropped record (or the end of a
    /// compacted segment's data) was stepped over, or `None` at the end.
    fn step(&mut self) -> Option<Result<Option<LogRecord>, StoreError>> {
        if self.failed || self.offset >= self.end {
            return None;
        }
        let res = self.read_next();
        match res {
            Ok(Some(rec)) => {
                self.offset = rec.next_offset;
                Some(Ok(Some(rec)))
            }
            Ok(None) => Some(Ok(None)),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn read_next(&mut self) -> Result<Option<LogRecord>, StoreError> {
        let offset = self.offset;
        if self.current.is_none() {
            self.open_segment()?;
        }
        let Some((seg_end, reader)) = &mut self.current else {
            return Ok(None);
        };
        let seg_end = *seg_end;
        if offset >= seg_end {
            self.current = None;
            return Ok(None);
        }
        match reader {
            Reader::Plain(reader) => match read_frame(reader, seg_end - offset) {
                Ok(Some((n, Decoded::Record(body)))) => Ok(Some(LogRecord {
                    offset,
                    next_offset: offset + n,
                    body,
                })),
                Ok(Some((n, Decoded::Padding))) => {
                    self.offset = offset + n;
                    Ok(None)
                }
                Ok(None) => Err(StoreError::Corrupt {
                    offset,
                    reason: "unexpected end of segment".into(),
                }),
                Err(reason) => Err(StoreError::Corrupt { offset, reason }),
            },
            Reader::Compact(frames) => match frames.next_frame()? {
                None => {
                    // The rest of the segment's offsets were dropped.
                    self.offset = seg_end;
                    self.current = None;
                    Ok(None)
                }
                Some(f) => {
                    let at = f.logical;
                    let next = at + FRAME_LEN + u64::from(f.logical_len);
                    if !f.intact() {
                        return Err(StoreError::Corrupt {
                            offset: at,
                            reason: "checksum mismatch".into(),
                        });
                    }
                    match decode_body(&f.body).map_err(|r| StoreError::Corrupt {
                        offset: at,
                        reason: r.into(),
                    })? {
                        Decoded::Record(body) => Ok(Some(LogRecord {
                            offset: at,
                            next_offset: next,
                            body,
                        })),
                        Decoded::Padding => {
                            self.offset = next;
                            Ok(None)
                        }
                    }
                }
            },
        }
    }

    /// Open the segment holding the current offset, positioned there.
    fn open_segment(&mut self) -> Result<(), StoreError> {
        let offset = self.offset;
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
        let seg = self.segments.segment(start)?;
        let reader = match &seg.compact {
            Some(map) => Reader::Compact(CFrames::open(&seg.file, &seg.path, map, offset)?),
            None => {
                let mut file = File::open(&seg.path).map_err(io_err(&seg.path))?;
                file.seek(SeekFrom::Start(offset - start))
                    .map_err(io_err(&seg.path))?;
                Reader::Plain(BufReader::with_capacity(1 << 18, file))
            }
        };
        self.current = Some((seg_end, reader));
        Ok(())
    }
}
