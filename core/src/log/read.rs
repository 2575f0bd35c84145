//! Reading the log: [`Segments`], the shared view of the segment files,
//! and [`LogIter`], records in offset order up to a fixed end.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::record::{Decoded, read_frame};
use super::{FRAME_LEN, LogRecord, MAX_BODY_LEN, io_err, segment_path};
use crate::error::StoreError;

/// Shared, read-only view of the segment files.
#[derive(Debug)]
pub(crate) struct Segments {
    pub(super) dir: PathBuf,
    /// Segment starts, sorted. Grows when the writer rolls.
    pub(super) starts: RwLock<Vec<u64>>,
    /// Open read handles, by segment start.
    files: Mutex<HashMap<u64, Arc<File>>>,
}

impl Segments {
    pub(super) fn new(dir: PathBuf, starts: Vec<u64>) -> Self {
        Self {
            dir,
            starts: RwLock::new(starts),
            files: Mutex::new(HashMap::new()),
        }
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
        match body {
            Decoded::Record(body) => Ok(LogRecord {
                offset,
                next_offset: offset + n,
                body,
            }),
            Decoded::Padding => Err(corrupt("the record there was dropped".into())),
        }
    }

    /// The raw frame and body of the record at `offset` (below `end`), for
    /// rewriting it in place.
    pub(crate) fn read_raw(&self, offset: u64, end: u64) -> Result<(u32, Vec<u8>), StoreError> {
        use std::os::unix::fs::FileExt;
        let corrupt = |reason: String| StoreError::Corrupt { offset, reason };
        if offset >= end {
            return Err(corrupt("offset is past the end of the log".into()));
        }
        let start = self
            .segment_for(offset)
            .ok_or_else(|| corrupt("no segment holds this offset".into()))?;
        let file = self.file(start)?;
        let mut frame = [0u8; FRAME_LEN as usize];
        file.read_exact_at(&mut frame, offset - start)
            .map_err(|e| corrupt(format!("read failed: {e}")))?;
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len == 0 || len > MAX_BODY_LEN || offset + FRAME_LEN + u64::from(len) > end {
            return Err(corrupt(format!("impossible record length {len}")));
        }
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, offset - start + FRAME_LEN)
            .map_err(|e| corrupt(format!("read failed: {e}")))?;
        Ok((crc, body))
    }

    /// Each segment's start and the size of its file (0 if it cannot be
    /// read), in offset order.
    pub(crate) fn file_sizes(&self) -> Vec<(u64, u64)> {
        let starts = self
            .starts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        starts
            .into_iter()
            .map(|start| {
                let size = std::fs::metadata(segment_path(&self.dir, start)).map_or(0, |m| m.len());
                (start, size)
            })
            .collect()
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
    /// The next record, `Ok(None)` for padding (already stepped over), or
    /// `None` at the end.
    fn step(&mut self) -> Option<Result<Option<LogRecord>, StoreError>> {
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
                            Ok(Some((n, Decoded::Record(body)))) => Ok(Some(LogRecord {
                                offset,
                                next_offset: offset + n,
                                body,
                            })),
                            // A dropped record: step over it.
                            Ok(Some((n, Decoded::Padding))) => {
                                self.offset = offset + n;
                                Ok(None)
                            }
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
}
