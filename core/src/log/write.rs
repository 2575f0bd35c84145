//! Writing the log: [`LogWriter`], the single writer, which preallocates
//! the active segment, rolls to a new one when it is full, and on open cuts
//! a torn tail (saving it aside) or refuses damage.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use super::read::Segments;
use super::record::{find_intact_record_after, read_frame};
use super::{FRAME_LEN, PREALLOC_CHUNK, Recovery, io_err, list_segments, segment_path, sync_dir};
use crate::error::StoreError;

/// Are all bytes of `path` from `from` on zero?
fn zeros_after(path: &Path, from: u64) -> Result<bool, StoreError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).map_err(io_err(path))?;
    Ok(rest.iter().all(|&b| b == 0))
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
        let segments = Arc::new(Segments::new(dir.to_path_buf(), starts));
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
