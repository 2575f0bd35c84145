//! Reading a database: entries by feed and seq, ranges of a feed, the log
//! by offset, and following it.
//!
//! The feed index keeps one *run* per group of consecutive entries of a
//! feed stored back to back; a lookup finds the run (pending changes
//! first, then sled) and skips over frame headers from its offset.

use crate::entry::Entry;
use crate::error::StoreError;
use crate::index::{IndexState, Run};
use crate::keys::FeedId;
use crate::log::{LogIter, LogRecord, RecordBody};
use crate::tail::Tail;

use super::Db;

impl Db {
    /// The entry of `feed` at `seq`.
    pub fn get(&self, feed: &FeedId, seq: u64) -> Result<Option<Entry>, StoreError> {
        let Some(offset) = self.offset_of(feed, seq)? else {
            return Ok(None);
        };
        self.entry_at(offset).map(Some)
    }

    /// The log offset of `feed`'s entry at `seq`: its run, then a skip over
    /// the frame headers before it.
    pub(super) fn offset_of(&self, feed: &FeedId, seq: u64) -> Result<Option<u64>, StoreError> {
        let run = self.run_for(feed, seq)?;
        self.offset_in_run(run, seq)
    }

    /// [`Db::offset_of`] for a caller that holds the index state already
    /// (ingest, under the writer lock): it looks in `state`, never takes
    /// the state's lock a second time.
    pub(super) fn offset_in(
        &self,
        state: &IndexState,
        feed: &FeedId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let run = match state.pending.run_for(feed, seq) {
            Some(run) => Some(run),
            None => self.inner.index.run_for(feed, seq)?,
        };
        self.offset_in_run(run, seq)
    }

    fn offset_in_run(&self, run: Option<Run>, seq: u64) -> Result<Option<u64>, StoreError> {
        let Some(run) = run else {
            return Ok(None);
        };
        let end = self.log_end();
        self.inner
            .segments
            .skip(run.offset, seq - run.first_seq, end)
            .map(Some)
    }

    /// The run of `feed` that holds `seq`: pending (not yet committed) runs
    /// first, then sled.
    fn run_for(&self, feed: &FeedId, seq: u64) -> Result<Option<Run>, StoreError> {
        if let Some(run) = self.state().pending.run_for(feed, seq) {
            return Ok(Some(run));
        }
        // Not pending when we looked; if it was committed since, sled has it.
        self.inner.index.run_for(feed, seq)
    }

    /// The record at a log offset (which must be a record boundary).
    pub fn record_at(&self, offset: u64) -> Result<LogRecord, StoreError> {
        self.inner.segments.read_at(offset, self.log_end())
    }

    pub(super) fn entry_at(&self, offset: u64) -> Result<Entry, StoreError> {
        match self.record_at(offset)?.body {
            RecordBody::Entry(e) => Ok(e),
            _ => Err(StoreError::IndexDamaged(
                "index points at a record that is not an entry",
            )),
        }
    }

    /// Entries of `feed` with `from <= seq <= to`, in seq order.
    pub fn feed_range(
        &self,
        feed: &FeedId,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        let from = from.max(1);
        let runs = match self.run_for(feed, from) {
            Ok(first) => {
                let start = first.map_or(from, |r| r.first_seq);
                // Pending runs replace sled's runs of the same first seq.
                let pending = self.state().pending.runs_between(feed, start, to);
                let committed = self.inner.index.runs_from(feed, start, to);
                Box::new(MergeRuns {
                    committed: committed.peekable(),
                    pending: pending.into_iter().peekable(),
                }) as Box<dyn Iterator<Item = Result<Run, StoreError>>>
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        let end = self.log_end();
        runs.flat_map(move |run| {
            let run = match run {
                Ok(r) => r,
                Err(e) => return vec![Err(e)],
            };
            let mut out = Vec::new();
            let mut offset = run.offset;
            for k in 0..u64::from(run.count) {
                let seq = run.first_seq + k;
                if seq > to {
                    break;
                }
                match self.inner.segments.read_at(offset, end) {
                    Ok(rec) => {
                        offset = rec.next_offset;
                        if seq < from {
                            continue;
                        }
                        match rec.body {
                            RecordBody::Entry(e) if e.header.seq == seq => out.push(Ok(e)),
                            _ => {
                                out.push(Err(StoreError::IndexDamaged(
                                    "run does not match the log",
                                )));
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        out.push(Err(e));
                        break;
                    }
                }
            }
            out
        })
    }

    /// Records from `offset` (a record boundary, e.g. a `next_offset`) to
    /// the current end of the log.
    pub fn log_iter(&self, offset: u64) -> LogIter {
        self.inner.segments.iter(offset, self.log_end())
    }

    /// The first record boundary at or after any byte offset.
    pub fn record_boundary(&self, offset: u64) -> Result<u64, StoreError> {
        self.inner
            .segments
            .boundary_at_or_after(offset, self.log_end())
    }

    /// Follow the log from `offset`: every record from the first record
    /// boundary at or after it, then each new record as it becomes
    /// durable (local appends and entries synced from peers alike). The
    /// iterator blocks at the end of the log; see [`Tail`] for a timed
    /// wait and for resuming from [`Tail::offset`].
    ///
    /// The tail holds a clone of this handle, so the database stays open
    /// while it lives.
    pub fn tail(&self, offset: u64) -> Tail {
        Tail::new(self.clone(), offset)
    }
}

/// Runs of one feed from sled and from the pending batch, in seq order; a
/// pending run replaces sled's run with the same first seq (it is newer).
struct MergeRuns<C: Iterator<Item = Result<Run, StoreError>>> {
    committed: std::iter::Peekable<C>,
    pending: std::iter::Peekable<std::vec::IntoIter<Run>>,
}

impl<C: Iterator<Item = Result<Run, StoreError>>> Iterator for MergeRuns<C> {
    type Item = Result<Run, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let committed = self
            .committed
            .peek()
            .map(|c| c.as_ref().map(|r| r.first_seq).ok());
        let pending = self.pending.peek().map(|p| p.first_seq);
        let take_pending = match (committed, pending) {
            // An error comes out first, as it is.
            (Some(None), _) | (Some(Some(_)), None) => false,
            (None, Some(_)) => true,
            (None, None) => return None,
            (Some(Some(c)), Some(p)) => {
                if c == p {
                    self.committed.next();
                }
                c >= p
            }
        };
        if take_pending {
            self.pending.next().map(Ok)
        } else {
            self.committed.next()
        }
    }
}
