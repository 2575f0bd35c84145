//! Compaction: giving back the bytes of erased payloads and dropped
//! records, one sealed segment at a time, without moving any record's
//! offset (module `log::compact` has the file format).
//!
//! A segment is compacted while holding the writer lock, so no deletion
//! can erase a record of it between the read and the switch to the new
//! file (appends wait for the one segment, well under a second for the
//! default 64 MiB). Readers never wait: the ones already reading the old
//! file finish with it, the next ones open the new one.

use crate::error::StoreError;
use crate::log::{SourceSegment, compact_segment};

use super::Db;

/// What [`Db::compact`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments rewritten.
    pub segments: usize,
    /// Their bytes on disk before.
    pub bytes_before: u64,
    /// Their bytes on disk after.
    pub bytes_after: u64,
}

impl CompactReport {
    /// Bytes given back.
    pub fn reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

impl Db {
    /// Compact every sealed segment that would give back at least
    /// `min_gain` bytes (erased payloads, dropped records), reporting
    /// `(segments done, segments to do)`. Offsets keep their meaning, so
    /// the index and views need nothing; the log's records read the same.
    pub fn compact(
        &self,
        min_gain: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CompactReport, StoreError> {
        let sizes = self.inner.segments.file_sizes();
        let sealed = sizes.len().saturating_sub(1);
        let todo: Vec<(u64, u64)> = {
            let state = self.state();
            sizes[..sealed]
                .iter()
                .enumerate()
                .filter_map(|(i, (start, size))| {
                    let live = state.live.get(start).copied().unwrap_or(*size);
                    (crate::log::compact_gain(*size, live) >= min_gain.max(1))
                        .then(|| (*start, sizes[i + 1].0))
                })
                .collect()
        };
        let mut report = CompactReport::default();
        for (i, (start, end)) in todo.iter().enumerate() {
            progress(i as u64, todo.len() as u64);
            let writer = self.writer();
            if writer.poisoned {
                return Err(StoreError::Poisoned);
            }
            let seg = self.inner.segments.segment(*start)?;
            let source = match &seg.compact {
                Some(map) => SourceSegment::Compact(&seg.path, map),
                None => SourceSegment::Plain(&seg.path),
            };
            let done = compact_segment(self.dir_log(), *start, *end, source)?;
            if seg.compact.is_none() {
                // The compacted file is in place: the plain one can go.
                std::fs::remove_file(&seg.path).map_err(|source| StoreError::Io {
                    path: seg.path.clone(),
                    source,
                })?;
                crate::log::sync_dir(self.dir_log())?;
            }
            self.inner.segments.reopen(*start);
            {
                let mut state = self.state_mut();
                let old = state.live.get(start).copied().unwrap_or(0);
                if old != done.live {
                    // The count drifted (it is derived): trust the file.
                    tracing::debug!(
                        segment = start,
                        old,
                        new = done.live,
                        "live bytes corrected"
                    );
                    let mut pending = std::mem::take(&mut state.pending);
                    state.add_live(*start, done.live as i64 - old as i64, &mut pending);
                    state.pending = pending;
                }
            }
            drop(writer);
            report.segments += 1;
            report.bytes_before += done.bytes_before;
            report.bytes_after += done.bytes_after;
        }
        progress(todo.len() as u64, todo.len() as u64);
        if report.segments > 0 {
            tracing::info!(
                segments = report.segments,
                reclaimed = report.reclaimed(),
                "compacted the log"
            );
        }
        Ok(report)
    }

    fn dir_log(&self) -> &std::path::Path {
        self.inner.segments.dir()
    }
}
