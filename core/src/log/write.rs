//! Writing the log: [`LogWriter`], the single writer, which preallocates
//! the active segment, rolls to a new one when it is full, and on open cuts
//! a torn tail (saving it aside) or refuses damage.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use super::compact::{CompactMap, compact_path};
use super::read::Segments;
use super::record::{erased_body, find_intact_record_after, padding_body, read_frame};
use super::{FRAME_LEN, PREALLOC_CHUNK, Recovery, io_err, list_segments, segment_path, sync_dir};
use crate::error::StoreError;

/// The journal of in-place rewrites (see [`LogWriter::rewrite`]).
const JOURNAL: &str = "edits.journal";

/// An in-place rewrite of one record; both keep its length, so no offset
/// moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Edit {
    /// Erase the payload of the entry at this offset: the flag says
    /// erased, the payload's bytes become zeros, the header and signature
    /// stay.
    Erase(u64),
    /// Drop the record at this offset: it becomes padding, which readers
    /// step over.
    Drop(u64),
}

impl Edit {
    fn offset(self) -> u64 {
        match self {
            Edit::Erase(o) | Edit::Drop(o) => o,
        }
    }

    fn encode(self) -> [u8; 13] {
        let (offset, action) = match self {
            Edit::Erase(o) => (o, 1u8),
            Edit::Drop(o) => (o, 2u8),
        };
        let mut out = [0u8; 13];
        out[..8].copy_from_slice(&offset.to_le_bytes());
        out[8] = action;
        let crc = crc32fast::hash(&out[..9]);
        out[9..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Edit> {
        let bytes: &[u8; 13] = bytes.try_into().ok()?;
        let crc = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]);
        if crc32fast::hash(&bytes[..9]) != crc {
            return None;
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&bytes[..8]);
        let offset = u64::from_le_bytes(offset);
        match bytes[8] {
            1 => Some(Edit::Erase(offset)),
            2 => Some(Edit::Drop(offset)),
            _ => None,
        }
    }
}

/// An edit that was applied, with the record's body before it.
#[derive(Debug)]
pub(crate) struct Edited {
    pub(crate) edit: Edit,
    pub(crate) before: Vec<u8>,
}

/// Tidy up after compactions a crash interrupted: a `.cseg` beside its
/// `.seg` was put in place (the plain one goes), a `.cseg.tmp` was not
/// (it goes).
fn finish_compactions(dir: &Path, starts: &[u64]) -> Result<(), StoreError> {
    for &start in starts {
        let tmp = dir.join(format!("{start:020}.cseg.tmp"));
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let plain = segment_path(dir, start);
        if compact_path(dir, start).exists() && plain.exists() {
            fs::remove_file(&plain).map_err(io_err(&plain))?;
            sync_dir(dir)?;
        }
    }
    Ok(())
}

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
        finish_compactions(dir, &starts)?;
        // Before anything reads the records: a rewrite a crash cut short
        // leaves a record whose checksum does not match yet.
        let replayed = replay_journal(dir, &starts)?;
        if replayed > 0 {
            tracing::warn!(
                records = replayed,
                "finished in-place rewrites a crash interrupted"
            );
        }
        if starts.is_empty() {
            let path = segment_path(dir, 0);
            File::create(&path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            starts.push(0);
        }
        // Sealed segments must tile the offset space exactly.
        for pair in starts.windows(2) {
            let cpath = compact_path(dir, pair[0]);
            if cpath.exists() {
                let f = File::open(&cpath).map_err(io_err(&cpath))?;
                let map = CompactMap::load(&f, &cpath)?;
                if map.start != pair[0] || map.end != pair[1] {
                    return Err(StoreError::Corrupt {
                        offset: pair[0],
                        reason: format!(
                            "compacted segment {} covers {}..{} but sits between {} and {}",
                            cpath.display(),
                            map.start,
                            map.end,
                            pair[0],
                            pair[1]
                        ),
                    });
                }
                continue;
            }
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
        // preallocated zeros: an all-zero frame header is the clean end, and
        // so is a run of zeros too short to hold one (the preallocated room
        // can end a few bytes past the last record).
        let mut data = Vec::new();
        active
            .seek(SeekFrom::Start(0))
            .and_then(|_| active.read_to_end(&mut data))
            .map_err(io_err(&path))?;
        let mut good = 0u64;
        let mut failure = None;
        loop {
            let rest = &data[good as usize..];
            if rest.len() < FRAME_LEN as usize && rest.iter().all(|&b| b == 0) {
                break;
            }
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

    /// Rewrite records in place, crash-safely: the edits are written to a
    /// journal and fsynced first, then each record's body and checksum are
    /// rewritten and fsynced, then the journal is emptied. After a crash,
    /// [`LogWriter::open`] replays what the journal holds (each edit is
    /// worked out again from the record's frame, its length and its
    /// header, which no edit touches, so replaying is idempotent). An edit
    /// that changes nothing (already erased, already dropped) is skipped.
    /// Returns the edits applied, with each record's body before.
    pub(crate) fn rewrite(&mut self, edits: &[Edit]) -> Result<Vec<Edited>, StoreError> {
        let end = self.end();
        let mut todo: Vec<(Edit, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut sorted = edits.to_vec();
        sorted.sort_by_key(|e| (e.offset(), matches!(e, Edit::Erase(_))));
        sorted.dedup_by_key(|e| e.offset());
        for edit in sorted {
            let body = self.segments.read_raw(edit.offset(), end)?.body;
            let after = match edit {
                Edit::Erase(_) => match erased_body(&body) {
                    Some(b) => b,
                    None => continue,
                },
                Edit::Drop(_) => padding_body(body.len()),
            };
            if after != body {
                todo.push((edit, body, after));
            }
        }
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let journal_path = self.segments.dir.join(JOURNAL);
        let mut journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&journal_path)
            .map_err(io_err(&journal_path))?;
        let mut bytes = Vec::with_capacity(todo.len() * 13);
        for (edit, _, _) in &todo {
            bytes.extend_from_slice(&edit.encode());
        }
        journal
            .write_all(&bytes)
            .and_then(|_| journal.sync_data())
            .map_err(io_err(&journal_path))?;
        let writes: Vec<(u64, Vec<u8>)> = todo
            .iter()
            .map(|(edit, _, after)| (edit.offset(), after.clone()))
            .collect();
        write_bodies(&self.segments, end, &writes)?;
        journal
            .set_len(0)
            .and_then(|_| journal.sync_data())
            .map_err(io_err(&journal_path))?;
        Ok(todo
            .into_iter()
            .map(|(edit, before, _)| Edited { edit, before })
            .collect())
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

/// Write new bodies (and their checksums) over records of the same length
/// (below `end`), and fsync every file touched.
fn write_bodies(
    segments: &Segments,
    end: u64,
    writes: &[(u64, Vec<u8>)],
) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let mut files: Vec<(std::path::PathBuf, File)> = Vec::new();
    for (offset, body) in writes {
        let raw = segments.read_raw(*offset, end)?;
        if raw.body.len() != body.len() {
            return Err(StoreError::Corrupt {
                offset: *offset,
                reason: "an in-place rewrite would change the record's length".into(),
            });
        }
        if !files.iter().any(|(p, _)| *p == raw.path) {
            let f = OpenOptions::new()
                .write(true)
                .open(&raw.path)
                .map_err(io_err(&raw.path))?;
            files.push((raw.path.clone(), f));
        }
        let Some((_, file)) = files.iter().find(|(p, _)| *p == raw.path) else {
            continue;
        };
        // The body first, then the checksum that vouches for it.
        file.write_all_at(body, raw.body_pos)
            .and_then(|_| file.write_all_at(&raw.crc_for(body).to_le_bytes(), raw.crc_pos))
            .map_err(io_err(&raw.path))?;
    }
    for (path, file) in &files {
        file.sync_data().map_err(io_err(path))?;
    }
    Ok(())
}

/// Finish the rewrites a crash interrupted (see [`LogWriter::rewrite`]):
/// each journaled edit is worked out again from the record's frame and
/// header, which no edit changes. Returns how many records were written.
fn replay_journal(dir: &Path, starts: &[u64]) -> Result<usize, StoreError> {
    let path = dir.join(JOURNAL);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    if bytes.is_empty() {
        return Ok(0);
    }
    let segments = Segments::new(dir.to_path_buf(), starts.to_vec());
    // Edits only ever name durable records, so their frames are whole.
    let end = u64::MAX;
    // A torn last entry was never acted on: the journal is fsynced before
    // any record is touched.
    let mut writes = Vec::new();
    for edit in bytes.chunks(13).filter_map(Edit::decode) {
        let body = segments.read_raw(edit.offset(), end)?.body;
        let after = match edit {
            Edit::Erase(_) => erased_body(&body),
            Edit::Drop(_) => Some(padding_body(body.len())),
        };
        if let Some(after) = after {
            writes.push((edit.offset(), after));
        }
    }
    write_bodies(&segments, end, &writes)?;
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.set_len(0)
        .and_then(|_| f.sync_data())
        .map_err(io_err(&path))?;
    Ok(writes.len())
}

#[cfg(test)]
mod journal_tests {
    use super::{Edit, FRAME_LEN, LogWriter, segment_path};

    /// A clean log whose preallocated zeros end fewer than a frame
    /// header's bytes past the last record is not torn: nothing is cut and
    /// no recovery is reported (found by `core/tests/model.rs`).
    #[test]
    fn a_short_run_of_zeros_after_the_last_record_is_a_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recovery) = LogWriter::open(dir.path(), 1 << 20, None).unwrap();
        assert!(recovery.is_none());
        let mut buf = Vec::new();
        crate::log::record::encode_record(
            &crate::log::RecordBody::Forget(crate::keys::FeedId([7; 32])),
            &mut buf,
        );
        log.append(&buf, &[buf.len()]).unwrap();
        let end = log.end();
        drop(log);
        let path = segment_path(dir.path(), 0);
        for zeros in 0..FRAME_LEN {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(end + zeros)
                .unwrap();
            let (log, recovery) = LogWriter::open(dir.path(), 1 << 20, Some(end)).unwrap();
            assert!(recovery.is_none(), "{zeros} zeros: {recovery:?}");
            assert_eq!(log.end(), end);
        }
    }

    #[test]
    fn journal_entries_round_trip_and_refuse_damage() {
        for edit in [Edit::Erase(0), Edit::Drop(u64::MAX - 3), Edit::Erase(12345)] {
            assert_eq!(Edit::decode(&edit.encode()), Some(edit));
        }
        let mut bytes = Edit::Erase(77).encode();
        bytes[3] ^= 1;
        assert_eq!(Edit::decode(&bytes), None);
        assert_eq!(Edit::decode(&bytes[..12]), None);
    }
}
