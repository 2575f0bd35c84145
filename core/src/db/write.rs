//! Writing a database: this peer's appends, and the one path every record
//! takes into the log (`write_records`: frame, write and fsync, fold into
//! the index, publish the new end).
//!
//! Durable before visible: records are fsynced before the index or any
//! watcher sees them. Watch callbacks run after the writer lock is
//! released, so a callback may append.

use std::sync::MutexGuard;
use std::time::Duration;

use rayon::prelude::*;

use crate::entry::{Entry, EntryId, HEADER_VERSION, Hash, Header, Payload};
use crate::error::{AppendError, StoreError};
use crate::index::{Index, IndexState};
use crate::log::{Edited, LogRecord, LogWriter, RecordBody, encode_record};
use crate::system::SystemPayload;
use crate::validate::EntryError;

use super::delete::{DeletionIssue, Plan, account};
use super::{Db, Inner, now_ms};

/// Index changes are committed to sled once this many records are pending
/// (and on `flush_index` and when the handle is dropped). A sled commit
/// costs about as much as the log's fsync, so committing after every single
/// append would halve their rate; what is pending lives in memory, readers
/// look there first, and after a crash the index catches up from its
/// checkpoint. The number is kept small because the checkpoint is also what
/// tells a torn tail from damage on open: a bad record past it is cut as
/// torn (and saved aside), so the checkpoint should not lag far behind what
/// was acknowledged.
const INDEX_COMMIT_RECORDS: usize = 64;

/// One of this peer's entries, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its id.
    pub id: EntryId,
    /// Its log offset.
    pub offset: u64,
    /// Its timestamp.
    pub timestamp: u64,
}

/// The log writer and whether an earlier write failed.
pub(super) struct Writer {
    pub(super) log: LogWriter,
    /// Set when a write failed part way; every later write is refused
    /// until the database is reopened.
    pub(super) poisoned: bool,
}

impl Db {
    /// Append one payload to this peer's feed. Durable on return.
    pub fn append(&self, payload: Vec<u8>) -> Result<Appended, AppendError> {
        let mut out = self.append_batch(vec![payload])?;
        out.pop().ok_or(AppendError::Store(StoreError::Poisoned))
    }

    /// Append many payloads in order, signing on all cores, with one fsync
    /// for the whole batch. All or nothing: a payload over the limit fails
    /// the batch before anything is written.
    pub fn append_batch(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<Appended>, AppendError> {
        let started = std::time::Instant::now();
        let res = self.append_batch_timed(payloads);
        match &res {
            Ok(done) if !done.is_empty() => {
                self.observe(|o| o.appended(done.len(), started.elapsed()));
            }
            Err(AppendError::Rejected(e)) => self.observe(|o| o.rejected(e.reason())),
            _ => {}
        }
        res
    }

    fn append_batch_timed(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<Appended>, AppendError> {
        let limit = self.inner.config.max_payload_bytes;
        for p in &payloads {
            if p.len() as u64 > u64::from(limit) {
                return Err(EntryError::PayloadTooLarge {
                    len: p.len() as u64,
                    limit,
                }
                .into());
            }
        }
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        // Small batches stay on this thread: handing work to the pool costs
        // more than it saves.
        let parallel = payloads.len() >= 16;
        let hashes: Vec<Hash> = if parallel {
            payloads.par_iter().map(|p| Hash::of(p)).collect()
        } else {
            payloads.iter().map(|p| Hash::of(p)).collect()
        };
        let writer = self.writer();
        if writer.poisoned {
            return Err(StoreError::Poisoned.into());
        }
        if let Some(hold) = self.publish_hold() {
            return Err(hold.into());
        }
        let author = self.feed_id();
        let (mut seq, mut prev, mut ts) = {
            let state = self.state();
            if let Some(f) = state.forks.get(&author) {
                let head_seq = state.heads.get(&author).map_or(0, |h| h.seq);
                return Err(EntryError::FeedForked {
                    author,
                    fork_seq: f.seq,
                    seq: head_seq + 1,
                }
                .into());
            }
            match state.heads.get(&author) {
                Some(h) => (h.seq, Some(h.id), h.timestamp),
                None => (0, None, 0),
            }
        };
        let now = now_ms();
        let mut headers = Vec::with_capacity(payloads.len());
        let mut ids = Vec::with_capacity(payloads.len());
        for (p, hash) in payloads.iter().zip(hashes) {
            seq += 1;
            // Own timestamps never go backwards, even if the clock does.
            ts = ts.max(now);
            let header = Header {
                version: HEADER_VERSION,
                author,
                seq,
                prev,
                timestamp: ts,
                payload_len: p.len() as u32,
                payload_hash: hash,
            };
            let id = header.id();
            prev = Some(id);
            headers.push(header);
            ids.push(id);
        }
        // System payloads (deletions) must follow their rules here, before
        // anything is written.
        let first_seq = seq + 1 - payloads.len() as u64;
        let batch: Vec<(EntryId, &[u8])> = ids
            .iter()
            .copied()
            .zip(payloads.iter().map(Vec::as_slice))
            .collect();
        for (i, p) in payloads.iter().enumerate() {
            if SystemPayload::is_system(p) {
                let at = first_seq + i as u64;
                self.check_own_system_payload(p, at, first_seq, &batch[..i])?;
            }
        }
        let key = &self.inner.key;
        let signatures: Vec<_> = if parallel {
            ids.par_iter().map(|id| key.sign(&id.0)).collect()
        } else {
            ids.iter().map(|id| key.sign(&id.0)).collect()
        };
        let entries: Vec<Entry> = headers
            .into_iter()
            .zip(signatures)
            .zip(payloads)
            .map(|((header, signature), payload)| Entry {
                header,
                signature,
                payload: Payload::Held(payload),
            })
            .collect();
        let records: Vec<RecordBody> = entries.into_iter().map(RecordBody::Entry).collect();
        let stored = self.write_records(writer, records)?;
        Ok(stored
            .iter()
            .zip(ids)
            .map(|(rec, id)| {
                let (seq, timestamp) = rec
                    .entry()
                    .map_or((0, 0), |e| (e.header.seq, e.header.timestamp));
                Appended {
                    seq,
                    id,
                    offset: rec.offset,
                    timestamp,
                }
            })
            .collect())
    }

    /// Write records durably, apply the edits the deletions and forget
    /// markers among them call for, publish the new end, fold them into
    /// the index, release the writer, then run the watch callbacks.
    ///
    /// The end is published before the index changes, so a reader that
    /// finds a record in the index always finds it below the end; the
    /// edits are done before either, so no reader ever sees a deleted
    /// payload once its deletion is visible; the callbacks run with no
    /// lock held, so they may read or append.
    pub(super) fn write_records(
        &self,
        writer: MutexGuard<'_, Writer>,
        records: Vec<RecordBody>,
    ) -> Result<Vec<LogRecord>, StoreError> {
        Ok(self.write_records_reporting(writer, records)?.0)
    }

    /// [`Db::write_records`], also returning the deletions among the
    /// records that had no effect (or not all of it), and why.
    pub(super) fn write_records_reporting(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        records: Vec<RecordBody>,
    ) -> Result<(Vec<LogRecord>, Vec<DeletionIssue>), StoreError> {
        let mut buf = Vec::new();
        let mut lens = Vec::with_capacity(records.len());
        for r in &records {
            let before = buf.len();
            encode_record(r, &mut buf);
            lens.push(buf.len() - before);
        }
        let offsets = match writer.log.append(&buf, &lens) {
            Ok(o) => o,
            Err(e) => {
                writer.poisoned = true;
                return Err(e);
            }
        };
        let stored: Vec<LogRecord> = records
            .into_iter()
            .zip(offsets.iter().zip(lens.iter()))
            .map(|(body, (&offset, &len))| LogRecord {
                offset,
                next_offset: offset + len as u64,
                body,
            })
            .collect();
        let edited = self.edit_for(&mut writer, &stored);
        let (plan, applied) = match edited {
            Ok(x) => x,
            Err(e) => {
                // The records are durable; their edits are finished when
                // the database is opened again.
                writer.poisoned = true;
                return Err(e);
            }
        };
        self.inner.watch.advance(writer.log.end());
        {
            let mut state = self.state_mut();
            let mut pending = std::mem::take(&mut state.pending);
            for rec in &stored {
                let segment = self.inner.segments.segment_start(rec.offset);
                state.apply(rec, segment, &mut pending);
            }
            account(
                &mut state,
                &plan,
                &applied,
                |o| self.inner.segments.segment_start(o),
                &mut pending,
            );
            state.pending = pending;
            state.pending_records += stored.len();
            if state.pending_records >= INDEX_COMMIT_RECORDS
                && let Err(e) = commit_pending(&self.inner.index, &mut state)
            {
                // The log holds the records; the index catches up on reopen.
                writer.poisoned = true;
                return Err(e);
            }
        }
        drop(writer);
        self.inner.watch.notify();
        Ok((stored, plan.issues))
    }

    /// Plan and apply the edits `records` call for (see `delete.rs`).
    pub(super) fn edit_for(
        &self,
        writer: &mut MutexGuard<'_, Writer>,
        records: &[LogRecord],
    ) -> Result<(Plan, Vec<Edited>), StoreError> {
        let plan = self.plan_edits(records)?;
        for issue in &plan.issues {
            tracing::warn!(
                feed = %issue.feed.fmt_short(),
                seq = issue.seq,
                error = %issue.error,
                "a deletion has no effect"
            );
        }
        let applied = writer.log.rewrite(&plan.edits)?;
        Ok((plan, applied))
    }

    /// Block until the log end passes `offset` or `timeout` elapses.
    pub fn wait_past(&self, offset: u64, timeout: Duration) -> u64 {
        self.inner.watch.wait_past(offset, timeout)
    }

    /// Flush sled's derived state to disk (it also flushes by itself every
    /// second). Not needed for durability of entries.
    pub fn flush_index(&self) -> Result<(), StoreError> {
        {
            let _writer = self.writer();
            let mut state = self.state_mut();
            commit_pending(&self.inner.index, &mut state)?;
        }
        self.inner.sled.flush()?;
        Ok(())
    }
}

/// Commit the pending index changes with the current checkpoint.
///
/// The pending changes are dropped only once sled has them: if the commit
/// fails (a full disk), readers of this handle still find every record
/// written so far.
pub(super) fn commit_pending(index: &Index, state: &mut IndexState) -> Result<(), StoreError> {
    if !state.pending.is_empty() {
        index.commit(&state.pending, &state.checkpoint)?;
        state.pending = Default::default();
    }
    state.pending_records = 0;
    Ok(())
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = commit_pending(&self.index, state) {
            tracing::warn!(error = %e, "could not commit the index on close; it catches up on the next open");
        }
    }
}
