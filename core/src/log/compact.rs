//! Compacted segments: a sealed segment rewritten without the bytes
//! nothing needs any more (erased payloads, dropped records), keeping every
//! record's offset.
//!
//! A record's offset stays its logical place in the log; a compacted
//! segment stores each kept record's logical offset and length beside it,
//! so readers, the feed index and every view's checkpoint keep working
//! with no rebuild:
//!
//! ```text
//! file    = header | frame* | index | footer
//! header  = "kappacs1" | logical start u64 LE | logical end u64 LE
//! frame   = len u32 LE | crc32(logical || logical_len || body) u32 LE
//!           | logical offset u64 LE | logical length u32 LE | body (len bytes)
//! index   = count u64 LE | (logical offset u64 LE, position u64 LE) of every 256th frame
//! footer  = index position u64 LE | crc32(index) u32 LE | "kappacs1"
//! ```
//!
//! A body is a record body as in a plain segment, except that an erased
//! entry's body ends at its payload flag (the zeros it kept in place are
//! gone). Dropped records (padding) are left out; their offsets are gaps a
//! reader steps over. An erasure or a drop after compaction rewrites the
//! frame in place, like in a plain segment (same length, new checksum).
//!
//! Writing one is crash-safe: the new file is written as `<start>.cseg.tmp`,
//! fsynced, renamed to `<start>.cseg`, the directory fsynced, and only then
//! the plain `<start>.seg` removed. On open, a `.cseg` beside a `.seg`
//! means the removal did not happen yet (the `.cseg` wins), and a
//! `.cseg.tmp` is a compaction that did not finish (removed).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{Decoded, decode_body, erased_len};
use super::{FRAME_LEN, MAX_BODY_LEN, io_err, sync_dir};
use crate::error::StoreError;

/// The first and last eight bytes of a compacted segment.
const MAGIC: &[u8; 8] = b"kappacs1";
/// Header: magic, logical start, logical end.
pub(crate) const HEADER_LEN: u64 = 24;
/// A compacted frame's header: length, checksum, logical offset, logical
/// length.
pub(crate) const CFRAME_LEN: u64 = 20;
/// Frames between two entries of the index.
const INDEX_EVERY: usize = 256;

/// At most the bytes a compacted segment holds beside its frames (header,
/// index, footer), given `live`, the bytes of its frames: a frame takes at
/// least [`CFRAME_LEN`] bytes, so there are at most `live / CFRAME_LEN`
/// frames and one index entry per [`INDEX_EVERY`] of them.
pub(crate) fn overhead_bound(live: u64) -> u64 {
    let index_entries = live / (CFRAME_LEN * INDEX_EVERY as u64) + 1;
    HEADER_LEN + 8 + index_entries * 16 + 20
}

/// The bytes compacting a segment of `size` bytes with `live` bytes of
/// frames would give back (never counting what its own overhead takes).
pub(crate) fn gain(size: u64, live: u64) -> u64 {
    size.saturating_sub(live + overhead_bound(live))
}

/// A compacted segment's path.
pub(crate) fn compact_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.cseg"))
}

/// The checksum of a compacted frame.
pub(crate) fn cframe_crc(logical: u64, logical_len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&logical.to_le_bytes());
    h.update(&logical_len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// What a compacted segment's header and index say.
#[derive(Debug, Clone)]
pub(crate) struct CompactMap {
    pub(crate) start: u64,
    /// The logical end: the next segment's start.
    pub(crate) end: u64,
    /// Where the frames end (the index starts).
    pub(crate) data_end: u64,
    /// Every 256th frame: (logical offset, position).
    index: Vec<(u64, u64)>,
}

impl CompactMap {
    /// Read the header and the index of a compacted segment.
    pub(crate) fn load(file: &File, path: &Path) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Corrupt {
            offset: 0,
            reason: format!("compacted segment {}: {reason}", path.display()),
        };
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < HEADER_LEN + 8 + 20 {
            return Err(bad("too short"));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0).map_err(io_err(path))?;
        let mut footer = [0u8; 20];
        file.read_exact_at(&mut footer, len - 20)
            .map_err(io_err(path))?;
        if &header[..8] != MAGIC || &footer[12..] != MAGIC {
            return Err(bad("not a compacted segment"));
        }
        let u64_at = |b: &[u8], at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let start = u64_at(&header, 8);
        let end = u64_at(&header, 16);
        let index_pos = u64_at(&footer, 0);
        let index_crc = u32::from_le_bytes([footer[8], footer[9], footer[10], footer[11]]);
        if index_pos < HEADER_LEN || index_pos > len - 20 || end < start {
            return Err(bad("impossible header or footer"));
        }
        let mut index_bytes = vec![0u8; (len - 20 - index_pos) as usize];
        file.read_exact_at(&mut index_bytes, index_pos)
            .map_err(io_err(path))?;
        if crc32fast::hash(&index_bytes) != index_crc || index_bytes.len() < 8 {
            return Err(bad("the index fails its checksum"));
        }
        let count = u64_at(&index_bytes, 0) as usize;
        if index_bytes.len() != 8 + count * 16 {
            return Err(bad("the index has the wrong length"));
        }
        let index = (0..count)
            .map(|i| {
                (
                    u64_at(&index_bytes, 8 + 16 * i),
                    u64_at(&index_bytes, 16 + 16 * i),
                )
            })
            .collect();
        Ok(Self {
            start,
            end,
            data_end: index_pos,
            index,
        })
    }

    /// A position at or before the frame of the first record at or after
    /// `offset`.
    pub(crate) fn seek_pos(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|(l, _)| *l <= offset);
        match i.checked_sub(1) {
            Some(i) => self.index[i].1,
            None => HEADER_LEN,
        }
    }
}

/// One frame of a compacted segment as read.
#[derive(Debug)]
pub(crate) struct CFrame {
    pub(crate) pos: u64,
    pub(crate) logical: u64,
    pub(crate) logical_len: u32,
    pub(crate) crc: u32,
    pub(crate) body: Vec<u8>,
}

impl CFrame {
    /// Whether the checksum vouches for the frame.
    pub(crate) fn intact(&self) -> bool {
        cframe_crc(self.logical, self.logical_len, &self.body) == self.crc
    }
}

/// Read the frame at `pos` (below `data_end`), or `None` at `data_end`.
pub(crate) fn read_cframe(
    reader: &mut impl Read,
    pos: u64,
    data_end: u64,
) -> Result<Option<CFrame>, String> {
    if pos >= data_end {
        return Ok(None);
    }
    if data_end - pos < CFRAME_LEN {
        return Err("torn compacted frame".into());
    }
    let mut head = [0u8; CFRAME_LEN as usize];
    reader
        .read_exact(&mut head)
        .map_err(|e| format!("read failed: {e}"))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&head[8..16]);
    let logical = u64::from_le_bytes(l);
    let logical_len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if len == 0 || len > MAX_BODY_LEN || u64::from(len) > data_end - pos - CFRAME_LEN {
        return Err(format!("impossible compacted frame length {len}"));
    }
    let mut body = vec![0u8; len as usize];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read failed: {e}"))?;
    Ok(Some(CFrame {
        pos,
        logical,
        logical_len,
        crc,
        body,
    }))
}

/// Sequential frames of a compacted segment from the first record at or
/// after `offset`.
pub(crate) struct CFrames {
    reader: BufReader<File>,
    pos: u64,
    data_end: u64,
    /// A frame read ahead (the first at or after the offset asked for).
    pending: Option<CFrame>,
}

impl CFrames {
    pub(crate) fn open(
        file: &File,
        path: &Path,
        map: &CompactMap,
        offset: u64,
    ) -> Result<Self, StoreError> {
        let mut f = file.try_clone().map_err(io_err(path))?;
        let pos = map.seek_pos(offset);
        f.seek(SeekFrom::Start(pos)).map_err(io_err(path))?;
        let mut frames = Self {
            reader: BufReader::with_capacity(1 << 18, f),
            pos,
            data_end: map.data_end,
            pending: None,
        };
        while let Some(frame) = frames.read_next()? {
            if frame.logical >= offset {
                frames.pending = Some(frame);
                break;
            }
        }
        Ok(frames)
    }

    fn read_next(&mut self) -> Result<Option<CFrame>, StoreError> {
        let pos = self.pos;
        match read_cframe(&mut self.reader, pos, self.data_end) {
            Ok(Some(f)) => {
                self.pos = pos + CFRAME_LEN + f.body.len() as u64;
                Ok(Some(f))
            }
            Ok(None) => Ok(None),
            Err(reason) => Err(StoreError::Corrupt {
                offset: pos,
                reason,
            }),
        }
    }

    /// The next frame, or `None` at the end of the segment's data.
    pub(crate) fn next_frame(&mut self) -> Result<Option<CFrame>, StoreError> {
        match self.pending.take() {
            Some(f) => Ok(Some(f)),
            None => self.read_next(),
        }
    }
}

/// What compacting one segment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Compacted {
    pub(crate) bytes_before: u64,
    pub(crate) bytes_after: u64,
    /// The bytes the compacted segment holds (its live bytes).
    pub(crate) live: u64,
}

/// Write the compacted form of the sealed segment `[start, end)` read from
/// `source` (a plain or compacted segment), and put it in place (see the
/// module docs). Returns the sizes before and after.
pub(crate) fn compact_segment(
    dir: &Path,
    start: u64,
    end: u64,
    source: SourceSegment<'_>,
) -> Result<Compacted, StoreError> {
    let tmp = dir.join(format!("{start:020}.cseg.tmp"));
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut pos = HEADER_LEN;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&start.to_le_bytes());
    header.extend_from_slice(&end.to_le_bytes());
    out.write_all(&header).map_err(io_err(&tmp))?;
    let mut index: Vec<(u64, u64)> = Vec::new();
    let mut frames = 0usize;
    let mut live = 0u64;
    let mut emit = |logical: u64, logical_len: u32, body: &[u8]| -> Result<(), StoreError> {
        if frames.is_multiple_of(INDEX_EVERY) {
            index.push((logical, pos));
        }
        frames += 1;
        let crc = cframe_crc(logical, logical_len, body);
        let mut head = [0u8; CFRAME_LEN as usize];
        head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        head[8..16].copy_from_slice(&logical.to_le_bytes());
        head[16..].copy_from_slice(&logical_len.to_le_bytes());
        out.write_all(&head)
            .and_then(|_| out.write_all(body))
            .map_err(io_err(&tmp))?;
        pos += CFRAME_LEN + body.len() as u64;
        live += CFRAME_LEN + body.len() as u64;
        Ok(())
    };
    let bytes_before = match source {
        SourceSegment::Plain(path) => {
            let f = File::open(path).map_err(io_err(path))?;
            let size = f.metadata().map_err(io_err(path))?.len();
            let mut reader = BufReader::with_capacity(1 << 20, f);
            let mut logical = start;
            let mut raw = Vec::new();
            while logical < end {
                raw.clear();
                let (n, kept) =
                    read_plain_raw(&mut reader, end - logical, &mut raw).map_err(|reason| {
                        StoreError::Corrupt {
                            offset: logical,
                            reason,
                        }
                    })?;
                if let Some(keep) = kept {
                    emit(logical, (n - FRAME_LEN) as u32, &raw[..keep])?;
                }
                logical += n;
            }
            size
        }
        SourceSegment::Compact(path, map) => {
            let f = File::open(path).map_err(io_err(path))?;
            let size = f.metadata().map_err(io_err(path))?.len();
            let mut frames_in = CFrames::open(&f, path, map, start)?;
            while let Some(frame) = frames_in.next_frame()? {
                if !frame.intact() {
                    return Err(StoreError::Corrupt {
                        offset: frame.logical,
                        reason: "compacted frame fails its checksum".into(),
                    });
                }
                match decode_body(&frame.body).map_err(|reason| StoreError::Corrupt {
                    offset: frame.logical,
                    reason: reason.into(),
                })? {
                    Decoded::Padding => {}
                    Decoded::Record(_) => {
                        let keep = erased_len(&frame.body).unwrap_or(frame.body.len());
                        emit(frame.logical, frame.logical_len, &frame.body[..keep])?;
                    }
                }
            }
            size
        }
    };
    let mut index_bytes = Vec::with_capacity(8 + 16 * index.len());
    index_bytes.extend_from_slice(&(index.len() as u64).to_le_bytes());
    for (l, p) in &index {
        index_bytes.extend_from_slice(&l.to_le_bytes());
        index_bytes.extend_from_slice(&p.to_le_bytes());
    }
    let mut footer = Vec::with_capacity(20);
    footer.extend_from_slice(&pos.to_le_bytes());
    footer.extend_from_slice(&crc32fast::hash(&index_bytes).to_le_bytes());
    footer.extend_from_slice(MAGIC);
    out.write_all(&index_bytes)
        .and_then(|_| out.write_all(&footer))
        .map_err(io_err(&tmp))?;
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    let bytes_after = file.metadata().map_err(io_err(&tmp))?.len();
    drop(file);
    let target = compact_path(dir, start);
    fs::rename(&tmp, &target).map_err(io_err(&target))?;
    sync_dir(dir)?;
    Ok(Compacted {
        bytes_before,
        bytes_after,
        live,
    })
}

/// The segment a compaction reads.
pub(crate) enum SourceSegment<'a> {
    Plain(&'a Path),
    Compact(&'a Path, &'a CompactMap),
}

/// Read one plain frame's body into `raw`; returns the frame's length and
/// how many body bytes a compacted segment keeps (`None`: nothing, it is
/// padding).
fn read_plain_raw(
    reader: &mut impl Read,
    available: u64,
    raw: &mut Vec<u8>,
) -> Result<(u64, Option<usize>), String> {
    let mut frame = [0u8; FRAME_LEN as usize];
    reader
        .read_exact(&mut frame)
        .map_err(|e| format!("read failed: {e}"))?;
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 || len > MAX_BODY_LEN || u64::from(len) + FRAME_LEN > available {
        return Err(format!("impossible record length {len}"));
    }
    raw.resize(len as usize, 0);
    reader
        .read_exact(raw)
        .map_err(|e| format!("read failed: {e}"))?;
    if crc32fast::hash(raw) != crc {
        return Err("checksum mismatch".into());
    }
    let keep = match decode_body(raw).map_err(str::to_string)? {
        Decoded::Padding => None,
        Decoded::Record(_) => Some(erased_len(raw).unwrap_or(raw.len())),
    };
    Ok((FRAME_LEN + u64::from(len), keep))
}
